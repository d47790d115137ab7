"""Serving at scale, measured on this machine (2 cores):

``load``: KServe's server (boneage.serve.kserve_model, from .venv-serve) over a trained model on
127.0.0.1, sent real full-resolution films (../shared/data/rsna-sample) by N client threads x M
requests each, one film a request, V1 protocol; bounded (it stops after N x M requests). Per setting:
p50 and p99 latency, films/s, the server's peak resident memory (what kserve.memory must cover).
Once for one model and once for an ensemble of three copies of it (the same weights three times: an
ensemble's cost, whatever its members learned), with the check fitted on the model's films.

``batch``: one batch-pipeline worker's films/s: a shard of the real films scored by
boneage.serve.batch.score_shard (read, crop, check, model, with batch.shard_workers threads), and
what K such workers would take for 100,000 films.

    python -m benchmarks.bench_serving load --model models --data data/preprocessed
    python -m benchmarks.bench_serving batch --model models
"""

from __future__ import annotations

import argparse
import base64
import statistics
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import requests

from benchmarks.common import PROJECT, SAMPLES, WORK, bench_params, load_results, machine, record
from boneage.orchestrate.services import free_port

RESULT_KEY = "serving"
SERVE_PYTHON = PROJECT / ".venv-serve" / "bin" / "python"
SETTINGS = ((1, 40), (4, 20))  # (clients, requests each)
WARMUP_REQUESTS = 3
ENSEMBLE_MEMBERS = 3
ARCHIVE_FILMS = 100_000
WORKER_COUNTS = (1, 10, 50)
BATCH_REPEAT = 5  # the 40 sample films, 5 times: a 200-row shard
START_TIMEOUT_S = 300


def _films() -> list[Path]:
    films = sorted(SAMPLES.glob("*.png"))
    if not films:
        raise SystemExit(f"no films at {SAMPLES} (this benchmark reads ../shared/data)")
    return films


class _Server:
    """The KServe server over ``model`` on a free port; its peak RSS, sampled while it runs."""

    def __init__(self, model: Path):
        import psutil

        self.port = free_port()
        command = [str(SERVE_PYTHON), "-m", "boneage.serve.kserve_model", "--model_dir", str(model)]
        command += ["--model_name", "boneage", "--http_port", str(self.port)]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.psutil, self.peak_rss, self.stop_sampling = psutil, 0, threading.Event()
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.5)
        else:
            self.close()
            raise SystemExit(f"the server on {model} never became ready")
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        process = self.psutil.Process(self.proc.pid)
        while not self.stop_sampling.wait(0.2):
            self.peak_rss = max(self.peak_rss, process.memory_info().rss)

    def close(self) -> None:
        self.stop_sampling.set()
        self.proc.terminate()
        self.proc.wait(timeout=60)


def _load(url: str, bodies: list[dict], clients: int, each: int) -> dict:
    latencies: list[float] = []
    statuses: list[int] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        with requests.Session() as session:
            for i in range(each):
                body = bodies[(k * each + i) % len(bodies)]
                start = time.perf_counter()
                reply = session.post(f"{url}/v1/models/boneage:predict", json=body, timeout=300)
                with lock:
                    latencies.append(1000 * (time.perf_counter() - start))
                    statuses.append(reply.status_code)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {
        "clients": clients,
        "requests": clients * each,
        "p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "p99_ms": round(float(np.percentile(latencies, 99)), 1),
        "films_per_s": round(len(latencies) / wall, 2),
        "answered_200": statuses.count(200),
    }


def load_test(model: Path) -> dict:
    bodies = [{"instances": [{"image": base64.b64encode(f.read_bytes()).decode(), "sex": "F"}]} for f in _films()]
    server = _Server(model)
    try:
        _load(server.url, bodies, 1, WARMUP_REQUESTS)
        runs = [_load(server.url, bodies, clients, each) for clients, each in SETTINGS]
        for run in runs:
            print(f"  {run}", flush=True)
        return {"runs": runs, "peak_rss_mb": round(server.peak_rss / 2**20)}
    finally:
        server.close()


