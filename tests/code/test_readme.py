"""The README is the user's manual: its benchmark table is the one `make bench` last wrote, its
real-data figures the ones `make bench-real` last wrote, its demo figures the ones
`benchmarks/bench_demo.py` last wrote, and its ensemble figures `benchmarks/bench_ensemble.py`'s."""

from __future__ import annotations

import json

from benchmarks.common import README, README_END, README_START, RESULTS, RESULTS_MD, markdown_table


def test_readme_shows_the_benchmark_table_that_make_bench_wrote():
    text = README.read_text()
    shown = text[text.index(README_START) + len(README_START) : text.index(README_END)].strip()
    assert shown == RESULTS_MD.read_text().strip()
    assert shown == markdown_table(json.loads(RESULTS.read_text())).strip()


def test_every_benchmark_records_the_machine_its_runs_and_a_verdict():
    results = json.loads(RESULTS.read_text())
    machine = results.pop("machine")
    assert machine["cores"] and machine["cpu"] and machine["tensorflow"] and machine["date"]
    for name, result in results.items():
        assert result["runs"], f"{name}: no runs recorded"
        has_goal = not result["goal"].startswith("measured")
        assert result["verdict"] in (("met", "missed") if has_goal else ("",)), name


def test_readme_shows_the_real_data_figures_that_make_bench_real_wrote():
    import re

    from benchmarks.real_report import END, START, block

    data = json.loads(RESULTS.read_text()).get("real_data", {})
    text = README.read_text()
    shown = re.search(re.escape(START) + "(.*?)" + re.escape(END), text, re.S).group(1).strip()
    assert shown == block(data).strip()


def test_readme_shows_the_demo_figures_that_bench_demo_wrote():
    import re

    from benchmarks.bench_demo import END, START, block

    data = json.loads(RESULTS.read_text()).get("demo", {})
    text = README.read_text()
    shown = re.search(re.escape(START) + "(.*?)" + re.escape(END), text, re.S).group(1).strip()
    assert shown == block(data).strip()


def test_readme_shows_the_ensemble_figures_that_bench_ensemble_wrote():
    import re

    from benchmarks.bench_ensemble import END, START, block

    data = json.loads(RESULTS.read_text()).get("ensemble", {})
    text = README.read_text()
    shown = re.search(re.escape(START) + "(.*?)" + re.escape(END), text, re.S).group(1).strip()
    assert shown == block(data).strip()
