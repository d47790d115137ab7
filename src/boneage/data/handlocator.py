"""A small learned hand locator: the whole film, squashed to a small square, in; the box of the
hand (fingertips to wrist, the way people draw it) out. Five strided convolutions and two dense
layers, fitted with Keras (``fit``) and run in NumPy (``Locator.boxes``), so that preprocessing
workers and servers need no TensorFlow to crop. Rules on thresholds keep collimation fields,
forearms and film edges on about one film in seven; localising the hand with a learned model is
what Deeplasia and BoneXpert do.

The network never refuses a film: a blank one is refused before it (``handcrop``), and what is not
a hand at all is the out-of-distribution check's to refuse.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
from threadpoolctl import threadpool_limits

from boneage.errors import BoneageError
from boneage.data.imaging import DIHEDRAL_VIEWS, dihedral

# The packaged locators (src/boneage/resources/NAME.npz); preprocess.locator names one, or a path.
RESOURCES = Path(str(resources.files("boneage"))) / "resources"
# The network: input side, and the filters of each stride-2 3x3 convolution (64 -> 2 px).
INPUT_SIDE = 64
CONV_FILTERS = (16, 32, 64, 128, 128)
DENSE_UNITS = 64
BATCHNORM_EPSILON = 1e-3  # Keras' default, folded into the convolutions for NumPy


def thumbnail(pixels: np.ndarray, side: int = INPUT_SIDE) -> np.ndarray:
    """A film of any size and depth -> the side x side uint8 square the locator reads (squashed,
    not padded: the RSNA 100 px copies were made the same way)."""
    if pixels.dtype == np.uint16:
        pixels = (pixels >> 8).astype(np.uint8)
    return cv2.resize(pixels, (side, side), interpolation=cv2.INTER_AREA)


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "same" padding (the extra pixel, if any, after)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _conv(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, stride: int) -> np.ndarray:
    """x [N, H, W, C] -> relu(conv(x) + bias), "same" padding, as Keras computes it."""
    k = kernel.shape[0]
    (top, bottom), (left, right) = _same_padding(x.shape[1], k, stride), _same_padding(x.shape[2], k, stride)
    padded = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(1, 2))[:, ::stride, ::stride]
    return np.maximum(np.einsum("nhwcij,ijco->nhwo", windows, kernel, optimize=True) + bias, 0.0)


@dataclass(frozen=True)
class Locator:
    """The fitted network as arrays: (kernel, bias) per convolution (BatchNorm folded in), then
    (weights, bias) per dense layer; outputs x0, y0, x1, y1 as fractions of the film's sides."""

    convs: tuple[tuple[np.ndarray, np.ndarray], ...]
    dense: tuple[tuple[np.ndarray, np.ndarray], ...]
    side: int = INPUT_SIDE

    def boxes(self, thumbnails: np.ndarray) -> np.ndarray:
        """uint8 [N, side, side] -> [N, 4] boxes (x0, y0, x1, y1) in 0..1."""
        x = np.asarray(thumbnails, dtype=np.float32)[..., None] / np.float32(255.0)
        for kernel, bias in self.convs:
            x = _conv(x, kernel, bias, 2)
        x = x.reshape(len(x), -1)
        for i, (weights, bias) in enumerate(self.dense):
            x = x @ weights + bias
            x = np.maximum(x, 0.0) if i < len(self.dense) - 1 else 1.0 / (1.0 + np.exp(-x))
        return x

    def locate(self, thumb: np.ndarray) -> np.ndarray:
        """One film's thumbnail -> its box (x0, y0, x1, y1 in 0..1): the median of the boxes found in
        its eight turns and mirror images, each turned back (the network was fitted on all eight, so
        a film arrives upright, turned or mirrored alike)."""
        views = np.stack([dihedral(thumb, view) for view in range(DIHEDRAL_VIEWS)])
        # One BLAS thread: the matrices are small, and films are cropped in parallel processes and
        # threads, where BLAS's own threads would oversubscribe the cores (39 ms a film instead of 2).
        with threadpool_limits(1, user_api="blas"):
            boxes = self.boxes(views)
        return np.median(np.stack([undo_dihedral_box(box, view) for view, box in enumerate(boxes)]), axis=0)

    def save(self, path: Path) -> None:
        from boneage.contracts import atomic_path

        arrays = {f"conv{i}.{n}": a for i, pair in enumerate(self.convs) for n, a in zip(("kernel", "bias"), pair, strict=True)}
        arrays |= {
            f"dense{i}.{n}": a for i, pair in enumerate(self.dense) for n, a in zip(("weights", "bias"), pair, strict=True)
        }
        with atomic_path(Path(path)) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, side=self.side, **arrays)

    @classmethod
    def load(cls, path: Path) -> Locator:
        try:
            with np.load(Path(path), allow_pickle=False) as f:
                convs = tuple((f[f"conv{i}.kernel"], f[f"conv{i}.bias"]) for i in range(len(CONV_FILTERS)))
                dense = tuple((f[f"dense{i}.weights"], f[f"dense{i}.bias"]) for i in range(2))
                return cls(convs, dense, int(f["side"]))
        except (OSError, KeyError, ValueError) as exc:
            raise BoneageError(f"{path}: not a boneage hand locator ({exc})") from None


