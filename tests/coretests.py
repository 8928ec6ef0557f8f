"""
The core's own tests: the test modules that import, of the package, only
``twisted_alive.core`` (and no Twisted, no shared test support but
``coresupport``), so that
running them alone measures what the sans-IO core's tests cover.

``python tests/coretests.py`` prints their paths, one a line, for
``tox -e coverage-core``.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def importedBy(path: Path) -> set[str]:
    """Every module an ``import`` statement of ``path`` names, at any depth."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and not node.level:
            names.add(node.module)
    return names


def isCoreTest(path: Path) -> bool:
    """Whether ``path`` tests the core alone: it imports some of
    ``twisted_alive.core``, nothing else of the package, no Twisted and not
    the shared test support (which loads the adapter)."""
    names = importedBy(path)
    ours = {name for name in names if name.split(".")[0] == "twisted_alive"}
    if not ours or not all(
        name == "twisted_alive.core" or name.startswith("twisted_alive.core.") for name in ours
    ):
        return False
    return not any(name.split(".")[0] in ("twisted", "support", "tests") for name in names)



def coreTests() -> list[Path]:
    """The core's own test modules, in name order."""
    return [path for path in sorted(TESTS.glob("test_*.py")) if isCoreTest(path)]


if __name__ == "__main__":
    for path in coreTests():
        print(path.relative_to(TESTS.parent).as_posix())
