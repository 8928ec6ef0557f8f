"""
The HTTP status service of `AliveServerFactory` servers: the operator's page
at ``/`` (for a browser; see `twisted_alive.service.page`), ``/status.json``,
``/health``, ``/connections`` (JSON) and ``/metrics`` (Prometheus text).

`statusSite` builds a ``twisted.web`` site for one or more factories. Every
value is read from the factories when a page is asked for, except the
heartbeat round-trip times and the stalls, which come from the
``twisted_alive`` log events while the site is listening.
"""

from __future__ import annotations

import json
import time
from collections import Counter as CountTotals
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, cast

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString as _floatToGoString
from twisted.internet.interfaces import IReactorTime
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site
from zope.interface import implementer

from twisted_alive._factories import AliveServerFactory
from twisted_alive._interfaces import ISessionStore
from twisted_alive._logs import watchPongs
from twisted_alive._reasons import Reason
from twisted_alive.core.connection import State
from twisted_alive.core.rejections import rejectionsTotal
from twisted_alive.core.stored import COMMIT_BUCKETS
from twisted_alive.service.history import History
from twisted_alive.service.page import (
    htmlHeaders,
    newNonce,
    prefersHtml,
    renderPage,
    statusSnapshot,
)

floatToGoString = cast(Callable[[float], str], _floatToGoString)
"""prometheus_client's spelling of a bucket bound (``le``), typed."""

LOG_NAMESPACE = "twisted_alive"
"""The namespace of the log events this package emits."""

