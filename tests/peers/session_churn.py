"""
HELLO-then-disconnect churn against an `AliveServerFactory` holding many
sessions: how much each new session costs the server.

Usage::

    session_churn.py sockets SESSIONS [--seconds S] [--unknown]
    session_churn.py table SESSIONS [--cycles N]
    session_churn.py serve SESSIONS
    session_churn.py crowd SESSIONS [--churners C] [--seconds S]

``sockets`` starts ``serve`` in a child process (a server on a free
loopback port whose table holds SESSIONS sessions without connection),
then opens connections one after the other for S seconds, each sending a
HELLO without session, reading the server's HELLO back and closing; it
prints the cycles per second and the server's CPU use (from
``/proc/PID/stat``); with ``--unknown`` each HELLO asks for a session the
server does not know, so none is created. ``table`` measures the bookkeeping alone, without
sockets: the factory's ``sessionFor`` (a new session) then ``sessionLost``
(its connection ended) for N cycles; it prints the median cost per cycle.
``crowd`` runs C churning processes against such a server for S seconds
and meanwhile times another client's HELLO round trip every 50 ms.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

from twisted.internet.task import Clock

from twisted_alive._factories import AliveServerFactory
from twisted_alive._reasons import Loss, Reason
from twisted_alive.core.frames import (
    DEFAULT_MAX_FRAME_SIZE,
    NO_SESSION,
    PROTOCOL_VERSION,
    Hello,
    encode,
)

HELLO = encode(Hello(PROTOCOL_VERSION, 0, 5.0, DEFAULT_MAX_FRAME_SIZE, 1024, 1, NO_SESSION, 1))
UNKNOWN = encode(
    Hello(PROTOCOL_VERSION, 0, 5.0, DEFAULT_MAX_FRAME_SIZE, 1024, 1, b"\x01" * 16, 1)
)
"""A HELLO asking for a session the server does not know: no session is
created (the server answers GOODBYE)."""


class Connection:
    """Stands for the protocol of one connection (what ``sessionLost`` reads)."""

    def __init__(self, session: Any) -> None:
        self.session = session


def fill(factory: AliveServerFactory, sessions: int, now: float) -> None:
    """Give ``factory`` ``sessions`` sessions whose connections have ended."""
    factory.maxSessions = max(factory.maxSessions, sessions)
    loss = Loss(Reason.PEER_CLOSED)
    for _ in range(sessions):
        found = factory.sessionFor(NO_SESSION, now)
        assert found is not None
        factory.sessionLost(Connection(found[0]), loss)


def table(sessions: int, cycles: int) -> None:
    """The bookkeeping cost per cycle, without sockets."""
    clock = Clock()
    clock.advance(1000.0)
    factory = AliveServerFactory()
    factory.clock = clock
    fill(factory, sessions, clock.seconds())
    loss = Loss(Reason.PEER_CLOSED)
    costs = []
    for _ in range(cycles):
        clock.advance(0.001)
        start = time.perf_counter()
        found = factory.sessionFor(NO_SESSION, clock.seconds())
        assert found is not None
        factory.sessionLost(Connection(found[0]), loss)
        costs.append(time.perf_counter() - start)
    print(
        f"table sessions={sessions} cycles={cycles} "
        f"median={statistics.median(costs) * 1e6:.1f} us/cycle "
        f"mean={statistics.fmean(costs) * 1e6:.1f} us/cycle "
        f"table={len(factory.sessions)}",
        flush=True,
    )


def serve(sessions: int) -> None:
    """A server holding ``sessions`` sessions, on a free loopback port."""
    from twisted.internet import reactor as installed

    reactor: Any = installed
    factory = AliveServerFactory()
    fill(factory, sessions, reactor.seconds())
    port = reactor.listenTCP(0, factory, backlog=1024, interface="127.0.0.1")
    print("READY", port.getHost().port, flush=True)
    reactor.run()


def cpuSeconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cycle(port: int, hello: bytes = HELLO) -> None:
    """One connection: HELLO out, HELLO (or GOODBYE) back, close."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(hello)
        got = b""
        while len(got) < 4 or len(got) < 4 + int.from_bytes(got[:4], "big"):
            chunk = s.recv(4096)
            if not chunk:
                raise RuntimeError(f"the server closed after {got!r}")
            got += chunk


