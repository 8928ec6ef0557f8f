"""
The test suite's own bound in time: a test that runs on the reactor and
hangs ends the run (``tests/conftest.py`` gives such tests pytest-timeout's
``thread`` method), where the default method would leave it hanging.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import ROOT, environment

HUNG = """
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

{mark}
@pytest_twisted.inlineCallbacks
def test_hung():
    yield Deferred()  # never fires
"""


@pytest.mark.parametrize(
    ("ini", "mark"),
    [("timeout = 2", ""), ("timeout = 60", "@pytest.mark.timeout(2)")],
    ids=["ini-timeout", "marked-timeout"],
)
@pytest.mark.slow
def test_hungReactorTestEndsTheRun(tmp_path: Path, ini: str, mark: str) -> None:
    """A pytest-twisted test waiting forever ends the run at its timeout
    (the ini's, or its own mark's), with the reactor's stack printed."""
    # The conftest uses the shared support, which uses coresupport.
    for name in ("conftest.py", "support.py", "coresupport.py"):
        shutil.copy(ROOT / "tests" / name, tmp_path)
    (tmp_path / "pytest.ini").write_text(f"[pytest]\n{ini}\n")
    (tmp_path / "test_hung.py").write_text(HUNG.format(mark=mark))
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "test_hung.py"],
        cwd=tmp_path,
        env=environment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=50,
    )
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "+ Timeout +" in output
    assert "epollreactor.py" in output or "selectreactor.py" in output or "pollreactor" in output
    assert 2 <= elapsed < 30