def make_ensemble(member: Path, data: Path, out: Path) -> Path:
    """ENSEMBLE_MEMBERS copies of ``member`` combined as the ensemble step combines members, with a
    check fitted on ``data`` (the member's own preprocessed films) and the member's predictor.json."""
    import shutil

    from boneage.contracts import MODEL_FILE, PREDICTOR_FILE
    from boneage.model.network import load_predict_model
    from boneage.training.ensemble import combined_model, member_stack
    from boneage.training.fit_ood import fit_for_model

    params = bench_params()
    size = load_predict_model(member / MODEL_FILE).input_shape[0][1]
    members = [(f"copy{i}", load_predict_model(member / MODEL_FILE)) for i in range(ENSEMBLE_MEMBERS)]
    inputs, stack, tap = member_stack(members, [(0.0, 1.0)], size)
    model = combined_model(inputs, stack, tap, np.full(ENSEMBLE_MEMBERS, 1 / ENSEMBLE_MEMBERS), 0.0)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / MODEL_FILE)
    shutil.copyfile(member / PREDICTOR_FILE, out / PREDICTOR_FILE)
    fit_for_model(
        model, data, out, params.model_copy(update={"preprocess": params.preprocess.model_copy(update={"image_size": size})})
    )
    return out


def load(model: Path, data: Path) -> None:
    print(f"one model: {model}", flush=True)
    single = load_test(model)
    ensemble_dir = make_ensemble(model, data, WORK / "serving-ensemble")
    print(f"an ensemble of {ENSEMBLE_MEMBERS}", flush=True)
    ensemble = load_test(ensemble_dir)
    _store(
        "load", {"model": str(model), "films": len(_films()), "single": single, "ensemble": ensemble, "members": ENSEMBLE_MEMBERS}
    )


def batch(model: Path) -> None:
    from boneage.serve.batch import score_shard
    from boneage.serve.predict import Predictor

    params = bench_params()
    shard = WORK / "serving-shard.csv"
    films = _films() * BATCH_REPEAT
    rows = [f"{i + 2},f{i},{f},F," for i, f in enumerate(films)]
    shard.write_text("csv_line,id,path,sex,chronological_age\n" + "\n".join(rows) + "\n")
    predictor = Predictor.load(str(model))
    score_shard(predictor, shard, WORK / "serving-warmup.csv", params.batch.shard_workers)  # warm
    rates = []
    for _ in range(3):
        result = score_shard(predictor, shard, WORK / "serving-scored.csv", params.batch.shard_workers)
        rates.append(result.films_per_second)
    rate = statistics.median(rates)
    estimate = {str(k): round(ARCHIVE_FILMS / (k * rate) / 60, 1) for k in WORKER_COUNTS}
    print(f"one worker: {rate:.1f} films/s; {ARCHIVE_FILMS} films: {estimate} minutes by workers", flush=True)
    _store(
        "batch",
        {
            "model": str(model),
            "shard_films": len(films),
            "films_per_s_per_worker": round(rate, 2),
            "runs_films_per_s": [round(r, 2) for r in rates],
            "shard_workers": params.batch.shard_workers,
            "minutes_for_100k_by_workers": estimate,
        },
    )


MONITOR_WINDOWS = 3  # disjoint windows of clean test films: how often a clean window alerts
MONITOR_WINDOW_FILMS = 200
MONITOR_SEED = 7  # the draw of the clean windows


