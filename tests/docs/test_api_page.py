"""The root API stays small, and docs/api.md lists every public name of every subpackage."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import dinov2_heads

ROOT = Path(__file__).resolve().parents[2]
MAX_ROOT_NAMES = 40


def subpackages() -> list[str]:
    return sorted(
        f"dinov2_heads.{info.name}"
        for info in pkgutil.iter_modules(dinov2_heads.__path__)
        if info.ispkg
    )


def test_the_root_api_is_small_and_importable() -> None:
    names = dinov2_heads.__all__
    assert len(names) <= MAX_ROOT_NAMES, f"{len(names)} root names; keep at most {MAX_ROOT_NAMES}"
    assert len(set(names)) == len(names)
    for name in names:
        assert hasattr(dinov2_heads, name), name


def test_api_page_lists_every_subpackage_name() -> None:
    page = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    missing = []
    for package in subpackages():
        module = importlib.import_module(package)
        if f"`{package}`" not in page:
            missing.append(package)
        missing += [
            f"{package}.{name}"
            for name in getattr(module, "__all__", [])
            if f"`{name}`" not in page
        ]
    assert not missing, f"docs/api.md does not mention: {missing}"


def test_api_page_says_what_every_name_is() -> None:
    rows = (ROOT / "docs" / "api.md").read_text(encoding="utf-8").splitlines()
    blank = [row.split("`")[1] for row in rows if row.startswith("| `") and row.endswith("|  |")]
    assert not blank, f"docs/api.md has no description for: {blank}"
