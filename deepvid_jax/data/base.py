"""What every source of a split shares: random access by index ranges (`Source`), the float
images it reads, what a split is (`describe`) and digests of the data read."""

from __future__ import annotations

import hashlib

import numpy as np

from deepvid_jax.data.catalogue import CLASS_NAMES, DatasetInfo


def float_images(images: np.ndarray) -> np.ndarray:
    """Stored images ([N, H, W] or [N, H, W, C]; uint8 0-255 or floats) -> [N, H, W, C]
    float32 in [0, 1]."""
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    return images.astype(np.float32)


def check_image_size(value) -> tuple[int, int]:
    """``image_size`` as (H, W) of positive integers; a clear error otherwise."""
    if (not isinstance(value, tuple | list) or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)):
        raise ValueError(f"image_size must be (H, W) of positive integers, got {value!r}.")
    return int(value[0]), int(value[1])


def describe(images, labels, name: str, split: str, source: str,
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
        return float_images(images), labels

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