def _shifted(films: list[Path], out: Path) -> list[Path]:
    """The films darker (gamma 2) and turned a quarter turn clockwise."""
    import cv2

    out.mkdir(parents=True, exist_ok=True)
    for film in films:
        image = cv2.imread(str(film), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0
        cv2.imwrite(str(out / film.name), np.rot90(255.0 * image**2, k=-1).astype(np.uint8))
    return [out / f.name for f in films]


def _window(predictor, films: list[Path], sink: Path, reference, expected: float, cfg, sexes: dict[str, str]) -> dict:
    import shutil

    from boneage.serve.monitor import compare
    from boneage.serve.monitoring import read_records, records_of, write
    from boneage.serve.predict import predict_files

    shutil.rmtree(sink, ignore_errors=True)
    for sex in ("F", "M"):  # each film with its own sex, as a clinic sends it
        mine = [f for f in films if sexes[f.stem] == sex]
        write(records_of(predict_files(predictor, mine, sex=sex), 1.0, "bench"), str(sink))
    result = compare(read_records(str(sink)), reference, cfg, expected)
    return {
        "films": result.films,
        "alerts": result.alerts,
        "smallest_p": min([s.p_value for s in result.shifts] + [r.p_value for r in result.rates]),
        "largest_shift_sd": max(s.shift_sd for s in result.shifts),
        "per_test_alpha": result.per_test_alpha,
    }


def monitor(model: Path, manifest: Path) -> None:
    """Random clean windows of the model's test films (never trained on), the lowest test ids as a
    window of their own, and the first clean window darkened and turned, each against the model's
    reference: what alerts and how far from the limits each window lies."""
    from boneage.contracts import read_manifest
    from boneage.serve.monitor_report import load_reference
    from boneage.serve.predict import Predictor

    params, predictor = bench_params(), Predictor.load(str(model))
    reference, expected = load_reference(str(model))
    rows = read_manifest(manifest).query("split == 'test'")
    test = [(manifest.parent / p).resolve() for p in rows["path"]]  # paths relative to it
    sexes = {film: "M" if male else "F" for film, male in zip(rows["id"], rows["male"], strict=True)}
    need = MONITOR_WINDOWS * MONITOR_WINDOW_FILMS
    if len(test) < need:
        raise SystemExit(f"{manifest}: {len(test)} test films, the monitor benchmark needs {need}")
    # Clean windows are random draws of the test films. The films in id order are not: a stretch of
    # consecutive ids is one part of the archive, and is watched as a window of its own.
    drawn = [test[i] for i in np.random.default_rng(MONITOR_SEED).permutation(len(test))]

    def judge(films: list[Path]) -> dict:
        return _window(predictor, films, WORK / "monitor-records", reference, expected, params.monitor, sexes)

    windows = {}
    for k in range(MONITOR_WINDOWS):
        films = drawn[k * MONITOR_WINDOW_FILMS : (k + 1) * MONITOR_WINDOW_FILMS]
        windows[f"clean-{k + 1}"] = judge(films)
    by_id = test[:MONITOR_WINDOW_FILMS]
    windows["first-ids"] = judge(by_id)
    shifted = _shifted(drawn[:MONITOR_WINDOW_FILMS], WORK / "monitor-shifted")
    windows["darkened-turned"] = judge(shifted)
    for name, w in windows.items():
        print(f"  {name}: {len(w['alerts'])} alerts, smallest p {w['smallest_p']:.1e}", flush=True)
    _store("monitor", {"model": str(model), "reference_films": len(reference), "windows": windows})


def _store(part: str, value: dict) -> None:
    data = {k: v for k, v in load_results().get(RESULT_KEY, {}).items() if k in ("load", "batch", "monitor")}
    data[part] = {**value, "machine": machine()}
    load_part, batch_part = data.get("load"), data.get("batch")
    parts = []
    if load_part:
        one, many = load_part["single"]["runs"][-1], load_part["ensemble"]["runs"][-1]
        parts.append(
            f"KServe, {one['clients']} clients: one model p50 {one['p50_ms']:.0f} ms, p99 {one['p99_ms']:.0f} ms, "
            f"{one['films_per_s']:.1f} films/s; ensemble of {load_part['members']} p50 {many['p50_ms']:.0f} ms, "
            f"{many['films_per_s']:.1f} films/s"
        )
    if batch_part:
        parts.append(f"batch: {batch_part['films_per_s_per_worker']:.1f} films/s per 2-core worker")
    runs = [{"part": name, **data[name]} for name in ("load", "batch", "monitor") if name in data]
    record(
        RESULT_KEY,
        {
            **data,
            "runs": runs,
            "title": "serving at scale (KServe load, batch scoring, the monitor's windows)",
            "summary": "; ".join(parts),
            "goal": "measured (no goal set)",
            "verdict": "",
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("load", "batch", "monitor"))
    parser.add_argument("--model", type=Path, default=PROJECT / "models", help="a trained model's folder")
    parser.add_argument("--data", type=Path, default=PROJECT / "data" / "preprocessed", help="its preprocessed films (load)")
    parser.add_argument(
        "--manifest", type=Path, default=PROJECT / "data" / "ingest" / "manifest.csv", help="its ingest manifest (monitor)"
    )
    args = parser.parse_args()
    if not (args.model / "ood.npz").is_file():
        raise SystemExit(f"{args.model}: no trained model with its check (train one: make real-data)")
    if args.part == "load":
        load(args.model, args.data)
    elif args.part == "batch":
        batch(args.model)
    else:
        monitor(args.model, args.manifest)


if __name__ == "__main__":
    main()


PAGE, BLOCK = PROJECT / "docs" / "serving-at-scale.md", "serving"


def block(data: dict) -> str:
    """The page's figures, from results.json "serving"."""
    if not data:
        return "Not measured yet: `python -m benchmarks.bench_serving load` and `... batch` (after `make real-data`).\n"
    lines = []
    for name in ("load", "monitor", "batch"):
        if name in data:
            m = data[name].get("machine", {})
            lines.append(f"{name}: measured {m.get('date', '?')} on {m.get('cpu', '?')}, {m.get('cores', '?')} cores.")
    lines.append("")
    load_part, batch_part = data.get("load"), data.get("batch")
    if load_part:
        lines += [
            f"KServe's server on 127.0.0.1, 2 cores, one real full-resolution film a request "
            f"({load_part['films']} films in turn):",
            "",
            "| model | clients x requests | p50 ms | p99 ms | films/s | answered 200 | server peak RSS |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, label in (("single", "one model"), ("ensemble", f"ensemble of {load_part['members']}")):
            part = load_part[name]
            for run in part["runs"]:
                lines.append(
                    f"| {label} | {run['clients']} x {run['requests'] // run['clients']} | {run['p50_ms']:.0f} | "
                    f"{run['p99_ms']:.0f} | {run['films_per_s']:.1f} | {run['answered_200']} of {run['requests']} | "
                    f"{part['peak_rss_mb']} MB |"
                )
        lines.append("")
    monitor_part = data.get("monitor")
    if monitor_part:
        lines += [
            f"`boneage monitor` against the model's reference ({monitor_part['reference_films']} validation films), "
            "windows of 200 of its test films, each film with its own sex: `clean-k`, random draws; `first-ids`, the 200 "
            "lowest ids (consecutive ids are one stretch of the archive, and it differs); `darkened-turned`, clean-1's films "
            "darker (gamma 2) and turned a quarter turn:",
            "",
            "| window | alerts | smallest p of its tests | largest shift (reference SDs) |",
            "|---|---|---|---|",
        ]
        for name, w in monitor_part["windows"].items():
            what = "; ".join(a.split(":", 2)[1].strip() for a in w["alerts"]) or "none"
            lines.append(f"| {name} | {what} | {w['smallest_p']:.1e} | {w['largest_shift_sd']:.2f} |")
        alpha = next(iter(monitor_part["windows"].values()))["per_test_alpha"]
        lines += ["", f"Each test alerts below p = {alpha:.1e} (monitor.alpha split over its tests).", ""]
    if batch_part:
        by = batch_part["minutes_for_100k_by_workers"]
        spread = ", ".join(f"{r:.1f}" for r in batch_part["runs_films_per_s"])
        lines += [
            f"Batch scoring: one worker (2 cores, {batch_part['shard_workers']} reading threads) scores "
            f"**{batch_part['films_per_s_per_worker']:.1f} films/s** (runs: {spread}) on a {batch_part['shard_films']}-row shard "
            "of full-resolution films. 100,000 films would take "
            + ", ".join(f"{m:.0f} min with {k} worker{'s' if k != '1' else ''}" for k, m in by.items())
            + " of scoring (plus each step's start: a pod, its image pull and TensorFlow's import).",
            "",
        ]
    return "\n".join(lines)
