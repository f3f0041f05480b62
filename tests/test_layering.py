"""Imports inside the library go one way: down the layers or sideways, never up, never in a circle.

Every module under ``src/dinov2_heads`` is read with ``ast`` (nothing is imported), and every
``import`` counts: at module level, inside functions (lazy imports) and under
``if TYPE_CHECKING:``. ``python tests/test_layering.py`` prints the cycles and upward imports.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "dinov2_heads"

#: The layers, lowest first. A module may import from its own layer or any lower one.
#: Top-level modules that are not listed are leaf helpers (the lowest layer); a new
#: subpackage must be listed.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "atomic", "fingerprint", "progress", "distributed", "labels"),
    ("data", "layers"),
    ("backbone",),
    ("checkpoints", "accel"),
    ("features",),
    ("heads",),
    ("dense", "cache", "viz"),
    ("training", "neighbors", "export"),
    ("commands", "cli", "__main__", "demo"),
)

#: Cycles that are known and being untangled; each entry names every module of the cycle.
#: Remove an entry once its cycle is gone (the test says so when it is).
KNOWN_CYCLES: frozenset[frozenset[str]] = frozenset()


@dataclass(frozen=True)
class Import:
    """One import statement from a module of the library to another."""

    source: str
    target: str
    line: int

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} (line {self.line})"


def modules(src: Path = SRC) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (``__init__`` as the package)."""
    found: dict[str, Path] = {}
    for file in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(file.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = file
    return found


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The library module that ``name`` lands in (the longest known prefix), or ``None``."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def _targets(module: str, node: ast.Import | ast.ImportFrom, is_package: bool) -> Iterator[str]:
    """The dotted names that one import statement loads."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:
        # Relative: level 1 is the module's own package (the package itself for __init__).
        package = module.split(".") if is_package else module.split(".")[:-1]
        anchor = package[: len(package) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
    # "from package import name" may load the submodule package.name, or a name in package.
    yield from (f"{base}.{alias.name}" for alias in node.names)


def imports(src: Path = SRC) -> list[Import]:
    """Every import from one library module to another; the root ``__init__`` is left out."""
    known = modules(src)
    found: set[Import] = set()
    for module, file in known.items():
        if module == PACKAGE:
            continue  # The root re-exports the public API from every layer.
        tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for name in _targets(module, node, file.name == "__init__.py"):
                target = _resolve(name, known)
                if target is not None and target != module:
                    found.add(Import(module, target, node.lineno))
    return sorted(found, key=lambda i: (i.source, i.target, i.line))


def layer_of(module: str, src: Path = SRC) -> int:
    """The index in :data:`LAYERS` of a module (the root package sits on top)."""
    parts = module.split(".")
    if len(parts) == 1:
        return len(LAYERS)
    name = parts[1]
    for index, members in enumerate(LAYERS):
        if name in members:
            return index
    if len(parts) == 2 and (src / PACKAGE / f"{name}.py").is_file():
        return 0
    raise AssertionError(f"{module}: add the subpackage {name!r} to LAYERS in {__file__}")


def upward_imports(found: list[Import], src: Path = SRC) -> list[Import]:
    """Imports from a module to a module of a higher layer."""
    return [i for i in found if layer_of(i.target, src) > layer_of(i.source, src)]


def cycles(found: list[Import]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    graph: dict[str, set[str]] = {}
    for i in found:
        graph.setdefault(i.source, set()).add(i.target)
        graph.setdefault(i.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component: set[str] = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components, key=sorted)


def describe_cycle(component: frozenset[str], found: list[Import]) -> str:
    """The modules of a cycle and the imports between them."""
    inside = [str(i) for i in found if i.source in component and i.target in component]
    return " <-> ".join(sorted(component)) + "\n    " + "\n    ".join(inside)


def report(src: Path = SRC) -> str:
    """The cycles and upward imports of the library, as text."""
    found = imports(src)
    lines = [f"{len(modules(src))} modules, {len(found)} imports between them", "cycles:"]
    lines += [f"  {describe_cycle(c, found)}" for c in cycles(found)] or ["  none"]
    lines.append("upward imports:")
    lines += [f"  {i}" for i in upward_imports(found, src)] or ["  none"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- tests


def test_no_import_cycles() -> None:
    found = imports()
    new = [c for c in cycles(found) if c not in KNOWN_CYCLES]
    assert not new, "import cycles (break each one):\n" + "\n".join(
        describe_cycle(c, found) for c in new
    )


def test_known_cycles_still_exist() -> None:
    gone = KNOWN_CYCLES - set(cycles(imports()))
    assert not gone, (
        f"cycles that are gone; remove them from KNOWN_CYCLES: {sorted(map(sorted, gone))}"
    )


def test_no_upward_imports() -> None:
    upward = upward_imports(imports())
    assert not upward, "imports that go up a layer (move the code down, or invert it):\n" + (
        "\n".join(map(str, upward))
    )


def test_every_module_has_a_layer() -> None:
    for module in modules():
        layer_of(module)


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / PACKAGE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_the_checks_find_lazy_relative_and_type_only_imports(tmp_path: Path) -> None:
    src = _write(
        tmp_path,
        {
            "__init__.py": "from dinov2_heads.training import loop\n",
            "heads/__init__.py": "",
            "heads/linear.py": "def f():\n    from ..training import loop\n",
            "training/__init__.py": "from . import loop\n",
            "training/loop.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from .grid import Grid\n"
                "from dinov2_heads.heads import linear\n"
            ),
            "training/grid.py": "import dinov2_heads.training.loop\n",
            "labels.py": "",
        },
    )
    found = imports(src)
    assert {(i.source, i.target) for i in found} == {
        ("dinov2_heads.heads.linear", "dinov2_heads.training.loop"),
        ("dinov2_heads.training", "dinov2_heads.training.loop"),
        ("dinov2_heads.training.loop", "dinov2_heads.training.grid"),
        ("dinov2_heads.training.loop", "dinov2_heads.heads.linear"),
        ("dinov2_heads.training.grid", "dinov2_heads.training.loop"),
    }
    assert [str(i) for i in upward_imports(found, src)] == [
        "dinov2_heads.heads.linear -> dinov2_heads.training.loop (line 2)"
    ]
    assert cycles(found) == [
        frozenset(
            {
                "dinov2_heads.heads.linear",
                "dinov2_heads.training.grid",
                "dinov2_heads.training.loop",
            }
        )
    ]


def test_layers_of_listed_unlisted_and_leaf_modules(tmp_path: Path) -> None:
    src = _write(tmp_path, {"__init__.py": "", "validators.py": "", "mystery/__init__.py": ""})
    assert layer_of("dinov2_heads.validators", src) == 0  # a top-level module is a leaf helper
    assert layer_of("dinov2_heads.heads.linear", src) > layer_of("dinov2_heads.features", src)
    assert layer_of("dinov2_heads", src) == len(LAYERS)
    with pytest.raises(AssertionError, match="add the subpackage 'mystery' to LAYERS"):
        layer_of("dinov2_heads.mystery", src)


if __name__ == "__main__":
    sys.stdout.write(report() + "\n")
