"""
A server whose sessions are in a `SqliteSessionStore`, SIGKILLed at random
points and started again on the same file while a client process (its
session in a store of its own) sends numbered messages over 127.0.0.1: the
client resumes its session every time, the server's application processes
every message in order, nothing is lost, and each kill repeats at most the
one message being processed when it came. And ``twistd -n alive --sessions
sqlite:PATH`` (or ``redis://...``) killed with SIGKILL and started again:
its clients resume.

``ALIVE_STORE_SERVER_MESSAGES`` and ``ALIVE_STORE_SERVER_KILLS`` change the
number of messages (3,000) and of kills (20); ``ALIVE_CHAOS_SEED`` replays
the kill points. Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from pathlib import Path

import pytest
from support import (
    LOOPBACK,
    Processes,
    chaosSeed,
    ensureDeferred,
    getReactor,
    waitFor,
    withoutRepeats,
)
from test_twistd import Twistd, _freePort

from twisted_alive import AliveClientFactory, HeartbeatProtocol, Receipt

MESSAGES = int(os.environ.get("ALIVE_STORE_SERVER_MESSAGES", "3000"))
KILLS = int(os.environ.get("ALIVE_STORE_SERVER_KILLS", "20"))

RATE = 400
"""Messages the client sends a second at most: the kills (every 0.05 to
0.3 s, plus the restart) fall while messages are in flight."""


def startServer(
    processes: Processes, port: int, received: Path, store: Path
) -> tuple[subprocess.Popen[str], int]:
    """A session server on ``store``, its application appending (with
    fsync) each message it processes to ``received``, and those flagged
    ``redelivered`` to ``received`` + ``.flagged``."""
    server = processes.startPeer(
        "session_server.py",
        LOOPBACK,
        port,
        1.0,
        "--received",
        received,
        "--store",
        store,
        "--fsync",
        "--redelivered",
        flaggedFile(received),
    )
    assert server.stdout is not None
    line = server.stdout.readline().split()
    assert line and line[0] == "READY", line
    return server, int(line[1])


def flaggedFile(received: Path) -> Path:
    """Where the server records the messages flagged ``redelivered``."""
    return received.with_name(received.name + ".flagged")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_killedServerLosesNothing(tmp_path: Path, processes: Processes) -> None:
    """A server with a SQLite store SIGKILLed and started again KILLS times
    at random points while a client with its own SQLite store sends
    MESSAGES: the client resumes every time (never a reset), the server's
    application processes every message in order, nothing is lost, each
    kill repeats at most one message, flagged ``redelivered``, and every
    Deferred of the client fires once with the Receipt of its message."""
    seed = chaosSeed()
    rng = random.Random(seed)
    received = tmp_path / "received"
    store = tmp_path / "server.db"
    started = time.monotonic()
    server, port = startServer(processes, 0, received, store)
    client = processes.startPeer(
        "store_client.py", tmp_path / "client.db", port, MESSAGES, "--rate", RATE
    )
    assert client.stdout is not None
    assert client.stdout.readline().split()[0] == "RECOVERED"
    counts = []
    for _ in range(KILLS):
        time.sleep(rng.uniform(0.05, 0.3))
        processes.kill(server)
        counts.append(len(received.read_bytes().splitlines()))
        server, again = startServer(processes, port, received, store)
        assert again == port
    output = client.communicate(timeout=120)[0].strip().splitlines()
    elapsed = time.monotonic() - started
    numbers = [int(n) for n in received.read_text().split()]
    processed, twice = withoutRepeats(numbers)
    repeats, repeated = len(twice), set(twice)
    flagged = {int(n) for n in flaggedFile(received).read_text().split()}
    inFlight = sum(1 for count in counts if 0 < count < MESSAGES)
    print(
        f"\n{MESSAGES} messages, {KILLS} server kills ({inFlight} while messages flowed), "
        f"{repeats} repeats, {len(flagged)} flagged, {elapsed:.1f} s (seed {seed}): "
        f"{output[-2:]}"
    )
    assert output[-1] == f"DONE {MESSAGES}", (output, seed)
    # (The client exits with an error if its session is ever reset; it
    # resumes once per server it reached: two kills in a row may fall
    # before it reconnected.)
    assert output[-2].startswith("RESUMED "), (output, seed)
    assert int(output[-2].split()[1]) >= 1, (output, counts, seed)
    assert processed == list(range(MESSAGES)), seed
    assert repeats <= KILLS, seed
    assert repeated <= flagged, (sorted(repeated - flagged), seed)
    assert len(flagged) <= KILLS, seed


class Collecting(HeartbeatProtocol):
    """Records each message in its factory."""

    factory: Resuming

    def messageReceived(self, payload: bytes) -> None:
        self.factory.received.append(payload)


class Resuming(AliveClientFactory):
    """A client that reconnects quickly and records its continuity and
    what it receives."""

    protocol = Collecting
    initialDelay = 0.05
    maxDelay = 0.2
    quickDelay = 0.01
    quickSpread = 0.0

    def __init__(self) -> None:
        super().__init__()
        self.hooks: list[str] = []
        self.received: list[bytes] = []

    def sessionResumed(self) -> None:
        self.hooks.append("resumed")

    def sessionReset(self, reason: str, maybeProcessed: int) -> None:
        self.hooks.append(f"reset: {reason}")


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", ["sqlite", "redis"])
@ensureDeferred
async def test_twistdSessionsSurviveKill(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    """``twistd -n alive --sessions sqlite:PATH`` SIGKILLed and started
    again on the same file (or ``--sessions redis://...`` on the same Redis
    server): its client resumes the same session (no reset), and the echo
    of every message it sent reaches it exactly once."""
    reactor = getReactor()
    port = _freePort()
    if kind == "sqlite":
        sessions = f"sqlite:{tmp_path / 'sessions.db'}"
    else:
        server = request.getfixturevalue("redisServer")
        sessions = f"redis://{LOOPBACK}:{server.port}/0?prefix=twistd{port}:"
    args = (
        f"--listen=tcp:{port}:interface={LOOPBACK}",
        "--app=echo",
        "--interval=0.5",
        f"--sessions={sessions}",
    )
    first = Twistd(tmp_path)
    first.start(*args)
    second = Twistd(tmp_path)
    client = Resuming()
    received = client.received
    try:
        await waitFor(
            lambda: "alive.listen: --listen listening on" in first.output(),
            20,
            "twistd listening",
            interval=0.05,
        )
        reactor.connectTCP(LOOPBACK, port, client)
        await client.whenConnected()
        token = client.session.token
        ds = [client.sendMessage(b"m%d" % i) for i in range(100)]
        receipts: list[Receipt] = []
        for d in ds[:50]:
            receipts.append(await d)
        first.kill()
        second.start(*args)
        for d in ds[50:]:
            receipts.append(await d.addTimeout(30, reactor))
        await waitFor(lambda: len(received) >= 100, 20, "the echoes")
    finally:
        client.stopTrying()
        if client.connected is not None:
            client.connected.abort("test over")
        second.kill()
        first.kill()
    assert [r.seq for r in receipts] == list(range(1, 101))
    assert client.session.token == token and client.epoch == 1
    assert "resumed" in client.hooks and not [h for h in client.hooks if h != "resumed"]
    echoed, repeated = withoutRepeats(received)
    repeats = len(repeated)
    assert echoed == [b"m%d" % i for i in range(100)], second.output()
    assert repeats <= 1  # the message being processed when the kill came, if any
    if kind == "sqlite":
        assert "alive.store: 1 sessions loaded from" in second.output()
    else:
        # Shared: nothing loaded at start; the resume takes the session over.
        output = second.output()
        assert "alive.store: sessions shared in" in output
        assert f"alive.session: {token.hex()[:8]} taken over (epoch 2)" in output
