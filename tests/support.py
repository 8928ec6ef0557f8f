"""
Helpers shared by the tests that run scripts as subprocesses.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
"""The repository: put on ``PYTHONPATH`` so that scripts import the package
from the source tree."""

EXAMPLES = ROOT / "examples"


def environment() -> dict[str, str]:
    """This process's environment, with the repository on ``PYTHONPATH``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def runScript(script: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """
    Run ``script`` with ``args`` in its own process group, output and errors
    together; kill the group when it is done or overruns ``timeout``.
    """
    process = subprocess.Popen(
        [sys.executable, str(script), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environment(),
        start_new_session=True,
        cwd=ROOT,
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
