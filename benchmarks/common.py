"""Shared helpers: machine facts, medians of repeated runs, synthetic data for the benchmarks, and
one results file (JSON), and the generated blocks of the README and docs/ pages written from it."""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import time
from datetime import date
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
RESULTS = HERE / "results.json"
RESULTS_MD = HERE / "results.md"
README = PROJECT / "README.md"
DOCS = PROJECT / "docs"
BENCH_PAGE = DOCS / "benchmarks.md"
# Scratch space for generated data and models; reused between benchmarks of one `make bench`.
WORK = HERE / ".work"
SAMPLES = PROJECT.parent / "shared" / "data" / "rsna-sample" / "boneage-training-dataset"
BENCH_BLOCK = "bench"
# Each benchmark is repeated and its median reported (the issue asks for at least 3).
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "tensorflow": _package_version("tensorflow")
        if _package_version("tensorflow") != "not installed"
        else _package_version("tensorflow-cpu"),
        "keras": _package_version("keras"),
        "date": date.today().isoformat(),
    }


def median_rate(fn, items: int, repeats: int = REPEATS) -> tuple[float, list[float]]:
    """Items per second, median of ``repeats`` timed runs of ``fn()``."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        rates.append(items / (time.perf_counter() - start))
    return statistics.median(rates), rates


def fit_images_per_second(model, dataset, batch_size: int, steps: int) -> float:
    """Training images/s of ``model.fit`` over ``steps`` batches, timed from the end of its first
    batch to the end of its last: the steady state, without the iterator's start-up (a real run pays
    that once, not every step)."""
    import keras  # here, not at the top: the table and the CPU-only benchmarks need no TensorFlow

    class StepClock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            if batch == 0:
                self.start = now
            self.end, self.batches = now, batch

    clock = StepClock()
    model.fit(dataset, epochs=1, steps_per_epoch=steps + 1, callbacks=[clock], verbose=0)
    return clock.batches * batch_size / (clock.end - clock.start)


def rounded(values, digits: int = 1) -> list[float]:
    return [round(float(v), digits) for v in values]


def verdict(ok: bool) -> str:
    return "met" if ok else "missed"


def load_results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def record(name: str, result: dict) -> None:
    """Store one benchmark's result (replacing its previous one) and re-render the tables."""
    data = load_results()
    data["machine"] = machine()
    data[name] = {**result, "measured": date.today().isoformat()}
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    write_markdown(data)


def markdown_table(data: dict) -> str:
    m = data["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, TensorFlow {m.get('tensorflow', '?')}, "
        f"Python {m['python']}; last measured {m['date']}. Each figure is the median of "
        f"{REPEATS} or more runs (all runs are in `benchmarks/results.json`).",
        "",
        "| benchmark | measured | goal | verdict |",
        "|---|---|---|---|",
    ]
    for name, r in data.items():
        if name == "machine" or not isinstance(r, dict):
            continue
        lines.append(f"| {r.get('title', name)} | {r['summary']} | {r.get('goal', '')} | {r.get('verdict', '')} |")
    return "\n".join(lines) + "\n"


def write_markdown(data: dict) -> None:
    table = markdown_table(data)
    RESULTS_MD.write_text(table)
    # docs/benchmarks.md shows the same table between two markers, so it cannot drift from the results.
    replace_block(BENCH_PAGE, BENCH_BLOCK, table)


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def block_text(page: Path, name: str) -> str:
    """What stands between a page's markers of block ``name``; an error when they are missing."""
    start, end = markers(name)
    match = re.search(re.escape(start) + "(.*?)" + re.escape(end), page.read_text(), re.S)
    if not match:
        raise SystemExit(f"error: {page} has no {start} ... {end} block to write")
    return match.group(1)


def replace_block(page: Path, name: str, body: str) -> None:
    """Put ``body`` between a page's markers of block ``name``; an error when they are missing, so
    that a figure never silently stops being written."""
    block_text(page, name)
    start, end = markers(name)
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    page.write_text(pattern.sub(lambda _: f"{start}\n{body}{end}", page.read_text()))


def bench_params(**overrides):
    """The project's params.yaml with dotted overrides (the same typed config every step reads)."""
    from boneage.config import load_params

    return load_params(PROJECT / "params.yaml", overrides)


def prepared_synthetic(count: int, image_size: int, seed: int = 0, film_px: int | None = None) -> Path:
    """Synthetic RSNA-format films (``film_px``: params' size by default) -> ingest -> preprocess at
    ``image_size``: the TFRecords that training reads. Cached under benchmarks/.work."""
    from boneage.data.ingest import ingest
    from boneage.data.preprocess import preprocess
    from boneage.data.synth import write_dataset

    params = bench_params(**{"preprocess.image_size": image_size, "seed": seed})
    film_px = film_px or params.data.synthetic.image_size
    out = WORK / f"data-{count}-{film_px}film-{image_size}px-seed{seed}"
    if (out / "preprocessed" / "manifest.csv").is_file():
        return out / "preprocessed"
    raw = out / "raw"
    if not (raw / "boneage-training-dataset.csv").is_file():
        write_dataset(raw, count, seed, size=film_px, label_noise_sd=params.data.synthetic.label_noise_sd_months)
    result = ingest(params, out / "ingest", source=str(raw))
    preprocess(params, result.manifest_path, out / "preprocessed")
    return out / "preprocessed"
