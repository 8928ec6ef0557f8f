"""
The documentation: the site builds with Sphinx, warnings treated as errors,
every page is reachable from the index, and every Python block of README.md
and docs/ that is meant to run does run.

A fenced ``python`` block runs unless the line right before its fence marks
it:

- ``<!-- fragment -->``: a piece of a larger program (it uses names it does
  not define, a reactor it does not start, a host or file that is not
  there). It is only compiled, so that it at least stays valid Python.
- ``<!-- continues -->``: runs after the runnable block before it on the
  same page (both in one program), e.g. tests that use classes defined by
  the block before.

A block that defines a ``TestCase`` runs under trial (``python -m
twisted.trial``), any other as a script. Either must exit 0 within
`BLOCK_TIMEOUT` seconds, with no ``Traceback`` and no ``Unhandled error``
in its output; blocks listen on port 0 and end by themselves.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import ROOT, environment

DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
BLOCK_TIMEOUT = 30.0
FRAGMENT = "<!-- fragment -->"
CONTINUES = "<!-- continues -->"

EXPECTED_OUTPUT = {
    "README.md:1": [
        "processing b'job 1'",
        "server saw: CLEAN_CLOSE: peer said GOODBYE NORMAL",
    ],
    "docs/quickstart.md:1": [
        "echoed: b'hello'",
        "closed: LOCAL_CLOSE: closed by this side (GOODBYE NORMAL)",
        "client gone: CLEAN_CLOSE: peer said GOODBYE NORMAL",
    ],
    "docs/quickstart.md:2": [
        "server processed b'message 1'\nserver processed b'message 2'\n"
        "server processed b'message 3'\n",
        "confirmed [1, 2, 3] despite LOCAL_CLOSE",
    ],
    "docs/stores.md:5": ["still to confirm: ((3, b'three'),)"],
}
"""What some blocks must print, besides running cleanly: what their comments
and the text around them promise (a block is ``page:n``, its n-th Python
block counting from 1)."""


@dataclass(frozen=True)
class Block:
    """One fenced Python block of a page."""

    name: str
    """``page:n``: the page relative to the repository, and the block's rank."""
    line: int
    """The line of its opening fence."""
    code: str
    marker: str | None
    """`FRAGMENT`, `CONTINUES`, or ``None``."""


def blocksOf(page: Path) -> list[Block]:
    """The fenced ``python`` blocks of ``page``, in order."""
    lines = page.read_text().splitlines()
    relative = page.relative_to(ROOT).as_posix()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        fence = re.fullmatch(r"(`{3,}|~{3,})\s*python\s*", lines[index])
        if fence is None:
            index += 1
            continue
        start = index
        end = start + 1
        while end < len(lines) and lines[end].strip() != fence.group(1):
            end += 1
        assert end < len(lines), f"{relative}:{start + 1}: unclosed code block"
        previous = lines[start - 1].strip() if start else ""
        marker = previous if previous in (FRAGMENT, CONTINUES) else None
        code = "\n".join(lines[start + 1 : end]) + "\n"
        blocks.append(Block(f"{relative}:{len(blocks) + 1}", start + 1, code, marker))
        index = end + 1
    return blocks


ALL_BLOCKS = [block for page in PAGES for block in blocksOf(page)]


def programOf(block: Block) -> str:
    """The program ``block`` runs in: the block itself, after the blocks it
    continues."""
    page = block.name.rpartition(":")[0]
    samePage = [b for b in ALL_BLOCKS if b.name.rpartition(":")[0] == page]
    chain = [block]
    position = samePage.index(block)
    while chain[0].marker == CONTINUES:
        earlier = [b for b in samePage[:position] if b.marker != FRAGMENT]
        assert earlier, f"{block.name} continues no runnable block"
        chain.insert(0, earlier[-1])
        position = samePage.index(earlier[-1])
    return "\n\n".join(b.code for b in chain)


RUNNABLE = [block for block in ALL_BLOCKS if block.marker != FRAGMENT]
FRAGMENTS = [block for block in ALL_BLOCKS if block.marker == FRAGMENT]


