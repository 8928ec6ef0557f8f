"""
Kernel liveness for connections whose peer does not speak twisted_alive's
framing: a database, an HTTP server, a device.

Such a peer will never answer a heartbeat, so the only watchdog left is the
kernel's own TCP machinery. Its defaults are far too slow for an application:

- keepalive is off, and once switched on it waits 7200 s of silence, then
  sends 9 probes 75 s apart: more than two hours before an idle connection
  to a vanished host fails;
- data left unacknowledged is retransmitted ``tcp_retries2`` (15) times
  before the connection fails: at least 924.6 s, about 15 minutes.

:func:`setKernelLiveness` tunes both paths from one deadline, and
:func:`peek` looks at a connected socket without reading from it.

What the kernel can and cannot find:

- a **dead host, a network partition, a lost NAT entry**: keepalive probes go
  unanswered (idle link) or data goes unacknowledged (busy link), and the
  connection fails near the deadline; Twisted then reports a bare
  :class:`twisted.internet.error.ConnectionLost`;
- a **stopped or hung process on a live host**: its kernel still answers
  keepalive probes and acknowledges data until its receive buffer fills.
  Keepalive never fails such a connection; ``TCP_USER_TIMEOUT`` fails it only
  once this side has data it cannot deliver. Only an application-level
  heartbeat finds a silent peer on an idle link, which is why
  twisted_alive's framing has one.
"""

from __future__ import annotations

import enum
import errno
import math
import select
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = [
    "MAX_DEADLINE",
    "MAX_PROBES",
    "MIN_DEADLINE",
    "KernelLiveness",
    "PeekState",
    "peek",
    "setKernelLiveness",
]

MIN_DEADLINE = 2
"""
The shortest deadline accepted, in seconds: one second of idle time plus one
probe one second later. Kernel keepalive settings are whole seconds, and
none may be 0.
"""

MAX_DEADLINE = 32767
"""
The longest deadline accepted, in seconds: Linux's limit for
``TCP_KEEPIDLE`` and ``TCP_KEEPINTVL``.
"""

MAX_PROBES = 127
"""
The largest number of keepalive probes accepted: Linux's limit for
``TCP_KEEPCNT``.
"""

_MAX_WRAPPERS = 16
_CLOSED_MESSAGE = "the connection's socket is already closed"

def _errnos(*names: str) -> frozenset[int]:
    """The codes of those errno ``names`` this platform has."""
    return frozenset(getattr(errno, name) for name in names if hasattr(errno, name))


_UNSUPPORTED_ERRNOS = _errnos(
    "ENOPROTOOPT", "EOPNOTSUPP", "ENOTSUP", "WSAENOPROTOOPT", "WSAEOPNOTSUPP"
)

_RESET_ERRNOS = _errnos(
    "ECONNRESET",
    "EPIPE",
    "ETIMEDOUT",
    "ECONNABORTED",
    "EHOSTUNREACH",
    "ENETUNREACH",
    "EHOSTDOWN",
    "ENETDOWN",
)


@dataclass(frozen=True)
class KernelLiveness:
    """
    What :func:`setKernelLiveness` set on a socket, as read back from the
    kernel.

    An option this platform lacks is named in :attr:`unsupported`, and its
    field is ``None``.

    :ivar deadline: The deadline asked for, in seconds.
    :ivar keepalive: Whether ``SO_KEEPALIVE`` is on.
    :ivar idle: Seconds of silence before the first keepalive probe
        (``TCP_KEEPIDLE``; ``TCP_KEEPALIVE`` on macOS), or ``None``.
    :ivar interval: Seconds between keepalive probes (``TCP_KEEPINTVL``), or
        ``None``.
    :ivar probes: Unanswered probes before the kernel gives up
        (``TCP_KEEPCNT``), or ``None``.
    :ivar userTimeout: Seconds that written data may stay unacknowledged
        before the kernel fails the connection (``TCP_USER_TIMEOUT``), or
        ``None``.
    :ivar unsupported: Names of the options this platform does not offer,
        in the order they were tried; empty on Linux.
    """

    deadline: float
    keepalive: bool
    idle: int | None
    interval: int | None
    probes: int | None
    userTimeout: float | None
    unsupported: tuple[str, ...]

    @property
    def keepaliveDeadline(self) -> int | None:
        """
        The time in seconds that kernel keepalive needs to fail an idle
        connection to a vanished host: ``idle + probes * interval``.

        :returns: That time, or ``None`` if keepalive is off or one of its
            settings could not be made.
        """
        if not self.keepalive or None in (self.idle, self.interval, self.probes):
            return None
        assert self.idle is not None
        assert self.interval is not None
        assert self.probes is not None
        return self.idle + self.probes * self.interval


