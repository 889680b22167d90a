"""The datasets known by name: their class names, original files and splits, the split syntax,
and reading the original files (raw IDX / npz files, the embedded digits).

Split strings follow TFDS slicing syntax for every source: ``train``, ``test[:8000]``,
``test[80%:]``, ``train[:10%]+test``.
"""

from __future__ import annotations

import dataclasses
import difflib
import gzip
import os
import re
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from deepvid_jax.data import synthetic

DATA_DIR_ENV = "DEEPVID_DATA_DIR"
OFFLINE_ENV = "DEEPVID_OFFLINE"
EMBEDDED_DATASET = "digits"

_DIGIT_NAMES = tuple(str(i) for i in range(10))
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "mnist": _DIGIT_NAMES,
    "digits": _DIGIT_NAMES,
    "fashion_mnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
    "kmnist": ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    **{name: synthetic.CLASSES for name in synthetic.SIZES},
}

# Original file names of each dataset's distribution, per split: (images, labels).
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
RAW_FILES: dict[str, dict[str, tuple[str, str]]] = {
    "mnist": _IDX_FILES,
    "fashion_mnist": _IDX_FILES,
    "kmnist": {
        "train": ("kmnist-train-imgs.npz", "kmnist-train-labels.npz"),
        "test": ("kmnist-test-imgs.npz", "kmnist-test-labels.npz"),
    },
}

# The splits of every dataset we know by name (checked before any source is tried, so a typo
# never starts a download).
KNOWN_SPLITS: dict[str, tuple[str, ...]] = {
    **{name: tuple(files) for name, files in RAW_FILES.items()},
    EMBEDDED_DATASET: ("train", "test", "all"),
    **{name: tuple(synthetic.SPLITS) for name in synthetic.SIZES},
}

# sklearn's digits have no official split: the first 80 % is `train`, the rest `test`.
_DIGITS_TRAIN_SIZE = 1438


class DataNotFoundError(FileNotFoundError):
    """No source could provide the requested dataset split."""


class CorruptDataError(ValueError):
    """A dataset file exists but its content is truncated or malformed."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What was loaded and from where.

    Attributes:
      name: dataset name, TFDS spelling (``mnist``, ``kmnist``, ``digits``...).
      split: the split string as requested.
      class_names: one name per label value.
      image_shape: ``(H, W, C)``.
      source: ``raw:<dir>``, ``tfds:<dir or default>`` or ``embedded:sklearn.datasets.load_digits``.
    """

    name: str
    split: str
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    source: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class Dataset(NamedTuple):
    """images: [N, H, W, C] float32 in [0, 1]; labels: [N] int32; info: `DatasetInfo`."""

    images: np.ndarray
    labels: np.ndarray
    info: DatasetInfo


# --------------------------------------------------------------------------------------------
# Split syntax
# --------------------------------------------------------------------------------------------

_SLICE_RE = re.compile(r"^(?P<split>\w+)(?:\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?$")


class SplitSlice(NamedTuple):
    split: str
    start: str | None
    stop: str | None


def parse_split(split: str) -> list[SplitSlice]:
    """Parses a TFDS split string (``test[:8000]+train[80%:]``) into its parts."""
    parts = []
    for part in split.replace(" ", "").split("+"):
        m = _SLICE_RE.match(part)
        if m is None:
            raise ValueError(
                f"Invalid split {split!r}: expected TFDS syntax such as 'train', "
                "'test[:8000]', 'test[80%:]' or 'train+test'."
            )
        parts.append(SplitSlice(m["split"], m["start"], m["stop"]))
    return parts


def _bound(spec: str | None, n: int, default: int) -> int:
    if spec is None:
        return default
    if spec.endswith("%"):
        pct = int(spec[:-1])
        if not -100 <= pct <= 100:
            raise ValueError(f"Split percentage {spec!r} is outside [-100%, 100%].")
        value = int(round(pct * n / 100))  # TFDS's default 'closest' rounding.
    else:
        value = int(spec)
    if value < 0:
        value += n
    return min(max(value, 0), n)


def slice_indices(part: SplitSlice, n: int) -> slice:
    """The python slice of an ``n``-example split selected by ``part``."""
    return slice(_bound(part.start, n, 0), _bound(part.stop, n, n))


