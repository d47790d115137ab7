"""Every generated block of the README and the docs/ pages: where it stands and the code that
writes it from benchmarks/results.json. `python -m benchmarks.pages` rewrites them all;
tests/code/test_pages.py checks that each shows what its code writes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from benchmarks import (
    bench_demo,
    bench_edges,
    bench_ensemble,
    bench_framing,
    bench_ood,
    bench_serving,
    figures,
    real_report,
    timings,
)
from benchmarks.common import BENCH_BLOCK, BENCH_PAGE, DOCS, README, load_results, markdown_table, replace_block

# (page, block name) -> the block's text, from the whole results file
BLOCKS: dict[tuple[Path, str], Callable[[dict], str]] = {
    (README, "figures"): figures.block,
    (README, "times"): timings.block,
    (BENCH_PAGE, BENCH_BLOCK): markdown_table,
    (bench_demo.PAGE, bench_demo.BLOCK): lambda r: bench_demo.block(r.get(bench_demo.RESULT_KEY, {})),
    (real_report.PAGE, real_report.BLOCK): lambda r: real_report.block(r.get("real_data", {})),
    (bench_framing.PAGE, bench_framing.BLOCK): lambda r: bench_framing.block(r.get(bench_framing.RESULT_KEY, {})),
    (bench_edges.PAGE, bench_edges.BLOCK): lambda r: bench_edges.block(r.get(bench_edges.RESULT_KEY, {})),
    (bench_ensemble.PAGE, bench_ensemble.BLOCK): lambda r: bench_ensemble.block(r.get(bench_ensemble.RESULT_KEY, {})),
    (bench_ood.PAGE, bench_ood.BLOCK): lambda r: bench_ood.block(r.get(bench_ood.RESULT_KEY, {})),
    (DOCS / "testing.md", "tests"): timings.tests_block,
    (bench_serving.PAGE, bench_serving.BLOCK): lambda r: bench_serving.block(r.get(bench_serving.RESULT_KEY, {})),
    (DOCS / "model-card.md", "card"): real_report.model_card_block,
}


def write_all() -> None:
    results = load_results()
    for (page, name), render in BLOCKS.items():
        replace_block(page, name, render(results))


if __name__ == "__main__":
    write_all()
