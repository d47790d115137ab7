"""The house of src/boneage (docs/architecture.md): every import of the library's own modules runs
down the floors, never up and never in a circle, imports inside functions included; and each
subpackage says in its docstring what lives there."""

from __future__ import annotations

import ast
import importlib

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "src" / "boneage"
BASE = ("errors", "contracts", "config", "tracking")
# Floor of each top-level module or subpackage; the base's own modules in their order.
FLOORS = {
    **{name: i / 10 for i, name in enumerate(BASE)},
    "data": 2,
    "model": 3,
    "serve": 4,
    "training": 5,
    "orchestrate": 6,
    "predict": 7,  # aliases for models logged by boneage 0.1
    "scoring": 7,
    "cli": 8,
    "__main__": 9,
}
SUBPACKAGES = ("data", "model", "serve", "training", "orchestrate")


def _room(module: str) -> str:
    """The top-level module or subpackage a dotted boneage module belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports() -> list[tuple[str, str, int]]:
    """(importing file's module, imported boneage module, line) for every import, anywhere in a file."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(("boneage", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("boneage"):
                targets = [node.module] if node.module != "boneage" else [f"boneage.{a.name}" for a in node.names]
                found += [(module, t, node.lineno) for t in targets]
            elif isinstance(node, ast.Import):
                found += [(module, a.name, node.lineno) for a in node.names if a.name.startswith("boneage")]
    return found


def test_every_import_runs_down_the_floors():
    upward = []
    for importer, imported, line in _imports():
        here, there = _room(importer), _room(imported)
        if here == there or here == "__init__":
            continue
        if FLOORS[there] > FLOORS[here]:
            upward.append(f"{importer}:{line} imports {imported} ({there} is above {here})")
    assert not upward, "\n".join(upward)


def test_no_module_imports_itself_back_through_another():
    graph: dict[str, set[str]] = {}
    for importer, imported, _ in _imports():
        graph.setdefault(importer, set()).add(imported)

    def comes_back(start: str) -> bool:
        todo, seen = list(graph.get(start, ())), set()
        while todo:
            module = todo.pop()
            if module == start:
                return True
            if module not in seen:
                seen.add(module)
                todo.extend(graph.get(module, ()))
        return False

    circles = sorted(m for m in graph if comes_back(m))
    assert not circles, f"modules in an import circle: {circles}"


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_each_subpackage_says_what_lives_there(name):
    doc = importlib.import_module(f"boneage.{name}").__doc__ or ""
    assert len(doc.split()) >= 12 and "Imports" in doc, f"boneage.{name}: {doc!r}"
