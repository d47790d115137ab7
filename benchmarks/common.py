"""Shared helpers: machine facts, medians of repeated runs, and one results file."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from datetime import date
from pathlib import Path

RESULTS = Path(__file__).parent / "results.json"


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "date": date.today().isoformat()}


def median_rate(fn, items: int, repeats: int = 3) -> tuple[float, list[float]]:
    """Items per second, median of ``repeats`` timed runs of ``fn()``."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        rates.append(items / (time.perf_counter() - start))
    return statistics.median(rates), rates


def record(name: str, result: dict) -> None:
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data["machine"] = machine()
    data[name] = result
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    write_markdown(data)


def write_markdown(data: dict) -> None:
    lines = [f"Machine: {data['machine']['cpu']}, {data['machine']['cores']} cores, measured {data['machine']['date']}.", "",
             "| benchmark | measured | goal | verdict |", "|---|---|---|---|"]
    for name, r in data.items():
        if name == "machine":
            continue
        lines.append(f"| {name} | {r['summary']} | {r.get('goal', '')} | {r.get('verdict', '')} |")
    (Path(__file__).parent / "results.md").write_text("\n".join(lines) + "\n")
