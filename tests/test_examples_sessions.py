"""
Runs C{examples/flapping_client.py} as a subprocess: confirmed delivery
through a proxy that resets every connection after 50-300 ms; and
C{examples/stored_client.py}: a client killed and started again on its
session store; C{examples/redis_gateway.py}: three processes sharing
sessions on Redis.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from support import EXAMPLES, LOOPBACK, RedisServer, runScript

EXAMPLE = EXAMPLES / "flapping_client.py"


def runExample(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run the example as a subprocess."""
    return runScript(EXAMPLE, *args, timeout=timeout)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_flappingClient() -> None:
    """The example delivers 2,000 messages exactly once, in order, over
    several reset connections, and exits 0."""
    result = runExample("2000", "12345")
    assert result.returncode == 0, result.stdout
    out = result.stdout
    assert "all 2000 confirmed exactly once, in order" in out
    assert "server received:     2000" in out
    match = re.search(r"connections used:\s+(\d+)", out)
    assert match is not None, out
    assert int(match.group(1)) >= 2
    assert "(seed 12345)" in out


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_storedClient() -> None:
    """The stored-session example: a client SIGKILLed four times and
    started again on its SQLite file; the server processes its 1,000
    messages exactly once, in order, and the example exits 0."""
    result = runScript(EXAMPLES / "stored_client.py", "1000", "4", "12345", timeout=80)
    assert result.returncode == 0, result.stdout
    assert "all 1000 processed exactly once, in order, across 4 kills" in result.stdout
    assert result.stdout.count(": killed") >= 1, result.stdout


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_storedReceiver() -> None:
    """The stored-receiver example: a client that processes in its store's
    transaction, SIGKILLed four times and started again on its SQLite
    file; its table holds the server's 1,000 orders exactly once, in
    order, every receipt comes, and the example exits 0."""
    result = runScript(EXAMPLES / "stored_receiver.py", "1000", "4", "12345", timeout=80)
    assert result.returncode == 0, result.stdout
    assert "all 1000 processed exactly once, in order, across 4 kills" in result.stdout
    assert "every receipt came" in result.stdout
    assert result.stdout.count(": killed") == 4, result.stdout


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_redisGateway(redisServer: RedisServer) -> None:
    """The Redis gateway example: three gateway processes on the tests'
    Redis, a device hopping between them every 0.3 s; 200 commands sent
    through random gateways each reach it exactly once with a receipt,
    the example exits 0 and leaves no key behind."""
    url = f"redis://{LOOPBACK}:{redisServer.port}/0"
    result = runScript(EXAMPLES / "redis_gateway.py", url, "200", timeout=80)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "200 processed, 200 distinct; every request confirmed: True" in result.stdout
    match = re.search(r"through 3 gateways, (\d+) connections", result.stdout)
    assert match is not None and int(match.group(1)) >= 2, result.stdout
    left = subprocess.run(
        [sys.executable, "-c", KEYS_LEFT, str(redisServer.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert left.stdout.strip() == "0", left.stdout + left.stderr


KEYS_LEFT = """
import socket, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1]))) as s:
    s.sendall(b"*2\\r\\n$4\\r\\nKEYS\\r\\n$17\\r\\ngateway-example-*\\r\\n")
    print(s.recv(100).split(b"\\r\\n")[0][1:].decode())
"""
"""Counts the keys of the gateway example left in Redis (a RESP ``KEYS``:
the reply's first line is ``*N``)."""
