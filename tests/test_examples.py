"""
Runs the quickstart examples as a user would: ``examples/echo_server.py``
with ``examples/confirmed_client.py`` against it. (The code blocks of
README.md and docs/ are run by tests/test_docs.py.)
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import pytest
from support import ROOT, environment, killGroup, startProcess


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
        server.wait(timeout=10)
    finally:
        killGroup(server)
