"""Synthetic RSNA-format radiographs whose anatomy follows bone age: the embedded default dataset.

The generator draws a left hand, PA view, the way a Greulich-Pyle reader looks at it:

* the hand grows; its ossified bones grow longer within their segments and wider within the soft
  tissue (an infant's finger is mostly cartilage and soft tissue around a thin bony core);
* the carpal ossification centres appear in their known order (capitate and hamate first,
  pisiform last) and grow;
* the epiphyses of the phalanges, metacarpals, radius and ulna appear, widen to the width of the
  metaphysis, cap it, then fuse (the dark physis line closes) in adolescence;
* bone density and cortical contrast rise.

All of these follow *skeletal maturity*, which for the same bone age is higher in girls (the
female atlas is more mature than the male one at the same rating), so sex is informative.

Labels are the real RSNA (bone age, sex) distribution, carried in ``resources/``. Each image is
drawn at a true bone age that differs from its label by Gaussian rater noise of a known SD, so the
irreducible MAE of a perfect model is known (``noise_floor_mae``).

Nuisance like real films: rotation, film border and background, an "L" marker, exposure and
contrast, noise and blur, image size and aspect ratio, hand position and finger spread.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from boneage.contracts import MAX_AGE_MONTHS, MIN_AGE_MONTHS, SYNTHETIC_TRUTH_FILE, atomic_path, write_csv_atomic
from boneage.errors import BoneageError

CSV_NAME = "boneage-training-dataset.csv"
IMAGE_DIR = "boneage-training-dataset"
SPEC_NAME = "synthetic-spec.json"

# Girls' skeletons are more mature at the same bone-age rating: maturity = bone age x this factor.
FEMALE_MATURITY_FACTOR = 1.12
MAX_MATURITY_YEARS = 19.0

# Ossification onset (male-equivalent maturity, years) and the size reached when fully grown
# (hand-length units). Order follows the carpal sequence of the Greulich-Pyle atlas.
CARPALS = (
    # name, onset, radius, centre (x, y) in hand units (x: towards the thumb, y: towards the fingers)
    ("capitate", 0.15, 0.050, (0.010, 0.085)),
    ("hamate", 0.35, 0.044, (-0.085, 0.090)),
    ("triquetrum", 2.5, 0.036, (-0.125, 0.030)),
    ("lunate", 3.5, 0.038, (-0.045, 0.020)),
    ("trapezium", 5.0, 0.036, (0.135, 0.060)),
    ("trapezoid", 5.5, 0.030, (0.090, 0.100)),
    ("scaphoid", 5.8, 0.040, (0.065, 0.025)),
    ("pisiform", 10.0, 0.022, (-0.150, 0.070)),
)
CARPAL_GROWTH_YEARS = 7.0

# Rays from the little finger (index 0) to the thumb (index 4): metacarpal base x, base y,
# mean angle from the long axis (degrees, towards the thumb), bone lengths and widths (adult, hand units).
RAYS = (
    (-0.135, 0.13, -14.0, (0.27, 0.17, 0.095, 0.075), 0.050),
    (-0.050, 0.145, -5.0, (0.29, 0.20, 0.125, 0.080), 0.056),
    (0.035, 0.145, 1.0, (0.31, 0.22, 0.135, 0.085), 0.060),
    (0.110, 0.14, 8.0, (0.30, 0.20, 0.115, 0.080), 0.058),
    (0.175, 0.085, 42.0, (0.19, 0.15, 0.0, 0.105), 0.058),
)
PHALANX_WIDTH_TAPER = (1.0, 0.9, 0.78, 0.66)  # metacarpal, proximal, middle, distal
JOINT_GAP = 0.014

# Epiphysis timetable (male-equivalent years): appears, reaches full width, caps, fully fused.
EPIPHYSIS_ONSET = {"phalanx": 1.6, "metacarpal": 1.8, "radius": 1.0, "ulna": 6.5}
EPIPHYSIS_FULL_WIDTH = 11.0
EPIPHYSIS_CAP = 13.0
EPIPHYSIS_FUSED = 18.0
HAND_LENGTH_GROWTH = (0.7, 1.0)  # hand length at birth and at maturity, relative to adult


@dataclass(frozen=True)
class Nuisance:
    """Everything about a film that is not anatomy; drawn once per image from its own RNG."""

    aspect: float
    rotation_deg: float
    hand_scale: float
    shift: tuple[float, float]
    spread: float
    background: float
    border: tuple[float, float, float, float]  # film border widths (fraction of side) top, bottom, left, right
    border_level: float
    marker_corner: int
    gamma: float
    gain: float
    noise_sd: float
    blur_px: float
    finger_jitter: tuple[float, ...]
    noise_seed: int


@dataclass
class HandGeometry:
    """What was drawn, in hand units, so tests can measure the anatomy directly."""

    maturity_years: float
    hand_length: float
    carpals_visible: list[str] = field(default_factory=list)
    carpal_area: float = 0.0
    epiphysis_width_ratio: float = 0.0  # epiphysis width / metaphysis width, mean over the phalanges
    physis_gap: float = 0.0  # mean dark gap between epiphysis and metaphysis (0 when fused)
    bone_density: float = 0.0
    cortical_contrast: float = 0.0
    ossified_length: float = 0.0  # ossified share of each bone's segment (the rest is cartilage)
    bone_fill: float = 0.0  # bone width / soft-tissue width, middle finger proximal phalanx


def maturity_years(bone_age_months: float, male: bool) -> float:
    factor = 1.0 if male else FEMALE_MATURITY_FACTOR
    return min(MAX_MATURITY_YEARS, bone_age_months * factor / 12.0)


def _ramp(t: float, start: float, end: float) -> float:
    return float(np.clip((t - start) / (end - start), 0.0, 1.0))


def draw_nuisance(rng: np.random.Generator) -> Nuisance:
    has_border = rng.random() < 0.6
    border = tuple(float(rng.uniform(0.005, 0.05)) if has_border and rng.random() < 0.7 else 0.0 for _ in range(4))
    return Nuisance(
        aspect=float(rng.uniform(0.68, 0.9)),
        rotation_deg=float(rng.uniform(-30, 30)),
        hand_scale=float(rng.uniform(0.78, 0.95)),
        shift=(float(rng.uniform(-0.06, 0.06)), float(rng.uniform(-0.04, 0.04))),
        spread=float(rng.uniform(0.5, 1.6)),
        background=float(rng.uniform(0.0, 0.12)),
        border=border,  # type: ignore[arg-type]
        border_level=float(rng.uniform(0.6, 0.95)),
        marker_corner=int(rng.integers(0, 4)),
        gamma=float(rng.uniform(0.75, 1.35)),
        gain=float(rng.uniform(0.8, 1.15)),
        noise_sd=float(rng.uniform(0.005, 0.03)),
        blur_px=float(rng.uniform(0.0, 1.2)),
        finger_jitter=tuple(float(v) for v in rng.normal(0.0, 2.5, size=5)),
        noise_seed=int(rng.integers(0, 2**31)),
    )


class _Canvas:
    """Draws hand-unit primitives into two float layers (soft tissue, bone) through one affine map."""

    def __init__(self, height: int, width: int, transform: np.ndarray, supersample: int = 4):
        self.h, self.w = height, width
        self.m = transform  # 2x3, hand units -> pixels
        self.shift = supersample.bit_length() - 1  # cv2 fixed-point sub-pixel bits
        self.tissue = np.zeros((height, width), np.float32)
        self.bone = np.zeros((height, width), np.float32)
        self.scale = float(np.hypot(transform[0, 0], transform[1, 0]))

    def _px(self, pts: np.ndarray) -> np.ndarray:
        xy = pts @ self.m[:, :2].T + self.m[:, 2]
        return np.round(xy * (1 << self.shift)).astype(np.int32)

    def capsule(self, layer: np.ndarray, a, b, width: float, value: float, tip: float | None = None) -> None:
        """A rounded bar from a to b; ``tip`` overrides the radius of the round end at b."""
        a, b = np.asarray(a, float), np.asarray(b, float)
        d = b - a
        n = np.array([-d[1], d[0]]) / (np.linalg.norm(d) + 1e-9) * width / 2
        quad = np.array([a + n, b + n, b - n, a - n])
        cv2.fillConvexPoly(layer, self._px(quad), value, cv2.LINE_AA, self.shift)
        for centre, r in ((a, width / 2), (b, width / 2 if tip is None else tip)):
            self.disc(layer, centre, r, value)

    def disc(self, layer: np.ndarray, centre, radius: float, value: float, aspect: float = 1.0) -> None:
        c = self._px(np.asarray(centre, float)[None])[0]
        r = max(1, int(round(radius * self.scale * (1 << self.shift))))
        cv2.ellipse(layer, (int(c[0]), int(c[1])), (r, max(1, int(r * aspect))), 0, 0, 360, value, -1, cv2.LINE_AA, self.shift)

    def oriented_ellipse(self, layer: np.ndarray, centre, half_across: float, half_along: float, axis, value: float) -> None:
        """An ellipse whose ``half_along`` semi-axis lies along the hand-unit direction ``axis``."""
        c = self._px(np.asarray(centre, float)[None])[0]
        tip = self._px(np.asarray(centre, float)[None] + np.asarray(axis, float)[None])[0]
        angle = math.degrees(math.atan2(tip[1] - c[1], tip[0] - c[0]))
        unit = self.scale * (1 << self.shift)
        axes = (max(1, int(round(half_along * unit))), max(1, int(round(half_across * unit))))
        cv2.ellipse(layer, (int(c[0]), int(c[1])), axes, angle, 0, 360, value, -1, cv2.LINE_AA, self.shift)

    def polygon(self, layer: np.ndarray, pts, value: float) -> None:
        cv2.fillPoly(layer, [self._px(np.asarray(pts, float))], value, cv2.LINE_AA, self.shift)


def _bone_with_epiphysis(canvas: _Canvas, a, b, width, t, kind, at_start, density, cortex, geo_acc) -> None:
    """A long bone from a to b whose epiphysis sits at a (``at_start``) or at b, staged by maturity t."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    axis = (b - a) / (np.linalg.norm(b - a) + 1e-9)
    onset = EPIPHYSIS_ONSET[kind]
    present = t >= onset
    growth = _ramp(t, onset, EPIPHYSIS_FULL_WIDTH)
    fusion = _ramp(t, EPIPHYSIS_CAP, EPIPHYSIS_FUSED)
    ep_height = width * (0.18 + 0.22 * growth) if present else 0.0
    gap = width * 0.16 * (1.0 - fusion) if present else 0.0
    # Shaft: from the far end to the metaphysis.
    end, start = (b, a) if at_start else (a, b)
    direction = axis if at_start else -axis  # from the epiphysis end into the shaft
    metaphysis = start + direction * (ep_height + gap)
    canvas.capsule(canvas.bone, metaphysis, end, width, density)
    canvas.capsule(canvas.bone, metaphysis, end, width * 0.5, -cortex * 0.6)  # medullary cavity: darker core
    if present:
        ep_width = width * (0.35 + 0.65 * growth) * (1.0 + 0.08 * _ramp(t, EPIPHYSIS_CAP, EPIPHYSIS_FUSED))
        ep_centre = start + direction * (ep_height / 2)
        canvas.oriented_ellipse(canvas.bone, ep_centre, ep_width / 2, ep_height / 2, axis, density)
        # Fill the physis progressively as it fuses.
        if gap < 1e-4:
            canvas.capsule(canvas.bone, start, metaphysis, width * 0.9, density * 0.9)
        geo_acc.append((ep_width / width, gap))
    else:
        canvas.disc(canvas.bone, start + direction * width * 0.3, width * 0.42, density)
        geo_acc.append((0.0, 0.0))


