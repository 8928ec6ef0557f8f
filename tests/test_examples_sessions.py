"""
Runs C{examples/flapping_client.py} as a subprocess: confirmed delivery
through a proxy that resets every connection after 50-300 ms.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "flapping_client.py"


def runExample(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run the example in its own process group; kill the group if it
    overruns C{timeout} seconds or when it is done."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLE), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, output, "")


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
