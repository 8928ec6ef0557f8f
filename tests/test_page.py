"""
Tests for the operator's page of the status site (L{twisted_alive.service.page})
and what it remembers (L{twisted_alive.service.history}): over real loopback
sockets with C{treq}, and with a C{task.Clock} for the sampler. No browser:
C{tests/test_page_browser.py} drives one.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import treq
from support import (
    LOOPBACK,
    Processes,
    asyncYieldFixture,
    ensureDeferred,
    forProtocol,
    getReactor,
    killGroup,
    startProcess,
    waitFor,
)
from twisted.internet.defer import gatherResults, maybeDeferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from twisted_alive._factories import AliveClientFactory, AliveServerFactory, tokenPrefix
from twisted_alive._mixin import HeartbeatMixin, HeartbeatProtocol
from twisted_alive.service.history import MAX_DETAIL, MAX_LOSSES, POINTS, History
from twisted_alive.service.page import _SCRIPT, prefersHtml, renderPage
from twisted_alive.service.status import AliveCollector, StatusSite, statusSite
from twisted_alive.service.tap import EchoProtocol

INTERVAL = 0.2
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
SECRET_PAYLOAD = b"payload-that-must-never-show"

log = Logger(namespace="twisted_alive")

ROW_KEYS = {
    "peer", "session", "state", "lastHeard", "deadline", "rtt", "inflight", "queued", "resumed",
}
LOSS_KEYS = {"at", "peer", "reason", "detail", "duration"}
SERIES_KEYS = {
    "now", "step", "span", "times", "confirmed", "processed", "rttMean", "rttMax", "connections",
}
TOP_KEYS = {
    "process", "endpoints", "store", "serving", "connections", "losses", "lossCounts", "series",
}


class FastEcho(EchoProtocol):
    """The echo app with a short heartbeat interval."""

    heartbeatInterval = INTERVAL


class Quiet(HeartbeatProtocol):
    """A client that ignores what it receives."""

    heartbeatInterval = INTERVAL

    def messageReceived(self, payload: bytes) -> None:
        pass


class Served:
    """A server and its status site on 127.0.0.1, with clients; `stop`
    closes them all."""

    def __init__(self) -> None:
        self.factory = AliveServerFactory()
        self.factory.protocol = FastEcho
        self.site = statusSite([self.factory], endpoints=["tcp:0:interface=127.0.0.1"])
        self.ports: list[IListeningPort] = []
        self.clients: list[AliveClientFactory] = []

    async def start(self) -> None:
        reactor = getReactor()
        self.ports.append(reactor.listenTCP(0, self.factory, interface=LOOPBACK))
        self.ports.append(reactor.listenTCP(0, self.site, interface=LOOPBACK))

    async def client(self) -> tuple[AliveClientFactory, HeartbeatMixin]:
        factory = forProtocol(AliveClientFactory, Quiet)
        self.clients.append(factory)
        getReactor().connectTCP(LOOPBACK, self.ports[0].getHost().port, factory)  # type: ignore[attr-defined]
        proto = await factory.whenConnected().addTimeout(5, getReactor())
        return factory, proto

    async def get(self, path: str, accept: str | None = None) -> Any:
        port = self.ports[1].getHost().port  # type: ignore[attr-defined]
        headers: dict[str | bytes, str | bytes] = {} if accept is None else {"Accept": accept}
        return await treq.get(
            f"http://{LOOPBACK}:{port}{path}", headers=headers, persistent=False, timeout=5
        )

    async def page(self) -> str:
        response = await self.get("/", BROWSER_ACCEPT)
        assert response.code == 200
        return cast(str, (await response.content()).decode("utf-8"))

    async def status(self) -> Any:
        response = await self.get("/status.json")
        assert response.code == 200
        return await response.json()

    async def stop(self) -> None:
        for client in self.clients:
            client.stopTrying()
            if client.connected is not None:
                client.connected.abort("the test is over")
        await gatherResults([maybeDeferred(p.stopListening) for p in self.ports])


@asyncYieldFixture
async def served() -> AsyncIterator[Served]:
    """A started L{Served}, stopped at the end."""
    s = Served()
    await s.start()
    yield s
    await s.stop()


# -- content negotiation ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        (BROWSER_ACCEPT, True),
        ("text/html", True),
        ("application/xhtml+xml", True),
        ("text/html;q=0.5, text/plain", False),
        ("text/plain, text/html", True),
        ("text/html;q=0", False),
        ("text/html;q=oops", False),
        ("*/*", False),
        ("text/plain", False),
        ("application/json", False),
        ("", False),
        (None, False),
    ],
)
def test_prefersHtml(accept: str | None, html: bool) -> None:
    """HTML goes to a client that names text/html before text/plain, the
    plain index to curl (*/*), to a missing header and to the rest."""
    assert prefersHtml(None if accept is None else accept.encode("latin-1")) is html


@pytest.mark.timeout(20)
@ensureDeferred
async def test_pageForBrowser(served: Served) -> None:
    """/ answers a browser with the HTML page: the connections table with a
    row per client, the script, the plots, a strict CSP, and no URL that
    leaves the site."""
    await served.client()
    await served.client()
    response = await served.get("/", BROWSER_ACCEPT)
    assert response.code == 200
    headers = response.headers
    assert headers.getRawHeaders(b"content-type") == [b"text/html; charset=utf-8"]
    assert headers.getRawHeaders(b"vary") == [b"accept"]
    [policy] = headers.getRawHeaders(b"content-security-policy")
    assert policy.startswith(b"default-src 'none'; script-src 'nonce-")
    assert b"connect-src 'self'" in policy
    page = (await response.content()).decode("utf-8")
    assert '<table id="connections">' in page
    assert page.count("<tr data-peer=") == 2
    for proto in served.factory.connections:
        assert f'data-peer="{proto._peer}"' in page
    assert '<table id="losses">' in page
    assert page.count("<svg viewBox=\"0 0 320 90\"") == 3
    nonce = re.search(r"script-src 'nonce-([^']+)'", policy.decode("ascii"))
    assert nonce is not None
    assert f'<script nonce="{nonce.group(1)}">' in page
    assert 'fetch("status.json"' in page
    # Nothing from elsewhere: no absolute URL, no external script or sheet.
    assert re.findall(r"https?:|//[a-z]", page) == []
    assert re.findall(r"<script[^>]*\bsrc=", page) == []
    assert re.findall(r'(?:href|src|action)="([^"]*)"', page) == [
        "data:,",
        "status.json",
        "connections",
        "metrics",
        "health",
    ]


@pytest.mark.timeout(20)
@ensureDeferred
async def test_plainIndexForCurl(served: Served) -> None:
    """/ answers curl (*/*) and a client without Accept with the plain-text
    index, which names the page and status.json."""
    for accept in ("*/*", None, "text/plain"):
        response = await served.get("/", accept)
        assert response.code == 200
        assert response.headers.getRawHeaders(b"content-type") == [b"text/plain; charset=utf-8"]
        text = (await response.content()).decode("utf-8")
        assert text.startswith("twisted_alive status\n")
        assert "/status.json  " in text
        assert "<" not in text


@pytest.mark.timeout(20)
@ensureDeferred
async def test_statusJsonHasWhatThePageUses(served: Served) -> None:
    """status.json has every field the page's script reads: the process,
    one row per connection (session prefix, deadline, RTT, counts), the
    losses with their Reason and the series."""
    first, _ = await served.client()
    second, secondProto = await served.client()
    await first.sendMessage(b"hello").addTimeout(5, getReactor())
    second.stopTrying()
    secondProto.abort("the test drops it")
    await waitFor(lambda: _settled(served))
    state = await served.status()
    assert set(state) == TOP_KEYS
    assert set(state["process"]) == {"pid", "hostname", "version", "uptime"}
    assert state["endpoints"] == ["tcp:0:interface=127.0.0.1"]
    assert state["store"] == {"kind": "memory", "health": "ok"}
    assert state["serving"] is True
    [row] = state["connections"]
    assert set(row) == ROW_KEYS
    assert row["session"] == tokenPrefix(first.session.token)
    assert row["state"] == "open"
    assert row["deadline"] == pytest.approx(INTERVAL * FastEcho.heartbeatMisses)
    assert 0 <= row["lastHeard"] < row["deadline"]
    assert (row["inflight"], row["queued"], row["resumed"]) == (0, 0, 0)
    assert state["losses"], "the aborted client's loss is listed"
    assert all(set(loss) == LOSS_KEYS for loss in state["losses"])
    serverSide = [loss for loss in state["losses"] if loss["reason"] == "RESET"]
    assert serverSide and serverSide[0]["detail"]
    assert state["lossCounts"]["RESET"] >= 1
    series = state["series"]
    assert set(series) == SERIES_KEYS
    assert series["span"] == POINTS * series["step"]
    lengths = {len(series[key]) for key in SERIES_KEYS - {"now", "step", "span"}}
    assert len(lengths) == 1 and lengths != {0}

    # The script reads nothing that is not there.
    assert set(re.findall(r"\bs\.(\w+)", _SCRIPT)) <= TOP_KEYS
    assert set(re.findall(r"\bs\.process\.(\w+)", _SCRIPT)) <= set(state["process"])
    assert set(re.findall(r"\br\.(\w+)", _SCRIPT)) - {"ok", "status", "json"} <= ROW_KEYS
    assert set(re.findall(r"\bl\.(\w+)", _SCRIPT)) <= LOSS_KEYS
    assert set(re.findall(r"\bseries\.(\w+)", _SCRIPT)) <= SERIES_KEYS
    plotted = re.findall(r'\["plot-\w+", \[([^\]]*)\]', _SCRIPT)
    assert len(plotted) == 3
    assert {k.strip(' "') for keys in plotted for k in keys.split(",")} <= SERIES_KEYS


async def _settled(served: Served) -> bool:
    state = await served.status()
    return len(state["connections"]) == 1 and any(
        loss["reason"] == "RESET" for loss in state["losses"]
    )


@pytest.mark.timeout(20)
@ensureDeferred
async def test_nothingSensitive(served: Served) -> None:
    """Neither the page nor status.json shows a whole session token or a
    payload: only the token's prefix."""
    client, _ = await served.client()
    await client.sendMessage(SECRET_PAYLOAD).addTimeout(5, getReactor())
    token = client.session.token.hex()
    for text in (await served.page(), json.dumps(await served.status())):
        assert tokenPrefix(client.session.token) in text
        assert token not in text
        assert SECRET_PAYLOAD.decode("ascii") not in text


