"""dvc.yaml's code dependencies are the code each stage runs: for every stage, the import closure
of its library module (and of the CLI front it is called through) is exactly the set of
src/boneage files the stage depends on. An edit to any module a stage imports must make
`dvc repro` rerun it; a listed file the stage never imports would rerun it for nothing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

PACKAGE = REPO / "src" / "boneage"
DATA_DIRS = ("presets", "resources")
# Each DVC stage calls one CLI command, which calls one library module.
STAGE_MODULES = {
    **{stage: f"boneage.data.{stage}" for stage in ("synth", "ingest", "preprocess")},
    **{stage: f"boneage.training.{stage}" for stage in ("train", "evaluate", "register")},
    "member": "boneage.training.ensemble",
    "ensemble": "boneage.training.ensemble",
    "evaluate_ensemble": "boneage.training.evaluate",
    "register_ensemble": "boneage.training.register",
}
FRONT = "boneage.cli"


def module_file(name: str) -> Path | None:
    path = PACKAGE.joinpath(*name.split(".")[1:])
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return path / "__init__.py" if (path / "__init__.py").is_file() else None


def imported(path: Path, top_level_only: bool = False) -> set[str]:
    """The boneage modules a file imports: anywhere in it (imports inside functions run when the
    stage runs), or only at module level (the CLI front imports each command's module lazily).
    A string naming a module ("boneage.serve.serving", logged with the model as code) counts too."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in tree.body if top_level_only else ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "boneage":
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if module_file(f"{node.module}.{a.name}")}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "boneage"}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("boneage."):
            found |= {node.value} if module_file(node.value) else set()
    return found


def closure(roots: set[str], top_level_only_for: frozenset = frozenset()) -> set[Path]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(imported(module_file(name), top_level_only=name in top_level_only_for))
    # Importing boneage.a.b runs boneage/a/__init__.py first: each package on the way counts too.
    packages = {".".join(name.split(".")[:i]) for name in seen for i in range(1, name.count(".") + 1)}
    return {module_file(name) for name in seen | packages | {"boneage"}}


def expected_code_deps(stage: str) -> set[str]:
    files = closure({STAGE_MODULES[stage], FRONT}, frozenset({FRONT}))
    deps = {str(f.relative_to(REPO)) for f in files}
    # Data the closure reads: the presets (through config) and the packaged tables.
    sources = "".join(f.read_text() for f in files)
    for folder in DATA_DIRS:
        if f"{folder}/" in sources or f'"{folder}"' in sources:
            deps.add(f"src/boneage/{folder}")
    return deps


def listed_code_deps(stage: str) -> set[str]:
    stage_spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]
    stage_spec = stage_spec.get("do", stage_spec)  # a foreach stage lists its deps under `do`
    return {d for d in stage_spec["deps"] if d.startswith("src/")}


@pytest.mark.parametrize("stage", sorted(STAGE_MODULES))
def test_each_stage_depends_on_exactly_the_code_it_imports(stage):
    expected, listed = expected_code_deps(stage), listed_code_deps(stage)
    assert listed == expected, f"dvc.yaml {stage}: missing {sorted(expected - listed)}, not imported {sorted(listed - expected)}"


def test_the_closure_follows_imports_inside_functions_and_module_names():
    # train imports the pyfunc's scoring lazily and logs boneage.serve.serving by name: both must count.
    deps = expected_code_deps("train")
    assert {"src/boneage/serve/scoring.py", "src/boneage/serve/serving.py", "src/boneage/config.py"} <= deps
    assert "src/boneage/data/ingest.py" not in deps