def dihedral_box(box: np.ndarray, view: int) -> np.ndarray:
    """Where a box (x0, y0, x1, y1 in 0..1) lies once its image takes ``view``."""
    x0, y0, x1, y1 = box
    if view >= 4:
        x0, x1 = 1.0 - x1, 1.0 - x0
    for _ in range(view % 4):  # a quarter turn counter-clockwise takes (x, y) to (y, 1 - x)
        x0, y0, x1, y1 = y0, 1.0 - x1, y1, 1.0 - x0
    return np.array([x0, y0, x1, y1], dtype=np.float32)


def undo_dihedral_box(box: np.ndarray, view: int) -> np.ndarray:
    """The box on the original image, from the box found on its ``view``."""
    x0, y0, x1, y1 = box
    for _ in range(view % 4):  # a quarter turn clockwise takes (x, y) to (1 - y, x)
        x0, y0, x1, y1 = 1.0 - y1, x0, 1.0 - y0, x1
    if view >= 4:
        x0, x1 = 1.0 - x1, 1.0 - x0
    return np.array([x0, y0, x1, y1], dtype=np.float32)


_LOADED: dict[str, Locator] = {}


def locator_path(name: str) -> Path:
    """preprocess.locator: a packaged locator's name, or the path to an .npz of one."""
    packaged = RESOURCES / f"{name}.npz"
    path = packaged if packaged.is_file() else Path(name).expanduser()
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in RESOURCES.glob("hand-locator*.npz")))
        raise BoneageError(f"preprocess.locator: {name!r} is neither a packaged locator ({known}) nor a file")
    return path


def load(name: str) -> Locator:
    """The locator ``name`` names, loaded once per process."""
    if name not in _LOADED:
        _LOADED[name] = Locator.load(locator_path(name))
    return _LOADED[name]


# --- Fitting (Keras) ----------------------------------------------------------------------------
def network(side: int = INPUT_SIDE):
    """The Keras network that ``fit`` trains and ``to_locator`` turns into arrays."""
    import keras
    from keras import layers

    image = keras.Input((side, side, 1), name="thumbnail")
    x = layers.Rescaling(1.0 / 255.0)(image)
    for filters in CONV_FILTERS:
        x = layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(epsilon=BATCHNORM_EPSILON)(x)
        x = layers.ReLU()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(DENSE_UNITS, activation="relu")(x)
    return keras.Model(image, layers.Dense(4, activation="sigmoid")(x), name="hand_locator")


