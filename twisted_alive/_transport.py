"""
What the adapter needs to know about a Twisted transport: its address, the
bytes it holds unsent, whether its socket may be written directly, and how
to write directly.
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.internet import tcp


def unsentBytes(transport: Any) -> int | None:
    """
    The bytes ``transport`` holds that the kernel has not taken yet: what a
    reactor's TCP connection keeps in its buffers, plus what a TLS
    transport keeps above it; ``None`` for a transport of another kind
    (nothing is known, so nothing is bounded).
    """
    extra = 0
    for _ in range(3):
        if transport is None:
            return None
        buffer = getattr(transport, "dataBuffer", None)
        if buffer is not None and hasattr(transport, "_tempDataLen"):
            return (
                extra
                + len(buffer)
                - int(getattr(transport, "offset", 0))
                + int(transport._tempDataLen)
            )
        pending = getattr(transport, "_appSendBuffer", None)
        if pending:
            extra += sum(map(len, pending))
        transport = getattr(transport, "transport", None)
    return None


def describeAddress(address: Any) -> str | None:
    """``host:port`` for an IPv4/IPv6 address, ``str()`` of anything else."""
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        return f"{host}:{port}"
    return None if address is None else str(address)


def addressPhase(transport: Any) -> float:
    """
    The grid phase (see `Liveness`) of a connection whose roles are not
    known (no session host): half a step at the end whose own address is
    the larger, none at the other; none when the transport cannot tell.
    """
    try:
        host, peer = transport.getHost(), transport.getPeer()
    except Exception:
        return 0.0
    ours = (str(getattr(host, "host", "")), getattr(host, "port", 0))
    theirs = (str(getattr(peer, "host", "")), getattr(peer, "port", 0))
    return 0.5 if ours > theirs else 0.0


def isAccepted(transport: Any) -> bool:
    """Whether ``transport`` (or one it wraps) is a connection that this
    side accepted: a TCP server connection."""
    for _ in range(3):
        if transport is None:
            return False
        if isinstance(transport, tcp.Server):
            return True
        transport = getattr(transport, "transport", None)
    return False


def setNoDelay(transport: Any) -> None:
    """Set ``TCP_NODELAY`` where the transport can."""
    setTcpNoDelay = getattr(transport, "setTcpNoDelay", None)
    if setTcpNoDelay is not None:
        try:
            setTcpNoDelay(True)
        except OSError:
            pass


def pauseReading(transport: Any) -> None:
    """Stop reading from ``transport``, where it can (``pauseProducing``)."""
    pause = getattr(transport, "pauseProducing", None)
    if pause is not None:
        pause()


def resumeReading(transport: Any) -> None:
    """Read from ``transport`` again, where it can (``resumeProducing``)."""
    resume = getattr(transport, "resumeProducing", None)
    if resume is not None:
        resume()


def canWriteThrough(transport: object) -> bool:
    """
    Whether ``transport`` is a reactor's TCP connection, whose socket
    `writeThrough` may write to directly when the transport holds nothing
    unsent.
    """
    return isinstance(transport, tcp.Connection) and all(
        hasattr(transport, name)
        for name in (
            "socket",
            "_tempDataLen",
            "dataBuffer",
            "TLS",
            "_writeDisconnecting",
            "_writeDisconnected",
        )
    )


def writeThrough(transport: Any, data: bytes) -> tuple[bytes, OSError | None]:
    """
    Write what the socket of a TCP ``transport`` (one that `canWriteThrough`)
    takes of ``data`` now, if the transport holds nothing unsent:
    ``transport.write`` would only buffer the bytes and register for
    writability, a wakeup and two ``epoll_ctl`` calls more per write, which
    is most of the cost of a heartbeat or an ACK.

    :returns: what is left to hand to ``transport.write`` (in order), and
        the error of the send, if it failed other than for a full buffer
        (the read side may no longer see it: the caller records it).
    """
    if (
        transport._tempDataLen
        or transport.dataBuffer
        or not transport.connected
        or transport.disconnecting
        or transport.TLS
        or transport._writeDisconnecting
        or transport._writeDisconnected
    ):
        return data, None
    try:
        sent = transport.socket.send(data)
    except BlockingIOError:
        return data, None
    except OSError as e:
        if e.errno == errno.ENOBUFS:
            return data, None
        return data, e
    return data[sent:], None
