"""Does the edge test refuse every image with no edges, and no real film? `boneage.data.handcrop`
refuses an image whose thumbnail has almost no |Laplacian| (a smooth ramp, a gradient, a flat field)
before anything else looks at it. This measures the test's figure on:

- every real RSNA training film of SOURCE (the 100 px copies: the faintest films there are);
- the full-resolution samples (../shared/data/rsna-sample);
- synthetic films of the demo's generator, at several sizes;
- linear ramps and radial gradients from 100 px to 3000 px, 8 and 16 bit, and at film sizes the
  same with sensor noise (a flat-field exposure). Noise on a small image is edges by this measure
  (at 100-256 px, sd 2 grey levels reaches 8-13): what refuses such an image is the model's learned
  out-of-distribution check, not this test.

Results go to benchmarks/results.json ("edges") and the block in docs/real-data.md; about two
minutes on 2 cores, no model needed.

    python -m benchmarks.bench_edges --source ../shared/data/rsna-100px
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from benchmarks.bench_framing import IMAGE_DIR, ramp_image
from benchmarks.common import DOCS, SAMPLES, load_results, machine, record, replace_block

RESULT_KEY = "edges"
PAGE, BLOCK = DOCS / "real-data.md", "edges"
SYNTHETIC_FILMS = 400
SYNTHETIC_SIDES = (100, 128, 256, 512)
RAMP_SIZES = ((100, 100), (256, 256), (1024, 768), (2080, 1600), (3000, 2400))
FLAT_FIELD_SIZES = ((1024, 768), (2080, 1600), (3000, 2400))  # film sizes
RAMPS_PER_SIZE = 40  # of each bit depth
# Sensor noise on a flat-field exposure, in grey levels of the scale the edge test reads: 8-bit
# levels, or a 16-bit image's own brightest pixel taken as 255 (as boneage.data.handcrop reads it).
NOISE_SD = 2.0
QUANTILE = 0.001


def _films(folder: Path) -> Iterator[np.ndarray]:
    for path in sorted(folder.glob("*.png")):
        yield cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def _synthetic(seed: int = 0) -> Iterator[np.ndarray]:
    from boneage.data.synth import render

    rng = np.random.default_rng(seed)
    for i in range(SYNTHETIC_FILMS):
        yield render(float(rng.uniform(0, 228)), bool(i % 2), int(rng.choice(SYNTHETIC_SIDES)), rng)[0]


def _ramps(sizes, seed: int = 0, noise_sd: float = 0.0) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    for height, width in sizes:
        for dtype in (np.uint8, np.uint16):
            for _ in range(RAMPS_PER_SIZE):
                image = ramp_image(rng, height, width, dtype)
                if noise_sd:
                    top = np.iinfo(dtype).max
                    level = 1.0 if dtype == np.uint8 else max(1, int(image.max())) / 255
                    noise = rng.normal(0.0, noise_sd * level, image.shape)
                    image = np.clip(image + noise, 0, top).astype(dtype)
                yield image


def describe(levels: list[float], limit: float) -> dict:
    a = np.asarray(levels)
    return {
        "images": len(a),
        "least": round(float(a.min()), 2),
        f"q{QUANTILE}": round(float(np.quantile(a, QUANTILE)), 2),
        "median": round(float(np.median(a)), 2),
        "most": round(float(a.max()), 2),
        "refused": int((a < limit).sum()),
    }


def run(source: Path) -> dict:
    from boneage.data.handcrop import EDGE_PERCENTILE, EDGE_SIDE, MIN_EDGE_LEVELS, edge_levels, edge_thumbnail

    sets = {
        "real films, 100 px (every RSNA training film)": (True, _films(source / IMAGE_DIR)),
        "real films, full resolution (the samples)": (True, _films(SAMPLES)),
        f"synthetic films ({'-'.join(map(str, (SYNTHETIC_SIDES[0], SYNTHETIC_SIDES[-1])))} px)": (True, _synthetic()),
        "ramps and radial gradients (100-3000 px, 8 and 16 bit)": (False, _ramps(RAMP_SIZES)),
        f"the same at film size (768 px and more) with sensor noise (sd {NOISE_SD:g} grey levels)": (
            False,
            _ramps(FLAT_FIELD_SIZES, seed=1, noise_sd=NOISE_SD),
        ),
    }
    rows = {}
    for name, (is_film, images) in sets.items():
        levels = [edge_levels(edge_thumbnail(image)) for image in images]
        rows[name] = {"film": is_film, **describe(levels, MIN_EDGE_LEVELS)}
        print(f"{name}: {rows[name]}", flush=True)
    return {
        "test": {"side": EDGE_SIDE, "percentile": EDGE_PERCENTILE, "limit": MIN_EDGE_LEVELS},
        "source": str(source),
        "sets": rows,
    }


def summary(d: dict) -> dict:
    films = [r for r in d["sets"].values() if r["film"]]
    others = [r for r in d["sets"].values() if not r["film"]]
    films_refused, films_n = sum(r["refused"] for r in films), sum(r["images"] for r in films)
    others_refused, others_n = sum(r["refused"] for r in others), sum(r["images"] for r in others)
    return {
        "title": "the edge test: images with no edges refused, real films kept",
        "summary": (
            f"films refused {films_refused}/{films_n:,} (the faintest at {min(r['least'] for r in films):.1f} grey "
            f"levels, limit {d['test']['limit']:g}); ramps and gradients refused {others_refused}/{others_n} "
            f"(the most edged at {max(r['most'] for r in others):.1f})"
        ),
        "goal": "no film refused, every ramp and gradient refused",
        "verdict": "met" if films_refused == 0 and others_refused == others_n else "missed",
    }


def block(data: dict) -> str:
    if not data.get("runs"):
        return "Not measured yet: `python -m benchmarks.bench_edges --source DIR`.\n"
    d, m = data["runs"][-1], data["machine"]
    t = d["test"]
    lines = [
        f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores) by `benchmarks/bench_edges.py`: the "
        f"{t['percentile']:g}th percentile of |Laplacian| of a {t['side']} px thumbnail, in grey levels; "
        f"below {t['limit']:g} the image is refused as having no edges.",
        "",
        f"| images | count | least | {100 * QUANTILE:g}% quantile | median | most | refused |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in d["sets"].items():
        lines.append(
            f"| {name} | {r['images']:,} | {r['least']:.1f} | {r[f'q{QUANTILE}']:.1f} | {r['median']:.1f} | "
            f"{r['most']:.1f} | {r['refused']:,} |"
        )
    lines += ["", f"Goal: {data['goal']}: **{data['verdict']}** ({data['summary']})."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("run", "readme"), nargs="?", default="run")
    parser.add_argument("--source", type=Path)
    args = parser.parse_args()
    if args.part == "run":
        if not args.source:
            parser.error("run needs --source")
        result = run(args.source.resolve())
        record(RESULT_KEY, {"runs": [result], "machine": machine(), **summary(result)})
    replace_block(PAGE, BLOCK, block(load_results().get(RESULT_KEY, {})))


if __name__ == "__main__":
    main()