class PeekState(enum.Enum):
    """
    What :func:`peek` saw on a connected socket.
    """

    ALIVE = "alive"
    """
    Nothing to read, no end of stream, no error. A peer that is stopped,
    hung, or behind a partition looks like this too: only a heartbeat or a
    keepalive failure tells it apart.
    """

    READABLE = "readable"
    """
    Data is waiting to be read. The peer may have closed or reset the
    connection after sending it: the end of stream shows only once the data
    has been read.
    """

    CLOSED = "closed"
    """
    The peer closed its side of the connection (FIN): a read would return
    ``b""``. The peer may still be reading what this side writes.
    """

    RESET = "reset"
    """
    The connection failed: the peer reset it (RST), a write hit a closed
    peer (``EPIPE``), or the kernel gave up on it (``ETIMEDOUT`` from
    keepalive or ``TCP_USER_TIMEOUT``).
    """


def _keepaliveSchedule(deadline: float, idle: float | None, probes: int) -> tuple[int, int, int]:
    """
    Split a deadline into whole-second keepalive settings.

    :param deadline: The validated deadline, in seconds.
    :param idle: The idle time asked for, or ``None`` to choose one.
    :param probes: The largest number of probes wanted.
    :returns: ``(idle, interval, probes)``, whole seconds, with
        ``idle + probes * interval <= floor(deadline)``.
    """
    budget = math.floor(deadline)
    if idle is None:
        count = min(probes, budget - 1)
        interval = budget // (count + 1)
        return budget - count * interval, interval, count
    firstProbe = math.floor(idle)
    remaining = budget - firstProbe
    count = min(probes, remaining)
    return firstProbe, remaining // count, count


def _validate(deadline: float, idle: float | None, probes: int) -> None:
    """
    Check the arguments of :func:`setKernelLiveness`.

    :raises ValueError: If one of them is out of range.
    """
    if not deadline >= MIN_DEADLINE:
        raise ValueError(f"deadline must be at least {MIN_DEADLINE} seconds, got {deadline!r}")
    if not deadline <= MAX_DEADLINE:
        raise ValueError(f"deadline must be at most {MAX_DEADLINE} seconds, got {deadline!r}")
    if isinstance(probes, bool) or not isinstance(probes, int) or not (1 <= probes <= MAX_PROBES):
        raise ValueError(f"probes must be between 1 and {MAX_PROBES}, got {probes!r}")
    if idle is not None:
        longest = math.floor(deadline) - 1
        if not 1 <= idle < longest + 1:
            raise ValueError(
                f"idle must be between 1 and {longest} seconds"
                f" for a deadline of {deadline!r} seconds, got {idle!r}"
            )


def _setOption(
    sock: socket.socket,
    level: int,
    name: str,
    option: int | None,
    value: int,
    unsupported: list[str],
) -> int | None:
    """
    Set one socket option and read it back.

    :param sock: The socket.
    :param level: ``SOL_SOCKET`` or ``IPPROTO_TCP``.
    :param name: The option's name, for :attr:`KernelLiveness.unsupported`.
    :param option: The option's number, or ``None`` if this platform has no
        such option.
    :param value: The value to set.
    :param unsupported: Where to record the name if the option is missing.
    :returns: The value read back (the value set if it cannot be read), or
        ``None`` if the option is missing.
    :raises OSError: If setting the option fails for another reason than
        its absence.
    """
    if option is None:
        unsupported.append(name)
        return None
    try:
        sock.setsockopt(level, option, value)
    except OSError as error:
        if error.errno in _UNSUPPORTED_ERRNOS:
            unsupported.append(name)
            return None
        raise
    try:
        return sock.getsockopt(level, option)
    except OSError:
        return value


