"""
The interface between `HeartbeatMixin` protocols and the factories that
keep sessions for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted_alive._binding import Binding
    from twisted_alive._reasons import Loss
    from twisted_alive.core.delivery import Session


class ISessionHost(Interface):
    """
    A factory that keeps sessions beyond one connection.

    A `HeartbeatMixin` protocol whose ``factory`` provides this interface
    carries that factory's sessions instead of a session of its own.
    """

    role = Attribute("The `Role` its protocols play: CLIENT or SERVER.")

    def connectionStarted(protocol: object) -> None:
        """A connection was made (before the HELLO exchange)."""

    def clientBinding() -> Binding:
        """(Client role.) The `Binding` of the session the next connection
        carries."""

    def bindingFor(session: Session) -> Binding:
        """(Server role.) The `Binding` of a session `sessionFor` gave."""

    def sessionFor(token: bytes, now: float) -> tuple[Session, bool] | None:
        """
        (Server role.) The session a client asked for: ``(session, resumed)``
        for a new (all-zero token) or known token, ``None`` for an unknown or
        expired one.
        """

    def sessionUnknown(protocol: object, detail: str) -> None:
        """(Client role.) The peer did not resume the session."""

    def sessionOpened(protocol: object, resumed: bool) -> None:
        """A connection completed its HELLO exchange and carries a session."""

    def sessionLost(protocol: object, loss: Loss) -> None:
        """A connection that carried a session ended."""


def hostOf(protocol: object) -> Any:
    """The `ISessionHost` that keeps the sessions of ``protocol``: its
    ``factory``, if that provides the interface; else ``None``."""
    factory = getattr(protocol, "factory", None)
    return factory if ISessionHost.providedBy(factory) else None
