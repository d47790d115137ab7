"""Reading radiographs from PNG (8/16-bit, gray/RGB/RGBA), JPEG and DICOM into one grayscale array.

Every failure becomes a :class:`BadInputError` with a short reason, so that ingest and preprocess can
quarantine the file and carry on, and ``predict`` can refuse it with a clear message.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from boneage.errors import BadInputError

# PIL's own guard is a warning below twice its limit; we check sizes ourselves against the
# configured limit, and keep PIL's hard guard as a backstop at a fixed, generous ceiling.
Image.MAX_IMAGE_PIXELS = 200_000_000

DICOM_SUFFIXES = {".dcm", ".dicom"}
RASTER_SUFFIXES = {".png", ".jpg", ".jpeg"}
IMAGE_SUFFIXES = DICOM_SUFFIXES | RASTER_SUFFIXES


@dataclass
class Radiograph:
    """Grayscale pixels with bone bright, as uint8 or uint16; DICOM header facts when present."""

    pixels: np.ndarray
    patient_sex: str | None = None
    patient_age_months: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def max_value(self) -> int:
        return 65535 if self.pixels.dtype == np.uint16 else 255


def is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


BOMB_REASON = "image too large; refused as a possible decompression bomb"


def _check_dimensions(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise BadInputError(f"empty image ({width}x{height})")
    if width * height > max_pixels:
        raise BadInputError(
            f"image too large ({width}x{height} = {width * height:,} px > limit {max_pixels:,}); "
            "refused as a possible decompression bomb"
        )


def _inspect(source, max_pixels: int, verify: bool) -> tuple[int, int]:
    """Read the header (refusing bombs before any pixel is decoded) and, with ``verify``, check
    the whole file; every failure becomes a BadInputError. Returns (width, height)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                width, height = im.size
                _check_dimensions(width, height, max_pixels)
                if verify and im.format == "PNG":
                    im.verify()  # walks every chunk and checks its CRC: catches truncation and corruption
                elif verify:
                    im.load()
    except BadInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadInputError(BOMB_REASON) from None
    except UnidentifiedImageError as exc:
        raise BadInputError(f"not a readable image: {type(exc).__name__}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadInputError(f"corrupt or truncated image: {exc}") from None
    return width, height


def check_image_file(path: Path, max_pixels: int) -> tuple[int, int]:
    """Cheap validation for ingest: the file exists, is a supported image, is not absurdly large and
    is not corrupt or truncated. Returns (width, height)."""
    if not path.is_file():
        raise BadInputError("image file missing")
    if is_dicom(path):
        rad = read_radiograph(path, max_pixels)
        return rad.pixels.shape[1], rad.pixels.shape[0]
    return _inspect(path, max_pixels, verify=True)


def _read_raster(data: bytes, max_pixels: int) -> np.ndarray:
    import io

    _inspect(io.BytesIO(data), max_pixels, verify=False)
    # Decoding straight to one channel (keeping 16-bit depth) is cheaper than decode-then-convert;
    # alpha is ignored, which is right for radiographs saved as opaque RGBA.
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH)
    if pixels is None or pixels.size == 0:
        raise BadInputError("corrupt or truncated image (decoder failed)")
    if pixels.dtype not in (np.uint8, np.uint16):
        raise BadInputError(f"unsupported pixel type {pixels.dtype}")
    return pixels


def _read_dicom(path_or_bytes, max_pixels: int) -> Radiograph:
    import io

    import pydicom
    from pydicom.errors import InvalidDicomError

    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    try:
        ds = pydicom.dcmread(source)
    except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
        raise BadInputError(f"unreadable DICOM: {exc}") from None
    if "PixelData" not in ds:
        raise BadInputError("DICOM has no pixel data")
    _check_dimensions(int(ds.get("Columns", 0)), int(ds.get("Rows", 0)), max_pixels)
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for unsupported transfer syntaxes
        raise BadInputError(f"cannot decode DICOM pixels: {exc}") from None
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = cv2.cvtColor(arr.astype(np.uint8), cv2.COLOR_RGB2GRAY)
    if arr.ndim != 2:
        raise BadInputError(f"unsupported DICOM pixel shape {arr.shape}")
    arr = arr.astype(np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        raise BadInputError("DICOM image is blank (constant pixels)")
    scaled = (arr - lo) / (hi - lo)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        scaled = 1.0 - scaled  # MONOCHROME1 stores bone dark; we want bone bright
    pixels = np.round(scaled * 65535).astype(np.uint16)
    sex = str(ds.get("PatientSex", "") or "").strip().upper() or None
    return Radiograph(pixels, patient_sex=sex, patient_age_months=_dicom_age_months(ds))


def _dicom_age_months(ds) -> float | None:
    """PatientAge ('010Y', '006M', '020W', '100D'), else StudyDate - PatientBirthDate."""
    age = str(ds.get("PatientAge", "") or "").strip().upper()
    per_month = {"Y": 12.0, "M": 1.0, "W": 12.0 / 52.1775, "D": 12.0 / 365.25}
    if len(age) >= 2 and age[-1] in per_month and age[:-1].isdigit():
        return int(age[:-1]) * per_month[age[-1]]
    birth, study = str(ds.get("PatientBirthDate", "") or ""), str(ds.get("StudyDate", "") or "")
    if len(birth) == 8 and len(study) == 8 and birth.isdigit() and study.isdigit():
        from datetime import date

        b = date(int(birth[:4]), int(birth[4:6]), int(birth[6:]))
        s = date(int(study[:4]), int(study[4:6]), int(study[6:]))
        return (s - b).days * 12.0 / 365.25
    return None


def read_radiograph(path: str | Path, max_pixels: int) -> Radiograph:
    """Decode any supported file into grayscale pixels with bone bright."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError("image file missing")
    if path.suffix.lower() in DICOM_SUFFIXES:  # a .dcm without the DICM preamble is still DICOM
        return _read_dicom(path, max_pixels)
    # One read: the DICOM check looks at the same bytes the decoder gets.
    return read_radiograph_bytes(path.read_bytes(), max_pixels)


def read_radiograph_bytes(data: bytes, max_pixels: int) -> Radiograph:
    if len(data) >= 132 and data[128:132] == b"DICM":
        return _read_dicom(data, max_pixels)
    return Radiograph(_read_raster(data, max_pixels))


# --- The eight symmetries of a square image -----------------------------------------------------
# A film may arrive turned by quarter turns or mirrored (a right hand imaged instead of the left):
# view v is the upright image mirrored left-right when v >= 4, then turned v % 4 quarter turns
# counter-clockwise. View 0 is upright.
DIHEDRAL_VIEWS = 8


def dihedral(image: np.ndarray, view: int, axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    """``image`` in ``view`` (its rows and columns are ``axes``: (1, 2) for a batch)."""
    if view >= 4:
        image = np.flip(image, axes[1])
    return np.rot90(image, view % 4, axes)


def undo_dihedral(image: np.ndarray, view: int, axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    """The upright image, from one seen in ``view``."""
    image = np.rot90(image, -(view % 4), axes)
    return np.flip(image, axes[1]) if view >= 4 else image


def describe_view(view: int) -> str | None:
    """How a film in ``view`` arrived, in words (None: upright)."""
    turns = {1: "turned 90° counter-clockwise", 2: "turned 180°", 3: "turned 90° clockwise"}
    parts = (["mirrored (a right hand, or the film flipped)"] if view >= 4 else []) + ([turns[view % 4]] if view % 4 else [])
    return " and ".join(parts) or None