def to_locator(model, side: int = INPUT_SIDE) -> Locator:
    """The Keras network's weights as a Locator, each BatchNorm folded into its convolution."""
    from keras import layers

    convs, dense = [], []
    conv_layers = [layer for layer in model.layers if isinstance(layer, layers.Conv2D)]
    norms = [layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)]
    for conv, bn in zip(conv_layers, norms, strict=True):
        gamma, beta, mean, var = (np.asarray(w) for w in bn.get_weights())
        scale = gamma / np.sqrt(var + bn.epsilon)
        convs.append(((np.asarray(conv.get_weights()[0]) * scale).astype(np.float32), (beta - mean * scale).astype(np.float32)))
    for layer in (layer for layer in model.layers if isinstance(layer, layers.Dense)):
        weights, bias = layer.get_weights()
        dense.append((np.asarray(weights, np.float32), np.asarray(bias, np.float32)))
    return Locator(tuple(convs), tuple(dense), side)


Boxed = list[tuple[np.ndarray, np.ndarray]]  # (film, the hand's box in its pixels)


@dataclass(frozen=True)
class FitSettings:
    """How a locator is fitted: first on many boxes of a rule (``pseudo``: a crop's boxes on films
    nobody boxed), then on people's boxes, each film augmented anew every epoch."""

    rounds: int = 3  # self-training: each round's rule boxes are the previous round's locator's
    pseudo_epochs: int = 10
    teacher_epochs: int = 50  # on people's boxes, in the rounds before the last
    epochs: int = 200  # on people's boxes, in the last round
    repeats: int = 4  # each person's box this many times per epoch
    learning_rate: float = 1e-3
    pseudo_batch_size: int = 64
    batch_size: int = 32
    pre_cropped_share: float = 0.2  # films cut to their box plus up to `pre_cropped_margin` of it
    pre_cropped_margin: float = 0.2
    rotation_deg: float = 12.0
    scale: float = 0.1
    shift: float = 0.06
    gamma: tuple[float, float] = (0.7, 1.4)
    gain: tuple[float, float] = (0.8, 1.2)
    offset: float = 20.0
    background_percentile: float = 5.0  # what a turned film's uncovered corners are filled with
    seed: int = 0


def _pre_cropped(film: np.ndarray, box: np.ndarray, rng, s: FitSettings) -> tuple[np.ndarray, np.ndarray]:
    """The film cut to its hand's box plus a random margin, as a film already cropped arrives."""
    h, w = film.shape
    size = np.array([box[2] - box[0], box[3] - box[1]] * 2)
    margin = rng.uniform(0.0, s.pre_cropped_margin, 4) * size
    x0, y0 = int(max(0, box[0] - margin[0])), int(max(0, box[1] - margin[1]))
    x1, y1 = int(min(w, np.ceil(box[2] + margin[2]))), int(min(h, np.ceil(box[3] + margin[3])))
    return film[y0:y1, x0:x1], box - np.array([x0, y0, x0, y0], dtype=np.float32)


def augment(film: np.ndarray, box: np.ndarray, rng: np.random.Generator, s: FitSettings) -> tuple[np.ndarray, np.ndarray]:
    """One training example: (thumbnail, box in 0..1) from a film and its hand's box in its pixels,
    pre-cropped at times, turned, scaled and shifted a little, exposed differently, then taken to
    one of its eight turns and mirror images."""
    if rng.random() < s.pre_cropped_share:
        film, box = _pre_cropped(film, box, rng, s)
    h, w = film.shape
    affine = cv2.getRotationMatrix2D(
        (w / 2, h / 2), rng.uniform(-s.rotation_deg, s.rotation_deg), 1 + rng.uniform(-s.scale, s.scale)
    )
    affine[:, 2] += rng.uniform(-s.shift, s.shift, 2) * np.array([w, h])
    fill = float(np.percentile(film, s.background_percentile))
    film = cv2.warpAffine(film, affine, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=fill)
    corners = np.array([[box[0], box[1], 1], [box[2], box[1], 1], [box[0], box[3], 1], [box[2], box[3], 1]]) @ affine.T
    box = np.clip([*corners.min(axis=0), *corners.max(axis=0)], 0, [w, h, w, h]) / np.array([w, h, w, h])
    thumb = thumbnail(film).astype(np.float32) / 255.0
    thumb = 255.0 * thumb ** rng.uniform(*s.gamma) * rng.uniform(*s.gain) + rng.uniform(-s.offset, s.offset)
    view = int(rng.integers(DIHEDRAL_VIEWS))
    return dihedral(np.clip(thumb, 0, 255).astype(np.uint8), view), dihedral_box(box.astype(np.float32), view)