def render(bone_age_months: float, male: bool, size: int, rng: np.random.Generator) -> tuple[np.ndarray, HandGeometry]:
    """Draw one film. Returns uint8 pixels (height = ``size``) and the geometry that was drawn."""
    nz = draw_nuisance(rng)
    return render_with(bone_age_months, male, size, nz)


def render_with(bone_age_months: float, male: bool, size: int, nz: Nuisance) -> tuple[np.ndarray, HandGeometry]:
    """One film of a hand at ``bone_age_months`` (``male``: the maturity that age means for a boy),
    ``size`` px high, with the nuisance ``nz``: the anatomy drawn in hand units, placed on the film,
    then composed with everything that is not anatomy. Returns uint8 pixels and what was drawn."""
    t = maturity_years(bone_age_months, male)
    height, width = size, max(16, int(round(size * nz.aspect)))
    hand_length = HAND_LENGTH_GROWTH[0] + (HAND_LENGTH_GROWTH[1] - HAND_LENGTH_GROWTH[0]) * _ramp(t, 0.0, MAX_MATURITY_YEARS)
    geo = HandGeometry(maturity_years=t, hand_length=hand_length)
    canvas = _placed_canvas(nz, height, width, hand_length)
    bones = _Bones.at(t)
    geo.bone_density, geo.cortical_contrast, geo.ossified_length = bones.density, bones.cortex, bones.ossified_length
    _draw_forearm_and_carpals(canvas, bones, geo)
    ep_stats = _draw_rays(canvas, bones, nz, geo)
    if ep_stats:
        geo.epiphysis_width_ratio = float(np.mean([r for r, _ in ep_stats]))
        geo.physis_gap = float(np.mean([g for _, g in ep_stats]))
    return _film(canvas, nz, height, width), geo


