"""Image classification datasets as numpy arrays, from four sources.

`load(name, split)` tries, in order:

(a) **raw files**: a local directory holding the dataset's original distribution files
    (IDX ``.gz`` for MNIST / Fashion-MNIST, the ``.npz`` files for KMNIST) in a folder named
    after the dataset, under ``data_dir`` or the ``DEEPVID_DATA_DIR`` environment variable;
(b) **TFDS**: ``tensorflow_datasets`` as usual (a dataset TFDS prepared under the same data
    folder is read first, then TFDS's own folder, a prepared ``TFDS_DATA_DIR``; otherwise
    TFDS downloads, unless ``download=False`` or ``DEEPVID_OFFLINE=1``);
(c) **embedded**: ``digits``, the 8x8 handwritten digits that ship inside scikit-learn, which
    need no file and no network at all;
(d) **generated**: ``synthetic`` / ``synthetic_64``, coloured shapes with exact class masks
    (`deepvid_jax.data.synthetic`, `SyntheticSource.masks`).

Split strings follow TFDS slicing syntax for every source: ``train``, ``test[:8000]``,
``test[80%:]``, ``train[:10%]+test``.
"""

from __future__ import annotations

import dataclasses
import difflib
import gzip
import hashlib
import itertools
import os
import re
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from deepvid_jax import logs
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


def data_root(data_dir: str | os.PathLike | None) -> Path | None:
    """Our data folder: ``data_dir``, else ``$DEEPVID_DATA_DIR``, else None."""
    root = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    return None if not root else Path(root).expanduser()


def raw_dir(name: str, data_dir: str | os.PathLike | None) -> Path | None:
    """The folder searched for ``name``'s raw files: ``<data_dir or $DEEPVID_DATA_DIR>/<name>``."""
    root = data_root(data_dir)
    return None if root is None else root / name


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


def _tfds_keys(info) -> tuple[str, str]:
    """The image and label feature names of a TFDS dataset: its supervised keys, else its first
    Image and first ClassLabel features."""
    keys = info.supervised_keys
    if isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) for k in keys):
        return keys
    import tensorflow_datasets as tfds

    features = info.features
    image = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
    label = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
    if not image or not label:
        raise DataNotFoundError(
            f"TFDS {info.name!r} is not an image classification dataset: no supervised keys and "
            f"no Image + ClassLabel features (features: {sorted(features)}).")
    return image[0], label[0]


def _tfds_class_names(info, label_key: str) -> tuple[str, ...] | None:
    try:
        feature = info.features[label_key]
        names = feature.names or [str(i) for i in range(feature.num_classes)]
    except Exception:  # not a ClassLabel, or one without its classes
        return None
    return tuple(str(n) for n in names) if names else None


def _tfds_builder(name: str, root: Path | None):
    """TFDS's builder for ``name``: the one prepared under ``root`` (our data folder) when there
    is one, else TFDS's own folder (where downloads go)."""
    import tensorflow_datasets as tfds

    with logs.quiet():  # TFDS warns about its cache folders through absl
        if root is not None and root.is_dir():
            local = tfds.builder(name, data_dir=str(root))
            if local.is_prepared():
                return local
        return tfds.builder(name)


def _load_tfds(name: str, split: str, download: bool, root: Path | None = None) -> Source:
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - it is a declared dependency
        raise DataNotFoundError(f"tensorflow_datasets is not importable ({e}).") from e
    try:
        builder = _tfds_builder(name, root)
        with logs.quiet():
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
            # array_record gives random access without TensorFlow (builder.as_data_source).
            builder.download_and_prepare(file_format="array_record")
        except Exception as e:
            raise DataNotFoundError(
                f"TFDS could not download/prepare {name!r} ({type(e).__name__}: {e})."
            ) from e
    image_key, label_key = _tfds_keys(builder.info)
    class_names = _tfds_class_names(builder.info, label_key)
    origin = f"tfds:{builder.data_dir}"
    try:
        records = builder.as_data_source(split=split)
        return TfdsSource(records, image_key, label_key, name, split, origin, class_names)
    except (CorruptDataError, ValueError) as e:
        if isinstance(e, CorruptDataError) or "selects no images" in str(e):
            raise
        first = e
    except Exception as e:
        first = e
    try:  # Prepared as tfrecord: needs TensorFlow, which is optional, and is read whole.
        arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
        images, labels = np.asarray(arrays[image_key]), np.asarray(arrays[label_key])
    except Exception as e2:
        raise DataNotFoundError(
            f"TFDS found {name!r} in {builder.data_dir} but could not read split {split!r}: "
            f"{type(first).__name__}: {first}; {type(e2).__name__}: {e2}. Prepare it with "
            "file_format='array_record', or install tensorflow to read tfrecords."
        ) from e2
    return Source(images, labels, _info(images, labels, name, split, origin, class_names))


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


