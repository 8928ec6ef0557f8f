"""
Runs the examples of plugging twisted_alive into existing applications as
subprocesses: ``examples/wrapped_chat.py``, ``examples/client_service.py``
and ``examples/foreign_peer.py``.
"""

from __future__ import annotations

import subprocess

import pytest
from support import EXAMPLES, runScript


def runExample(name: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``examples/<name>`` as a subprocess."""
    return runScript(EXAMPLES / name, *args, timeout=timeout)


@pytest.mark.timeout(90)
def test_wrappedChat() -> None:
    """The wrapped LineReceiver chat exchanges lines, and the server names RESET and CLEAN_CLOSE."""
    result = runExample("wrapped_chat.py")
    assert result.returncode == 0, result.stdout
    out = result.stdout
    assert "bob got:   alice: hello bob" in out
    assert "alice got: bob: hi alice" in out
    assert "server: alice left (ConnectionLost): RESET" in out
    assert "server: bob left (ConnectionDone): CLEAN_CLOSE" in out
    assert out.splitlines()[-1] == "ok"


@pytest.mark.timeout(90)
def test_clientService() -> None:
    """Under ClientService, every message is confirmed once, in order, across a server abort."""
    result = runExample("client_service.py", "40")
    assert result.returncode == 0, result.stdout
    out = result.stdout
    assert "server: aborting the first connection" in out
    assert "40/40 confirmed" in out
    assert "client losses: {'RESET': 1}" in out
    assert "server received each message once, in order" in out
    assert out.splitlines()[-1] == "ok"


@pytest.mark.timeout(90)
@pytest.mark.skipif(
    not (EXAMPLES / "foreign_peer.py").exists(), reason="examples/foreign_peer.py is absent"
)
def test_foreignPeer() -> None:
    """The foreign-peer example tunes kernel liveness, peeks, and names the end PEER_CLOSED."""
    result = runExample("foreign_peer.py")
    assert result.returncode == 0, result.stdout
    out = result.stdout
    assert "peek, quiet connection: ALIVE" in out
    assert "echo: hello" in out
    assert "connection ended: PEER_CLOSED" in out
