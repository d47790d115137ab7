"""How long the commands a newcomer runs take, from a fresh clone: `make demo`, `make demo-ensemble`,
`make test-fast`, `make test` and `.ci/run`, each timed by this script on a fresh clone of its own
(so each pays for its install), with the per-test durations `make test` leaves in reports/test-durations.json.
Stored under "timings" in benchmarks/results.json; the README's and docs/testing.md's blocks are
written from it (benchmarks/pages.py).

    python -m benchmarks.timings run [--only demo test ...]   # clones HEAD into a temporary folder
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.common import PROJECT, load_results, machine, record

RESULT_KEY = "timings"
# name -> (the command, its goal in minutes)
COMMANDS = {
    "demo": ("make demo", 15),
    "demo-ensemble": ("make demo-ensemble", None),
    "test-fast": ("make test-fast", 3),
    "test": ("make test", 12),
    "ci": (".ci/run", 20),
}
SLOWEST = 12


def _timed(command: str, cwd: Path, log: Path) -> float:
    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(["bash", "-c", command], cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"`{command}` failed (exit {proc.returncode}) after {seconds:.0f} s; see {log}")
    return seconds


def _pipeline_seconds(log: Path) -> float | None:
    for line in log.read_text().splitlines()[::-1]:
        if line.startswith("pipeline wall time:"):
            return float(line.split(":")[1].split()[0])
    return None


def _tests(clone: Path, command: str) -> dict:
    record_ = json.loads((clone / "reports" / "test-durations.json").read_text())
    slowest = dict(list(record_["durations"].items())[:SLOWEST])
    kept = {k: record_[k] for k in ("tests", "outcomes", "session_seconds", "markers")}
    modules: dict[str, dict[str, float]] = {}
    for kind in ("durations", "cpu_seconds"):
        for nodeid, seconds in record_.get(kind, {}).items():
            module = modules.setdefault(nodeid.split("::")[0], {"durations": 0.0, "cpu_seconds": 0.0})
            module[kind] += seconds
    rounded = {m: {k: round(v, 1) for k, v in t.items()} for m, t in modules.items()}
    by_module = dict(sorted(rounded.items(), key=lambda kv: -kv[1]["durations"]))
    return kept | {"command": command, "workers": record_.get("workers", 1), "slowest": slowest, "modules": by_module}


def _fresh_clone() -> tuple[Path, str]:
    """HEAD cloned into a temporary folder, with ../shared beside it as beside the project."""
    clone = Path(tempfile.mkdtemp(prefix="boneage-timings-")) / "boneage"
    subprocess.run(["git", "clone", "-q", str(PROJECT), str(clone)], check=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True).stdout.strip()
    shared = PROJECT.parent / "shared"
    if shared.is_dir():
        (clone.parent / "shared").symlink_to(shared)  # the tests read ../shared/data beside the clone
    return clone, commit


def run(only: list[str]) -> dict:
    """Each command on its own fresh clone, so that each pays for its own install."""
    done = dict(load_results().get(RESULT_KEY, {}).get("commands", {}))
    tests = None
    for name in only:
        command, goal = COMMANDS[name]
        clone, commit = _fresh_clone()
        log = Path(tempfile.gettempdir()) / f"boneage-timings-{name}.log"
        seconds = _timed(command, clone, log)
        done[name] = {"command": command, "seconds": round(seconds, 1), "goal_minutes": goal, "commit": commit}
        if name == "demo":
            done[name]["pipeline_seconds"] = _pipeline_seconds(log)
        if name == "test" or (name == "ci" and "test" not in only):  # make test's own tests where it ran
            tests = _tests(clone, command)
        print(f"{command}: {seconds / 60:.1f} min", flush=True)
        shutil.rmtree(clone.parent, ignore_errors=True)
    previous = load_results().get(RESULT_KEY, {})
    return {"commands": done, "tests": tests or previous.get("tests", {}), "machine": machine()}


def summary(data: dict) -> dict:
    timed = {k: v for k, v in data["commands"].items() if v.get("goal_minutes")}
    met = all(v["seconds"] <= 60 * v["goal_minutes"] for v in timed.values())
    return {
        "title": "make demo, make test, make test-fast and .ci/run from a fresh clone",
        "summary": "; ".join(f"{v['command']} {v['seconds'] / 60:.1f} min" for v in data["commands"].values()),
        "goal": "; ".join(f"{v['command']} <= {v['goal_minutes']} min" for v in timed.values()),
        "verdict": "met" if met else "missed",
        "runs": list(data["commands"].values()),
    }


def block(results: dict) -> str:
    data = results.get(RESULT_KEY)
    if not data:
        return "Not measured yet: `python -m benchmarks.timings run` times them from a fresh clone.\n"
    m = data["machine"]
    lines = [
        "| command | minutes | goal | commit |",
        "|---|---:|---:|---|",
        *(
            f"| `{v['command']}` | {v['seconds'] / 60:.1f}"
            + (f" (pipeline {v['pipeline_seconds'] / 60:.1f})" if v.get("pipeline_seconds") else "")
            + f" | {'≤ ' + str(v['goal_minutes']) if v.get('goal_minutes') else '–'} | {v.get('commit', '?')} |"
            for v in data["commands"].values()
        ),
        "",
        f"Measured {m['date']} from a fresh clone on {m['cpu']} ({m['cores']} cores) by `benchmarks/timings.py`; "
        f"`{data['tests'].get('command', 'make test')}` ran {data['tests'].get('tests', '?')} tests "
        "([docs/testing.md](docs/testing.md) lists the slowest).",
    ]
    return "\n".join(lines) + "\n"


def tests_block(results: dict) -> str:
    tests = results.get(RESULT_KEY, {}).get("tests")
    if not tests:
        return "Not measured yet: `python -m benchmarks.timings run --only test`.\n"
    workers = tests.get("workers", 1)
    lines = [
        f"The last timed `{tests.get('command', 'make test')}` (from a fresh clone, by `benchmarks/timings.py`): "
        f"{tests['tests']} tests, {', '.join(f'{n} {k}' for k, n in tests['outcomes'].items())}, "
        f"{tests['session_seconds'] / 60:.1f} minutes of pytest"
        + (f" on {workers} workers side by side (so the tests' own times add up to more)" if workers > 1 else "")
        + ". The slowest, with setup and teardown:",
        "",
        "| test | seconds |",
        "|---|---:|",
        *(f"| `{name}` | {seconds:.1f} |" for name, seconds in tests["slowest"].items()),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("run",))
    parser.add_argument("--only", nargs="*", default=list(COMMANDS), choices=list(COMMANDS))
    args = parser.parse_args()
    data = run(args.only)
    record(RESULT_KEY, {**data, **summary(data)})
    print("recorded; `python -m benchmarks.pages` writes the README's and docs/testing.md's blocks from it")


if __name__ == "__main__":
    main()
