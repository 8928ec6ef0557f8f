"""
Runs the quickstart examples as a user would: ``examples/echo_server.py``
with ``examples/confirmed_client.py`` against it, and the README's
20-line example.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import ROOT, environment, killGroup, startProcess


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(60)
def test_echoServerAndConfirmedClient() -> None:
    """The echo server confirms and echoes every message of the client,
    which closes in order (the server logs CLEAN_CLOSE) and exits 0; on
    SIGTERM the server exits."""
    server = startProcess(sys.executable, "examples/echo_server.py", "0", cwd=ROOT)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        match = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", line)
        assert match, line
        client = subprocess.run(
            [sys.executable, "examples/confirmed_client.py", match.group(1), "25"],
            capture_output=True,
            text=True,
            env=environment(),
            timeout=30,
            cwd=ROOT,
        )
        assert client.returncode == 0, client.stdout + client.stderr
        assert "25/25 confirmed" in client.stdout
        assert "25/25 echoed back" in client.stdout
        assert "closed: LOCAL_CLOSE: closed by this side (GOODBYE NORMAL)" in client.stdout
        gone = server.stdout.readline()
        assert "CLEAN_CLOSE: peer said GOODBYE NORMAL" in gone
        server.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.poll() is not None
    finally:
        killGroup(server)


def readmeExample() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"## In 20 lines\n\n```python\n(.*?)```", text, re.S)
    assert match, "the README's 20-line example is missing"
    return match.group(1)


def test_readmeExampleIsShort() -> None:
    """The README's example is the 20-odd lines it claims."""
    assert len(readmeExample().strip().splitlines()) <= 25


@pytest.mark.timeout(60)
def test_readmeExampleRuns(tmp_path: Path) -> None:
    """The README's example runs: the message is processed by the server,
    confirmed, and the server sees the client's orderly close."""
    code = readmeExample().replace("9000", str(freePort()))
    script = tmp_path / "readme_example.py"
    script.write_text(code)
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=environment(),
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "processing b'job 1'" in result.stdout
    assert re.search(r"confirmed seq 1 in \d+\.\d ms", result.stdout), result.stdout
    assert "connection ended: CLEAN_CLOSE: peer said GOODBYE NORMAL" in result.stdout
