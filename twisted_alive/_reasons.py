"""
Twisted's failures, mapped to a `Reason`: `describeFailure` (the reason, a
sentence and the `Cause` of a failure), built on `classify` and `causeOf`;
`describeSendError` (the sentence of a socket that refused a write); and
back, `failureFor` (the failure a wrapped protocol receives for a
`Loss`). `Reason`, `Cause` and `Loss` themselves are pure data in
``twisted_alive.core.reasons``.

This is the only module that maps ``twisted.internet.error`` types (and the
TLS layer's errors, see `causeOf`) to reasons, and reasons back to them: the
protocol (`HeartbeatMixin.connectionLost`), the client factory, the probe
and the wrapper call `describeFailure` or `failureFor`.
What Twisted reports for each way a TCP connection ends was measured (see
``docs/reasons.md``); the mapping below follows those measurements:

- ``ConnectionDone``: a FIN arrived (or this side called ``loseConnection``).
- ``ConnectionLost``: an RST, a socket error (``ECONNRESET``, ``EPIPE``,
  ``ETIMEDOUT``) or a close with data left unread. Twisted drops the errno.
- ``ConnectionAborted``: this side called ``abortConnection``.

Twisted cannot tell a timeout from a reset, or an orderly shutdown from a
killed process, from the failure alone: the protocol must record its own
intent before it closes (`HeartbeatMixin` does) and only an application
GOODBYE frame proves an orderly close.
"""

from __future__ import annotations

import errno
import sys

from twisted.internet import defer, error
from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure

from twisted_alive.core.reasons import Cause, Loss, Reason

_RESET_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED})
_TIMEOUT_ERRNOS = frozenset({errno.ETIMEDOUT})

_TLS_IN_STREAM = ("unexpected eof", "bad record mac", "decryption failed")
"""OpenSSL reasons that a broken connection gives, not a failed handshake:
a TCP close or reset under TLS, corrupted records. They stay `Reason.RESET`."""

_TLS_MISMATCH = (
    "wrong version number",
    "packet length too long",
    "record layer failure",
    "http request",
    "https proxy request",
    "unknown protocol",
    "record length mismatch",
)
"""OpenSSL reasons for bytes that are no TLS at all: the peer does not speak
TLS (a TLS client at a plain port, a plain client at a TLS port)."""

_TLS_NOT_TRUSTED = ("certificate verify failed",)
_TLS_WE_ARE_NOT_TRUSTED = (
    "unknown ca",
    "bad certificate",
    "certificate unknown",
    "certificate expired",
    "certificate revoked",
    "unsupported certificate",
    "certificate required",
)


def _tlsErrors(exc: BaseException) -> tuple[str, ...] | None:
    """
    The OpenSSL reason strings of a TLS failure (pyOpenSSL's
    ``OpenSSL.SSL.Error``), or ``None`` if ``exc`` is not one. pyOpenSSL is
    not imported here: if it was never imported, no TLS was used.
    """
    ssl = sys.modules.get("OpenSSL.SSL")
    if ssl is None or not isinstance(exc, ssl.Error):
        return None
    reasons: list[str] = []
    stack = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
    for item in stack:
        if isinstance(item, tuple) and item:
            reasons.append(str(item[-1]))
    if not reasons:
        reasons.append(str(exc) or type(exc).__name__)
    return tuple(reasons)


def _hostMismatch(exc: BaseException) -> str | None:
    """
    The names a certificate did not match, if ``exc`` is the
    ``service_identity.VerificationError`` that Twisted's host name check
    reports (``optionsForClientTLS``, ``tls:`` endpoints); else ``None``.
    """
    identity = sys.modules.get("service_identity")
    failed = getattr(identity, "VerificationError", None)
    if failed is None or not isinstance(exc, failed):
        return None
    names = []
    for mismatch in getattr(exc, "errors", ()):
        wanted = getattr(mismatch, "mismatched_id", None)
        name = getattr(wanted, "hostname", None) or getattr(wanted, "ip", None)
        if name is not None:
            names.append(name.decode("ascii", "replace") if isinstance(name, bytes) else str(name))
    return ", ".join(names) or "?"


