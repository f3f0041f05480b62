"""Every relative link in README.md, CHANGELOG.md and docs/ reaches a file, and its heading."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCED = re.compile(r"^```.*?^```", re.M | re.S)
LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(?P<title>.+?)\s*$", re.M)


def prose(path: Path) -> str:
    """The Markdown outside fenced code blocks."""
    return FENCED.sub("", path.read_text(encoding="utf-8"))


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings: lower case, punctuation dropped, spaces to -."""
    found = set()
    for match in HEADING.finditer(prose(path)):
        title = re.sub(r"[^\w\- ]", "", match["title"].lower())
        found.add(title.replace(" ", "-"))
    return found


def test_anchors_are_github_s() -> None:
    assert "image-search-the-stored-images-most-like-a-query" in anchors(
        ROOT / "docs" / "neighbors.md"
    )
    assert "train" in anchors(ROOT / "docs" / "cli.md")  # ## `train`


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_reach_their_file_and_heading(path: Path) -> None:
    broken = []
    for match in LINK.finditer(prose(path)):
        target = match["target"]
        if re.match(r"[a-z]+:", target):
            continue  # an address, not a file here
        name, _, anchor = target.partition("#")
        file = (path.parent / name).resolve() if name else path
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.name}")
    assert not broken, f"{path.relative_to(ROOT)}: {broken}"