def _float_images(images: np.ndarray) -> np.ndarray:
    """Stored images ([N, H, W] or [N, H, W, C]; uint8 0-255 or floats) -> [N, H, W, C]
    float32 in [0, 1]."""
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    return images.astype(np.float32)


def _info(images, labels, name: str, split: str, source: str,
          class_names: tuple[str, ...] | None = None) -> DatasetInfo:
    """What a split is, from its stored images [N, H, W(, C)] and labels [N]; a clear error for
    an empty one."""
    if len(images) == 0:
        raise ValueError(f"split {split!r} of {name!r} selects no images (from {source}); check "
                         "the slice bounds, e.g. 'test[5000:100]' is empty.")
    class_names = (CLASS_NAMES.get(name) or class_names
                   or tuple(str(i) for i in range(int(np.max(labels)) + 1)))
    shape = tuple(images.shape[1:]) + ((1,) if images.ndim == 3 else ())
    return DatasetInfo(name, split, class_names, shape, source)


def load(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool | None = None,
    image_size: tuple[int, int] | None = None,
    color_mode: str = "rgb",
    skip_bad: bool = False,
) -> Dataset:
    """Loads a split of an image classification dataset.

    Args:
      name: TFDS name (``mnist``, ``fashion_mnist``, ``kmnist``, ``cifar10``...), ``digits``
        (embedded), ``synthetic`` / ``synthetic_64`` (generated), or the path of an image
        folder (one sub-folder per class, optionally inside split folders: `ImageFolderSource`).
      split: TFDS split syntax, e.g. ``train``, ``test[:8000]``, ``test[80%:]``.
      data_dir: folder with one sub-folder of raw files per dataset (``<data_dir>/mnist/...``);
        defaults to ``$DEEPVID_DATA_DIR``.
      download: let TFDS download when the dataset is not prepared; defaults to True unless
        ``$DEEPVID_OFFLINE`` is set to 1.
      image_size: (H, W) to resize every image to (bilinear, antialiased; PIL); needed for an
        image folder whose images differ in size.
      color_mode: for an image folder: "rgb" (3 channels) or "grayscale" (1).
      skip_bad: for an image folder: skip files that are not readable images (counted in
        ``info.source``) instead of raising `CorruptDataError`.

    Returns:
      `Dataset` with images [N, H, W, C] float32 in [0, 1], labels [N] int32 and `DatasetInfo`.

    Raises:
      DataNotFoundError: no source has the split; the message lists every place looked at.
      CorruptDataError: a raw file is truncated or malformed; the message names the file.
      ValueError: the split string is malformed.
    """
    source = open_source(name, split, data_dir=data_dir, download=download,
                         image_size=image_size, color_mode=color_mode, skip_bad=skip_bad)
    images, labels = source.read(0, len(source))
    return Dataset(images, labels, source.info)


def open_source(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool | None = None,
    image_size: tuple[int, int] | None = None,
    color_mode: str = "rgb",
    skip_bad: bool = False,
) -> Source:
    """A split as a `Source` that reads index ranges (arguments and errors as in `load`): TFDS
    splits prepared as array_record decode only the records asked for; an image folder reads
    only the files asked for."""
    if not isinstance(split, str):
        raise ValueError(f"split must be a string in TFDS syntax, got {split!r}.")
    parts = parse_split(split)
    size = None if image_size is None else _image_size(image_size)
    if is_folder_name(name):
        return ImageFolderSource(name, split, parts, image_size=size, color_mode=color_mode,
                                 skip_bad=skip_bad)
    source = _open_named(name, split, parts, data_dir, download)
    if size is None or tuple(source.info.image_shape[:2]) == size:
        return source
    return ResizedSource(source, size)