@pytest.mark.timeout(20)
@ensureDeferred
async def test_valuesAreEscaped(served: Served) -> None:
    """A loss whose peer and detail hold markup shows on the page as text,
    escaped: no tag of theirs reaches the HTML."""
    log.info(
        "alive.lost: {peer} {reason}: {detail}",
        peer='<script>alert("peer")</script>',
        reason="TIMEOUT",
        detail="<img src=x onerror=alert(1)> & 'quotes'",
        duration=1.5,
        event="lost",
    )
    page = await served.page()
    assert "<script>alert" not in page
    assert "<img src=x" not in page
    assert 'data-peer="&lt;script&gt;alert(&quot;peer&quot;)&lt;/script&gt;"' in page
    assert "&lt;img src=x onerror=alert(1)&gt; &amp; &#x27;quotes&#x27;" in page
    state = await served.status()
    assert state["losses"][0]["peer"] == '<script>alert("peer")</script>'


def test_renderEscapesEveryValue() -> None:
    """renderPage escapes markup in every value it is given: host name,
    version, endpoints, connection rows, losses and reason counts."""
    evil = "<b>x</b>"
    state = {
        "process": {"pid": 1, "hostname": evil, "version": evil, "uptime": 5.0},
        "endpoints": [evil],
        "store": {"kind": evil, "health": evil},
        "serving": True,
        "connections": [
            {
                "peer": evil, "session": evil, "state": evil, "lastHeard": 0.5, "deadline": 3.0,
                "rtt": None, "inflight": 0, "queued": 0, "resumed": 0,
            }
        ],
        "losses": [{"at": 0.0, "peer": evil, "reason": evil, "detail": evil, "duration": None}],
        "lossCounts": {evil: 1},
        "series": {
            "now": 10.0, "step": 1.0, "span": 300.0, "times": [9.0, 10.0],
            "confirmed": [None, 1.0], "processed": [None, 2.0], "rttMean": [None, None],
            "rttMax": [None, None], "connections": [1, 1],
        },
    }
    page = renderPage(state, "nonce")
    assert "<b>" not in page
    # title, host, version, endpoints, store (2), row (peer twice, session,
    # state), loss (reason and peer twice, detail), count (reason twice).
    assert page.count("&lt;b&gt;x&lt;/b&gt;") == 17


