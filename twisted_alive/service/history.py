"""
What the status page remembers: the last losses and a few time series.

`History` is a log observer and a sampler. While the status site listens it
keeps the last `MAX_LOSSES` ``alive.lost`` events of the process (reason,
detail, peer, time; never payloads nor tokens) with counts by `Reason`, and
once a second it samples, into rings of `POINTS` points, the messages
confirmed per second, the round-trip times and the number of connections of
the site's factories. Everything it holds is bounded.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import ILogObserver, LogEvent
from zope.interface import implementer

from twisted_alive._factories import AliveServerFactory, tokenPrefix
from twisted_alive._reasons import Reason
from twisted_alive.core.checks import atLeast

LOG_NAMESPACE = "twisted_alive"
"""The namespace of the log events this package emits."""

MAX_LOSSES = 50
"""How many losses `History` keeps (the newest)."""

POINTS = 300
"""How many samples each time series keeps: five minutes, one a second."""

STEP = 1.0
"""Seconds between two samples."""

MAX_PEER = 100
"""Longest peer description kept, in characters."""

MAX_DETAIL = 300
"""Longest loss detail kept, in characters (a longer one is cut, with …)."""

OTHER_REASON = "UNKNOWN"
"""The reason recorded for a ``lost`` event whose reason is no `Reason`."""


def _cut(value: object, limit: int) -> str:
    """``str(value)``, at most ``limit`` characters (the last one ``…`` if
    it was cut)."""
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


@dataclass(frozen=True)
class LossRecord:
    """
    One ended connection, as the status page shows it.

    :ivar at: when it ended (seconds since the epoch, from the log event).
    :ivar peer: the peer's address.
    :ivar reason: the name of its `Reason`.
    :ivar detail: what was observed (at most `MAX_DETAIL` characters).
    :ivar duration: how long the connection had lasted, in seconds.
    """

    at: float
    peer: str
    reason: str
    detail: str
    duration: float | None

    def toJSON(self) -> dict[str, object]:
        """This record as a JSON-ready dict."""
        return asdict(self)


@implementer(ILogObserver)
class History:
    """
    The last losses and the recent time series of the status page.

    Observe the global log publisher with it and call `start` while the
    status site listens (the site does both), `stop` after.

    :param factories: the factories whose connections are sampled.
    :param totals: gives the message totals of the factories since they
        started (``confirmed``: messages to clients they confirmed,
        ``processed``: messages from clients processed), as
        `AliveCollector.messageTotals` does.
    :param clock: the clock of the sampler; the global reactor if not given
        (resolved by `start`).
    :param points: samples kept per series.
    :param maxLosses: losses kept.
    :ivar losses: the last losses, oldest first.
    :ivar lossCounts: losses seen since the site started, by reason name.
    :ivar times: the clock time of each sample.
    :ivar confirmed: messages to clients confirmed per second, per sample.
    :ivar processed: messages from clients processed (hence confirmed to
        them) per second, per sample.
    :ivar rttMean: the mean of the connections' round-trip times, in
        seconds (``None`` without any), per sample.
    :ivar rttMax: the largest of them, per sample.
    :ivar connections: the number of live connections, per sample.
    """

    def __init__(
        self,
        factories: Sequence[AliveServerFactory],
        totals: Callable[[], Mapping[str, int]],
        clock: IReactorTime | None = None,
        points: int = POINTS,
        maxLosses: int = MAX_LOSSES,
    ) -> None:
        atLeast("points", points, 2)
        atLeast("maxLosses", maxLosses, 1)
        self.factories = factories
        self.totals = totals
        self.clock = clock
        self.losses: deque[LossRecord] = deque(maxlen=maxLosses)
        self.lossCounts: dict[str, int] = {}
        self.times: deque[float] = deque(maxlen=points)
        self.confirmed: deque[float | None] = deque(maxlen=points)
        self.processed: deque[float | None] = deque(maxlen=points)
        self.rttMean: deque[float | None] = deque(maxlen=points)
        self.rttMax: deque[float | None] = deque(maxlen=points)
        self.connections: deque[int] = deque(maxlen=points)
        self._last: tuple[float, int, int] | None = None
        self._loop: LoopingCall | None = None

    # -- losses ----------------------------------------------------------------------

    def __call__(self, event: LogEvent) -> None:
        """Record an ``alive.lost`` event; ignore every other event."""
        if event.get("log_namespace") != LOG_NAMESPACE or event.get("event") != "lost":
            return
        reason = event.get("reason")
        name = reason if isinstance(reason, str) and reason in Reason.__members__ else OTHER_REASON
        at = event.get("log_time")
        duration = event.get("duration")
        record = LossRecord(
            at=float(at) if isinstance(at, (int, float)) else time.time(),
            peer=_cut(event.get("peer") or "-", MAX_PEER),
            reason=name,
            detail=_cut(event.get("detail") or "", MAX_DETAIL),
            duration=float(duration) if isinstance(duration, (int, float)) else None,
        )
        self.losses.append(record)
        self.lossCounts[name] = self.lossCounts.get(name, 0) + 1

    # -- samples ---------------------------------------------------------------------

    def _clock(self) -> IReactorTime:
        if self.clock is None:
            from twisted.internet import reactor

            self.clock = cast(IReactorTime, reactor)
        return self.clock

    def sample(self) -> None:
        """Add one point to every series, from the factories now."""
        now = self._clock().seconds()
        totals = self.totals()
        confirmed = totals.get("confirmed", 0)
        processed = totals.get("processed", 0)
        rtts: list[float] = []
        count = 0
        for factory in self.factories:
            for proto in factory.connections:
                count += 1
                rtt = proto.rtt
                if rtt is not None:
                    rtts.append(rtt)
        last = self._last
        self._last = (now, confirmed, processed)
        if last is None or now <= last[0]:
            confirmedRate = processedRate = None
        else:
            elapsed = now - last[0]
            # A session dropped between two samples takes its counts along
            # (until endedCounts has them): never report a negative rate.
            confirmedRate = max(0, confirmed - last[1]) / elapsed
            processedRate = max(0, processed - last[2]) / elapsed
        self.times.append(now)
        self.confirmed.append(confirmedRate)
        self.processed.append(processedRate)
        self.rttMean.append(sum(rtts) / len(rtts) if rtts else None)
        self.rttMax.append(max(rtts) if rtts else None)
        self.connections.append(count)

    def start(self) -> None:
        """Sample now and then every `STEP` seconds, on the clock."""
        if self._loop is not None:
            return
        loop = self._loop = LoopingCall(self.sample)
        loop.clock = self._clock()
        loop.start(STEP, now=True)

    def stop(self) -> None:
        """Stop sampling (the series are kept)."""
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()

    @property
    def running(self) -> bool:
        """Whether it samples."""
        return self._loop is not None

    def toJSON(self) -> dict[str, Any]:
        """
        The losses (newest first), the counts by reason and the series, as a
        JSON-ready dict; ``now`` is the clock time the series' ``times``
        are measured against, ``span`` the seconds the rings can cover.
        """
        return {
            "losses": [record.toJSON() for record in reversed(self.losses)],
            "lossCounts": dict(sorted(self.lossCounts.items())),
            "series": {
                "now": self._clock().seconds(),
                "step": STEP,
                "span": STEP * (self.times.maxlen or POINTS),
                "times": list(self.times),
                "confirmed": list(self.confirmed),
                "processed": list(self.processed),
                "rttMean": list(self.rttMean),
                "rttMax": list(self.rttMax),
                "connections": list(self.connections),
            },
        }


def connectionRows(factories: Sequence[AliveServerFactory]) -> list[dict[str, object]]:
    """
    One dict per live connection of ``factories``, for the status page:
    ``peer``, ``session`` (the token's prefix only), ``state``,
    ``lastHeard`` and ``deadline`` (seconds), ``rtt`` (seconds or ``None``),
    ``inflight`` (sent, unconfirmed), ``queued`` (not yet sent) and
    ``resumed`` (how many connections resumed the session), sorted by peer.

    :param factories: the factories.
    """
    rows: list[dict[str, object]] = []
    for factory in factories:
        at = factory._now()
        for proto in factory.connections:
            conn = proto._alive
            session = proto.session
            heard = proto.lastHeard
            rows.append(
                {
                    "peer": proto._peer or "-",
                    "session": tokenPrefix(session.token) if session is not None else "-",
                    "state": proto.state.value if proto.state is not None else None,
                    "lastHeard": None if heard is None else max(0.0, at - heard),
                    "deadline": conn.liveness.deadline if conn is not None else None,
                    "rtt": proto.rtt,
                    "inflight": len(session.outbox.inflight) if session is not None else 0,
                    "queued": len(session.outbox.queue) if session is not None else 0,
                    "resumed": session.resumes if session is not None else 0,
                }
            )
    rows.sort(key=lambda row: str(row["peer"]))
    return rows


__all__ = ["History", "LossRecord", "connectionRows", "MAX_LOSSES", "POINTS"]