def _image_size(value) -> tuple[int, int]:
    if (not isinstance(value, tuple | list) or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)):
        raise ValueError(f"image_size must be (H, W) of positive integers, got {value!r}.")
    return int(value[0]), int(value[1])


def _open_named(name: str, split: str, parts: list[SplitSlice], data_dir, download) -> Source:
    """A dataset known by name: ours, generated, embedded, raw files or TFDS."""
    check_name(name)
    check_split(name, parts)
    if name in synthetic.SIZES:
        return SyntheticSource(name, split, parts)
    if name == EMBEDDED_DATASET:
        return _array_source(*_load_digits(parts), name, split,
                             "embedded:sklearn.datasets.load_digits")

    if download is None:
        download = os.environ.get(OFFLINE_ENV, "0") not in ("1", "true", "True")
    tried: list[str] = []

    loaders: list[tuple[str, Callable]] = []
    folder = raw_dir(name, data_dir)
    if name in RAW_FILES:
        if folder is None:
            tried.append(f"raw files: no data_dir given and ${DATA_DIR_ENV} is not set")
        else:
            loaders.append(("raw", lambda: _array_source(*_load_raw(name, parts, folder), name,
                                                         split, f"raw:{folder}")))
    else:
        tried.append(f"raw files: {name!r} is not one of {sorted(RAW_FILES)}")
    loaders.append(("tfds", lambda: _load_tfds(name, split, download, data_root(data_dir))))

    for kind, loader in loaders:
        try:
            return loader()
        except DataNotFoundError as e:
            tried.append(f"{kind}: {e}")

    raise DataNotFoundError(
        f"Could not load {name!r} split {split!r}. Looked at:\n  - "
        + "\n  - ".join(tried)
        + f"\nTo provide it: put the original files in <dir>/{name}/ and pass data_dir=<dir> or "
        f"set ${DATA_DIR_ENV}=<dir>; or let TFDS download it (internet, {OFFLINE_ENV} unset); "
        f"or use the embedded dataset {EMBEDDED_DATASET!r}, which needs nothing."
    )


def _array_source(images, labels, name: str, split: str, origin: str) -> Source:
    images = np.asarray(images)
    return Source(images, labels, _info(images, labels, name, split, origin))


