"""
The operator's page in a real headless Chromium, driven by selenium: a
server with its status site runs on this process's reactor, two client
processes connect to it, and the browser watches one of them die.

Chromium and its driver come from the Debian packages ``chromium`` and
``chromium-driver`` (``.ci/services`` installs them); selenium is pointed at
``/usr/bin/chromedriver`` and never downloads anything. A missing browser
fails the test, with how to install it: it is never skipped.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
from support import LOOPBACK, ROOT, Processes, ensureDeferred, getReactor, waitFor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from twisted_alive._factories import AliveServerFactory
from twisted_alive.core.connection import State
from twisted_alive.service.status import statusSite
from twisted_alive.service.tap import EchoProtocol

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL = (
    "run .ci/services (as root it installs them: apt-get install -y "
    "--no-install-recommends chromium chromium-driver)"
)
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,1000",
)
PEER = ROOT / "tests" / "peers" / "alive_peer.py"
INTERVAL = 30.0
"""The heartbeat interval of both ends: long enough that no PING crosses
the links during the test. A process killed with unread bytes in its
socket's receive buffer makes its kernel send an RST (a RESET), not a FIN
(PEER_CLOSED)."""
WAIT = 20.0
"""Seconds the browser may take to show each expected state (the page
refreshes every 2 s)."""


class Echo(EchoProtocol):
    """The echo app with a short heartbeat interval."""

    heartbeatInterval = INTERVAL


def _browser(profile: Path) -> Any:
    """A headless Chromium under selenium, or a test failure saying how to
    install what is missing."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.fail(f"the browser test needs {' and '.join(missing)}: {INSTALL}", pytrace=False)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail(
            "the browser test needs selenium: pip install -e '.[test]' (or pip install selenium)",
            pytrace=False,
        )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


class Page:
    """The page in the browser; every method blocks (run it in a thread)."""

    def __init__(self, driver: Any) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = driver
        self.wait = WebDriverWait(driver, WAIT, poll_frequency=0.1)

    def _rows(self, table: str, *fields: str) -> list[list[str]]:
        # One script reads every row at once: a refresh replaces the rows,
        # so elements found by one call may be gone by the next.
        script = (
            "var fields = arguments[1];"
            "return Array.from(document.querySelectorAll(arguments[0] + ' tr'))"
            ".map(function (r) { return fields.map(function (f) { return r.dataset[f]; }); });"
        )
        return cast(list[list[str]], self.driver.execute_script(script, table, list(fields)))

    def peers(self) -> list[str]:
        """The peers of the connections table's rows, top to bottom."""
        return [peer for (peer,) in self._rows("#connection-rows", "peer")]

    def losses(self) -> list[tuple[str, str]]:
        """The (peer, reason) of the losses table's rows."""
        return [(peer, reason) for peer, reason in self._rows("#loss-rows", "peer", "reason")]

    def updates(self) -> int:
        """How many times the script has refreshed the page."""
        return int(self.driver.execute_script("return document.body.dataset.updates") or 0)

    def until(self, test: Callable[[], object], what: str) -> None:
        """Wait until ``test()`` is true, at most `WAIT` seconds."""
        from selenium.common.exceptions import TimeoutException

        try:
            self.wait.until(lambda _: test())
        except TimeoutException:
            raise AssertionError(
                f"the page did not show {what} in {WAIT:g} s; it shows the connections "
                f"{self.peers()} and the losses {self.losses()}"
            ) from None

    def open(self, url: str, peers: set[str]) -> list[str]:
        """Open ``url``; wait until a refresh shows exactly ``peers``."""
        self.driver.get(url)
        self.until(lambda: self.updates() >= 1 and set(self.peers()) == peers, "both clients")
        return self.peers()

    def sortByPeer(self) -> tuple[list[str], list[str]]:
        """Click the peer column's header twice: the order after each."""
        header = self.driver.find_element("css selector", '#connections th[data-key="peer"]')
        header.click()
        descending = self.peers()
        header.click()
        return descending, self.peers()

    def watchLoss(self, gone: str, reason: str, screenshots: list[Path]) -> None:
        """Wait until ``gone``'s row left and its loss is listed with
        ``reason``; then save a screenshot to each of ``screenshots``."""
        self.until(lambda: gone not in self.peers(), f"the row of {gone} leave")
        self.until(lambda: (gone, reason) in self.losses(), f"a {reason} loss of {gone}")
        first, *others = screenshots
        assert self.driver.save_screenshot(str(first))
        for path in others:
            shutil.copyfile(first, path)

    def errors(self) -> list[str]:
        """What the page logged at SEVERE level (script errors, refused
        requests)."""
        return [e["message"] for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]


