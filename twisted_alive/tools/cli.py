"""
The ``twisted-alive`` command line.

Subcommands plug in from their own modules: `SUBCOMMANDS` lists them as
``(name, target, optional)``, where ``target`` names a module (or
``module:attribute``) that provides ``addArguments(parser)`` and
``run(args) -> int``, and whose docstring's first line is the subcommand's
one-line help. An optional subcommand is offered only if its module is
installed. ``main`` builds the parser, runs the chosen subcommand and exits
with the code it returns.

Shared helpers for subcommands live here too: `clientEndpoint` and
`serverEndpoint` read endpoint strings (with ``HOST:PORT`` short forms) and
raise `EndpointError` with a one-line reason, `fail` prints a one-line error,
and `runReactor` runs a coroutine on the reactor and returns its exit code.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable, Coroutine, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, cast

if TYPE_CHECKING:
    from twisted.internet.interfaces import (
        IListeningPort,
        IStreamClientEndpoint,
        IStreamServerEndpoint,
    )

    from twisted_alive.testing.chaos import ChaosProxy

PROG = "twisted-alive"
"""The name of the command, in usage lines and error messages."""

LOOPBACK = "127.0.0.1"
"""Where a listening short form (a bare port number) listens."""


class Subcommand(Protocol):
    """
    What a subcommand module (or object) provides.
    """

    def addArguments(self, parser: argparse.ArgumentParser) -> None:
        """
        Add the subcommand's arguments to ``parser``; may also set its
        ``description`` and ``epilog`` (shown unwrapped).

        :param parser: the subcommand's parser.
        """

    def run(self, args: argparse.Namespace) -> int:
        """
        Run the subcommand.

        :param args: the parsed arguments.
        :returns: the exit code.
        """


SUBCOMMANDS: list[tuple[str, str, bool]] = [
    ("probe", "twisted_alive.tools.probe", False),
    ("demo", "twisted_alive.tools.demo", False),
    ("proxy", "twisted_alive.tools.cli:ProxyCommand", False),
    ("bench", "twisted_alive.tools.bench", True),
]
"""The subcommands, in the order ``--help`` lists them: ``(name, target,
optional)``. An optional subcommand whose module is not installed is left
out."""


# -- loading subcommands -------------------------------------------------------


def _available(target: str) -> bool:
    moduleName = target.partition(":")[0]
    try:
        return importlib.util.find_spec(moduleName) is not None
    except (ImportError, ValueError):
        return False


def loadSubcommand(target: str) -> Subcommand:
    """
    Import a subcommand.

    :param target: ``package.module`` or ``package.module:attribute``.
    :returns: the module, or the attribute of it, that implements the
        subcommand.
    """
    moduleName, _, attribute = target.partition(":")
    found: object = importlib.import_module(moduleName)
    if attribute:
        found = getattr(found, attribute)
    return cast(Subcommand, found)


def _summary(command: object) -> str:
    doc = (getattr(command, "__doc__", None) or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


def buildParser() -> argparse.ArgumentParser:
    """
    The parser of the whole command line, with every available subcommand.

    :returns: the parser; the chosen subcommand is in the ``command``
        attribute of the parsed arguments.
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Check TCP endpoints, show how twisted_alive classifies lost connections, "
            "and run a fault-injecting proxy."
        ),
        epilog=f"Run '{PROG} COMMAND --help' for the options of a command.",
    )
    from twisted_alive import __version__

    parser.add_argument(
        "--version", action="version", version=f"{PROG} {__version__}",
        help="print the version of twisted_alive and exit",
    )
    subparsers = parser.add_subparsers(
        title="commands", dest="commandName", metavar="COMMAND", required=True
    )
    for name, target, optional in SUBCOMMANDS:
        if optional and not _available(target):
            continue
        command = loadSubcommand(target)
        summary = _summary(command)
        sub = subparsers.add_parser(
            name,
            help=summary,
            description=summary,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.addArguments(sub)
        sub.set_defaults(command=command)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """
    Run the ``twisted-alive`` command line.

    :param argv: the arguments, without the program name; ``sys.argv[1:]``
        by default.
    :raises SystemExit: always, with the exit code of the subcommand (2 for
        a usage error).
    """
    parser = buildParser()
    args = parser.parse_args(argv)
    command = cast(Subcommand, args.command)
    raise SystemExit(command.run(args))


# -- helpers for subcommands ---------------------------------------------------


def describe(parser: argparse.ArgumentParser, description: str, epilog: str) -> None:
    """
    Set the text of a subcommand's ``--help`` around its options, shown as
    written (line breaks kept).

    :param parser: the subcommand's parser.
    :param description: what the subcommand does, shown before the options.
    :param epilog: what follows the options: the forms its arguments take,
        its exit codes.
    """
    parser.description = description
    parser.epilog = epilog


def fail(command: str, message: str, code: int = 2) -> int:
    """
    Print a one-line error for ``command`` to standard error.

    :param command: the subcommand's name.
    :param message: the error.
    :param code: the exit code to return.
    :returns: ``code``.
    """
    sys.stderr.write(f"{PROG} {command}: {message}\n")
    sys.stderr.flush()
    return code


class EndpointError(ValueError):
    """
    An endpoint string could not be read; the message is the reason, in one
    line.
    """


_CLIENT_SHORT = re.compile(r"^(?:\[(?P<v6>[^\[\]\s]+)\]|(?P<host>[^:\[\]\s=]+)):(?P<port>\d+)$")
_SERVER_SHORT = re.compile(
    r"^(?:(?:\[(?P<v6>[^\[\]\s]+)\]|(?P<host>[^:\[\]\s=]+)):)?(?P<port>\d+)$"
)
_INIT_PREFIX = re.compile(r"^\w+\.__init__\(\) ")
_UNKNOWN_TYPE = re.compile(r"^Unknown endpoint type: '(?P<kind>.*)'$")


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def _checkPort(text: str) -> str:
    if not text:
        raise EndpointError("the port is missing")
    if not text.isdigit():
        raise EndpointError(f"port {text!r} is not a number from 0 to 65535")
    port = int(text)
    if port > 65535:
        raise EndpointError(f"port {port} is out of range (0 to 65535)")
    return str(port)


def splitEndpoint(text: str) -> list[str]:
    """
    The fields of an endpoint string: split at each colon that is not
    escaped by a backslash (the escapes are kept).

    :param text: an endpoint string such as ``tcp:9000:interface=127.0.0.1``.
    :returns: its fields, e.g. ``["tcp", "9000", "interface=127.0.0.1"]``.
    """
    fields: list[str] = []
    current: list[str] = []
    escaped = False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
    fields.append("".join(current))
    return fields


_SERVER_POSITIONAL = {
    "tcp": ("port", "interface", "backlog"),
    "tcp6": ("port", "interface", "backlog"),
    "ssl": ("port", "privateKey", "certKey", "sslmethod", "interface", "backlog"),
    "unix": ("address", "mode", "backlog", "lockfile"),
}
_CLIENT_POSITIONAL = {
    "tcp": ("host", "port", "timeout", "bindAddress"),
    "tcp6": ("host", "port", "timeout", "bindAddress"),
    "ssl": ("host", "port",),
    "unix": ("path", "timeout", "checkPID"),
}


def _parameters(fields: list[str], positional: tuple[str, ...]) -> dict[str, str]:
    """The parameters of an endpoint string's ``fields`` (its kind first),
    by name: ``name=value`` fields and positional fields named after
    ``positional``."""
    named: dict[str, str] = {}
    index = 0
    for field in fields[1:]:
        name, equals, value = field.partition("=")
        if equals and "\\" not in name:
            named[name] = value
        else:
            if index < len(positional):
                named.setdefault(positional[index], field)
            index += 1
    return named


def _checkNumbers(text: str, server: bool) -> None:
    """Check the numbers of a TCP, TLS or UNIX endpoint string (port,
    backlog), which Twisted reads with ``int()`` or does not check at all.

    :raises EndpointError: naming the parameter and what is wrong with it.
    """
    fields = splitEndpoint(text)
    kind = fields[0].strip().lower()
    table = _SERVER_POSITIONAL if server else _CLIENT_POSITIONAL
    if kind not in table:
        return
    named = _parameters(fields, table[kind])
    if "port" in named:
        _checkPort(named["port"].strip())
    elif kind != "unix":
        raise EndpointError("the port is missing")
    backlog = named.get("backlog")
    if backlog is not None and not (backlog.strip().isdigit() and int(backlog) >= 1):
        raise EndpointError(f"backlog {backlog!r} is not a whole number of 1 or more")


def namesParameter(text: str, name: str) -> bool | None:
    """
    Whether a server endpoint string names parameter ``name`` (by
    ``name=value`` or by position).

    :param text: a server endpoint string.
    :param name: a parameter, e.g. ``"interface"`` or ``"backlog"``.
    :returns: ``None`` if the endpoint type is not one of ``tcp``, ``tcp6``,
        ``ssl``, ``unix`` (so its parameters are unknown here), else whether
        it names ``name``.
    """
    parameters = serverParameters(text)
    return None if parameters is None else name in parameters


def serverParameters(text: str) -> dict[str, str] | None:
    """
    The parameters a server endpoint string names, by name (positional
    ones too), unescaped.

    :param text: a server endpoint string, e.g. ``tcp:9000:interface=\\:\\:1``.
    :returns: e.g. ``{"port": "9000", "interface": "::1"}``, or ``None`` if
        the endpoint type is not one of ``tcp``, ``tcp6``, ``ssl``, ``unix``.
    """
    fields = splitEndpoint(text)
    positional = _SERVER_POSITIONAL.get(fields[0].strip().lower())
    if positional is None:
        return None
    return {
        name: re.sub(r"\\(.)", r"\1", value)
        for name, value in _parameters(fields, positional).items()
    }


def withDefault(text: str, name: str, value: str) -> str:
    """
    A server endpoint string with ``name=value`` added, unless it names
    ``name`` already or its type does not take that parameter.

    :param text: a server endpoint string, e.g. ``tcp:9000``.
    :param name: ``"interface"`` (TCP and TLS) or ``"backlog"`` (TCP, TLS,
        UNIX).
    :param value: the default, unescaped.
    :returns: e.g. ``tcp:9000:backlog=4096``.
    """
    kind = splitEndpoint(text)[0].strip().lower()
    if name not in _SERVER_POSITIONAL.get(kind, ()) or namesParameter(text, name):
        return text
    return f"{text}:{name}={_escape(value)}"


_SHORT_WITH_PORT = re.compile(r"^(?:\[[^\[\]\s]+\]|[^:\[\]\s=]+):(?P<port>[^:]*)$")
_INT_LITERAL = re.compile(r"^invalid literal for int\(\) with base 10: (?P<value>'.*')$")


def _checkShortPort(text: str) -> None:
    """A string that Twisted could not read, of the form ``HOST:PORT``
    (not a known endpoint type) but whose port is wrong: say so."""
    if text.startswith(":") and text[1:].isdigit():
        raise EndpointError("the host is missing (write HOST:PORT)")
    match = _SHORT_WITH_PORT.match(text)
    if match is None:
        return
    from twisted.internet.interfaces import (
        IStreamClientEndpointStringParserWithReactor,
        IStreamServerEndpointStringParser,
    )
    from twisted.plugin import getPlugins

    kind = text.partition(":")[0].lower()
    if kind in ("tcp", "tcp6", "ssl", "unix"):
        return
    parsers = (IStreamServerEndpointStringParser, IStreamClientEndpointStringParserWithReactor)
    for interface in parsers:
        for plugin in getPlugins(interface):
            if getattr(plugin, "prefix", None) == kind:
                return
    _checkPort(match.group("port"))


def _reasonOf(error: Exception, example: str, short: bool = True) -> str:
    text = str(error).strip()
    if isinstance(error, KeyError) and error.args:
        text = f"missing {error.args[0]!r}"
    match = _UNKNOWN_TYPE.match(text)
    if match is not None:
        kind = match.group("kind")
        hint = f"write HOST:PORT or an endpoint string such as {example}"
        if not short:
            hint = f"write an endpoint string such as {example}"
        if not kind:
            return f"it is empty ({hint})"
        return f"unknown endpoint type '{kind}' ({hint})"
    literal = _INT_LITERAL.match(text)
    if literal is not None:
        return f"{literal.group('value')} is not a whole number"
    text = _INIT_PREFIX.sub("", text)
    return text.splitlines()[0] if text else type(error).__name__


def _readEndpoint(reactor: Any, text: str, server: bool) -> object:
    """
    Read an endpoint string with Twisted's ``serverFromString`` (``server``)
    or ``clientFromString``; if Twisted cannot read it, try it as a short
    form (`_serverShortForm`, `_clientShortForm`).

    :raises EndpointError: if neither reading works; the message says why
        (with an endpoint string of the right kind as example).
    """
    from twisted.internet import endpoints

    if server:
        read, example = endpoints.serverFromString, "tcp:PORT:interface=HOST"
        shortForm = _serverShortForm
    else:
        read, example = endpoints.clientFromString, "tcp:host=HOST:port=PORT"
        shortForm = _clientShortForm
    parse = partial(cast("Callable[[Any, str], object]", read), reactor)
    try:
        _checkNumbers(text, server=server)
        return parse(text)
    except EndpointError:
        raise
    except Exception as e:
        unread = e
    spec = shortForm(text)
    if spec is None:
        _checkShortPort(text)
        raise EndpointError(_reasonOf(unread, example)) from None
    try:
        return parse(spec)
    except Exception as e:
        raise EndpointError(_reasonOf(e, example)) from None


def _clientShortForm(text: str) -> str | None:
    """The TCP client endpoint string that ``HOST:PORT`` stands for."""
    match = _CLIENT_SHORT.match(text)
    if match is None:
        return None
    host = match.group("v6") or match.group("host")
    return f"tcp:host={_escape(host)}:port={_checkPort(match.group('port'))}"


def _serverShortForm(text: str) -> str | None:
    """The TCP server endpoint string that ``PORT`` (on `LOOPBACK`) or
    ``HOST:PORT`` stands for; ``tcp6`` for a bracketed IPv6 host."""
    match = _SERVER_SHORT.match(text)
    if match is None:
        return None
    port = _checkPort(match.group("port"))
    v6 = match.group("v6")
    host = v6 or match.group("host") or LOOPBACK
    return f"{'tcp6' if v6 else 'tcp'}:{port}:interface={_escape(host)}"


def clientEndpoint(reactor: Any, text: str) -> IStreamClientEndpoint:
    """
    Read a client endpoint string: anything
    ``twisted.internet.endpoints.clientFromString`` reads (e.g.
    ``tcp:host=127.0.0.1:port=9000``), or the short form ``HOST:PORT``
    (``[::1]:9000`` for IPv6), which means TCP.

    :param reactor: the reactor the endpoint connects with.
    :param text: what the user wrote for the endpoint to connect to.
    :returns: the client endpoint.
    :raises EndpointError: if ``text`` is neither; the message says why.
    """
    return cast("IStreamClientEndpoint", _readEndpoint(reactor, text, server=False))


def serverEndpoint(reactor: Any, text: str) -> IStreamServerEndpoint:
    """
    Read a server endpoint string: anything
    ``twisted.internet.endpoints.serverFromString`` reads (e.g.
    ``tcp:9000:interface=127.0.0.1``), or a short form: ``PORT`` (TCP on
    127.0.0.1) or ``HOST:PORT`` (TCP on that interface; ``[::1]:9000`` for
    IPv6).

    :param reactor: the reactor the endpoint listens with.
    :param text: what the user wrote for where to listen.
    :returns: the server endpoint.
    :raises EndpointError: if ``text`` is neither; the message says why.
    """
    return cast("IStreamServerEndpoint", _readEndpoint(reactor, text, server=True))


def serverEndpointString(reactor: Any, text: str) -> IStreamServerEndpoint:
    """
    Read a server endpoint string, as
    ``twisted.internet.endpoints.serverFromString`` does (no short forms),
    with one-line reasons for its mistakes (a port or backlog that is not a
    number, an unknown type).

    :param reactor: the reactor the endpoint uses.
    :param text: the endpoint string.
    :returns: the endpoint.
    :raises EndpointError: if the string cannot be read; the message says why.
    """
    from twisted.internet.endpoints import serverFromString

    _serverFromString = cast("Callable[[Any, str], IStreamServerEndpoint]", serverFromString)
    try:
        _checkNumbers(text, server=True)
        return _serverFromString(reactor, text)
    except EndpointError:
        raise
    except Exception as e:
        raise EndpointError(_reasonOf(e, "tcp:9000:interface=127.0.0.1", short=False)) from None


def listenProblem(error: BaseException) -> str:
    """
    What went wrong when listening, in a few words: the socket error's text
    (``address already in use``) for a ``CannotListenError``, else the
    error's own text.

    :param error: the exception raised by ``listen()``.
    :returns: the text, starting with a lower-case letter.
    """
    from twisted.internet.error import CannotListenError

    text = str(error)
    if isinstance(error, CannotListenError):
        problem = error.socketError
        if isinstance(problem, OSError) and problem.strerror:
            text = problem.strerror
        else:
            text = str(problem)
    return text[:1].lower() + text[1:]


def reachableFromOtherHosts(port: IListeningPort) -> bool:
    """
    Whether ``port`` listens on an IP interface that is not loopback.

    :param port: a listening port.
    :returns: ``False`` for loopback addresses and UNIX sockets.
    """
    import ipaddress

    host = getattr(port.getHost(), "host", None)
    if host is None:
        return False  # a UNIX socket
    try:
        return not ipaddress.ip_address(str(host).partition("%")[0]).is_loopback
    except ValueError:
        return True


def runReactor(
    main: Callable[[Any], Coroutine[Any, Any, int]],
    command: str,
    interrupted: int = 130,
) -> int:
    """
    Run the reactor until ``main(reactor)`` finishes, and return its exit
    code.

    :param main: a coroutine function; it gets the reactor and returns the
        exit code.
    :param command: the subcommand's name, for error messages.
    :param interrupted: the exit code if the reactor stops before ``main``
        finishes (a signal such as Ctrl-C).
    :returns: the exit code; 1 if ``main`` raised (its traceback is printed:
        that is a bug, not a user error).
    """
    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.error import ReactorNotRunning
    from twisted.python.failure import Failure

    outcome: list[int] = []

    def stop(_: object) -> None:
        try:
            cast(Any, reactor).stop()
        except ReactorNotRunning:
            pass

    def crashed(failure: Failure) -> None:
        if isinstance(failure.value, BrokenPipeError):
            # The reader of our output went away (``| head``): not an error
            # worth a traceback; keep the interpreter from failing to flush.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            outcome.append(1)
            return
        sys.stderr.write(f"{PROG} {command}: internal error\n{failure.getTraceback()}")
        outcome.append(1)

    def start() -> None:
        d = ensureDeferred(main(reactor))
        d.addCallbacks(outcome.append, crashed)
        d.addBoth(stop)

    cast(Any, reactor).callWhenRunning(start)
    cast(Any, reactor).run()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        pass
    return outcome[0] if outcome else interrupted


# -- the proxy subcommand --------------------------------------------------------

_PROXY_EPILOG = """\
LISTEN is a server endpoint string (tcp:9001:interface=127.0.0.1) or a
short form: PORT (on 127.0.0.1) or HOST:PORT. TARGET is a client endpoint
string (tcp:host=127.0.0.1:port=9000) or HOST:PORT.

--faults takes a comma-separated list of NAME=VALUE, applied to every new
connection:
  reset-after=SECONDS|MIN..MAX    reset (RST both ways) after a random time
  close-after=SECONDS|MIN..MAX    close (FIN both ways) after a random time
  stall-after=SECONDS|MIN..MAX    stall (forward nothing) after a random time
  reset-after-bytes=N             reset after N bytes forwarded
  stall-after-bytes=N             stall after N bytes forwarded
  delay=SECONDS                   hold every chunk this long
  fragment=N|MIN..MAX             forward in pieces of at most N bytes
  seed=N                          seed of the random draws (to replay a run)
Example: --faults reset-after=0.5..2,delay=0.01,seed=7

exit codes:
  0  stopped by a signal (Ctrl-C)
  1  cannot listen on LISTEN
  2  usage error (bad arguments, endpoint or faults)
"""


class ProxyCommand:
    """
    Run a fault-injecting TCP proxy until interrupted.
    """

    @staticmethod
    def addArguments(parser: argparse.ArgumentParser) -> None:
        """
        Add the two endpoints of ``proxy`` (where it listens, where it
        forwards to) and the faults it injects.

        :param parser: the subcommand's parser.
        """
        describe(
            parser,
            "Run a ChaosProxy: accept connections on LISTEN and forward each to TARGET\n"
            "(to one of several TARGETs, drawn at random: a load balancer), injecting\n"
            "the faults given with --faults, until interrupted (Ctrl-C).",
            _PROXY_EPILOG,
        )
        parser.add_argument("listen", metavar="LISTEN", help="where to accept connections")
        parser.add_argument(
            "target",
            metavar="TARGET",
            nargs="+",
            help="where to forward them; given several, each new connection goes to one "
            "drawn at random",
        )
        parser.add_argument(
            "--faults",
            metavar="SPEC",
            default="",
            help="faults for every new connection (see below); none by default",
        )

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        """
        Run ``proxy``.

        :param args: the parsed arguments.
        :returns: the exit code.
        """
        from twisted.internet import reactor

        from twisted_alive.testing.chaos import ChaosProxy, parseFaults

        try:
            faults = parseFaults(args.faults)
        except ValueError as e:
            return fail("proxy", f'invalid faults "{args.faults}": {e}')
        # Like the short forms, a TCP string without an interface listens on
        # loopback: a proxy elsewhere would let other hosts reach TARGET.
        kind = splitEndpoint(args.listen)[0].strip().lower()
        listenText = withDefault(args.listen, "interface", "::1" if kind == "tcp6" else LOOPBACK)
        try:
            listen = serverEndpoint(reactor, listenText)
        except EndpointError as e:
            return fail("proxy", f'invalid listen endpoint "{args.listen}": {e}')
        targets = []
        for text in args.target:
            try:
                targets.append(clientEndpoint(reactor, text))
            except EndpointError as e:
                return fail("proxy", f'invalid target endpoint "{text}": {e}')
        where = ", ".join(args.target)

        async def serve(reactor: Any) -> int:
            proxy = ChaosProxy(targets if len(targets) > 1 else targets[0], faults, reactor=reactor)
            try:
                port = await proxy.listen(listen)
            except Exception as e:
                return fail("proxy", f'cannot listen on "{args.listen}": {listenProblem(e)}', 1)
            if reachableFromOtherHosts(port):
                sys.stderr.write(
                    f"{PROG} proxy: warning: listening on {_address(port)}, reachable from "
                    f"other hosts, which can reach {where} through it\n"
                )
            _startProxyLog()
            print(
                f"{PROG} proxy: listening on {_address(port)}, forwarding to {where}; "
                f"faults: {faults.toSpec() or 'none'}; seed {proxy.seed}",
                flush=True,
            )
            reactor.addSystemEventTrigger("before", "shutdown", _proxyStopped, proxy, args.target)
            from twisted.internet.defer import Deferred

            forever: Deferred[int] = Deferred()
            return await forever

        return runReactor(serve, "proxy", interrupted=0)


def _address(port: IListeningPort) -> str:
    host = port.getHost()
    name = getattr(host, "host", None)
    number = getattr(host, "port", None)
    if name is not None and number is not None:
        return f"[{name}]:{number}" if ":" in str(name) else f"{name}:{number}"
    return str(host)


def _proxyStopped(proxy: ChaosProxy, targets: list[str]) -> None:
    faults = ", ".join(f"{kind} {n}" for kind, n in proxy.faultsInjected.items() if n) or "none"
    forwarded = sum(proxy.bytesForwarded.values())
    count = proxy.connectionsAccepted
    perTarget = ""
    if len(targets) > 1:
        counts = zip(targets, proxy.connectionsPerTarget, strict=True)
        perTarget = "; per target: " + ", ".join(f"{text} {n}" for text, n in counts)
    print(
        f"{PROG} proxy: stopped after {count} connection{'' if count == 1 else 's'}, "
        f"{forwarded} bytes forwarded; faults injected: {faults}{perTarget}",
        flush=True,
    )


def _startProxyLog() -> None:
    """Print the proxy's own log events (faults injected, target
    unreachable) to standard error, one line each."""
    import time

    from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogBeginner

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") != "twisted_alive.testing.chaos":
            return  # not the proxy's own events (factories starting...)
        if str(event.get("log_format", "")).startswith("chaos proxy seed"):
            return  # already on the first line of output
        level = event.get("log_level")
        if level is not None and level < LogLevel.info:
            return
        stamp = time.strftime("%H:%M:%S", time.localtime(event.get("log_time", time.time())))
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text += f": {failure.getErrorMessage()}"
        sys.stderr.write(f"{stamp} {text}\n")
        sys.stderr.flush()

    globalLogBeginner.beginLoggingTo([cast(ILogObserver, observe)], redirectStandardIO=False)
