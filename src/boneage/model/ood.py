"""Does an input look like the films the model was trained on? The out-of-distribution check each
model carries, fitted after training and applied before any bone age is given.

Four scores, each fitted on the training films, each with its threshold at a quantile of the
validation films' scores (which fitted nothing); an input above any threshold is refused:

- ``features``: the Mahalanobis distance of the backbone's pooled features (what the regression
  head sees) from the training films';
- ``image``: the Mahalanobis distance of the layout (small thumbnails of the prepared image and of
  its horizontal and vertical gradients), which features pooled from a small input keep little of;
- ``texture``: the Mahalanobis distance of the histograms of intensity, gradient magnitude and
  Laplacian: contrast and grain, in a few dimensions of their own (among the layout's hundreds a
  difference in texture would be diluted). It tells drawn films from radiographs, both ways;
- ``orientation``: how unsure a classifier, trained to tell the training films from the same films
  turned by 90, 180 and 270 degrees and mirrored (self-supervised rotation prediction, as in
  Hendrycks et al., NeurIPS 2019), is of which way up the input is.

That classifier also puts films upright before anything else looks at them: a film that arrives
turned or mirrored (a right hand) is turned back and unmirrored, and the output says so, the way
BoneXpert accepts such films. Checks fitted before mirror images were learned know the four turns.

Covariances are Ledoit-Wolf shrunk (thousands of features, thousands of films: the sample
covariance is singular). Scores are reported as a ratio to their threshold: above 1 is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from boneage.config import OodConfig
from boneage.data.imaging import dihedral, undo_dihedral
from boneage.errors import BoneageError

# The layer whose output the regression head reads (boneage.model.network names it).
POOL_LAYER = "pool"
PARTS = ("features", "image", "texture", "orientation")
PART_NAMES = {
    "features": "the model's features",
    "image": "layout",
    "texture": "texture and contrast",
    "orientation": "orientation",
}
# The texture signature: histograms over 0..255 pixels of intensity, log(1 + gradient magnitude)
# and log(1 + |Laplacian|), these bins each (the log ranges cover the largest values 8-bit images reach).
TEXTURE_BINS = 16
GRADIENT_LOG_RANGE = (0.0, 8.0)
LAPLACIAN_LOG_RANGE = (0.0, 7.0)
BATCH_AXES = (1, 2)  # rows and columns of a batch of images


def scoring_model(predict_model):
    """The predict model with a second output: the pooled backbone features. One forward pass
    gives the bone age and what the check needs."""
    import keras

    pool = predict_model.get_layer(POOL_LAYER)
    # A Flatten head (the seed recipe) has a spatial grid of features: averaged in `pooled`.
    features = pool.input if isinstance(pool, keras.layers.Flatten) else pool.output
    return keras.Model(predict_model.input, [predict_model.output, features], name="boneage_with_features")


def pooled(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float32)
    return features.mean(axis=(1, 2)) if features.ndim == 4 else features.reshape(len(features), -1)


def image_signature(images: np.ndarray, side: int) -> np.ndarray:
    """Prepared uint8 images [N, S, S(, 1)] -> [N, 3*side*side]: thumbnails of the image and of its
    absolute horizontal and vertical gradients (area averaged), in 0..1."""
    import cv2

    rows = []
    for image in _frames(images):
        x = image.astype(np.float32)
        grad_x, grad_y = np.abs(cv2.Sobel(x, cv2.CV_32F, 1, 0)), np.abs(cv2.Sobel(x, cv2.CV_32F, 0, 1))
        rows.append(
            np.concatenate([cv2.resize(a, (side, side), interpolation=cv2.INTER_AREA).ravel() for a in (x, grad_x, grad_y)])
        )
    return np.asarray(rows, dtype=np.float32) / np.float32(255.0)


def texture_signature(images: np.ndarray) -> np.ndarray:
    """Prepared uint8 images -> [N, 3*TEXTURE_BINS]: the share of pixels in each bin of intensity,
    of log gradient magnitude and of log |Laplacian|."""
    import cv2

    rows = []
    for image in _frames(images):
        x = image.astype(np.float32)
        magnitude = cv2.magnitude(cv2.Sobel(x, cv2.CV_32F, 1, 0), cv2.Sobel(x, cv2.CV_32F, 0, 1))
        laplacian = np.abs(cv2.Laplacian(x, cv2.CV_32F))
        rows.append(
            np.concatenate(
                [
                    np.histogram(x, TEXTURE_BINS, (0.0, 256.0))[0],
                    np.histogram(np.log1p(magnitude), TEXTURE_BINS, GRADIENT_LOG_RANGE)[0],
                    np.histogram(np.log1p(laplacian), TEXTURE_BINS, LAPLACIAN_LOG_RANGE)[0],
                ]
            )
            / x.size
        )
    return np.asarray(rows, dtype=np.float32)


def _frames(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    return images.reshape(len(images), images.shape[1], images.shape[2])


def in_view(images: np.ndarray, view: int) -> np.ndarray:
    """A batch of upright images [N, S, S(, 1)] taken to ``view`` (boneage.data.imaging.dihedral)."""
    return dihedral(np.asarray(images), view, BATCH_AXES)


@dataclass(frozen=True)
class Gaussian:
    """A Mahalanobis distance from the training films (standardised, Ledoit-Wolf precision)."""

    mean: np.ndarray
    scale: np.ndarray
    precision: np.ndarray

    @classmethod
    def fit(cls, samples: np.ndarray, sd_floor_fraction: float) -> Gaussian:
        from sklearn.covariance import LedoitWolf

        samples = np.asarray(samples, dtype=np.float64)
        mean, sd = samples.mean(axis=0), samples.std(axis=0)
        # Features (nearly) constant on the training films, such as a ReLU channel that never
        # fires, would otherwise turn any activation into an enormous distance.
        floor = sd_floor_fraction * float(np.median(sd[sd > 0])) if (sd > 0).any() else 1.0
        scale = np.maximum(sd, floor)
        precision = LedoitWolf(store_precision=True, assume_centered=True).fit((samples - mean) / scale).precision_
        return cls(mean.astype(np.float32), scale.astype(np.float32), precision.astype(np.float32))

    def distance(self, samples: np.ndarray) -> np.ndarray:
        """Per sample, divided by sqrt(dimensions) so that typical films sit near 1."""
        z = (np.asarray(samples, dtype=np.float32) - self.mean) / self.scale
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", z, self.precision, z, optimize=True), 0.0) / z.shape[1])


@dataclass(frozen=True)
class Orientation:
    """Multinomial logistic regression over the views (boneage.data.imaging.dihedral) of the image
    signature: which view an image is in, and how unsure of it the classifier is (-log P(that view))."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray  # [views, features]: 8, or 4 turns in checks fitted before mirror images
    intercept: np.ndarray  # [views]

    @classmethod
    def fit(cls, signatures_by_view: list[np.ndarray], cfg: OodConfig) -> Orientation:
        from sklearn.linear_model import LogisticRegression

        x = np.concatenate(signatures_by_view).astype(np.float64)
        y = np.repeat(np.arange(len(signatures_by_view)), [len(s) for s in signatures_by_view])
        mean, scale = x.mean(axis=0), np.maximum(x.std(axis=0), np.finfo(np.float32).eps)
        fitted = LogisticRegression(C=cfg.orientation_regularisation, max_iter=cfg.orientation_max_iterations)
        fitted.fit((x - mean) / scale, y)
        return cls(mean.astype(np.float32), scale.astype(np.float32), fitted.coef_.astype(np.float32), fitted.intercept_)

    def views(self, signatures: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per image: the view it is most likely in, and -log of that probability (the score)."""
        logits = ((np.asarray(signatures, dtype=np.float32) - self.mean) / self.scale) @ self.coef.T + self.intercept
        logits = logits - logits.max(axis=1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return log_p.argmax(axis=1), -log_p.max(axis=1)

    def score(self, signatures: np.ndarray) -> np.ndarray:
        return self.views(signatures)[1]


@dataclass(frozen=True)
class OodCheck:
    features: Gaussian
    image: Gaussian
    texture: Gaussian
    orientation: Orientation
    thresholds: dict[str, float]
    quantile: float
    image_side: int
    train_films: int
    val_films: int

    def upright(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(the images put upright, the view each arrived in, the orientation score of each)."""
        views, scores = self.orientation.views(image_signature(images, self.image_side))
        fixed = np.stack([undo_dihedral(image, int(view)) for image, view in zip(np.asarray(images), views, strict=True)])
        return fixed, views, scores

    def raw_scores(self, features: np.ndarray, images: np.ndarray, orientation: np.ndarray | None = None):
        """Each score of each (upright) image; ``orientation``: the scores ``upright`` gave them."""
        signatures = image_signature(images, self.image_side)
        return {
            "features": self.features.distance(pooled(features)),
            "image": self.image.distance(signatures),
            "texture": self.texture.distance(texture_signature(images)),
            "orientation": self.orientation.score(signatures) if orientation is None else orientation,
        }

    def part_ratios(self, features: np.ndarray, images: np.ndarray, orientation: np.ndarray | None = None) -> np.ndarray:
        """[inputs, PARTS]: each score as a multiple of its threshold."""
        raw = self.raw_scores(features, images, orientation)
        return np.stack([raw[p] / self.thresholds[p] for p in PARTS], axis=1)

    def judge(self, features: np.ndarray, images: np.ndarray, orientation: np.ndarray | None = None):
        """Per input: its largest score as a multiple of that score's threshold (above 1: refused),
        and the reason it is refused (None when it passes). The signatures are computed once."""
        return self.verdicts(self.part_ratios(features, images, orientation))

    @staticmethod
    def verdicts(part_ratios: np.ndarray) -> tuple[np.ndarray, list[str | None]]:
        """From each input's part ratios: its largest, and the reason it is refused (None: it passes)."""
        ratios = np.asarray(part_ratios).T
        worst, largest = ratios.argmax(axis=0), ratios.max(axis=0)
        reasons = [
            None
            if ratio <= 1.0
            else (
                f"out of distribution: the image does not look like this model's training films "
                f"({PART_NAMES[PARTS[part]]}: {ratio:.2f}x the threshold set on its validation films); "
                "it is not a left-hand radiograph of the kind the model can rate"
            )
            for part, ratio in zip(worst, largest, strict=True)
        ]
        return largest, reasons

    def scores(self, features: np.ndarray, images: np.ndarray, orientation: np.ndarray | None = None) -> np.ndarray:
        """Per input: its largest score as a multiple of that score's threshold (above 1: refused)."""
        return self.judge(features, images, orientation)[0]

    def refusal(self, features: np.ndarray, images: np.ndarray, orientation: np.ndarray | None = None) -> list[str | None]:
        """Per input, the reason it is refused, or None when it passes."""
        return self.judge(features, images, orientation)[1]

    def save(self, path: Path) -> None:
        from boneage.contracts import atomic_path

        arrays = {f"{part}.{k}": v for part in PARTS for k, v in getattr(self, part).__dict__.items()}
        arrays |= {f"threshold.{p}": self.thresholds[p] for p in PARTS}
        arrays |= {k: getattr(self, k) for k in ("quantile", "image_side", "train_films", "val_films")}
        with atomic_path(Path(path)) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: Path) -> OodCheck:
        try:
            with np.load(Path(path), allow_pickle=False) as f:

                def part(kind, name):
                    return kind(**{k: f[f"{name}.{k}"] for k in kind.__dataclass_fields__})

                return cls(
                    features=part(Gaussian, "features"),
                    image=part(Gaussian, "image"),
                    texture=part(Gaussian, "texture"),
                    orientation=part(Orientation, "orientation"),
                    thresholds={p: float(f[f"threshold.{p}"]) for p in PARTS},
                    quantile=float(f["quantile"]),
                    image_side=int(f["image_side"]),
                    train_films=int(f["train_films"]),
                    val_films=int(f["val_films"]),
                )
        except (OSError, KeyError, ValueError) as exc:
            raise BoneageError(f"{path}: not a boneage out-of-distribution check ({exc})") from None