class Source:
    """Random access to a split by index ranges (`open_source`): the dataset runner reads a
    chunk at a time, as float32 images, from the stored bytes (uint8 for the raw files and
    TFDS: a quarter of the float32 size; compressed raw files cannot be sliced, so they are
    decompressed once; TFDS array_record splits are read record by record, `TfdsSource`).

    Args:
      images: [N, H, W] or [N, H, W, C], uint8 0-255 or floats in [0, 1].
      labels: [N] integers.
      info: `DatasetInfo`.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, info: DatasetInfo):
        self._images, self._labels, self.info = images, np.asarray(labels, np.int32), info

    # The `open_source` keyword arguments that made this source (beyond name and split), so a
    # store's report can open the same data again.
    options: dict = {}

    def __len__(self) -> int:
        return len(self._images)

    def _stored(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """images [n, ...] as stored and labels [n] int32 of records start..stop."""
        return self._images[start:stop], self._labels[start:stop]

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """images [stop - start, H, W, C] float32 in [0, 1] and labels [n] int32."""
        images, labels = self._stored(start, stop)
        return _float_images(images), labels

    def fingerprint(self, chunk: int = 4096) -> str:
        """sha256 of the split's stored image bytes and labels (hex), equal to `array_digest` of
        the whole arrays but read a chunk at a time: which data a store of explanations was made
        from."""
        h, labels = hashlib.sha256(), []
        for start in range(0, len(self), chunk):
            images, y = self._stored(start, min(start + chunk, len(self)))
            images = np.ascontiguousarray(images)
            if start == 0:  # the whole split's header, then each chunk's bytes
                h.update(_header(images, (len(self), *images.shape[1:])))
            h.update(images.tobytes())
            labels.append(y)
        y = np.ascontiguousarray(np.concatenate(labels))
        h.update(_header(y))
        h.update(y.tobytes())
        return h.hexdigest()


class TfdsSource(Source):
    """A TFDS split prepared as array_record, read through ``builder.as_data_source``: a range of
    indices decodes only its records, so memory holds one chunk of images, never the split.

    Args:
      records: the TFDS data source (a sequence of feature dicts with ``__getitems__``).
      image_key, label_key: its image and class features.
    """

    def __init__(self, records, image_key: str, label_key: str, name: str, split: str,
                 origin: str, class_names: tuple[str, ...] | None = None):
        self._records, self._keys = records, (image_key, label_key)
        self._n = len(records)
        if not self._n:
            _info(np.zeros((0, 1, 1)), [], name, split, origin)  # the clear "selects no images"
        images, labels = self._decode([0])
        self._kind = (images.shape[1:], images.dtype)  # every record's image shape and dtype
        if class_names is None and name not in CLASS_NAMES:  # no names in the features: the
            labels = np.concatenate(  # labels seen say how many classes there are
                [self._stored(i, i + 4096)[1] for i in range(0, self._n, 4096)])
        self.info = _info(images, labels, name, split, origin, class_names)

    def __len__(self) -> int:
        return self._n

    def _decode(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """images [n, ...] and labels [n] of these records; every image must have the shape and
        dtype of the first record (of the split once it is known, else of these)."""
        getitems = getattr(self._records, "__getitems__", None)
        records = getitems(indices) if getitems else [self._records[i] for i in indices]
        image_key, label_key = self._keys
        images = [np.asarray(r[image_key]) for r in records]
        want = getattr(self, "_kind", (images[0].shape, images[0].dtype))
        for i, im in zip(indices, images, strict=True):
            if (im.shape, im.dtype) != want:
                raise CorruptDataError(
                    f"TFDS split: record {i} holds a {im.dtype} image of shape {im.shape}, the "
                    f"first record {want[1]} {want[0]}: the images have different sizes; "
                    "resize them to one size first (image_size=, --image-size).")
        return np.stack(images), np.asarray([int(r[label_key]) for r in records], np.int32)

    def _stored(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        start, stop = max(0, start), min(stop, self._n)
        if stop <= start:
            return np.zeros((0, *self._kind[0]), self._kind[1]), np.zeros(0, np.int32)
        return self._decode(list(range(start, stop)))


class SyntheticSource(Source):
    """`synthetic` (32x32) or `synthetic_64` (64x64): coloured shapes generated by index range
    (`deepvid_jax.data.synthetic`), with the mask of each image's shape (`masks`)."""

    def __init__(self, name: str, split: str, parts: list[SplitSlice]):
        self._size = synthetic.SIZES[name]
        splits, indices = [], []
        for part in parts:
            n = synthetic.SPLITS[part.split]
            idx = np.arange(n)[slice_indices(part, n)]
            splits += [part.split] * len(idx)
            indices.append(idx)
        self._splits, self._indices = np.asarray(splits), np.concatenate(indices)
        origin = f"generated:deepvid_jax.data.synthetic(seed={synthetic.SEED})"
        if not len(self._indices):
            _info(self._indices, [], name, split, origin)  # the clear "selects no images"
        self.info = DatasetInfo(name, split, synthetic.CLASSES, (self._size, self._size, 3),
                                origin)

    def __len__(self) -> int:
        return len(self._indices)

    def _generate(self, start: int, stop: int):
        out = [[], [], []]
        sl = slice(start, stop)
        splits, indices = self._splits[sl], self._indices[sl]
        # Runs of one split, in order ("test[:2]+train[:2]+test[2:4]" keeps its order).
        bounds = [0, *(np.nonzero(splits[1:] != splits[:-1])[0] + 1), len(splits)]
        for lo, hi in itertools.pairwise(bounds):
            if hi > lo:
                for a, b in zip(out, synthetic.generate(indices[lo:hi], str(splits[lo]),
                                                        self._size), strict=True):
                    a.append(b)
        empty = (np.zeros((0, self._size, self._size, 3), np.uint8), np.zeros(0, np.int32),
                 np.zeros((0, self._size, self._size), bool))
        return tuple(np.concatenate(a) if a else e for a, e in zip(out, empty, strict=True))

    def _stored(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        images, labels, _ = self._generate(start, stop)
        return images, labels

    def masks(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """[n, H, W] bool: the pixels of each image's shape (those that carry its class)."""
        return self._generate(start, len(self) if stop is None else stop)[2]


def _resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """images [n, h, w(, c)] uint8 -> [n, H, W(, c)] uint8, bilinear and antialiased (PIL)."""
    from PIL import Image

    h, w = size
    out = [np.asarray(Image.fromarray(im.squeeze(-1) if im.ndim == 3 and im.shape[-1] == 1
                                      else im).resize((w, h), Image.Resampling.BILINEAR))
           for im in images]
    out = np.stack(out) if out else np.zeros((0, h, w, *images.shape[3:]), np.uint8)
    return out.reshape(len(images), h, w, *images.shape[3:])


class ResizedSource(Source):
    """Another source's images resized to (H, W) a chunk at a time (`open_source(...,
    image_size=)`)."""

    def __init__(self, inner: Source, size: tuple[int, int]):
        self._inner, self._size = inner, size
        self.info = dataclasses.replace(inner.info, image_shape=(*size, inner.info.image_shape[2]))
        self.options = {"image_size": list(size)}

    def __len__(self) -> int:
        return len(self._inner)

    def _stored(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        images, labels = self._inner._stored(start, stop)
        if images.dtype != np.uint8:
            raise CorruptDataError(f"{self.info.name}: resizing needs uint8 images, the source "
                                   f"stores {images.dtype}.")
        return _resize(images, self._size), labels


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
COLOR_MODES = {"rgb": "RGB", "grayscale": "L"}
FOLDER_SPLIT = "all"  # the split of a folder of class folders


def is_folder_name(name) -> bool:
    """Whether a dataset name is an image folder's path: one that starts like a path (``/``,
    ``./``, ``../``, ``~``), or holds a ``/`` and names an existing folder. A bare name is always
    a dataset's (so a folder called ``mnist`` beside you never hides MNIST): write ``./images``."""
    if isinstance(name, os.PathLike):
        return True
    if not isinstance(name, str):
        return False
    if name.startswith(("/", "./", "../", "~")):
        return True
    return "/" in name and Path(name).is_dir()


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


class ImageFolderSource(Source):
    """A folder with one sub-folder of images per class (the layout of torchvision's
    ``ImageFolder`` and Keras' ``image_dataset_from_directory``): its split is ``all``. Or a
    folder of split folders (``train/``, ``test/``...) each laid out so: the splits are their
    names, the classes the union of their class folders, in sorted order. TFDS split syntax
    selects from a split's files ordered by a hash of their relative paths (so every slice
    mixes the classes, and the order does not depend on the machine).

    Every selected file's header is read when the source is opened (a file that is not an
    image is an error naming it, or skipped and counted with ``skip_bad``; images of several
    sizes need ``image_size``); pixels are decoded only when a chunk is read.
    """

    def __init__(self, root, split: str, parts: list[SplitSlice], *,
                 image_size: tuple[int, int] | None = None, color_mode: str = "rgb",
                 skip_bad: bool = False):
        from PIL import Image

        if color_mode not in COLOR_MODES:
            raise ValueError(f"color_mode must be one of {sorted(COLOR_MODES)}, got "
                             f"{color_mode!r}.")
        self._mode = COLOR_MODES[color_mode]
        folder = Path(root).expanduser().resolve()
        if not folder.is_dir():
            raise DataNotFoundError(f"{root}: no such image folder.")
        subdirs = _class_dirs(folder)
        nested = bool(subdirs) and all(_class_dirs(d) and not [
            p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
            for d in subdirs)
        splits = {d.name: d for d in subdirs} if nested else {FOLDER_SPLIT: folder}
        classes = sorted({c.name for d in splits.values() for c in _class_dirs(d)})
        if not classes:
            raise DataNotFoundError(f"{folder}: no class sub-folders (expected <folder>/<class>/"
                                    "<image files>, or <folder>/<split>/<class>/<image files>).")
        files: list[Path] = []
        labels: list[int] = []
        for part in parts:
            if part.split not in splits:
                raise ValueError(f"{folder} has splits {sorted(splits)}, not {part.split!r}.")
            base = splits[part.split]
            found = [(f, classes.index(c.name)) for c in _class_dirs(base)
                     for f in _image_files(c)]
            found.sort(key=lambda fl: hashlib.sha1(
                str(fl[0].relative_to(base)).encode()).hexdigest())
            picked = found[slice_indices(part, len(found))]
            files += [f for f, _ in picked]
            labels += [label for _, label in picked]
        bad, sizes = [], {}
        for f in files:
            try:
                with Image.open(f) as im:
                    sizes.setdefault((im.size[1], im.size[0]), f)
            except Exception as e:  # PIL raises several kinds for a file that is not an image
                if not skip_bad:
                    raise CorruptDataError(
                        f"{f} is not a readable image ({type(e).__name__}: {e}); remove it, or "
                        "pass skip_bad=True (--skip-bad-images) to skip such files.") from e
                bad.append(f)
        if bad:
            skipped = set(bad)
            keep = [i for i, f in enumerate(files) if f not in skipped]
            files, labels = [files[i] for i in keep], [labels[i] for i in keep]
        origin = f"folder:{folder}" + (f" ({len(bad)} unreadable files skipped)" if bad else "")
        if not files:
            _info(np.zeros((0, 1, 1)), [], str(root), split, origin)  # "selects no images"
        if image_size is None and len(sizes) > 1:
            examples = ", ".join(f"{h}x{w} ({p.name})" for (h, w), p in list(sizes.items())[:4])
            raise CorruptDataError(
                f"{folder}: images of {len(sizes)} different sizes ({examples}); pass "
                "image_size=(H, W) (--image-size H,W) to resize them to one.")
        self._size = image_size or next(iter(sizes))
        self._files, self._labels = files, np.asarray(labels, np.int32)
        self.skipped = len(bad)
        self.options = {"color_mode": color_mode, "skip_bad": skip_bad,
                        **({"image_size": list(image_size)} if image_size else {})}
        channels = 3 if self._mode == "RGB" else 1
        self.info = DatasetInfo(str(root), split, tuple(classes), (*self._size, channels),
                                origin)

    def __len__(self) -> int:
        return len(self._files)

    def _stored(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        from PIL import Image

        h, w = self._size
        out = []
        for f in self._files[start:stop]:
            try:
                with Image.open(f) as im:
                    im = im.convert(self._mode)
                    if im.size != (w, h):
                        im = im.resize((w, h), Image.Resampling.BILINEAR)
                    out.append(np.asarray(im, np.uint8).reshape(h, w, -1))
            except Exception as e:
                raise CorruptDataError(f"{f}: cannot decode the image ({type(e).__name__}: "
                                       f"{e}).") from e
        images = np.stack(out) if out else np.zeros((0, h, w, self.info.image_shape[2]),
                                                    np.uint8)
        return images, self._labels[start:stop]


def array_digest(arrays) -> str:
    """sha256 (hex) of arrays' dtypes, shapes and bytes, in order: what data or parameters a
    result was made from."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(_header(a))
        h.update(a.tobytes())
    return h.hexdigest()


def _header(a: np.ndarray, shape: tuple | None = None) -> bytes:
    """What a digest hashes before an array's bytes: its dtype and shape (``shape`` for the
    first chunk of a longer array, so streaming gives the whole array's digest)."""
    return str((a.dtype, a.shape if shape is None else tuple(shape))).encode()
