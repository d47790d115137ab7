"""Synthetic radiographs per second per core at 512 px. Goal: at least 20."""

from __future__ import annotations

import numpy as np

from benchmarks.common import median_rate, record, rounded, verdict
from boneage.data.synth import draw_labels, render

N = 60


def main() -> None:
    labels = draw_labels(N, seed=0, label_noise_sd=6.0)

    def one_core():
        for i, (_, _, male, true_age) in enumerate(labels):
            render(true_age, male, 512, np.random.default_rng([0, 1, i]))

    rate, runs = median_rate(one_core, N)
    record(
        "synth",
        {
            "title": "Synthetic radiographs, 512 px, one core",
            "images": N,
            "img_s_per_core": round(rate, 1),
            "runs": rounded(runs),
            "summary": f"{rate:.1f} img/s",
            "goal": ">= 20 img/s per core",
            "verdict": verdict(rate >= 20),
        },
    )
    print(f"synth: {rate:.1f} img/s per core at 512 px")


if __name__ == "__main__":
    main()