def causeOf(failure: Failure | BaseException) -> tuple[Cause, str] | None:
    """
    The `Cause` behind a connection failure, with a sentence that says it
    in words, when the failure is a configuration error rather than a
    network fault; ``None`` otherwise.

    A failed TLS handshake is `Cause.TLS` (and `classify` says
    `Reason.CONNECT_FAILED` for it):

    - the peer's certificate is not signed by a trusted authority:
      ``"TLS handshake failed: the peer's certificate is not trusted
      (certificate verify failed)"``;
    - it does not name the host connected to: ``"TLS handshake failed: the
      peer's certificate does not match the host name (NAME)"``;
    - the peer rejected this side's certificate: ``"TLS handshake failed:
      the peer does not accept this side's certificate (tlsv1 alert unknown
      ca)"``;
    - one side does not speak TLS: ``"TLS mismatch: the peer does not speak
      TLS (wrong version number)"``;
    - any other handshake error: ``"TLS handshake failed: REASON"``.

    A TLS error that a broken connection gives (an unexpected EOF, a bad
    record) is no configuration error: ``None``, and `classify` says
    `Reason.RESET`.

    :param failure: a `Failure` or an exception.
    """
    exc = failure.value if isinstance(failure, Failure) else failure
    if not isinstance(exc, BaseException):
        return None
    names = _hostMismatch(exc)
    if names is not None:
        return (
            Cause.TLS,
            f"TLS handshake failed: the peer's certificate does not match the host name ({names})",
        )
    reasons = _tlsErrors(exc)
    if reasons is None:
        return None
    text = "; ".join(reasons)
    lowered = text.lower()
    if any(word in lowered for word in _TLS_IN_STREAM):
        return None
    if any(word in lowered for word in _TLS_MISMATCH):
        return Cause.TLS, f"TLS mismatch: the peer does not speak TLS ({text})"
    if any(word in lowered for word in _TLS_NOT_TRUSTED):
        return Cause.TLS, f"TLS handshake failed: the peer's certificate is not trusted ({text})"
    if any(word in lowered for word in _TLS_WE_ARE_NOT_TRUSTED):
        return (
            Cause.TLS,
            f"TLS handshake failed: the peer does not accept this side's certificate ({text})",
        )
    return Cause.TLS, f"TLS handshake failed: {text}"


def classify(failure: Failure | BaseException) -> Reason:
    """
    Name the reason behind a Twisted connection failure.

    Works on the failure given to any protocol's ``connectionLost``, to a
    factory's ``clientConnectionFailed``/``clientConnectionLost``, and to the
    errback of an endpoint's ``connect()``. It sees only the failure, so it
    cannot know whether this side asked for the close: a ``ConnectionDone``
    is reported as `Reason.PEER_CLOSED`, and only a protocol that records
    its own intent (as `HeartbeatMixin` does) can say `Reason.LOCAL_CLOSE`
    or `Reason.TIMEOUT` for a close it made itself. A failed TLS handshake
    (an untrusted certificate, a host name mismatch, a peer that does not
    speak TLS) is `Reason.CONNECT_FAILED`; `causeOf` says which.

    :param failure: a `Failure` or an exception.
    :returns: the `Reason`.
    """
    exc = failure.value if isinstance(failure, Failure) else failure
    if exc is not None and causeOf(exc) is not None:
        # A failed TLS handshake (see causeOf): a configuration error.
        return Reason.CONNECT_FAILED
    if isinstance(exc, error.ConnectionRefusedError):
        return Reason.REFUSED
    if isinstance(exc, (error.TimeoutError, error.TCPTimedOutError, defer.TimeoutError)):
        # defer.TimeoutError: a connect bounded with Deferred.addTimeout.
        return Reason.CONNECT_TIMEOUT
    if isinstance(exc, (error.ConnectError, error.DNSLookupError)):
        return Reason.CONNECT_FAILED
    if isinstance(exc, error.ConnectionAborted):
        return Reason.LOCAL_CLOSE
    if isinstance(exc, error.ConnectionDone):
        return Reason.PEER_CLOSED
    if isinstance(exc, (CancelledError, error.ConnectingCancelledError)):
        return Reason.LOCAL_CLOSE
    if isinstance(exc, OSError) and exc.errno in _TIMEOUT_ERRNOS:
        return Reason.TIMEOUT
    if isinstance(exc, OSError) and exc.errno in _RESET_ERRNOS:
        return Reason.RESET
    return Reason.RESET


class ConnectionLostWithLoss(error.ConnectionLost):
    """
    A ``ConnectionLost`` that carries the classified `Loss`.

    Given to the ``connectionLost`` of protocols wrapped by
    `AliveWrappingFactory`, so that old code keeps working (it is a
    ``ConnectionLost``) and new code can read ``.loss``.
    """

    def __init__(self, loss: Loss) -> None:
        super().__init__(str(loss))
        self.loss = loss


class ConnectionDoneWithLoss(error.ConnectionDone):
    """
    A ``ConnectionDone`` that carries the classified `Loss` (for clean
    closes seen by protocols wrapped by `AliveWrappingFactory`).
    """

    def __init__(self, loss: Loss) -> None:
        super().__init__(str(loss))
        self.loss = loss


