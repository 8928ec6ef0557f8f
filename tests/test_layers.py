"""
The layers of the package: the sans-IO core imports no Twisted, and
``import twisted_alive`` loads neither the tools, the service nor
``prometheus_client``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from coretests import coreTests, importedBy

import twisted_alive

PACKAGE = Path(twisted_alive.__file__).resolve().parent


def loadedAfter(statement: str) -> list[str]:
    """The modules a fresh interpreter holds after running ``statement``
    (which may use ``sys``, ``types`` and ``json``)."""
    statement = f"import json, sys, types\n{statement}"
    out = subprocess.run(
        [sys.executable, "-c", f"{statement}\nprint(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=PACKAGE.parent,
    ).stdout
    loaded: list[str] = json.loads(out)
    return loaded


def test_coreSourceImportsNoTwisted() -> None:
    """No module under ``twisted_alive/core`` names Twisted, zope or any
    module of the package outside the core."""
    files = sorted((PACKAGE / "core").glob("*.py"))
    assert len(files) >= 8
    for path in files:
        for name in importedBy(path):
            top = name.split(".")[0]
            assert top not in ("twisted", "zope", "prometheus_client"), (path.name, name)
            if top == "twisted_alive":
                assert name.startswith("twisted_alive.core"), (path.name, name)


def test_importingTheCoreLoadsNoTwisted() -> None:
    """Importing every core module in a fresh interpreter loads no module
    of Twisted (nor zope.interface). The package's ``__init__`` (the
    Twisted adapter) is bypassed: the core must stand alone."""
    modules = ", ".join(f"twisted_alive.core.{p.stem}" for p in (PACKAGE / "core").glob("*.py"))
    loaded = loadedAfter(
        "package = types.ModuleType('twisted_alive')\n"
        f"package.__path__ = [{str(PACKAGE)!r}]\n"
        "sys.modules['twisted_alive'] = package\n"
        f"import {modules}"
    )
    assert "twisted_alive.core.connection" in loaded
    assert [m for m in loaded if m.split(".")[0] in ("twisted", "zope")] == []


def test_importingThePackageLoadsNoToolsNorMetrics() -> None:
    """``import twisted_alive`` loads the library alone: not the tools, the
    service, the real-socket chaos proxy or ``prometheus_client``."""
    loaded = loadedAfter("import twisted_alive, twisted_alive.testing")
    assert "twisted_alive._mixin" in loaded
    unwanted = [
        m
        for m in loaded
        if m.startswith(("twisted_alive.tools", "twisted_alive.service", "prometheus_client"))
        or m == "twisted_alive.testing.chaos"
    ]
    assert unwanted == []


def test_coreTestsAreTheCoresOwn() -> None:
    """The tests that ``tox -e coverage-core`` runs include the core's own
    test modules, and none of them loads the adapter."""
    names = {path.name for path in coreTests()}
    assert {"test_frames.py", "test_liveness.py", "test_protocol_vectors.py"} <= names
    assert "test_mixin.py" not in names and "test_storm.py" not in names
