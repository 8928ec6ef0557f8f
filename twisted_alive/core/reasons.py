"""
Why a connection ended, in words the application can act on: `Reason`,
`Cause` and `Loss`. Pure data: the Twisted adapter (``twisted_alive._reasons``)
maps Twisted's failures to them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from twisted_alive.core.frames import GoodbyeCode


class Reason(enum.Enum):
    """
    Why a connection ended, or why a connection attempt failed.
    """

    CLEAN_CLOSE = "clean close"
    """The peer announced an orderly close with a GOODBYE frame."""

    PEER_CLOSED = "peer closed"
    """A FIN without a GOODBYE: the peer process crashed or was killed, or
    the peer does not speak the framing."""

    RESET = "reset"
    """An RST or a socket error: the peer aborted, its host rebooted, or a
    middlebox killed the connection."""

    TIMEOUT = "timeout"
    """Nothing arrived from the peer within the heartbeat deadline: the peer
    is stopped, its host is gone, or the network is partitioned."""

    REFUSED = "refused"
    """A connection attempt was refused: nothing listens there."""

    CONNECT_TIMEOUT = "connect timeout"
    """A connection attempt got no answer in time."""

    CONNECT_FAILED = "connect failed"
    """A connection attempt failed another way (name lookup, no route...)."""

    LOCAL_CLOSE = "local close"
    """This side closed or aborted the connection."""

    PROTOCOL_ERROR = "protocol error"
    """The peer broke the wire protocol (or this side received a GOODBYE
    saying that it did)."""


class Cause(enum.Enum):
    """
    What lies behind a loss when its `Reason` alone would mislead: a
    configuration error rather than a network fault. A client factory does
    not retry these by default (``AliveClientFactory.causePolicy``):
    reconnecting would meet the same error again.
    """

    NOT_ALIVE_PEER = "not a twisted_alive peer"
    """The peer does not speak twisted_alive: its first bytes were no HELLO
    (a banner, HTTP, another protocol), or it echoed our own HELLO back.
    The `Reason` is `Reason.PROTOCOL_ERROR`."""

    TLS = "tls"
    """The TLS handshake failed: the peer's certificate was not trusted or
    did not name the host, or one side does not speak TLS. The `Reason` is
    `Reason.CONNECT_FAILED`."""


@dataclass(frozen=True)
class Loss:
    """
    One ended connection, or one failed connection attempt, classified.

    :ivar reason: the `Reason`.
    :ivar detail: a sentence for humans and logs.
    :ivar failure: the failure Twisted reported (a ``twisted.python.failure.Failure``), if any.
    :ivar goodbye: the GOODBYE code the peer sent, if it sent one.
    :ivar peer: the peer's address as text (``"127.0.0.1:9000"``), if known.
    :ivar connectedFor: seconds between connection and loss, if it connected.
    :ivar unconfirmed: how many sent messages were not confirmed at the loss.
    :ivar cause: a `Cause` when the loss is a configuration error rather
        than a network fault (``None`` otherwise).
    """

    reason: Reason
    detail: str = ""
    failure: Any = field(default=None, compare=False, repr=False)
    goodbye: GoodbyeCode | None = None
    peer: str | None = None
    connectedFor: float | None = None
    unconfirmed: int = 0
    cause: Cause | None = None

    def __str__(self) -> str:
        text = self.reason.name
        if self.detail:
            text += ": " + self.detail
        return text