def _examples(items: list[tuple[np.ndarray, np.ndarray]], rng, s: FitSettings) -> tuple[np.ndarray, np.ndarray]:
    thumbs, boxes = zip(*(augment(film, box, rng, s) for film, box in items), strict=True)
    return np.stack(thumbs)[..., None], np.stack(boxes)


def fit(people: Boxed, pseudo: Boxed, s: FitSettings, epochs: int) -> Locator:
    """A locator fitted on (film, box in the film's pixels) pairs: ``pseudo`` first (may be empty),
    then ``people``'s boxes for ``epochs`` with a cosine-decayed rate. Progress goes to stderr."""
    import sys

    import keras

    keras.utils.set_random_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    model = network()
    if pseudo:
        model.compile(keras.optimizers.Adam(s.learning_rate), loss="mae")
        for epoch in range(s.pseudo_epochs):
            loss = model.fit(*_examples(pseudo, rng, s), batch_size=s.pseudo_batch_size, epochs=1, verbose=0).history["loss"][-1]
            print(f"locator, rule boxes: epoch {epoch + 1}/{s.pseudo_epochs}, loss {loss:.4f}", file=sys.stderr)
    steps = epochs * -(-len(people) * s.repeats // s.batch_size)
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(s.learning_rate, steps)), loss="mae")
    for epoch in range(epochs):
        loss = model.fit(*_examples(people * s.repeats, rng, s), batch_size=s.batch_size, epochs=1, verbose=0).history["loss"][-1]
        print(f"locator, people's boxes: epoch {epoch + 1}/{epochs}, loss {loss:.4f}", file=sys.stderr)
    return to_locator(model)


def padded(box: np.ndarray, share: float, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """A box (x0, y0, x1, y1 in pixels) grown on each side by ``share`` of its longer side, in whole
    pixels inside an image of ``shape``: the second look's cut, and the crop's margin."""
    h, w = shape
    x0, y0, x1, y1 = box
    pad = share * max(x1 - x0, y1 - y0)
    return max(0, int(x0 - pad)), max(0, int(y0 - pad)), min(w, int(np.ceil(x1 + pad))), min(h, int(np.ceil(y1 + pad)))


def _one_look(locator: Locator, film: np.ndarray) -> np.ndarray:
    h, w = film.shape
    return locator.locate(thumbnail(film, locator.side)) * np.array([w, h, w, h])


def film_box(locator: Locator, film: np.ndarray, second_look: float | None = None) -> np.ndarray:
    """The box ``locator`` finds on a film, in the film's pixels (x0, y0, x1, y1). With
    ``second_look``, the locator looks again at the film cut to that box plus this share of the
    box's longer side around it, where the hand fills more of its small input; the films it was
    fitted on were cut that way at times (``FitSettings.pre_cropped_share``)."""
    box = _one_look(locator, film)
    if second_look is None:
        return box
    cx0, cy0, cx1, cy1 = padded(box, second_look, film.shape)
    if cx1 <= cx0 or cy1 <= cy0:  # nothing to look at again
        return box
    return _one_look(locator, film[cy0:cy1, cx0:cx1]) + np.array([cx0, cy0, cx0, cy0])


def fit_rounds(
    people: list[tuple[np.ndarray, np.ndarray]], films: list[np.ndarray], rule_boxes: list[np.ndarray], s: FitSettings
):
    """Self-training: fit on the rule's boxes of ``films`` then on people's boxes; then again, the
    rule's boxes replaced by the last locator's, ``s.rounds`` times. Returns the last locator."""
    import sys

    pseudo = list(zip(films, rule_boxes, strict=True))
    for round_ in range(s.rounds):
        print(f"locator: round {round_ + 1} of {s.rounds}", file=sys.stderr)
        locator = fit(people, pseudo, s, s.epochs if round_ == s.rounds - 1 else s.teacher_epochs)
        pseudo = [(film, film_box(locator, film)) for film in films]
    return locator