class ConnectionAbortedWithLoss(error.ConnectionAborted):
    """
    A ``ConnectionAborted`` that carries the classified `Loss` (for a
    connection this side aborted, seen by protocols wrapped by
    `AliveWrappingFactory`).
    """

    def __init__(self, loss: Loss) -> None:
        super().__init__(str(loss))
        self.loss = loss




def typeName(failure: Failure) -> str:
    """The name of a failure's exception type."""
    return failure.type.__name__ if failure.type is not None else "Exception"


def describeFailure(
    failure: Failure | BaseException, closedHere: bool = False, *, attempt: bool = False
) -> tuple[Reason, str, Cause | None]:
    """
    The `Reason`, a sentence and the `Cause` (if any) of a connection that
    ended with ``failure`` when the protocol recorded no reason of its own,
    or of a failed connection attempt.

    The sentence is the `causeOf` sentence when there is a cause. Otherwise,
    for the failure a protocol's ``connectionLost`` receives, it describes
    the loss (``"connection reset or socket error (ConnectionLost)"``,
    ``"peer closed the connection without GOODBYE"``...); with ``attempt``,
    for a failed connection attempt or a failure seen from outside the
    protocol (a factory's ``clientConnectionFailed`` and
    ``clientConnectionLost``, an endpoint's ``connect()`` errback), it is the
    failure's own message.

    :param failure: a `Failure` or an exception.
    :param closedHere: whether this side had asked its transport to close
        (``transport.disconnecting``): then a clean ``ConnectionDone`` is
        this side's close, not the peer's.
    :param attempt: give the failure's own message rather than a
        description of a lost connection.
    """
    if not isinstance(failure, Failure):
        failure = Failure(failure)  # type: ignore[no-untyped-call]
    if closedHere and isinstance(failure.value, error.ConnectionDone):
        return Reason.LOCAL_CLOSE, "closed by this side", None
    kind = classify(failure)
    config = causeOf(failure)  # a failed TLS handshake
    if config is not None:
        return kind, config[1], config[0]
    if attempt:
        return kind, failure.getErrorMessage(), None
    if kind is Reason.PEER_CLOSED:
        return kind, "peer closed the connection without GOODBYE", None
    if kind is Reason.RESET:
        if type(failure.value) in (error.ConnectionLost, error.ConnectionDone):
            return kind, f"connection reset or socket error ({typeName(failure)})", None
        # Anything more specific (a TLS error, an OSError) says what it was.
        return (
            kind,
            f"connection reset or socket error ({typeName(failure)}: "
            f"{failure.getErrorMessage()})",
            None,
        )
    if kind is Reason.LOCAL_CLOSE:
        return kind, "aborted by this side", None
    return kind, f"{typeName(failure)}: {failure.getErrorMessage()}", None


def describeSendError(error: OSError) -> str:
    """The sentence of a connection whose socket refused a write with
    ``error`` (the peer reset it, or the socket failed)."""
    return f"connection reset or socket error (send: {error.strerror or error})"


def resetWhileConnecting(failure: Failure | BaseException) -> bool:
    """Whether a connection attempt failed because the peer reset the
    connection as soon as it was made (an ``ECONNRESET`` before the connect
    completed here): something listens, but drops every connection."""
    exc = failure.value if isinstance(failure, Failure) else failure
    return getattr(exc, "osError", None) == errno.ECONNRESET


def failureFor(loss: Loss) -> Failure:
    """
    The failure a wrapped protocol's ``connectionLost`` receives: a
    ``ConnectionDone`` (subclass) for an orderly close by either side, a
    ``ConnectionAborted`` (subclass) when the application aborted, a
    ``ConnectionLost`` (subclass) for everything else; all carry ``.loss``.
    """
    orderly = loss.reason is Reason.CLEAN_CLOSE or (
        loss.reason is Reason.LOCAL_CLOSE
        and loss.failure is not None
        and isinstance(loss.failure.value, error.ConnectionDone)
    )
    if orderly:
        return Failure(ConnectionDoneWithLoss(loss))  # type: ignore[no-untyped-call]
    if (
        loss.reason is Reason.LOCAL_CLOSE
        and loss.failure is not None
        and isinstance(loss.failure.value, error.ConnectionAborted)
    ):
        return Failure(ConnectionAbortedWithLoss(loss))  # type: ignore[no-untyped-call]
    return Failure(ConnectionLostWithLoss(loss))  # type: ignore[no-untyped-call]


__all__ = [
    "Cause",
    "Loss",
    "Reason",
    "causeOf",
    "classify",
    "describeFailure",
    "failureFor",
    "resetWhileConnecting",
    "typeName",
]
