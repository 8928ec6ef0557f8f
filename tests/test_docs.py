"""
The documentation site builds with Sphinx, warnings treated as errors, and
every page is reachable from the index.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


@pytest.mark.timeout(300)
def test_docsBuildWithoutWarnings(tmp_path: Path) -> None:
    """``sphinx-build -W`` succeeds on docs/ (the API reference included)."""
    pytest.importorskip("sphinx", reason="install the 'test' extra")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         str(DOCS), str(tmp_path / "html")],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "html" / "api.html").exists()


def test_everyPageInTheIndex() -> None:
    """Every Markdown page of docs/ (but the included fragments) is in the
    index's table of contents."""
    index = (DOCS / "index.md").read_text()
    pages = sorted(p.stem for p in DOCS.glob("*.md") if not p.name.startswith("_"))
    missing = [page for page in pages if page != "index" and f"\n{page}\n" not in index]
    assert missing == []
