"""Every ```python block of README.md and docs/*.md runs as written and states its result.

The convention: the blocks of one file run in order in one namespace (a later block may use
the names of an earlier one), from a temporary working directory, with ``UserWarning`` as an
error (the library's warnings, e.g. a canvas of the wrong space, must not appear in the docs);
each block holds at least one ``assert``, which states its result. A fence with anything after
``python`` is refused, so a block cannot be excluded silently.
"""

from __future__ import annotations

import ast
import re
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python([^\n]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks(path: Path) -> list[tuple[int, str, str]]:
    """``(line, info string after 'python', code)`` of each ```python block of ``path``."""
    text = path.read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, match.start()) + 1, match.group(1).strip(), match.group(2))
        for match in FENCE.finditer(text)
    ]


def test_the_docs_have_python_blocks():
    """The README states its API in runnable Python (so the test below runs something)."""
    assert len(python_blocks(ROOT / "README.md")) >= 2


def test_blocks_are_recognised():
    """The extractor finds blocks, their lines and info strings (so it can fail)."""
    sample = ROOT / "README.md"
    text = "x\n```python\nassert 1\n```\n```python no-run\nboom\n```\n```bash\nls\n```\n"
    blocks = FENCE.findall(text)
    assert [(info.strip(), code) for info, code in blocks] == [
        ("", "assert 1\n"),
        ("no-run", "boom\n"),
    ]
    assert all(line > 0 for line, _, _ in python_blocks(sample))


@pytest.mark.parametrize("path", DOCS, ids=[p.relative_to(ROOT).as_posix() for p in DOCS])
def test_python_blocks_run_and_hold(path, tmp_path, monkeypatch):
    blocks = python_blocks(path)
    if not blocks:
        return  # a page without Python: nothing to run (README has some, checked above)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for line, info, code in blocks:
        where = f"{path.name}:{line}"
        assert info == "", f"{where}: ```python{info}: every Python block must run as written"
        tree = ast.parse(code, filename=where)
        assert any(isinstance(node, ast.Assert) for node in ast.walk(tree)), (
            f"{where}: the block states no result (end it with asserts)"
        )
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            exec(compile(tree, where, "exec"), namespace)  # noqa: S102
