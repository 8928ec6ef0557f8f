"""
A client whose session is in a `SqliteSessionStore`, SIGKILLed at random
points and started again on the same file, against a real server process
on 127.0.0.1: the server's application processes every message exactly
once and in order, and the last process sees every Deferred it holds fire.

``ALIVE_STORE_KILL_MESSAGES`` and ``ALIVE_STORE_KILL_RUNS`` change the
number of messages (2,000) and of killed processes (8); ``ALIVE_CHAOS_SEED``
replays the kill points. Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
from support import LOOPBACK, Processes, chaosSeed

MESSAGES = int(os.environ.get("ALIVE_STORE_KILL_MESSAGES", "2000"))
RUNS = int(os.environ.get("ALIVE_STORE_KILL_RUNS", "8"))
RATE = 1000
"""Messages a client sends a second at most: a kill after a random 0 to
250 ms meets it in the middle, with messages in flight."""


def runKilled(
    tmp_path: Path, processes: Processes, messages: int, runs: int, seed: int
) -> tuple[list[int], list[str], float]:
    """
    Start a session server, then ``runs`` client processes on one store
    file, each SIGKILLed at a random point after it loaded its session, and
    a last one that runs to the end.

    :returns: the numbers the server's application processed, in order;
        the ``RECOVERED`` lines of the clients and the last one's last
        line; the seconds it took.
    """
    rng = random.Random(seed)
    received = tmp_path / "received"
    server = processes.startPeer("session_server.py", LOOPBACK, 0, 1.0, "--received", received)
    assert server.stdout is not None
    port = int(server.stdout.readline().split()[1])
    path = tmp_path / "client.db"
    started = time.monotonic()
    lines: list[str] = []
    submitted = 0
    for _ in range(runs):
        client = processes.startPeer("store_client.py", path, port, messages, "--rate", RATE)
        assert client.stdout is not None
        line = client.stdout.readline().strip()
        lines.append(line)
        kind, _recovered, last, epoch = line.split()
        assert kind == "RECOVERED" and epoch == "1", (line, seed)
        # Nothing a previous process stored is forgotten.
        assert int(last) >= submitted, (line, submitted, seed)
        submitted = int(last)
        time.sleep(rng.uniform(0.0, 0.25))
        processes.kill(client)
    client = processes.startPeer("store_client.py", path, port, messages, "--rate", RATE)
    assert client.stdout is not None
    output = client.communicate(timeout=60)[0].strip().splitlines()
    lines.append(output[0])
    lines.append(output[-1])
    elapsed = time.monotonic() - started
    processes.kill(server)
    return [int(n) for n in received.read_text().split()], lines, elapsed


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_killedClientLosesNothing(tmp_path: Path, processes: Processes) -> None:
    """A client SIGKILLed and restarted RUNS times while sending MESSAGES
    with a SQLite store: the server's application processes each exactly
    once, in order, and the last client's Deferreds all fire."""
    seed = chaosSeed()
    processed, lines, elapsed = runKilled(tmp_path, processes, MESSAGES, RUNS, seed)
    print(f"\n{MESSAGES} messages, {RUNS} kills, {elapsed:.1f} s (seed {seed}):", lines)
    assert lines[-1].startswith("DONE "), (lines, seed)
    assert processed == list(range(MESSAGES)), seed