# -- the recorder -----------------------------------------------------------------------


def _lost(number: int, reason: str = "PEER_CLOSED", detail: str = "gone") -> dict[str, Any]:
    return {
        "log_namespace": "twisted_alive",
        "log_time": 1000.0 + number,
        "event": "lost",
        "peer": f"127.0.0.1:{number}",
        "reason": reason,
        "detail": detail,
        "duration": 2.0,
    }


def _history(clock: Clock | None = None, totals: dict[str, int] | None = None) -> History:
    factory = AliveServerFactory()
    counts = totals if totals is not None else {}
    return History([factory], lambda: counts, clock or Clock())


def test_lossesBounded() -> None:
    """The recorder keeps the newest 50 losses (newest first in its JSON)
    and counts every one by reason."""
    history = _history()
    for number in range(120):
        history(_lost(number, "TIMEOUT" if number % 3 else "RESET"))
    assert len(history.losses) == MAX_LOSSES
    losses = history.toJSON()["losses"]
    assert [loss["peer"] for loss in losses] == [f"127.0.0.1:{n}" for n in range(119, 69, -1)]
    assert history.lossCounts == {"RESET": 40, "TIMEOUT": 80}


def test_lossFieldsBounded() -> None:
    """A loss's detail is cut to its bound, and a reason that is no Reason
    is counted as UNKNOWN (the counts stay as few as the reasons)."""
    history = _history()
    history(_lost(1, detail="x" * 10_000))
    assert len(history.losses[0].detail) == MAX_DETAIL
    assert history.losses[0].detail.endswith("\u2026")
    for number in range(100):
        history(_lost(number, reason=f"MADE_UP_{number}"))
    assert history.lossCounts == {"PEER_CLOSED": 1, "UNKNOWN": 100}