def sockets(sessions: int, seconds: float, hello: bytes = HELLO) -> None:
    """Cycles per second over loopback, with the server's CPU use."""
    server = subprocess.Popen(
        [sys.executable, __file__, "serve", str(sessions)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline().split()
        assert line[0] == "READY", line
        port = int(line[1])
        for _ in range(50):  # warm up
            cycle(port)
        cpu0, start = cpuSeconds(server.pid), time.perf_counter()
        count = 0
        while time.perf_counter() - start < seconds:
            cycle(port, hello)
            count += 1
        elapsed = time.perf_counter() - start
        cpu = cpuSeconds(server.pid) - cpu0
        kind = "new session" if hello == HELLO else "unknown token"
        print(
            f"sockets ({kind}) sessions={sessions} cycles={count} {count / elapsed:.0f} cycles/s "
            f"server CPU {100 * cpu / elapsed:.0f} %",
            flush=True,
        )
    finally:
        server.kill()
        server.wait()


def churner(port: int, seconds: float) -> None:
    """Cycles for ``seconds``; print how many."""
    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        cycle(port)
        count += 1
    print(count, flush=True)


def crowd(sessions: int, seconds: float, churners: int) -> None:
    """Another client's HELLO round trip while ``churners`` processes churn."""
    server = subprocess.Popen(
        [sys.executable, __file__, "serve", str(sessions)], stdout=subprocess.PIPE, text=True
    )
    workers: list[subprocess.Popen[str]] = []
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline().split()[1])
        quiet = [probe(port) for _ in range(40)]
        workers = [
            subprocess.Popen(
                [sys.executable, __file__, "churn", str(port), "--seconds", str(seconds)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(churners)
        ]
        time.sleep(0.5)  # a measurement: let the churners reach full speed first
        cpu0, start = cpuSeconds(server.pid), time.perf_counter()
        busy = []
        while time.perf_counter() - start < seconds - 1.0:
            busy.append(probe(port))
            time.sleep(0.05)  # a measurement: one probe every 50 ms of real time
        cpu = cpuSeconds(server.pid) - cpu0
        elapsed = time.perf_counter() - start
        cycles = sum(int(w.communicate()[0]) for w in workers)
        busy.sort()
        print(
            f"crowd sessions={sessions} churners={churners}: {cycles / seconds:.0f} cycles/s, "
            f"server CPU {100 * cpu / elapsed:.0f} %; another client's HELLO: quiet median "
            f"{statistics.median(quiet) * 1e3:.1f} ms, under churn median "
            f"{statistics.median(busy) * 1e3:.1f} ms, p95 {busy[int(len(busy) * 0.95)] * 1e3:.1f} "
            f"ms, max {busy[-1] * 1e3:.1f} ms ({len(busy)} probes)",
            flush=True,
        )
    finally:
        for w in workers:
            w.kill()
            w.wait()
        server.kill()
        server.wait()


def probe(port: int) -> float:
    """Seconds for one HELLO round trip (connect included)."""
    start = time.perf_counter()
    cycle(port)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("mode", choices=["sockets", "table", "serve", "crowd", "churn"])
    parser.add_argument("sessions", type=int, help="sessions in the table (churn: the port)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--churners", type=int, default=4)
    parser.add_argument(
        "--unknown", action="store_true", help="sockets: HELLOs with an unknown token"
    )
    options = parser.parse_args()
    if options.mode == "crowd":
        crowd(options.sessions, options.seconds, options.churners)
    elif options.mode == "churn":
        churner(options.sessions, options.seconds)
    elif options.mode == "sockets":
        sockets(options.sessions, options.seconds, UNKNOWN if options.unknown else HELLO)
    elif options.mode == "table":
        table(options.sessions, options.cycles)
    else:
        serve(options.sessions)


if __name__ == "__main__":
    main()