def _socketFromFileno(target: object) -> socket.socket | None:
    """
    Duplicate the descriptor behind an ``IFileDescriptor``.

    :param target: Anything with a ``fileno()`` method.
    :returns: A new socket object on a duplicate of the descriptor, or
        ``None`` if ``target`` has no ``fileno()``.
    :raises ValueError: If the descriptor is already closed.
    """
    fileno = getattr(target, "fileno", None)
    if not callable(fileno):
        return None
    descriptor = fileno()
    if descriptor < 0:
        raise ValueError(_CLOSED_MESSAGE)
    return socket.socket(fileno=socket.dup(descriptor))


@contextmanager
def _socketOf(target: object) -> Iterator[socket.socket]:
    """
    Find the kernel socket behind a socket or a Twisted transport.

    In order:

    1. a :class:`socket.socket` is used as it is;
    2. a transport whose ``getHandle()`` returns a socket (any TCP transport
       of the POSIX reactors) gives that socket;
    3. otherwise, if it has a ``transport`` attribute (a protocol wrapper,
       such as the ``TLSMemoryBIOProtocol`` that ``wrapClientTLS`` and
       ``TLSMemoryBIOFactory`` put between the protocol and TCP, whose
       ``getHandle()`` returns the ``OpenSSL.SSL.Connection``), that
       transport is examined in turn;
    4. last, the descriptor from the innermost transport's ``fileno()`` is
       duplicated (a TCP transport after ``startTLS()``, as made by
       ``connectSSL`` and ``listenSSL``, has its ``getHandle()`` replaced by
       the TLS one). Options set on a duplicate apply to the same socket.

    :param target: A socket or a transport.
    :returns: A context manager giving the socket; a duplicate is closed on
        exit.
    :raises ValueError: If the socket is already closed (for a Twisted
        transport: after ``connectionLost``).
    :raises TypeError: If no socket can be found.
    """
    if isinstance(target, socket.socket):
        if target.fileno() < 0:
            raise ValueError(_CLOSED_MESSAGE)
        yield target
        return
    current = target
    for _ in range(_MAX_WRAPPERS):
        getHandle = getattr(current, "getHandle", None)
        if callable(getHandle):
            try:
                handle = getHandle()
            except AttributeError:
                # A Twisted TCP transport deletes its socket when it is lost.
                handle = None
            if isinstance(handle, socket.socket):
                if handle.fileno() < 0:
                    raise ValueError(_CLOSED_MESSAGE)
                yield handle
                return
        inner = getattr(current, "transport", None)
        if inner is None or inner is current:
            break
        current = inner
    duplicate = _socketFromFileno(current)
    if duplicate is None:
        raise TypeError(f"cannot find a TCP socket behind {target!r}")
    try:
        yield duplicate
    finally:
        duplicate.close()