def test_otherEventsIgnored() -> None:
    """Only twisted_alive's lost events are recorded."""
    history = _history()
    history({**_lost(1), "log_namespace": "elsewhere"})
    history({**_lost(2), "event": "connected"})
    history({"log_namespace": "twisted_alive", "log_format": "hello"})
    assert list(history.losses) == []


def test_ringsBounded() -> None:
    """Sampling once a second on the clock for 20 minutes keeps the last
    300 points of every series."""
    clock = Clock()
    history = _history(clock)
    history.start()
    clock.pump([1.0] * 1200)
    history.stop()
    series = history.toJSON()["series"]
    for key in SERIES_KEYS - {"now", "step", "span"}:
        assert len(series[key]) == POINTS
    assert series["times"][0] == 1200 - POINTS + 1
    assert series["times"][-1] == 1200
    clock.advance(10)
    assert len(history.times) == POINTS and history.times[-1] == 1200


def test_samplesRatesRttAndCount() -> None:
    """A sample holds the messages confirmed per second since the last one
    (never negative), the mean and largest RTT and the connection count."""
    clock = Clock()
    totals = {"confirmed": 0, "processed": 0}
    history = _history(clock, totals)
    factory = history.factories[0]

    class Live:
        def __init__(self, rtt: float | None) -> None:
            self.rtt = rtt

    factory.connections.update(cast(Any, [Live(0.002), Live(0.004), Live(None)]))
    history.sample()
    clock.advance(2)
    totals.update(confirmed=30, processed=10)
    history.sample()
    clock.advance(1)
    totals.update(confirmed=20)
    history.sample()
    assert list(history.confirmed) == [None, 15.0, 0.0]
    assert list(history.processed) == [None, 5.0, 0.0]
    assert list(history.rttMean) == [pytest.approx(0.003)] * 3
    assert list(history.rttMax) == [0.004] * 3
    assert list(history.connections) == [3, 3, 3]
    factory.connections.clear()
    history.sample()
    assert (history.rttMean[-1], history.rttMax[-1], history.connections[-1]) == (None, None, 0)