RTT_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Upper bounds, in seconds, of the heartbeat round-trip time histogram."""


def _label(member: State | Reason) -> str:
    """A metric label value for an enum member: ``Reason.CLEAN_CLOSE`` gives
    ``"clean_close"``."""
    return member.name.lower()


class AliveCollector(Collector):
    """
    A Prometheus collector that reads `AliveServerFactory` state at scrape
    time: connections by state, losses by reason, sessions, message
    counters and queue depths; and, for the factories that keep their
    sessions in a store (a ``store`` attribute), the store's sessions,
    outbound messages and commit times (`ISessionStore.statistics`).

    :param factories: the factories to report on; their values are added up.
    """

    def __init__(self, factories: Sequence[AliveServerFactory]) -> None:
        self.factories = factories

    def messageTotals(self) -> CountTotals[str]:
        """
        Messages ``sent``, ``confirmed``, ``redelivered`` and ``processed`` since
        the factories started: live sessions plus the sessions already
        dropped, so that the totals never go backwards.
        """
        totals: CountTotals[str] = CountTotals()
        for factory in self.factories:
            totals.update(factory.endedCounts)
            for session in factory.sessions.values():
                outbox = session.outbox
                totals["sent"] += outbox.sentCount
                totals["confirmed"] += outbox.confirmedCount
                totals["redelivered"] += outbox.redelivered
                totals["processed"] += session.inbox.processedUpTo
        return totals

    def collect(self) -> Iterable[Metric]:
        """The metric families, with their values now."""
        states = dict.fromkeys(State, 0)
        losses = dict.fromkeys(Reason, 0)
        connected = detached = queued = inflight = resumed = expired = takenOver = lostToOthers = 0
        for factory in self.factories:
            for proto in list(factory.connections):
                state = proto.state
                if state is not None:
                    states[state] += 1
            for reason, count in factory.losses.items():
                losses[reason] += count
            for session in factory.sessions.values():
                if not factory.isCarried(session):
                    detached += 1
                else:
                    connected += 1
                queued += len(session.outbox.queue)
                inflight += len(session.outbox.inflight)
            resumed += factory.sessionsResumed
            expired += factory.sessionsExpired
            takenOver += factory.sessionsTakenOver
            lostToOthers += factory.sessionsLostToOthers

        gauge = GaugeMetricFamily(
            "twisted_alive_connections", "Live connections by protocol state.", labels=["state"]
        )
        for state, count in states.items():
            gauge.add_metric([_label(state)], count)
        yield gauge

        counter = CounterMetricFamily(
            "twisted_alive_losses", "Ended connections by loss reason.", labels=["reason"]
        )
        for reason, count in losses.items():
            counter.add_metric([_label(reason)], count)
        yield counter

        gauge = GaugeMetricFamily(
            "twisted_alive_sessions",
            "Sessions kept for resume: with a connection (connected) or waiting "
            "for their client to come back (detached).",
            labels=["state"],
        )
        gauge.add_metric(["connected"], connected)
        gauge.add_metric(["detached"], detached)
        yield gauge
        yield CounterMetricFamily(
            "twisted_alive_sessions_resumed",
            "Sessions resumed by a returning client.",
            value=resumed,
        )
        yield CounterMetricFamily(
            "twisted_alive_sessions_expired",
            "Sessions dropped because their client did not come back in time.",
            value=expired,
        )
        yield CounterMetricFamily(
            "twisted_alive_sessions_taken_over",
            "Sessions resumed here that this process did not hold (a shared store: another "
            "process held them, or none).",
            value=takenOver,
        )
        yield CounterMetricFamily(
            "twisted_alive_sessions_lost_to_others",
            "Sessions another process took over from this one (a shared store).",
            value=lostToOthers,
        )

        totals = self.messageTotals()
        for name, text in (
            ("sent", "Messages sent to clients (first transmissions)."),
            ("confirmed", "Messages the clients confirmed having processed."),
            ("redelivered", "Messages sent again after a client reconnected."),
            ("processed", "Messages from clients handed to the application."),
        ):
            yield CounterMetricFamily(f"twisted_alive_messages_{name}", text, value=totals[name])

        yield CounterMetricFamily(
            "twisted_alive_rejections",
            "Messages the applications of this process failed on (REJECTed), logged or not.",
            value=rejectionsTotal(),
        )

        yield GaugeMetricFamily(
            "twisted_alive_queue_depth",
            "Messages to clients waiting behind the window, not yet sent.",
            value=queued,
        )
        yield GaugeMetricFamily(
            "twisted_alive_messages_in_flight",
            "Messages sent to clients and not yet confirmed.",
            value=inflight,
        )
        yield from self.storeMetrics()

    def stores(self) -> list[ISessionStore]:
        """The session stores of the factories, each once (factories may
        share one)."""
        found: dict[int, ISessionStore] = {}
        for factory in self.factories:
            store = getattr(factory, "store", None)
            if store is not None:
                found.setdefault(id(store), store)
        return list(found.values())

    def storeMetrics(self) -> Iterable[Metric]:
        """The metric families of the session stores, added up; none if no
        factory has a store. A count a store does not know yet (a file not
        opened) is left out."""
        stores = self.stores()
        if not stores:
            return
        figures = [store.statistics() for store in stores]
        buckets = [sum(column) for column in zip(*(f.commitBuckets for f in figures), strict=True)]
        bounds = [floatToGoString(bound) for bound in COMMIT_BUCKETS] + ["+Inf"]
        yield HistogramMetricFamily(
            "twisted_alive_store_commit_seconds",
            "Time of each commit of the session store, from the first operation of its "
            "group to the end of the commit (a store that makes nothing durable times none).",
            buckets=list(zip(bounds, buckets, strict=True)),
            sum_value=sum(f.commitSeconds for f in figures),
        )
        for name, text, values in (
            (
                "twisted_alive_store_outbox_messages",
                "Outbound messages the session store holds, stored and not yet confirmed.",
                [f.outboxMessages for f in figures],
            ),
            (
                "twisted_alive_store_sessions",
                "Sessions the session store holds.",
                [f.sessions for f in figures],
            ),
        ):
            known = [value for value in values if value is not None]
            gauge = GaugeMetricFamily(name, text)
            if known:
                gauge.add_metric([], sum(known))
            yield gauge


@implementer(ILogObserver)
class MetricsObserver:
    """
    A log observer that feeds the heartbeat RTT histogram from ``pong``
    events and counts ``stall`` events of the ``twisted_alive`` namespace.

    :param rtt: the histogram of round-trip times, in seconds.
    :param stalls: the counter of stalls of this process's reactor.
    """

    def __init__(self, rtt: Histogram, stalls: Counter) -> None:
        self.rtt = rtt
        self.stalls = stalls

    def __call__(self, event: LogEvent) -> None:
        """Observe one log event."""
        if event.get("log_namespace") != LOG_NAMESPACE:
            return
        kind = event.get("event")
        if kind == "pong":
            rtt = event.get("rtt")
            if isinstance(rtt, (int, float)):
                self.rtt.observe(rtt)
        elif kind == "stall":
            self.stalls.inc()


class _Request(Protocol):
    """The parts of ``twisted.web.server.Request`` the pages use."""

    method: bytes

    def getHeader(self, key: bytes) -> bytes | None: ...

    def setHeader(self, name: bytes, value: bytes) -> None: ...

    def setResponseCode(self, code: int) -> None: ...


def _reply(request: _Request, contentType: bytes, body: bytes, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", contentType)
    request.setHeader(b"cache-control", b"no-store")
    return body


def _json(request: _Request, value: Any, code: int = 200) -> bytes:
    body = json.dumps(value, indent=1).encode("utf-8") + b"\n"
    return _reply(request, b"application/json", body, code)


def _text(request: _Request, text: str, code: int = 200) -> bytes:
    return _reply(request, b"text/plain; charset=utf-8", text.encode("utf-8"), code)


class _Root(Resource):
    """The root of the status site: its pages, and a 404 for the rest."""

    def getChild(self, path: bytes, request: object) -> IResource:
        return _Missing()  # type: ignore[no-untyped-call]


def _answer(request: _Request, body: bytes) -> bytes:
    """``body`` for a GET; for a HEAD, nothing but its length (so that
    twisted.web does not warn that a HEAD response had a body)."""
    if request.method == b"HEAD":
        request.setHeader(b"content-length", b"%d" % (len(body),))
        return b""
    return body


class _Missing(Resource):
    """Any path that is not a page: 404, for every method."""

    isLeaf = True

    def render(self, request: _Request) -> bytes:
        return _answer(request, _text(request, "no such page\n", 404))


class _Page(Resource):
    """A page of the status site: GET (and HEAD) only."""

    isLeaf = True

    def __init__(self, site: StatusSite) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.site = site

    def render(self, request: _Request) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return _text(request, "only GET and HEAD are allowed\n", 405)
        return _answer(request, self.render_GET(request))

    def render_GET(self, request: _Request) -> bytes:
        raise NotImplementedError


class _Index(_Page):
    def render_GET(self, request: _Request) -> bytes:
        request.setHeader(b"vary", b"accept")
        if prefersHtml(request.getHeader(b"accept")):
            nonce = newNonce()
            for name, value in htmlHeaders(nonce):
                request.setHeader(name, value)
            page = renderPage(statusSnapshot(self.site), nonce)
            return _reply(request, b"text/html; charset=utf-8", page.encode("utf-8"))
        return _text(
            request,
            "twisted_alive status\n"
            "/             this page as HTML, for a browser (Accept: text/html)\n"
            "/status.json  what that page shows (JSON)\n"
            "/health       200 ok (or degraded: why) while serving, 503 while stopping\n"
            "/connections  live connections (JSON)\n"
            "/metrics      Prometheus metrics\n",
        )


class _StatusJSON(_Page):
    def render_GET(self, request: _Request) -> bytes:
        return _json(request, statusSnapshot(self.site))


class _Health(_Page):
    def render_GET(self, request: _Request) -> bytes:
        site = self.site
        serving = site.serving()
        problems = storeProblems(site.factories)
        status = "stopping" if not serving else "degraded" if problems else "ok"
        code = 200 if serving else 503
        if b"application/json" in (request.getHeader(b"accept") or b""):
            connections = sum(len(f.connections) for f in site.factories)
            body = {"status": status, "connections": connections, "problems": problems}
            return _json(request, body, code)
        if status == "degraded":
            return _text(request, "degraded: " + "; ".join(problems) + "\n", code)
        return _text(request, status + "\n", code)


def storeProblems(factories: Sequence[AliveServerFactory]) -> list[str]:
    """What the session stores of ``factories`` say is wrong now (a
    shared store whose server is slow or gone: its ``problem``), once
    each."""
    problems: list[str] = []
    for factory in factories:
        problem = getattr(factory.store, "problem", None)
        if problem is not None and problem not in problems:
            problems.append(problem)
    return problems


class _Connections(_Page):
    def render_GET(self, request: _Request) -> bytes:
        rows = [row for f in self.site.factories for row in f.connectionsInfo()]
        rows.sort(key=lambda row: str(row["peer"]))
        return _json(request, rows)


class _Metrics(_Page):
    def render_GET(self, request: _Request) -> bytes:
        accept = request.getHeader(b"accept") or b""
        encoder, contentType = choose_encoder(accept.decode("latin-1"))
        return _reply(request, contentType.encode("ascii"), encoder(self.site.registry))


class StatusSite(Site):
    """
    The status site of `statusSite`. While it listens, its
    `MetricsObserver` watches the global log publisher.

    :ivar factories: the factories it reports on.
    :ivar registry: its own ``CollectorRegistry`` (never the global one).
    :ivar serving: a callable saying whether the server is serving
        (``/health`` answers 503 once it says ``False``).
    :ivar endpoints: descriptions of where the server listens, for the page.
    :ivar history: the losses and time series of the page; it observes the
        log events and samples once a second while the site listens.
    :ivar startedAt: when the site was made (seconds since the epoch): the
        page's uptime counts from it.
    """

    def __init__(
        self,
        factories: Sequence[AliveServerFactory],
        serving: Callable[[], bool] | None = None,
        endpoints: Sequence[str] = (),
        clock: IReactorTime | None = None,
    ) -> None:
        self.factories = list(factories)
        self.serving: Callable[[], bool] = serving if serving is not None else lambda: True
        self.endpoints = list(endpoints)
        self.startedAt = time.time()
        self.registry = CollectorRegistry(auto_describe=True)
        collector = AliveCollector(self.factories)
        self.registry.register(collector)
        self.history = History(self.factories, collector.messageTotals, clock)
        rtt = Histogram(
            "twisted_alive_heartbeat_rtt_seconds",
            "Heartbeat round-trip times (PING to PONG) of twisted_alive connections.",
            buckets=RTT_BUCKETS,
            registry=self.registry,
        )
        stalls = Counter(
            "twisted_alive_stalls",
            "Times this process's reactor did not run for longer than a heartbeat "
            "timer allowed (the delay is not blamed on peers).",
            registry=self.registry,
        )
        self.observer = MetricsObserver(rtt, stalls)
        root = _Root()  # type: ignore[no-untyped-call]
        root.putChild(b"", _Index(self))
        root.putChild(b"status.json", _StatusJSON(self))
        root.putChild(b"health", _Health(self))
        root.putChild(b"connections", _Connections(self))
        root.putChild(b"metrics", _Metrics(self))
        super().__init__(root)  # type: ignore[no-untyped-call]
        self.displayTracebacks = False

    def startFactory(self) -> None:
        """Start observing the ``twisted_alive`` log events, and sampling."""
        super().startFactory()
        globalLogPublisher.addObserver(self.observer)
        globalLogPublisher.addObserver(self.history)
        self.history.start()
        watchPongs(True)

    def stopFactory(self) -> None:
        """Stop observing the log events, and sampling."""
        watchPongs(False)
        self.history.stop()
        globalLogPublisher.removeObserver(self.history)
        globalLogPublisher.removeObserver(self.observer)
        super().stopFactory()


def statusSite(
    factories: Sequence[AliveServerFactory],
    serving: Callable[[], bool] | None = None,
    endpoints: Sequence[str] = (),
    clock: IReactorTime | None = None,
) -> StatusSite:
    """
    A ``twisted.web`` site that serves the status of ``factories``:

      - ``/``: the operator's page (HTML) for a client whose ``Accept``
        prefers ``text/html`` (a browser), else a plain-text index;
      - ``/status.json``: what the page shows, as JSON;
      - ``/health``: ``200 ok`` while serving, ``200 degraded: PROBLEM``
        while a shared session store is slow or cannot be reached (the
        connections stay up; new messages wait for it), ``503 stopping``
        after; with ``Accept: application/json``, ``{"status": ...,
        "connections": N, "problems": [...]}``;
      - ``/connections``: a JSON list, one object per live connection;
      - ``/metrics``: Prometheus metrics (text format, or OpenMetrics when
        the scraper asks for it).

    Listen on it with any endpoint: C{serverFromString(reactor,
    "tcp:9080").listen(statusSite([factory]))}.

    :param factories: the server factories to report on.
    :param serving: says whether the server is serving; always ``True`` if
        not given.
    :param endpoints: descriptions of where the server listens (shown on
        the page).
    :param clock: the clock of the page's sampler; the global reactor if
        not given.
    :returns: the site.
    """
    return StatusSite(factories, serving, endpoints, clock)


__all__ = ["AliveCollector", "MetricsObserver", "StatusSite", "statusSite", "RTT_BUCKETS"]
