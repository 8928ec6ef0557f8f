"""
Helpers for the sans-IO core's tests: they load nothing but
``twisted_alive.core`` (no Twisted), so that the modules using them stay
the core's own tests (``tests/coretests.py``).
"""

from __future__ import annotations

from twisted_alive.core.connection import Connection, Event
from twisted_alive.core.delivery import Session


def fed(conn: Connection, data: bytes, now: float) -> list[Event]:
    """Feed ``data`` to a sans-IO ``conn``; the events it queued (received
    messages stay in the session's inbox)."""
    conn.receiveData(data, now)
    return conn.takeEvents()


def timed(conn: Connection, now: float, scheduledFor: float, queued: float = 0.0) -> list[Event]:
    """Fire ``conn``'s timer (armed for ``scheduledFor``) at ``now``; the
    events it queued."""
    conn.handleTimer(now, scheduledFor, queued)
    return conn.takeEvents()


def accepted(conn: Connection, session: Session, resumed: bool, now: float) -> list[Event]:
    """(Server.) Answer ``conn``'s client HELLO with ``session``; the events
    that queued."""
    conn.acceptSession(session, resumed, now)
    return conn.takeEvents()