@dataclass
class FitData:
    """What fitting a check needs from a split: pooled features, texture signatures and image
    signatures (for the training split, of each view too)."""

    features: np.ndarray
    textures: np.ndarray
    signatures_by_view: list[np.ndarray]


@dataclass(frozen=True)
class Assessment:
    """A batch scored with its check: months, each image's largest score as a multiple of its
    threshold (above 1: refused), the reasons of the refused, the view each arrived in, and the
    images as scored (upright)."""

    months: np.ndarray
    ratios: np.ndarray
    reasons: list[str | None]
    views: np.ndarray
    images: np.ndarray
    part_ratios: np.ndarray | None = None  # [inputs, PARTS]: each score as a multiple of its threshold


def score_checked(scorer, check: OodCheck, inputs: dict) -> Assessment:
    """Put the images of a model's ``inputs`` upright, then score them with ``scorer`` (the
    scoring_model) and judge them: evaluation and serving alike score films with a check here."""
    from boneage.model.network import IMAGE_INPUT

    upright, views, orientation = check.upright(inputs[IMAGE_INPUT])
    months, features = scorer.predict_on_batch({**inputs, IMAGE_INPUT: upright})
    parts = check.part_ratios(features, upright, orientation)
    ratios, reasons = check.verdicts(parts)
    return Assessment(np.asarray(months).reshape(-1), ratios, reasons, views, upright, parts)