def _placed_canvas(nz: Nuisance, height: int, width: int, hand_length: float) -> _Canvas:
    """Hand units -> pixels: y flips (fingers up), scale to the film, rotate about the film centre."""
    px_per_unit = height * 0.80 * nz.hand_scale * hand_length
    wrist = np.array([width * (0.5 + nz.shift[0]), height * (0.84 + nz.shift[1])])
    angle = math.radians(nz.rotation_deg)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    linear = rot @ np.array([[px_per_unit, 0.0], [0.0, -px_per_unit]])
    centre = np.array([width / 2, height / 2])
    offset = rot @ (wrist - centre) + centre
    return _Canvas(height, width, np.hstack([linear, offset[:, None]]))


@dataclass(frozen=True)
class _Bones:
    """How mature the skeleton looks at maturity ``t`` years. Density and proportions keep maturing
    to the end of the RSNA range (19 years), so the oldest films are not all alike."""

    t: float
    density: float
    cortex: float
    width_factor: float  # bony core within the soft tissue
    ossified_length: float  # ossified share of each segment
    tissue: float = 0.32

    @classmethod
    def at(cls, t: float) -> _Bones:
        mature = _ramp(t, 0.0, MAX_MATURITY_YEARS)
        return cls(t, 0.30 + 0.32 * mature, 0.05 + 0.12 * mature, 0.55 + 0.45 * mature, 0.72 + 0.28 * mature)


