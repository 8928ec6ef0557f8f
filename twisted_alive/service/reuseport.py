"""
Several processes on one TCP port: `ReusePortEndpoint` listens with
``SO_REUSEPORT``, so that every process of one user that listens on the
same address and port this way gets a listening socket of its own, and the
kernel spreads the new connections among them (on Linux, by a hash of each
connection's addresses and ports).

The socket is made, bound and put in the listening state here, then handed
to the reactor with ``adoptStreamPort``, which serves it as it serves a
``listenTCP`` port. The twistd plugin's ``--reuse-port`` option serves its
``--listen`` endpoints this way::

    twistd -n alive --listen tcp:9000 --reuse-port --status tcp:9081 ...
"""

from __future__ import annotations

import socket
import sys
from typing import Any, cast

from twisted.internet import defer
from twisted.internet.abstract import isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorSocket,
    IStreamServerEndpoint,
)
from zope.interface import implementer

REUSE_PORT_TYPES = ("tcp", "tcp6")
"""The endpoint types ``--reuse-port`` serves."""


def reusePortProblem() -> str | None:
    """
    Why this platform cannot share a port with ``SO_REUSEPORT``, if it
    cannot.

    :returns: ``None`` where the socket module has ``SO_REUSEPORT`` (Linux
        3.9 and later, the BSDs, macOS), else the reason in one line.
    """
    if getattr(socket, "SO_REUSEPORT", None) is None:
        return f"this platform ({sys.platform}) has no SO_REUSEPORT"
    return None


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    """
    A TCP server endpoint whose listening socket has ``SO_REUSEPORT`` set:
    several processes (of the same user) can listen on the same
    ``interface`` and ``port`` at once, and each new connection goes to
    one of them.

    A process that stops listening takes only its own socket away: the
    connections that arrive after go to the others. (On Linux, those that
    the kernel had already queued on the stopped socket and that the
    process had not accepted are reset.)

    :param reactor: a reactor providing ``IReactorSocket``.
    :param port: the port; a fixed one (with 0, each process would get a
        port of its own).
    :param interface: the address to listen on: ``""`` for every IPv4
        interface, ``"::"`` for every IPv6 one, or an address (an IPv6 one
        makes an IPv6 socket).
    :param backlog: the listen backlog (the kernel caps it at
        ``net.core.somaxconn``); each process has a backlog of its own.
    """

    def __init__(self, reactor: Any, port: int, interface: str = "", backlog: int = 50) -> None:
        self._reactor = reactor
        self._port = port
        self._interface = interface
        self._backlog = backlog

    def __repr__(self) -> str:
        return (
            f"<ReusePortEndpoint port={self._port} interface={self._interface!r} "
            f"backlog={self._backlog}>"
        )

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        """
        Listen with ``SO_REUSEPORT`` and serve ``factory`` on the socket.

        :returns: a Deferred that fires with the listening port, or fails
            with ``CannotListenError`` (the address is taken by a socket
            without ``SO_REUSEPORT`` or by another user's, the platform has
            no ``SO_REUSEPORT``, the reactor cannot adopt sockets).
        """
        return defer.execute(self._listen, factory)

    def _listen(self, factory: IProtocolFactory) -> IListeningPort:
        interface, port = self._interface, self._port
        if not IReactorSocket.providedBy(self._reactor):
            raise _cannotListen(
                interface, port, TypeError(f"{self._reactor!r} cannot adopt a listening socket")
            )
        option = getattr(socket, "SO_REUSEPORT", None)
        if option is None:
            raise _cannotListen(interface, port, OSError(reusePortProblem()))
        family = socket.AF_INET6 if isIPv6Address(interface) else socket.AF_INET
        try:
            address = socket.getaddrinfo(
                interface or None, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
            )[0][4]
            s = socket.socket(family, socket.SOCK_STREAM)
        except OSError as e:
            raise _cannotListen(interface, port, e) from None
        try:
            # As listenTCP does on POSIX: a restarted process binds at once,
            # despite the connections of the previous one in TIME_WAIT.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, option, 1)
            s.bind(address)
            s.listen(self._backlog)
            s.setblocking(False)
            reactor: IReactorSocket = self._reactor
            # The port works on a duplicate of the descriptor: ours is
            # closed below, whatever happens.
            return reactor.adoptStreamPort(s.fileno(), family, cast(Any, factory))
        except OSError as e:
            raise _cannotListen(interface, port, e) from None
        finally:
            s.close()


def _cannotListen(interface: str, port: int, error: BaseException) -> CannotListenError:
    return CannotListenError(interface, port, error)  # type: ignore[no-untyped-call]


__all__ = ["REUSE_PORT_TYPES", "ReusePortEndpoint", "reusePortProblem"]