# --------------------------------------------------------------------------------------------
# Raw files (the datasets' original distribution files)
# --------------------------------------------------------------------------------------------


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """Reads a gzipped IDX file (big-endian int32 header, then uint8 data)."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise CorruptDataError(f"Cannot read {path}: truncated or not gzip ({e}).") from e
    header_len = 4 * (1 + ndim)
    if len(raw) < header_len:
        raise CorruptDataError(f"{path} is too short to hold an IDX header.")
    header = np.frombuffer(raw[:header_len], dtype=">i4")
    if header[0] != magic:
        raise CorruptDataError(f"{path}: IDX magic {header[0]} != expected {magic}.")
    dims = tuple(int(d) for d in header[1:])
    expected = int(np.prod(dims))
    data = np.frombuffer(raw[header_len:], dtype=np.uint8)
    if data.size != expected:
        raise CorruptDataError(
            f"{path}: header announces {dims} = {expected} bytes, file holds {data.size}."
        )
    return data.reshape(dims)


def _read_npz(path: Path) -> np.ndarray:
    try:
        with np.load(path) as z:
            if "arr_0" not in z.files:
                raise CorruptDataError(f"{path}: no 'arr_0' array (found {z.files}).")
            return np.asarray(z["arr_0"])
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as e:
        if isinstance(e, CorruptDataError):
            raise
        raise CorruptDataError(f"Cannot read {path}: truncated or not a valid npz ({e}).") from e


def _read_raw_split(name: str, split: str, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """images [N, H, W] uint8, labels [N] from the original files of one split."""
    image_file, label_file = RAW_FILES[name][split]
    if name == "kmnist":
        images, labels = _read_npz(folder / image_file), _read_npz(folder / label_file)
    else:
        images = _read_idx(folder / image_file, magic=2051, ndim=3)
        labels = _read_idx(folder / label_file, magic=2049, ndim=1)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise CorruptDataError(
            f"{folder / image_file}: expected uint8 images [N, H, W], got {images.dtype} "
            f"{images.shape}."
        )
    if labels.shape != (images.shape[0],):
        raise CorruptDataError(
            f"{folder}: {images.shape[0]} images but labels of shape {labels.shape}."
        )
    num_classes = len(CLASS_NAMES[name])
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise CorruptDataError(
            f"{folder / label_file}: labels outside [0, {num_classes}) "
            f"(min {labels.min()}, max {labels.max()})."
        )
    return images, labels


def data_root(data_dir: str | os.PathLike | None) -> Path | None:
    """Our data folder: ``data_dir``, else ``$DEEPVID_DATA_DIR``, else None."""
    root = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    return None if not root else Path(root).expanduser()


def raw_dir(name: str, data_dir: str | os.PathLike | None) -> Path | None:
    """The folder searched for ``name``'s raw files: ``<data_dir or $DEEPVID_DATA_DIR>/<name>``."""
    root = data_root(data_dir)
    return None if root is None else root / name


def load_raw(name: str, parts: list[SplitSlice], folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """images [N, H, W] uint8 and labels [N] of the parts, from the original files in folder."""
    images, labels = [], []
    for part in parts:
        if part.split not in RAW_FILES[name]:
            raise DataNotFoundError(f"{name} has no split {part.split!r} in raw files.")
        missing = [f for f in RAW_FILES[name][part.split] if not (folder / f).is_file()]
        if missing:
            raise DataNotFoundError(f"{folder}: missing {', '.join(missing)}")
        x, y = _read_raw_split(name, part.split, folder)
        sl = slice_indices(part, len(x))
        images.append(x[sl])
        labels.append(y[sl])
    return np.concatenate(images), np.concatenate(labels)


# --------------------------------------------------------------------------------------------
# The embedded digits
# --------------------------------------------------------------------------------------------


def load_digits(parts: list[SplitSlice]) -> tuple[np.ndarray, np.ndarray]:
    """images [N, 8, 8] uint8 and labels [N] of the parts of sklearn's digits."""
    from sklearn import datasets

    bunch = datasets.load_digits()
    images = (bunch.images * (255.0 / 16.0)).round().astype(np.uint8)  # 0..16 -> 0..255
    labels = bunch.target
    splits = {
        "train": slice(0, _DIGITS_TRAIN_SIZE),
        "test": slice(_DIGITS_TRAIN_SIZE, None),
        "all": slice(None),
    }
    out_x, out_y = [], []
    for part in parts:
        if part.split not in splits:
            raise ValueError(f"digits has splits {sorted(splits)}, not {part.split!r}.")
        x, y = images[splits[part.split]], labels[splits[part.split]]
        sl = slice_indices(part, len(x))
        out_x.append(x[sl])
        out_y.append(y[sl])
    return np.concatenate(out_x), np.concatenate(out_y)


# --------------------------------------------------------------------------------------------
# Checking names and splits before any source is tried
# --------------------------------------------------------------------------------------------


def _tfds_names() -> list[str]:
    try:
        import tensorflow_datasets as tfds

        return list(tfds.list_builders(with_community_datasets=False))
    except Exception:  # pragma: no cover - TFDS is a dependency; its registry may still fail
        return []


def check_name(name: str) -> None:
    """Raises DataNotFoundError for a dataset name neither we nor TFDS know, suggesting the
    closest known names (not the whole TFDS catalogue)."""
    if not isinstance(name, str) or not name.strip():
        raise DataNotFoundError(f"dataset name must be a non-empty string, got {name!r}.")
    if name in KNOWN_SPLITS:
        return
    base = name.split(":")[0].split("/")[0]  # TFDS's name/config:version
    tfds_names = _tfds_names()
    if base in tfds_names:
        return
    close = difflib.get_close_matches(base, [*KNOWN_SPLITS, *tfds_names], n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    if Path(name).is_dir():
        hint = f" For the image folder {name!r} here, write it as a path: './{name}'."
    raise DataNotFoundError(
        f"Unknown dataset {name!r}.{hint} Known here: {', '.join(sorted(KNOWN_SPLITS))}; any "
        "TFDS image classification dataset can be named too.")


def check_split(name: str, parts: list[SplitSlice]) -> None:
    """For a dataset we know, every part of the split names one of its splits."""
    splits = KNOWN_SPLITS.get(name)
    if splits is None:
        return
    for part in parts:
        if part.split not in splits:
            close = difflib.get_close_matches(part.split, splits, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{name} has splits {list(splits)}, not {part.split!r}{hint}.")

