"""
Shared test configuration: the Hypothesis profiles, the time limits of
reactor tests, and fixtures (`blackhole`, `processes`).

``HYPOTHESIS_PROFILE`` selects one (``ci`` by default):

- ``ci``: Hypothesis's default number of examples (100, or what a test
  asks for with ``@settings``), no deadline (a loaded CI machine must not
  turn a slow example into a failure), failing examples printed with the
  ``@reproduce_failure`` blob.
- ``long``: at least 20,000 examples for every property and state machine,
  including those that ask for fewer with ``@settings(max_examples=...)``
  (their count is a floor for everyday runs, not a ceiling for a long one).
  Run it now and then, e.g. ``HYPOTHESIS_PROFILE=long pytest
  tests/test_frames.py tests/test_fuzz.py``; whatever it finds becomes a
  regression test.
"""

from __future__ import annotations

import os
import socket
import unittest
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from support import Processes, RedisServer

LONG_EXAMPLES = 20_000

settings.register_profile("ci", deadline=None, print_blob=True)
settings.register_profile(
    "long",
    max_examples=LONG_EXAMPLES,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)


def _atLeast(current: Any) -> settings:
    """C{current} settings with at least the long profile's example count."""
    return settings(
        current,
        max_examples=max(current.max_examples, LONG_EXAMPLES),
        suppress_health_check=[*current.suppress_health_check, HealthCheck.too_slow],
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Bound every test that runs on the reactor; mark ``slow`` the tests
    that share the bench run; under the ``long`` profile, raise every
    Hypothesis test's example count."""
    _boundReactorTests(config, items)
    for item in items:
        # One real ``bench --quick`` run (about 35 s) feeds these tests.
        if "quickRun" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    if PROFILE == "long":
        _raiseExampleCounts(items)


def _boundReactorTests(config: pytest.Config, items: list[pytest.Item]) -> None:
    """
    Give the tests that pytest-twisted runs on the reactor pytest-timeout's
    ``thread`` method, keeping their timeout. The default ``signal`` method
    raises in the main thread, where the reactor runs: Twisted logs the
    exception and goes on, and a hung test would never end. The thread
    method prints every thread's stack and ends the run instead.
    """
    for item in items:
        function = getattr(item, "function", None)
        if getattr(function, "_pytest_twisted_mark", None) is None:
            continue
        mark = item.get_closest_marker("timeout")
        if mark is not None and (mark.args or "timeout" in mark.kwargs):
            seconds = mark.args[0] if mark.args else mark.kwargs["timeout"]
        else:
            seconds = float(config.getini("timeout"))
        item.add_marker(pytest.mark.timeout(seconds, method="thread"), append=False)


def _raiseExampleCounts(items: list[pytest.Item]) -> None:
    """Raise every Hypothesis test's example count to the ``long`` profile's,
    even where ``@settings`` pinned a smaller one."""
    for item in items:
        function = getattr(item, "function", None)
        if getattr(function, "is_hypothesis_test", False):
            current = getattr(function, "_hypothesis_internal_use_settings", None)
            if current is not None:
                function._hypothesis_internal_use_settings = _atLeast(current)  # type: ignore[union-attr]
        cls = getattr(item, "cls", None)
        if (
            cls is not None
            and issubclass(cls, unittest.TestCase)
            and isinstance(getattr(cls, "settings", None), settings)
        ):
            cls.settings = _atLeast(cls.settings)


@pytest.fixture
def blackhole() -> Iterator[int]:
    """
    A loopback port whose accept queue is full (``listen(0)``, filled by
    connections nobody accepts): the kernel drops new SYNs, so a connection
    attempt gets no answer at all.
    """
    listener = socket.socket()
    filling: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(32):
            s = socket.socket()
            s.settimeout(0.3)
            try:
                s.connect(("127.0.0.1", port))
            except OSError:
                s.close()
                break
            filling.append(s)
        else:  # pragma: no cover
            pytest.skip("the loopback accept queue never filled up: no blackhole to connect to")
        yield port
    finally:
        for s in filling:
            s.close()
        listener.close()


@pytest.fixture
def processes() -> Iterator[Processes]:
    """Processes started by the test (`Processes.spawn`, `Processes.startPeer`),
    each in its own session; every group is killed when the test ends."""
    started = Processes()
    try:
        yield started
    finally:
        started.killAll()


@pytest.fixture(scope="session")
def redisServer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A ``redis-server`` of the test run's own, on a free port of
    127.0.0.1, persisting nothing; stopped at the end. The tests share it
    and keep apart by key prefix. Fails (never skips) without a
    ``redis-server``."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()