def test_sitesSamplerRunsWhileListening() -> None:
    """The site samples on its own clock from its start to its stop, and
    records losses only meanwhile."""
    clock = Clock()
    factory = AliveServerFactory()
    site = statusSite([factory], clock=clock)
    assert isinstance(site, StatusSite)
    site.doStart()  # type: ignore[no-untyped-call]
    try:
        clock.pump([1.0] * 5)
        assert len(site.history.times) == 6
        log.info("lost", event="lost", peer="127.0.0.1:1", reason="TIMEOUT", detail="d")
        assert len(site.history.losses) == 1
    finally:
        site.doStop()  # type: ignore[no-untyped-call]
    clock.advance(5)
    log.info("lost", event="lost", peer="127.0.0.1:2", reason="TIMEOUT", detail="d")
    assert len(site.history.times) == 6
    assert len(site.history.losses) == 1
    assert not clock.getDelayedCalls()


def test_historyRatesFromCollector() -> None:
    """The site's history reads the message totals its collector reports."""
    factory = AliveServerFactory()
    factory.endedCounts.update(confirmed=7, processed=3)
    clock = Clock()
    history = History([factory], AliveCollector([factory]).messageTotals, clock)
    history.sample()
    factory.endedCounts.update(confirmed=4)
    clock.advance(2)
    history.sample()
    assert list(history.confirmed) == [None, 2.0]
    assert list(history.processed) == [None, 0.0]


def test_badBounds() -> None:
    """A history too small to draw or to keep a loss is refused, with a
    message naming the bound."""
    with pytest.raises(ValueError, match=r"^points must be at least 2, got 1$"):
        History([], dict, Clock(), points=1)
    with pytest.raises(ValueError, match=r"^maxLosses must be at least 1, got 0$"):
        History([], dict, Clock(), maxLosses=0)


# -- the demo's status page -------------------------------------------------------------


async def _line(process: subprocess.Popen[str], starting: str) -> str:
    """The next line of ``process``'s output that starts with ``starting``
    (after the timeline's time column)."""
    assert process.stdout is not None
    seen: list[str] = []
    while True:
        line: str = await deferToThread(process.stdout.readline)
        assert line, f"the demo ended before printing {starting!r}:\n{''.join(seen)}"
        seen.append(line)
        text = re.sub(r"^\s*[\d.]+ s\s+", "", line)
        if text.startswith(starting):
            return text


@pytest.mark.slow
@pytest.mark.timeout(60)
@ensureDeferred
async def test_demoServesThePage(processes: Processes) -> None:
    """demo --status PORT prints the page's URL, serves it while it runs,
    keeps it up after the summary with every kind of loss listed, and
    exits with the steps' code on Ctrl-C."""
    demo = processes.spawn(
        sys.executable, "-m", "twisted_alive", "demo", "--fast", "--seed", "5", "--status", "0"
    )
    announced = await _line(demo, "status page: ")
    match = re.fullmatch(r"status page: (http://127\.0\.0\.1:\d+/) \(open it in a browser\)\n",
                         announced)
    assert match is not None, announced
    url = match.group(1)
    await _line(demo, "The status page stays up; press Ctrl-C to end.")
    accept: dict[str | bytes, str | bytes] = {"Accept": BROWSER_ACCEPT}
    response = await treq.get(url, headers=accept, persistent=False, timeout=5)
    assert response.code == 200
    page = (await response.content()).decode("utf-8")
    for reason in ("CLEAN_CLOSE", "RESET", "TIMEOUT", "PEER_CLOSED"):
        assert f'<tr data-reason="{reason}"' in page, reason
    demo.send_signal(signal.SIGINT)
    code = await deferToThread(demo.wait, 10)
    assert code == 0


def _demoFails(status: str) -> tuple[int, str]:
    process = startProcess(sys.executable, "-m", "twisted_alive", "demo", "--status", status)
    try:
        output, _ = process.communicate(timeout=30)
    finally:
        killGroup(process)
    return process.returncode, output


def test_demoBadStatusEndpoint() -> None:
    """demo --status with an endpoint it cannot read exits 2 with a one-line
    message naming it, before starting anything."""
    assert _demoFails("99999") == (
        2,
        'twisted-alive demo: invalid --status endpoint "99999": port 99999 is out of range '
        "(0 to 65535)\n",
    )


def test_demoStatusPortTaken() -> None:
    """demo --status on a port already taken exits 1 with a one-line message
    naming it, before starting anything."""
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert _demoFails(str(port)) == (
            1,
            f'twisted-alive demo: cannot listen on "{port}": Couldn\'t listen on '
            f"{LOOPBACK}:{port}: [Errno 98] Address already in use.\n",
        )