def fit(train: FitData, val: FitData, cfg: OodConfig) -> OodCheck:
    """Fit the four scores on the training films and set each threshold on the validation films, at
    the quantile that keeps the share of validation films refused by any of them near 1 - quantile."""
    if len(train.features) < 2 or len(val.features) < 1:
        raise BoneageError(
            f"the out-of-distribution check needs training and validation films (got {len(train.features)} and "
            f"{len(val.features)}); set train.ood.enabled: false to train without one"
        )
    features = Gaussian.fit(train.features, cfg.sd_floor_fraction)
    image = Gaussian.fit(train.signatures_by_view[0], cfg.sd_floor_fraction)
    texture = Gaussian.fit(train.textures, cfg.sd_floor_fraction)
    orientation = Orientation.fit(train.signatures_by_view, cfg)
    raw = {
        "features": features.distance(val.features),
        "image": image.distance(val.signatures_by_view[0]),
        "texture": texture.distance(val.textures),
        "orientation": orientation.score(val.signatures_by_view[0]),
    }
    # A Bonferroni share of the refusals for each score.
    each = 1.0 - (1.0 - cfg.quantile) / len(PARTS)
    tiny = float(np.finfo(np.float32).tiny)  # a score that is 0 on every validation film must not divide by 0
    thresholds = {p: max(float(np.quantile(raw[p], each, method="higher")), tiny) for p in PARTS}
    films = len(train.features), len(val.features)
    return OodCheck(features, image, texture, orientation, thresholds, cfg.quantile, cfg.image_side, *films)