def _draw_forearm_and_carpals(canvas: _Canvas, bones: _Bones, geo: HandGeometry) -> None:
    """The forearm's and palm's soft tissue, the radius and ulna with their distal epiphyses, and the
    carpals that have ossified by now, in the order they do."""
    outline = [(-0.20, -0.9), (0.20, -0.9), (0.20, 0.0), (0.25, 0.12), (0.21, 0.30), (0.16, 0.45), (-0.17, 0.42), (-0.21, 0.20), (-0.19, 0.0)]
    canvas.polygon(canvas.tissue, outline, bones.tissue)
    for x, w, kind in ((0.075, 0.115, "radius"), (-0.105, 0.075, "ulna")):
        _bone_with_epiphysis(canvas, (x, -0.9), (x, -0.035), w * bones.width_factor, bones.t, kind, False, bones.density, bones.cortex, [])
    for name, onset, radius, centre in CARPALS:
        if bones.t >= onset:
            r = radius * (0.2 + 0.8 * _ramp(bones.t, onset, onset + CARPAL_GROWTH_YEARS) ** 0.8)
            canvas.disc(canvas.bone, centre, r, bones.density, aspect=0.85)
            canvas.disc(canvas.bone, centre, r * 0.6, -bones.cortex * 0.5, aspect=0.85)
            geo.carpals_visible.append(name)
            geo.carpal_area += math.pi * r * r * 0.85