@pytest.mark.timeout(BLOCK_TIMEOUT + 15)
@pytest.mark.parametrize("block", RUNNABLE, ids=[block.name for block in RUNNABLE])
def test_blockRuns(block: Block, tmp_path: Path) -> None:
    """The block runs to completion by itself: exit 0, no traceback, no unhandled error."""
    program = programOf(block)
    module = "docblock"
    (tmp_path / f"{module}.py").write_text(program)
    if re.search(r"^class \w+\(.*TestCase\):", program, re.M):
        argv = [sys.executable, "-m", "twisted.trial", "--temp-directory", "_trial", module]
    else:
        argv = [sys.executable, f"{module}.py"]
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env=environment(),
        timeout=BLOCK_TIMEOUT,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
    )
    output = result.stdout + result.stderr
    where = f"{block.name} (line {block.line}):\n{output}"
    assert result.returncode == 0, where
    assert "Traceback" not in output, where
    assert "Unhandled error" not in output, where
    if argv[1:3] == ["-m", "twisted.trial"]:
        assert re.search(r"^PASSED \(successes=[1-9]", output, re.M), where
    for expected in EXPECTED_OUTPUT.get(block.name, []):
        assert expected in output, where


@pytest.mark.parametrize("block", FRAGMENTS, ids=[block.name for block in FRAGMENTS])
def test_fragmentCompiles(block: Block) -> None:
    """The fragment is valid Python (top-level ``await`` allowed)."""
    compile(block.code, block.name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def test_expectedOutputNamesBlocks() -> None:
    """Every block named in EXPECTED_OUTPUT exists and runs (the names did
    not drift from the pages)."""
    assert set(EXPECTED_OUTPUT) <= {block.name for block in RUNNABLE}


def test_noFixedPortsInRunnableBlocks() -> None:
    """Runnable blocks listen on port 0 and read the port back, never on a fixed port."""
    fixed = [
        block.name
        for block in RUNNABLE
        if re.search(r"listenTCP\(\s*[1-9]|ServerEndpoint\([^)]*,\s*[1-9]|\btcp:[1-9]", block.code)
    ]
    assert fixed == []


def test_readmeExampleIsShort() -> None:
    """The README's example under "In 20 lines" is the 20-odd lines it claims."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"## In 20 lines\n\n```python\n(.*?)```", text, re.S)
    assert match, "the README's 20-line example is missing"
    assert len([line for line in match.group(1).splitlines() if line.strip()]) <= 22


@pytest.mark.slow
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
    # The markers stay HTML comments: nothing a reader sees.
    for page in (tmp_path / "html").glob("*.html"):
        assert "&lt;!-- fragment" not in page.read_text(), page.name


def test_everyPageInTheIndex() -> None:
    """Every Markdown page of docs/ (but the included fragments) is in the
    index's table of contents."""
    index = (DOCS / "index.md").read_text()
    pages = sorted(p.stem for p in DOCS.glob("*.md") if not p.name.startswith("_"))
    missing = [page for page in pages if page != "index" and f"\n{page}\n" not in index]
    assert missing == []


CI_CHECKS = (
    ".venv/bin/ruff check twisted_alive tests examples twisted",
    ".venv/bin/mypy twisted_alive tests",
    ".venv/bin/sphinx-build -q -W --keep-going -b html docs ",
)
"""The commands `.ci/run` runs after the tests, in order: lint, typing, docs."""


def test_ciRunsTheReadmeTestCommand() -> None:
    """CI runs exactly the test command the README gives, and that command
    installs the services the tests need before anything else; then lint,
    typing and the docs build, with the tools the ``lint`` and ``typing``
    extras pin, any failure failing the script."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"Run the whole test suite.*?```sh\n(.+?)\n```", readme, re.S)
    assert match, "the README gives no test command"
    command = match.group(1)
    assert command.startswith("bash .ci/services && ")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert "set -euo pipefail" in ci
    commands = [line for line in ci if line and not line.startswith(("#", " ", "step", "}"))]
    tests = commands.index(command)
    checks = [
        next(i for i, line in enumerate(commands) if line.startswith(check)) for check in CI_CHECKS
    ]
    assert tests < checks[0] < checks[1] < checks[2]
    setup = (ROOT / "setup.cfg").read_text()
    assert re.search(r"^lint =\n    ruff==[\d.]+$", setup, re.M)
    assert re.search(r"^typing =\n    mypy==[\d.]+\n    mypy-zope==[\d.]+$", setup, re.M)
