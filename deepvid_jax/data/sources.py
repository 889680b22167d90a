"""Image classification datasets as numpy arrays, from five sources.

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
    (`deepvid_jax.data.synthetic`, `SyntheticSource.masks`);
(e) **image folders**: a path names a folder of class folders (`deepvid_jax.data.folder`).

Split strings follow TFDS slicing syntax for every source: ``train``, ``test[:8000]``,
``test[80%:]``, ``train[:10%]+test``.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from deepvid_jax import logs
from deepvid_jax.data import synthetic
from deepvid_jax.data.base import (
    Source,
    array_digest,
    check_image_size,
    describe,
    float_images,
)
from deepvid_jax.data.catalogue import (
    CLASS_NAMES,
    DATA_DIR_ENV,
    EMBEDDED_DATASET,
    KNOWN_SPLITS,
    OFFLINE_ENV,
    RAW_FILES,
    CorruptDataError,
    DataNotFoundError,
    Dataset,
    DatasetInfo,
    SplitSlice,
    check_name,
    check_split,
    data_root,
    load_digits,
    load_raw,
    parse_split,
    raw_dir,
    slice_indices,
)
from deepvid_jax.data.folder import COLOR_MODES, ImageFolderSource, is_folder_name

__all__ = [
    "CLASS_NAMES", "COLOR_MODES", "DATA_DIR_ENV", "EMBEDDED_DATASET", "KNOWN_SPLITS",
    "OFFLINE_ENV", "RAW_FILES", "CorruptDataError", "DataNotFoundError", "Dataset", "DatasetInfo",
    "ImageFolderSource", "ResizedSource", "Source", "SplitSlice", "SyntheticSource", "TfdsSource",
    "array_digest", "check_name", "check_split", "float_images", "load", "open_source",
    "parse_split", "raw_dir", "slice_indices",
]


# --------------------------------------------------------------------------------------------
# TFDS
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
    return Source(images, labels, describe(images, labels, name, split, origin, class_names))



# --------------------------------------------------------------------------------------------
# Opening a split
# --------------------------------------------------------------------------------------------


def load(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool | None = None,
    image_size: tuple[int, int] | None = None,
    color_mode: str = "rgb",
    skip_bad: bool = False,
    background: float = 0.0,
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
      skip_bad: for an image folder: skip files that cannot be decoded (not images, truncated,
        refused by `decode_image`'s rules; each named in a warning, counted in
        ``info.source``) instead of raising `CorruptDataError`.
      background: for an image folder: the grey level in [0, 1] that images with an alpha
        channel are composited over (0 black, 1 white; `decode_image`).

    Returns:
      `Dataset` with images [N, H, W, C] float32 in [0, 1], labels [N] int32 and `DatasetInfo`.

    Raises:
      DataNotFoundError: no source has the split; the message lists every place looked at.
      CorruptDataError: a raw file is truncated or malformed; the message names the file.
      ValueError: the split string is malformed.
    """
    source = open_source(name, split, data_dir=data_dir, download=download,
                         image_size=image_size, color_mode=color_mode, skip_bad=skip_bad,
                         background=background)
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
    background: float = 0.0,
) -> Source:
    """A split as a `Source` that reads index ranges (arguments and errors as in `load`): TFDS
    splits prepared as array_record decode only the records asked for; an image folder reads
    only the files asked for."""
    if not isinstance(split, str):
        raise ValueError(f"split must be a string in TFDS syntax, got {split!r}.")
    parts = parse_split(split)
    size = None if image_size is None else check_image_size(image_size)
    if is_folder_name(name):
        return ImageFolderSource(name, split, parts, image_size=size, color_mode=color_mode,
                                 skip_bad=skip_bad, background=background)
    source = _open_named(name, split, parts, data_dir, download)
    if size is None or tuple(source.info.image_shape[:2]) == size:
        return source
    return ResizedSource(source, size)


def _open_named(name: str, split: str, parts: list[SplitSlice], data_dir, download) -> Source:
    """A dataset known by name: ours, generated, embedded, raw files or TFDS."""
    check_name(name)
    check_split(name, parts)
    if name in synthetic.SIZES:
        return SyntheticSource(name, split, parts)
    if name == EMBEDDED_DATASET:
        return _array_source(*load_digits(parts), name, split,
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
            loaders.append(("raw", lambda: _array_source(*load_raw(name, parts, folder), name,
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
    return Source(images, labels, describe(images, labels, name, split, origin))



# --------------------------------------------------------------------------------------------
# Sources that read by index ranges
# --------------------------------------------------------------------------------------------


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
            describe(np.zeros((0, 1, 1)), [], name, split, origin)  # the clear "selects no images"
        images, labels = self._decode([0])
        self._kind = (images.shape[1:], images.dtype)  # every record's image shape and dtype
        if class_names is None and name not in CLASS_NAMES:  # no names in the features: the
            labels = np.concatenate(  # labels seen say how many classes there are
                [self._stored(i, i + 4096)[1] for i in range(0, self._n, 4096)])
        self.info = describe(images, labels, name, split, origin, class_names)

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
            describe(self._indices, [], name, split, origin)  # the clear "selects no images"
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
