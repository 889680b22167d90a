"""Image classification datasets as numpy arrays, from three sources.

`load(name, split)` tries, in order:

(a) **raw files**: a local directory holding the dataset's original distribution files
    (IDX ``.gz`` for MNIST / Fashion-MNIST, the ``.npz`` files for KMNIST) in a folder named
    after the dataset, under ``data_dir`` or the ``DEEPVID_DATA_DIR`` environment variable;
(b) **TFDS**: ``tensorflow_datasets`` as usual (a prepared ``TFDS_DATA_DIR`` is read, otherwise
    TFDS downloads, unless ``download=False`` or ``DEEPVID_OFFLINE=1``);
(c) **embedded**: ``digits``, the 8x8 handwritten digits that ship inside scikit-learn, which
    need no file and no network at all.

Split strings follow TFDS slicing syntax for every source: ``train``, ``test[:8000]``,
``test[80%:]``, ``train[:10%]+test``.
"""

from __future__ import annotations

import dataclasses
import difflib
import gzip
import hashlib
import os
import re
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from deepvid_jax import logs

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
# (a) Raw files
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


def raw_dir(name: str, data_dir: str | os.PathLike | None) -> Path | None:
    """The folder searched for ``name``'s raw files: ``<data_dir or $DEEPVID_DATA_DIR>/<name>``."""
    root = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    return None if not root else Path(root).expanduser() / name


def _load_raw(name: str, parts: list[SplitSlice], folder: Path):
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
# (b) TFDS
# --------------------------------------------------------------------------------------------


def _load_tfds(name: str, split: str, download: bool):
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - it is a declared dependency
        raise DataNotFoundError(f"tensorflow_datasets is not importable ({e}).") from e
    try:
        with logs.quiet():  # TFDS warns about its cache folders through absl
            builder = tfds.builder(name)
            prepared = builder.is_prepared()
    except Exception as e:  # unknown name, broken registry
        raise DataNotFoundError(f"TFDS has no dataset {name!r} ({type(e).__name__}: {e}).") from e
    if not prepared:
        if not download:
            raise DataNotFoundError(
                f"TFDS: {name!r} is not prepared in {builder.data_dir} and downloads are off "
                f"(download=False or {OFFLINE_ENV}=1)."
            )
        try:
            # array_record lets us read without TensorFlow (tfds.data_source).
            builder.download_and_prepare(file_format="array_record")
        except Exception as e:
            raise DataNotFoundError(
                f"TFDS could not download/prepare {name!r} ({type(e).__name__}: {e})."
            ) from e
    try:
        source = builder.as_data_source(split=split)
        records = [source[i] for i in range(len(source))]
        images = np.stack([np.asarray(r["image"]) for r in records])
        labels = np.asarray([int(r["label"]) for r in records])
    except Exception as e:
        try:  # Prepared as tfrecord: needs TensorFlow, which is optional.
            arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
            images, labels = np.asarray(arrays["image"]), np.asarray(arrays["label"])
        except Exception as e2:
            raise DataNotFoundError(
                f"TFDS found {name!r} in {builder.data_dir} but could not read split {split!r}: "
                f"{type(e).__name__}: {e}; {type(e2).__name__}: {e2}. Prepare it with "
                "file_format='array_record', or install tensorflow to read tfrecords."
            ) from e2
    return images, labels, f"tfds:{builder.data_dir}"


# --------------------------------------------------------------------------------------------
# (c) Embedded
# --------------------------------------------------------------------------------------------


def _load_digits(parts: list[SplitSlice]):
    from sklearn.datasets import load_digits

    bunch = load_digits()
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
# Public entry point
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


def _float_images(images: np.ndarray) -> np.ndarray:
    """Stored images ([N, H, W] or [N, H, W, C]; uint8 0-255 or floats) -> [N, H, W, C]
    float32 in [0, 1]."""
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    return images.astype(np.float32)


def _info(images: np.ndarray, labels, name: str, split: str, source: str) -> DatasetInfo:
    """What a split is, from its stored images and labels; a clear error for an empty one."""
    if len(images) == 0:
        raise ValueError(f"split {split!r} of {name!r} selects no images (from {source}); check "
                         "the slice bounds, e.g. 'test[5000:100]' is empty.")
    class_names = CLASS_NAMES.get(name) or tuple(str(i) for i in range(int(labels.max()) + 1))
    shape = tuple(images.shape[1:]) + ((1,) if images.ndim == 3 else ())
    return DatasetInfo(name, split, class_names, shape, source)


