"""Every ```python block in README.md and docs/ runs as written, so the docs cannot drift.

The blocks of one file run in order in one namespace (later blocks may use earlier names), in a
temporary working directory. When a block is followed by "prints" and a ```text block, its standard
output must equal that text. A block fenced as ```python no-run is shown to readers but not run
(used only where real pretrained weights are needed).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^```python[ \t]*(?P<flags>[^\n]*)\n(?P<code>.*?)^```", re.M | re.S)
PRINTS = re.compile(r"\s*prints\s*\n\s*```text\n(?P<text>.*?)^```", re.M | re.S)
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def code_blocks(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, code, expected output or None) for each runnable block."""
    text = path.read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        if "no-run" in match.group("flags"):
            continue
        printed = PRINTS.match(text, match.end())
        expected = printed.group("text") if printed else None
        blocks.append((text.count("\n", 0, match.start()) + 1, match.group("code"), expected))
    return blocks


def test_documents_exist() -> None:
    assert (ROOT / "README.md").is_file()
    assert (ROOT / "docs" / "index.md").is_file()


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_python_blocks_run(path: Path, tmp_path: Path) -> None:
    blocks = code_blocks(path)
    if not blocks:
        pytest.skip(f"{path.name} has no python blocks")
    namespace: dict[str, object] = {"__name__": "__docs__"}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for line, code, expected in blocks:
            stdout = io.StringIO()
            try:
                with contextlib.redirect_stdout(stdout):
                    exec(compile(code, f"{path.name}:{line}", "exec"), namespace)
            except Exception as error:
                raise AssertionError(
                    f"{path.relative_to(ROOT)} block at line {line} failed: {error!r}"
                ) from error
            if expected is not None:
                assert stdout.getvalue().strip() == expected.strip(), (
                    f"{path.relative_to(ROOT)} block at line {line} printed something else"
                )
    finally:
        os.chdir(cwd)
