"""The README and the docs/ pages stay true: each generated block shows what its code writes from
benchmarks/results.json, every benchmark records its machine, runs and verdict, the README is read
in five minutes and its commands exist as written, and the components' README is their own."""

from __future__ import annotations

import json
import re
import shlex
import subprocess

import pytest
from typer.testing import CliRunner

from benchmarks.common import README, RESULTS, RESULTS_MD, block_text, markdown_table
from benchmarks.pages import BLOCKS
from boneage.cli import app
from tests.conftest import REPO

README_MAX_LINES = 160


@pytest.mark.parametrize(("page", "name"), list(BLOCKS), ids=[f"{p.name}:{n}" for p, n in BLOCKS])
def test_each_generated_block_shows_what_its_code_writes(page, name):
    results = json.loads(RESULTS.read_text())
    assert block_text(page, name).strip() == BLOCKS[page, name](results).strip()


def test_the_benchmark_table_is_the_one_make_bench_wrote():
    assert RESULTS_MD.read_text().strip() == markdown_table(json.loads(RESULTS.read_text())).strip()


def test_a_missing_marker_is_an_error_not_a_silent_skip(tmp_path):
    from benchmarks.common import replace_block

    page = tmp_path / "page.md"
    page.write_text("no markers here\n")
    with pytest.raises(SystemExit, match="no <!-- figures:start -->"):
        replace_block(page, "figures", "text")


def test_every_benchmark_records_the_machine_its_runs_and_a_verdict():
    results = json.loads(RESULTS.read_text())
    machine = results.pop("machine")
    assert machine["cores"] and machine["cpu"] and machine["tensorflow"] and machine["date"]
    for name, result in results.items():
        assert result["runs"], f"{name}: no runs recorded"
        has_goal = not result["goal"].startswith("measured")
        assert result["verdict"] in (("met", "missed") if has_goal else ("",)), name


def test_the_readme_is_read_in_five_minutes():
    assert len(README.read_text().splitlines()) <= README_MAX_LINES


def _readme_commands() -> list[list[str]]:
    """The commands in the README's code blocks (comments and continuation lines dropped)."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line and not line.startswith("#")]


def test_every_make_target_in_the_readme_exists():
    """Each `make X` of the README is a rule of the Makefile (read from make's own database: `make -n`
    would run the recipe lines that call $(MAKE))."""
    targets = {cmd[1] for cmd in _readme_commands() if cmd[0] == "make"}
    assert {"demo", "test", "real-data", "serve"} <= targets
    database = subprocess.run(["make", "-pq", "-f", "Makefile", "help"], cwd=REPO, capture_output=True, text=True).stdout
    rules = set(re.findall(r"^([a-z][a-z-]*):", database, re.M))
    assert targets <= rules, f"not rules of the Makefile: {sorted(targets - rules)}"


def test_every_boneage_command_in_the_readme_parses_as_written():
    commands = [cmd[1:] for cmd in _readme_commands() if cmd[0] == "boneage"]
    assert commands
    for args in commands:
        # The options are checked by the command's own parser; --help stops it before any work.
        words = [a for a in args if not a.startswith("-")][:2]
        path = [w for w in words if w in ("predict", "data", "synth", "ingest", "preprocess", "train")]
        result = CliRunner().invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (args, result.output)
        for option in (a.split("=")[0] for a in args if a.startswith("--")):
            assert option in result.output, f"`boneage {' '.join(args)}`: {option} is not an option of `boneage {' '.join(path)}`"


def test_the_components_readme_is_written_from_their_code():
    from boneage.orchestrate.components import README as COMPONENTS_README
    from boneage.orchestrate.components import readme

    assert COMPONENTS_README.read_text() == readme()