def _to_dataset(images, labels, name: str, split: str, source: str) -> Dataset:
    images = np.asarray(images)
    info = _info(images, labels, name, split, source)
    return Dataset(_float_images(images), np.asarray(labels, dtype=np.int32), info)


def load(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool | None = None,
) -> Dataset:
    """Loads a split of an image classification dataset.

    Args:
      name: TFDS name (``mnist``, ``fashion_mnist``, ``kmnist``) or ``digits`` (embedded).
      split: TFDS split syntax, e.g. ``train``, ``test[:8000]``, ``test[80%:]``.
      data_dir: folder with one sub-folder of raw files per dataset (``<data_dir>/mnist/...``);
        defaults to ``$DEEPVID_DATA_DIR``.
      download: let TFDS download when the dataset is not prepared; defaults to True unless
        ``$DEEPVID_OFFLINE`` is set to 1.

    Returns:
      `Dataset` with images [N, H, W, C] float32 in [0, 1], labels [N] int32 and `DatasetInfo`.

    Raises:
      DataNotFoundError: no source has the split; the message lists every place looked at.
      CorruptDataError: a raw file is truncated or malformed; the message names the file.
      ValueError: the split string is malformed.
    """
    images, labels, source = _read(name, split, data_dir, download)
    return _to_dataset(images, labels, name, split, source)


def _read(name: str, split: str, data_dir, download) -> tuple[np.ndarray, np.ndarray, str]:
    """images (uint8 [N, H, W(, C)] or float), labels [N] and the source of a split."""
    if not isinstance(split, str):
        raise ValueError(f"split must be a string in TFDS syntax, got {split!r}.")
    parts = parse_split(split)
    check_name(name)
    check_split(name, parts)
    if name == EMBEDDED_DATASET:
        x, y = _load_digits(parts)
        return x, y, "embedded:sklearn.datasets.load_digits"

    if download is None:
        download = os.environ.get(OFFLINE_ENV, "0") not in ("1", "true", "True")
    tried: list[str] = []

    loaders: list[tuple[str, Callable]] = []
    folder = raw_dir(name, data_dir)
    if name in RAW_FILES:
        if folder is None:
            tried.append(f"raw files: no data_dir given and ${DATA_DIR_ENV} is not set")
        else:
            loaders.append(("raw", lambda: (*_load_raw(name, parts, folder), f"raw:{folder}")))
    else:
        tried.append(f"raw files: {name!r} is not one of {sorted(RAW_FILES)}")
    loaders.append(("tfds", lambda: _load_tfds(name, split, download)))

    for kind, loader in loaders:
        try:
            x, y, source = loader()
        except DataNotFoundError as e:
            tried.append(f"{kind}: {e}")
            continue
        return x, y, source

    raise DataNotFoundError(
        f"Could not load {name!r} split {split!r}. Looked at:\n  - "
        + "\n  - ".join(tried)
        + f"\nTo provide it: put the original files in <dir>/{name}/ and pass data_dir=<dir> or "
        f"set ${DATA_DIR_ENV}=<dir>; or let TFDS download it (internet, {OFFLINE_ENV} unset); "
        f"or use the embedded dataset {EMBEDDED_DATASET!r}, which needs nothing."
    )


class Source:
    """Random access to a split by index ranges (`open_source`): the dataset runner reads a
    chunk at a time, as float32 images, from the stored bytes (uint8 for the raw files and
    TFDS: a quarter of the float32 size; compressed raw files cannot be sliced, so they are
    decompressed once).

    Attributes:
      info: `DatasetInfo`.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, info: DatasetInfo):
        self._images, self._labels, self.info = images, np.asarray(labels, np.int32), info

    def __len__(self) -> int:
        return len(self._images)

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """images [stop - start, H, W, C] float32 in [0, 1] and labels [n] int32."""
        return _float_images(self._images[start:stop]), self._labels[start:stop]

    def fingerprint(self) -> str:
        """sha256 of the split's stored image bytes and labels (hex): which data a store of
        explanations was made from."""
        return array_digest([self._images, self._labels])


def array_digest(arrays) -> str:
    """sha256 (hex) of arrays' dtypes, shapes and bytes, in order: what data or parameters a
    result was made from."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.asarray(a)
        h.update(str((a.dtype, a.shape)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def open_source(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool | None = None,
) -> Source:
    """A split as a `Source` (arguments and errors as in `load`)."""
    x, y, source = _read(name, split, data_dir, download)
    x = np.asarray(x)
    return Source(x, y, _info(x, y, name, split, source))
