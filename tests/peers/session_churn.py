"""
HELLO-then-disconnect churn against an `AliveServerFactory` holding many
sessions: how much each new session costs the server.

Usage::

    session_churn.py sockets SESSIONS [--seconds S]
    session_churn.py table SESSIONS [--cycles N]
    session_churn.py serve SESSIONS

``sockets`` starts ``serve`` in a child process (a server on a free
loopback port whose table holds SESSIONS sessions without connection),
then opens connections one after the other for S seconds, each sending a
HELLO without session, reading the server's HELLO back and closing; it
prints the cycles per second and the server's CPU use (from
``/proc/PID/stat``). ``table`` measures the bookkeeping alone, without
sockets: the factory's ``sessionFor`` (a new session) then ``sessionLost``
(its connection ended) for N cycles; it prints the median cost per cycle.
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
from twisted_alive._frames import DEFAULT_MAX_FRAME_SIZE, NO_SESSION, Hello, encode
from twisted_alive._reasons import Loss, Reason

HELLO = encode(Hello(1, 0, 5.0, DEFAULT_MAX_FRAME_SIZE, 1024, 1, NO_SESSION))


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
    from twisted.internet import reactor

    factory = AliveServerFactory()
    fill(factory, sessions, reactor.seconds())  # type: ignore[attr-defined]
    port = reactor.listenTCP(0, factory, backlog=1024, interface="127.0.0.1")  # type: ignore[attr-defined]
    print("READY", port.getHost().port, flush=True)
    reactor.run()  # type: ignore[attr-defined]


def cpuSeconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cycle(port: int) -> None:
    """One connection: HELLO out, HELLO back, close."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(HELLO)
        got = b""
        while len(got) < 4 or len(got) < 4 + int.from_bytes(got[:4], "big"):
            chunk = s.recv(4096)
            if not chunk:
                raise RuntimeError(f"the server closed after {got!r}")
            got += chunk


def sockets(sessions: int, seconds: float) -> None:
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
            cycle(port)
            count += 1
        elapsed = time.perf_counter() - start
        cpu = cpuSeconds(server.pid) - cpu0
        print(
            f"sockets sessions={sessions} cycles={count} {count / elapsed:.0f} cycles/s "
            f"server CPU {100 * cpu / elapsed:.0f} %",
            flush=True,
        )
    finally:
        server.kill()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("mode", choices=["sockets", "table", "serve"])
    parser.add_argument("sessions", type=int)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--cycles", type=int, default=2000)
    options = parser.parse_args()
    if options.mode == "sockets":
        sockets(options.sessions, options.seconds)
    elif options.mode == "table":
        table(options.sessions, options.cycles)
    else:
        serve(options.sessions)


if __name__ == "__main__":
    main()