def _draw_rays(canvas: _Canvas, bones: _Bones, nz: Nuisance, geo: HandGeometry) -> list[tuple[float, float]]:
    """Each ray, metacarpal then phalanges, fanned by the finger spread, with the soft tissue hugging
    its bones; the phalanges' (epiphysis width ratio, physis gap)."""
    ep_stats: list[tuple[float, float]] = []
    for ray_index, (bx, by, mean_angle, lengths, base_width) in enumerate(RAYS):
        theta = math.radians(mean_angle * nz.spread + nz.finger_jitter[ray_index])
        direction = np.array([math.sin(theta), math.cos(theta)])
        point = np.array([bx, by])
        finger_pts = []
        for bone_index, bone_len in enumerate(lengths):
            if bone_len == 0.0:  # the thumb has no middle phalanx
                continue
            tissue_width = base_width * PHALANX_WIDTH_TAPER[bone_index] * 1.4 + 0.035
            width_here = base_width * PHALANX_WIDTH_TAPER[bone_index] * bones.width_factor
            end = point + direction * bone_len
            finger_pts.append((point, end, tissue_width))
            cartilage = direction * bone_len * (1.0 - bones.ossified_length) / 2
            is_metacarpal = bone_index == 0
            # Metacarpals 2-5 carry their epiphysis distally; the thumb's and all phalanges' proximally.
            at_start = not is_metacarpal or ray_index == 4
            kind = "metacarpal" if is_metacarpal else "phalanx"
            acc = ep_stats if not is_metacarpal else []
            _bone_with_epiphysis(
                canvas, point + cartilage, end - cartilage, width_here, bones.t, kind, at_start, bones.density, bones.cortex, acc
            )
            if ray_index == 2 and bone_index == 1:
                geo.bone_fill = width_here / tissue_width
            point = end + direction * JOINT_GAP
        for a, b, w in finger_pts:
            canvas.capsule(canvas.tissue, a, b + direction * 0.015, w, bones.tissue)
    return ep_stats


