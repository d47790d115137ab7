"""Per-image report for `boneage predict --report DIR`: the crop, a Grad-CAM heatmap of what the
model looked at, the numbers, and a growth chart placing the child against the Greulich–Pyle
mean ± 2 SD. One PNG, and one self-contained HTML page embedding it."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import numpy as np

from boneage.contracts import INTENDED_USE_NOTICE
from boneage.model.network import ENSEMBLE_MEMBER_PREFIX
from boneage.serve.predict import Prediction, Predictor
from boneage.serve.standards import SDS_THRESHOLD, sex_code, table


def grad_cam(predictor: Predictor, image: np.ndarray, male: bool) -> np.ndarray:
    """Grad-CAM on the backbone's last feature map: where the predicted age is most sensitive,
    upsampled to the image and scaled to 0..1. For an ensemble, the mean of its members' maps
    (each scaled to 0..1 first, on the image as given: test-time views are not mapped back)."""
    import cv2

    model = predictor.model
    members = [layer for layer in model.layers if layer.name.startswith(ENSEMBLE_MEMBER_PREFIX)]
    maps = [_member_cam(m, image, male) for m in members or [model]]
    cam = np.mean([c / c.max() if c.max() > 0 else c for c in maps], axis=0)
    cam = cv2.resize(cam.astype(np.float32), image.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    return cam / cam.max() if cam.max() > 0 else cam


def _member_cam(model, image: np.ndarray, male: bool) -> np.ndarray:
    """One model's Grad-CAM at its feature map's resolution (zeros when the age has no gradient)."""
    import keras
    import tensorflow as tf

    features = model.get_layer("pool").input  # the backbone's feature map, in this model's graph
    age = model.outputs[0]  # an ensemble's first member also outputs its features
    probe = keras.Model(model.inputs, [features, age])
    batch = {
        "image": tf.constant(image.reshape(1, *image.shape[:2], 1).astype(np.uint8)),
        "male": tf.constant([[1.0 if male else 0.0]], dtype=tf.float32),
    }
    with tf.GradientTape() as tape:
        fmap, age = probe(batch, training=False)
    grads = tape.gradient(age, fmap)
    if grads is None:
        return np.zeros(fmap.shape[1:3], dtype=np.float32)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * fmap, axis=-1))[0].numpy()
    # Either sign of the gradient says "this region moves the age"; fall back to |cam| if relu kills all.
    if cam.max() <= 0:
        cam = np.abs(tf.reduce_sum(weights * fmap, axis=-1)[0].numpy())
    return cam


# A heatmap whose spread is below this share of its peak shows no region more than another.
CAM_MIN_CONTRAST = 0.05


def cam_degenerate(cam: np.ndarray) -> str | None:
    """Why a Grad-CAM heatmap says nothing (empty, non-finite or flat), or None when it shows something."""
    if cam.size == 0 or not np.isfinite(cam).all():
        return "the gradients are not finite"
    if cam.max() <= 0:
        return "the model's output does not depend on any region of this image"
    if float(cam.max() - cam.min()) < CAM_MIN_CONTRAST * float(cam.max()):
        return "the heatmap is flat: no region moved the estimate more than another"
    return None


def _growth_chart(ax, prediction: Prediction) -> None:
    male = prediction.sex == "M"
    std = table()[sex_code(male)]
    ax.fill_between(
        std.ages / 12,
        (std.means - SDS_THRESHOLD * std.sds) / 12,
        (std.means + SDS_THRESHOLD * std.sds) / 12,
        color="tab:blue",
        alpha=0.15,
        label="mean ± 2 SD",
    )
    ax.plot(std.ages / 12, std.means / 12, color="tab:blue", label=f"Greulich–Pyle mean ({'boys' if male else 'girls'})")
    # Only a clinical estimate is placed on the chart (a synthetic-trained model's is not one).
    if prediction.chronological_age_months is not None and prediction.assessment is not None:
        lo, hi = prediction.interval_months
        ca, ba = prediction.chronological_age_months / 12, prediction.bone_age_months / 12
        ax.errorbar(
            [ca],
            [ba],
            yerr=[[ba - lo / 12], [hi / 12 - ba]],
            fmt="o",
            color="tab:red",
            capsize=4,
            label="this child (90% interval)" if prediction.interval_level == 0.9 else "this child",
        )
    ax.set_xlabel("chronological age (years)")
    ax.set_ylabel("bone age (years)")
    ax.set_xlim(0, 19)
    ax.set_ylim(0, 19)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)


def _numbers(prediction: Prediction) -> list[tuple[str, str]]:
    lo, hi = prediction.interval_months
    rows = [
        ("Bone age", f"{prediction.bone_age_months:.1f} months ({prediction.bone_age})"),
        (f"{prediction.interval_level:.0%} interval", f"{lo:.1f}–{hi:.1f} months"),
        ("Sex", prediction.sex or ""),
    ]
    a = prediction.assessment
    if a:
        rows.append(("Chronological age", f"{a['chronological_age_months']:.1f} months"))
        rows.append(("BA − CA", f"{a['difference_months']:+.1f} months"))
        if a["sds"] is not None:
            rows.append(("SDS (Greulich–Pyle, Brush)", f"{a['sds']:+.2f}"))
        rows.append(("Assessment", a["call"]))
    return rows


def _warning_banner(prediction: Prediction) -> str:
    if not prediction.warning:
        return ""
    return (
        f'<p role="alert" style="background:#b00020;color:#fff;padding:1em;font-weight:bold">'
        f"WARNING: {html.escape(prediction.warning)}</p>\n"
    )


def write_report(predictor: Predictor, prediction: Prediction, out_dir: Path) -> Path:
    """Write ``<name>.png`` and ``<name>.html`` for one scored image; returns the HTML path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(prediction.source).stem) or "image"
    image = prediction.prepared
    cam = grad_cam(predictor, image, prediction.sex == "M")
    cam_note = cam_degenerate(cam)
    fig, axes = plt.subplots(1, 3, figsize=(15, 5))
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title("crop given to the model")
    axes[1].imshow(image, cmap="gray")
    if cam_note:
        axes[1].set_title(f"Grad-CAM: nothing to show\n({cam_note})", fontsize=10)
    else:
        axes[1].imshow(cam, cmap="jet", alpha=0.4)
        axes[1].set_title("Grad-CAM: what moved the estimate")
    for ax in axes[:2]:
        ax.axis("off")
    _growth_chart(axes[2], prediction)
    axes[2].set_title(f"bone age {prediction.bone_age}")
    fig.tight_layout()
    png = out_dir / f"{name}.png"
    fig.savefig(png, dpi=90)
    plt.close(fig)
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in _numbers(prediction))
    encoded = base64.b64encode(png.read_bytes()).decode()
    page = out_dir / f"{name}.html"
    page.write_text(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Bone age: {html.escape(name)}</title>
<style>body{{font-family:sans-serif;margin:2em}} th{{text-align:left;padding-right:1em}}</style></head>
<body><h1>Bone age: {html.escape(name)}</h1>
{_warning_banner(prediction)}<p>Source: {html.escape(prediction.source)}</p>
<table>{rows}</table>
{f"<p><em>Grad-CAM: nothing to show ({html.escape(cam_note)}).</em></p>" if cam_note else ""}
<img alt="crop, Grad-CAM and growth chart" src="data:image/png;base64,{encoded}" style="max-width:100%">
<p><small>{html.escape(INTENDED_USE_NOTICE)} SDS against the Greulich–Pyle standards (Brush data).</small></p>
</body></html>
""")
    return page