def _screenshots(tmp_path: Path) -> list[Path]:
    paths = [tmp_path / "status-page.png"]
    artifacts = os.environ.get("TWISTED_ALIVE_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        paths.append(Path(artifacts) / "status-page.png")
    return paths


async def _inThread(call: Callable[[], Any]) -> Any:
    d: Deferred[Any] = deferToThread(call)
    return await d


@pytest.mark.slow
@pytest.mark.timeout(90)
@ensureDeferred
async def test_pageShowsClientsAndTheLossOfOne(
    tmp_path: Path, processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a real browser the page lists two live clients, sorts them by a
    click on a header, and once one client process is killed (SIGKILL)
    drops its row and lists its loss as PEER_CLOSED."""
    # Given the driver's path, selenium skips Selenium Manager; were it
    # run anyway, it must not download anything.
    monkeypatch.setenv("SE_OFFLINE", "true")
    reactor = getReactor()
    factory = AliveServerFactory()
    factory.protocol = Echo
    server = reactor.listenTCP(0, factory, interface=LOOPBACK)
    serverPort = server.getHost().port
    site = statusSite([factory], endpoints=[f"tcp:{serverPort}:interface={LOOPBACK}"])
    status = reactor.listenTCP(0, site, interface=LOOPBACK)
    url = f"http://{LOOPBACK}:{status.getHost().port}/"
    driver: Any = None
    try:
        clients = [
            processes.spawn(sys.executable, PEER, "client", LOOPBACK, serverPort, INTERVAL, "echo")
            for _ in range(2)
        ]
        await waitFor(
            lambda: [p.state for p in factory.connections] == [State.OPEN] * 2,
            WAIT,
            "two open connections",
        )
        live = {str(p._peer) for p in factory.connections}
        driver = await _inThread(lambda: _browser(tmp_path / "chromium-profile"))
        page = Page(driver)
        shown = await _inThread(lambda: page.open(url, live))
        assert shown == sorted(shown)
        descending, ascending = await _inThread(page.sortByPeer)
        assert descending == sorted(shown, reverse=True)
        assert ascending == sorted(shown)

        clients[0].send_signal(signal.SIGKILL)
        await waitFor(lambda: len(factory.connections) == 1, WAIT, "loss of the killed client")
        [gone] = live - {str(p._peer) for p in factory.connections}
        await _inThread(lambda: page.watchLoss(gone, "PEER_CLOSED", _screenshots(tmp_path)))
        remaining = await _inThread(page.peers)
        assert remaining == [peer for peer in shown if peer != gone]
        assert await _inThread(page.errors) == []
        assert (tmp_path / "status-page.png").stat().st_size > 10_000
    finally:
        if driver is not None:
            await _inThread(driver.quit)
        await status.stopListening()
        await server.stopListening()
        for proto in list(factory.connections):
            proto.abort("the test is over")


def test_missingBrowserFails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Chromium the browser test fails, never skips, and says how
    to install it."""
    missing = tmp_path / "chromium"
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", missing)
    with pytest.raises(pytest.fail.Exception) as caught:
        _browser(tmp_path / "profile")
    assert str(caught.value) == (
        f"the browser test needs {missing}: run .ci/services (as root it installs them: "
        "apt-get install -y --no-install-recommends chromium chromium-driver)"
    )