def setKernelLiveness(
    transport: object,
    deadline: float,
    *,
    idle: float | None = None,
    probes: int = 3,
) -> KernelLiveness:
    """
    Make the kernel fail a connection to a vanished peer near ``deadline``.

    Two kernel mechanisms are set, one for each state of the link:

    - **idle link** (nothing unacknowledged): keepalive. ``SO_KEEPALIVE`` on,
      the first probe after ``idle`` seconds of silence, then ``probes``
      probes ``interval`` seconds apart, with
      ``idle + probes * interval <= deadline``;
    - **data in flight** (sent but unacknowledged, or held back by a zero
      window): ``TCP_USER_TIMEOUT`` = ``deadline`` (in milliseconds).

    Keepalive options are whole seconds, so the keepalive schedule fits
    within ``floor(deadline)``: without ``idle``, the deadline is split into
    ``probes + 1`` equal whole-second steps, any remainder going to ``idle``.
    Each step takes at least one second, so ``probes`` is lowered to fit a
    short deadline (a deadline of 3 s gives 1 s idle, then 2 probes 1 s
    apart); the result says what was set. ``TCP_USER_TIMEOUT`` has
    millisecond resolution and is set to the deadline itself.

    On Linux, ``TCP_USER_TIMEOUT`` also governs keepalive (tcp(7): it "will
    override keepalive"): an idle connection fails at the first probe due
    once nothing has been heard for the deadline, so an idle dead peer is
    found between ``deadline`` and ``deadline + interval``.

    Keepalive cannot find a stopped process on a live host: its kernel
    answers the probes. See the module documentation.

    Options this platform lacks are skipped and listed in
    :attr:`KernelLiveness.unsupported`: macOS has no ``TCP_USER_TIMEOUT``,
    and names its idle option ``TCP_KEEPALIVE`` (used when ``TCP_KEEPIDLE``
    is absent, and not listed). A missing option never raises.

    Twisted transports: any TCP transport works (its ``getHandle()``
    returns the socket). For TLS, pass the protocol's transport: a
    ``TLSMemoryBIOProtocol`` (``wrapClientTLS``, ``tls:`` client endpoint
    strings, ``TLSMemoryBIOFactory``) is followed through its ``transport``
    attribute to the TCP transport under it, and a TCP transport after
    ``startTLS()`` (``connectSSL``, ``listenSSL``, the ``SSL4`` endpoints) is
    reached through its ``fileno()``. Call it from ``connectionMade`` or
    later, before ``connectionLost``.

    :param transport: A connected TCP :class:`socket.socket` or a Twisted
        TCP or TLS transport.
    :param deadline: Seconds after which a silent peer should fail the
        connection; from :data:`MIN_DEADLINE` (2) to :data:`MAX_DEADLINE`
        (32767).
    :param idle: Seconds of silence before the first keepalive probe; from
        1 to ``floor(deadline) - 1``, rounded down to whole seconds. By
        default it is chosen as described above.
    :param probes: The largest number of unanswered keepalive probes before
        the kernel gives up; from 1 to :data:`MAX_PROBES` (127). Lowered
        when the deadline (less ``idle``) leaves under one second per probe.
    :returns: What was set, read back from the socket.
    :raises ValueError: If an argument is out of range (``"deadline must be
        at least 2 seconds, got 0.5"``), if the socket is not a TCP socket,
        or if it is already closed.
    :raises TypeError: If ``transport`` is neither a socket nor a transport
        with a socket behind it.
    """
    _validate(deadline, idle, probes)
    idleSeconds, intervalSeconds, probeCount = _keepaliveSchedule(deadline, idle, probes)
    with _socketOf(transport) as sock:
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or (
            sock.type != socket.SOCK_STREAM
        ):
            family = getattr(sock.family, "name", sock.family)
            kind = getattr(sock.type, "name", sock.type)
            raise ValueError(f"kernel liveness needs a TCP socket, got {family} {kind}")
        unsupported: list[str] = []
        tcp = socket.IPPROTO_TCP
        idleOption = getattr(socket, "TCP_KEEPIDLE", None)
        if idleOption is None:
            idleOption = getattr(socket, "TCP_KEEPALIVE", None)
        setIdle = _setOption(sock, tcp, "TCP_KEEPIDLE", idleOption, idleSeconds, unsupported)
        setInterval = _setOption(
            sock,
            tcp,
            "TCP_KEEPINTVL",
            getattr(socket, "TCP_KEEPINTVL", None),
            intervalSeconds,
            unsupported,
        )
        setProbes = _setOption(
            sock,
            tcp,
            "TCP_KEEPCNT",
            getattr(socket, "TCP_KEEPCNT", None),
            probeCount,
            unsupported,
        )
        setKeepalive = _setOption(
            sock,
            socket.SOL_SOCKET,
            "SO_KEEPALIVE",
            getattr(socket, "SO_KEEPALIVE", None),
            1,
            unsupported,
        )
        setUserTimeout = _setOption(
            sock,
            tcp,
            "TCP_USER_TIMEOUT",
            getattr(socket, "TCP_USER_TIMEOUT", None),
            round(deadline * 1000),
            unsupported,
        )
    return KernelLiveness(
        deadline=deadline,
        keepalive=bool(setKeepalive),
        idle=setIdle,
        interval=setInterval,
        probes=setProbes,
        userTimeout=None if setUserTimeout is None else setUserTimeout / 1000,
        unsupported=tuple(unsupported),
    )