def _film(canvas: _Canvas, nz: Nuisance, height: int, width: int) -> np.ndarray:
    """Compose the layers and add everything that is not anatomy."""
    soft = cv2.GaussianBlur(np.clip(canvas.tissue, 0, None), (0, 0), max(0.8, height / 400))
    img = nz.background + soft + np.clip(canvas.bone, 0, None) * (soft > 0.05)
    # Film border (bright unexposed edges), on some sides.
    top, bottom, left, right = (int(round(f * height if i < 2 else f * width)) for i, f in enumerate(nz.border))
    if top:
        img[:top] = nz.border_level
    if bottom:
        img[height - bottom :] = nz.border_level
    if left:
        img[:, :left] = nz.border_level
    if right:
        img[:, width - right :] = nz.border_level
    # The "L" marker in a top corner or a bottom corner, away from the hand's middle.
    marker = int(height * 0.07)
    x = int(width * 0.08) if nz.marker_corner % 2 == 0 else int(width * 0.92) - marker
    y = int(height * 0.1) if nz.marker_corner < 2 else int(height * 0.9) - marker
    thick = max(1, marker // 5)
    img[y : y + marker, x : x + thick] = 0.95
    img[y + marker - thick : y + marker, x : x + marker * 2 // 3] = 0.95
    # Exposure, contrast, blur, noise.
    img = np.clip(img * nz.gain, 0, 1) ** nz.gamma
    if nz.blur_px > 0.2:
        img = cv2.GaussianBlur(img, (0, 0), nz.blur_px * height / 512)
    noise_rng = np.random.default_rng(nz.noise_seed)
    img = img + noise_rng.normal(0.0, nz.noise_sd, img.shape).astype(np.float32)
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Labels and the dataset on disk


def real_label_histogram() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bone age months, male, count) of the 12,611 RSNA training labels, shipped with the package."""
    text = resources.files("boneage").joinpath("resources/rsna-label-histogram.csv").read_text()
    rows = list(csv.DictReader(text.splitlines()))
    ages = np.array([float(r["boneage"]) for r in rows])
    males = np.array([r["male"] == "True" for r in rows])
    counts = np.array([int(r["count"]) for r in rows], dtype=float)
    return ages, males, counts


def draw_labels(count: int, seed: int, label_noise_sd: float) -> list[tuple[str, int, bool, float]]:
    """(id, label months, male, true bone age drawn on the film) for each image."""
    ages, males, counts = real_label_histogram()
    rng = np.random.default_rng([seed, 0])
    picks = rng.choice(len(ages), size=count, p=counts / counts.sum())
    noise = rng.normal(0.0, label_noise_sd, size=count)
    labels = []
    for i, (pick, err) in enumerate(zip(picks, noise, strict=True)):
        label = int(ages[pick])
        # The film shows the true age; the label is one rater's reading of it.
        true_age = float(np.clip(label + err, MIN_AGE_MONTHS, MAX_AGE_MONTHS))
        labels.append((str(100_000 + i), label, bool(males[pick]), true_age))
    return labels


def _render_one(job: tuple[Path, str, float, bool, int, int, int]) -> str:
    path, image_id, true_age, male, size, seed, index = job
    rng = np.random.default_rng([seed, 1, index])
    img, _ = render(true_age, male, size, rng)
    with atomic_path(path) as tmp:
        cv2.imwrite(str(tmp), img, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    return image_id


def write_dataset(out: Path, count: int, seed: int, size: int = 512, workers: int = 0, label_noise_sd: float = 6.0) -> Path:
    """Write the Kaggle layout: ``boneage-training-dataset.csv`` (id,boneage,male) and PNGs."""
    out = Path(out)
    image_dir = out / IMAGE_DIR
    image_dir.mkdir(parents=True, exist_ok=True)
    labels = draw_labels(count, seed, label_noise_sd)
    jobs = [(image_dir / f"{i}.png", i, true_age, male, size, seed, n) for n, (i, _, male, true_age) in enumerate(labels)]
    workers = workers or os.cpu_count() or 1
    if workers == 1 or count < 8:
        for job in tqdm(jobs, desc="synth", unit="img"):
            _render_one(job)
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            chunks = max(1, min(32, count // (workers * 4)))
            for _ in tqdm(pool.map(_render_one, jobs, chunksize=chunks), total=count, desc="synth", unit="img"):
                pass
    truth = pd.DataFrame(
        [(i, label, male, f"{true_age:.3f}") for i, label, male, true_age in labels],
        columns=["id", "boneage", "male", "true_boneage"],
    )
    write_csv_atomic(truth, out / SYNTHETIC_TRUTH_FILE)
    csv_path = out / CSV_NAME
    write_csv_atomic(truth[["id", "boneage", "male"]], csv_path)  # the CSV last: its presence means complete
    return csv_path


def ensure_synthetic_dataset(params) -> Path:
    """The embedded default: generate ``data.synthetic_dir`` unless it already holds this spec."""
    cfg = params.data.synthetic
    out = Path(params.data.synthetic_dir)
    spec = {
        "count": cfg.count,
        "size": cfg.image_size,
        "seed": params.seed,
        "label_noise_sd": cfg.label_noise_sd_months,
        "generator": 1,
    }
    spec_path = out / SPEC_NAME
    if spec_path.is_file() and (out / CSV_NAME).is_file():
        try:
            if json.loads(spec_path.read_text()) == spec:
                return out
        except json.JSONDecodeError:
            pass
    if out.exists() and any(out.iterdir()) and not spec_path.exists():
        raise BoneageError(f"{out}: exists and was not made by `boneage data synth`; move it or set data.synthetic_dir")
    for stale in (out / IMAGE_DIR).glob("*.png") if out.exists() else []:
        stale.unlink()
    write_dataset(out, cfg.count, params.seed, cfg.image_size, cfg.workers, cfg.label_noise_sd_months)
    spec_path.write_text(json.dumps(spec, indent=2) + "\n")
    return out