def _readiness(sock: socket.socket) -> tuple[bool, bool]:
    """
    Ask the kernel, without waiting, about a socket's state.

    :param sock: The socket.
    :returns: ``(errorPending, worthReading)``: whether an error is pending
        (``POLLERR``), and whether a read would not block (data, end of
        stream, or hang-up).
    :raises ValueError: If the descriptor is closed (``POLLNVAL``).
    """
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        events = poller.poll(0)
        mask = events[0][1] if events else 0
        if mask & select.POLLNVAL:
            raise ValueError(_CLOSED_MESSAGE)
        return (
            bool(mask & select.POLLERR),
            bool(mask & (select.POLLIN | select.POLLHUP)),
        )
    readable, _, _ = select.select([sock], [], [], 0)
    return False, bool(readable)


def peek(transport: object) -> PeekState:
    """
    Look at a connected socket without reading from it and without waiting.

    ``select.poll`` with a zero timeout says whether an error is pending or a
    read would return at once; only then does ``recv(1, MSG_PEEK |
    MSG_DONTWAIT)`` look at the first byte, which stays in the socket. A
    pending error is recognised from ``POLLERR`` without a system call that
    clears it, so whoever reads the socket next still gets the error (a
    reset that arrives between the two calls is the exception: ``recv``
    reports it and consumes it).

    Caveats:

    - Data buffered ahead of an end of stream or a reset shows as
      :attr:`PeekState.READABLE`; the end shows once the data is read.
    - A stopped, hung or unreachable peer shows as :attr:`PeekState.ALIVE`:
      nothing has arrived to say otherwise. Only a heartbeat, or kernel
      liveness from :func:`setKernelLiveness` failing the connection, finds
      it.
    - A Twisted transport reads as soon as data arrives, so on a transport
      that is reading, ``READABLE`` and ``CLOSED`` are brief; the state is
      stable on a transport paused with ``pauseProducing()`` (for example a
      connection idle in a pool, checked before reuse) or on a socket that
      nothing reads.
    - Under TLS, the bytes are TLS records: ``READABLE`` may be a TLS alert
      or session ticket rather than application data.

    :param transport: A connected stream :class:`socket.socket` or a Twisted
        TCP or TLS transport (found as described in
        :func:`setKernelLiveness`).
    :returns: What the kernel reports for the connection.
    :raises ValueError: If the socket is already closed.
    :raises TypeError: If ``transport`` is neither a socket nor a transport
        with a socket behind it.
    :raises OSError: If the socket is not connected.
    """
    with _socketOf(transport) as sock:
        errorPending, worthReading = _readiness(sock)
        if errorPending:
            return PeekState.RESET
        if not worthReading:
            return PeekState.ALIVE
        # A socket with a timeout would make recv() wait for data first,
        # whatever its flags; a zero timeout keeps the descriptor's own flags.
        timeout = sock.gettimeout()
        if timeout:
            sock.settimeout(0.0)
        try:
            data = sock.recv(1, socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0))
        except BlockingIOError:
            return PeekState.ALIVE
        except OSError as error:
            if error.errno in _RESET_ERRNOS:
                return PeekState.RESET
            raise
        finally:
            if timeout:
                sock.settimeout(timeout)
    return PeekState.READABLE if data else PeekState.CLOSED
