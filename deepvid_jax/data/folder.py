"""Image folders: one sub-folder of images per class (`ImageFolderSource`), and how one image
file becomes pixels in [0, 1] (`decode_image`)."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np

from deepvid_jax import validate
from deepvid_jax.data.base import Source, check_image_size, describe
from deepvid_jax.data.catalogue import (
    CorruptDataError,
    DataNotFoundError,
    DatasetInfo,
    SplitSlice,
    slice_indices,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
COLOR_MODES = {"rgb": "RGB", "grayscale": "L"}
FOLDER_SPLIT = "all"  # the split of a folder of class folders

# Modes whose pixels are 8-bit and opaque: decoded exactly as uint8 (Pillow's own conversions).
_OPAQUE_8BIT = ("1", "L", "P", "RGB", "CMYK", "YCbCr", "LAB", "HSV")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_16BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_INT32_MAX = 2**31 - 1
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, Pillow's RGB -> L


def decode_image(image, color_mode: str = "rgb", *, size: tuple[int, int] | None = None,
                 background: float = 0.0) -> np.ndarray:
    """One image file (a path, or an image Pillow opened) -> pixels [H, W, C] float32 in [0, 1],
    C = 3 for ``color_mode="rgb"``, 1 for ``"grayscale"``. The rules, by Pillow mode:

    - **Integers are scaled by their type's range**: 1-bit (``1``) to 0 or 1; 8-bit (``L``,
      ``RGB``, palette entries) divided by 255; 16-bit (``I;16``: 16-bit PNG and TIFF) by 65535;
      32-bit signed (``I``) by 2**31 - 1, and refused when a value is negative.
    - **Floats** (``F``, e.g. a float TIFF) are taken as they are when every value lies in
      [0, 1]; otherwise (or when one is not finite) the image is refused, with a message naming
      the file and the range seen: rescale it to [0, 1], or save it as 16-bit integers.
    - **Palette** images (``P``) are expanded through their palette.
    - **CMYK** becomes RGB as ``R = 255 (1 - C/255)(1 - K/255)`` (likewise G from M, B from Y),
      rounded to 8 bits (Pillow's conversion); ``YCbCr``, ``LAB`` and ``HSV`` by Pillow's.
    - **Alpha** (``RGBA``, ``LA``, ``PA``, premultiplied ``RGBa`` / ``La``, or a transparent
      colour of a palette, ``L`` or ``RGB`` image) is composited over a uniform ``background``
      grey level (0 black, the default; 1 white): ``out = alpha * colour + (1 - alpha) *
      background``. An image whose composite is uniform while its alpha is not (all its content
      is in the alpha channel, drawn in the background's colour) is refused: pick another
      ``background``.
    - **Colour mode**: one channel is copied to three for ``"rgb"``; three become one for
      ``"grayscale"`` as ``0.299 R + 0.587 G + 0.114 B`` (ITU-R 601-2, Pillow's ``L``).
    - ``size=(H, W)`` resizes bilinearly, antialiased (Pillow): 8-bit opaque images in 8 bits,
      the others as 32-bit floats per channel.
    - A file of several frames (GIF, TIFF) gives its first. Pillow reads 16-bit RGB(A) PNGs
      as 8-bit.

    Raises:
      CorruptDataError: the file cannot be decoded (truncated, not an image) or breaks a rule
        above; the message names the file.
      ValueError: a bad ``color_mode``, ``size`` or ``background``.
    """
    pixels = _decode(image, color_mode, size, background)
    return pixels.astype(np.float32) / 255.0 if pixels.dtype == np.uint8 else pixels


def _check_options(color_mode: str, background: float) -> tuple[str, float]:
    if color_mode not in COLOR_MODES:
        raise ValueError(f"color_mode must be one of {sorted(COLOR_MODES)}, got "
                         f"{color_mode!r}.")
    return COLOR_MODES[color_mode], validate.number(background, "background", low=0.0,
                                                   high=1.0)


def _exact_8bit(im) -> bool:
    """Whether an opened image's pixels are 8-bit and opaque (from its header alone)."""
    return im.mode in _OPAQUE_8BIT and "transparency" not in im.info


def _decode(image, color_mode: str, size: tuple[int, int] | None,
            background: float) -> np.ndarray:
    """`decode_image`, but [H, W, C] uint8 (0-255) for 8-bit opaque images, exactly as stored."""
    from PIL import Image

    target, background = _check_options(color_mode, background)
    size = None if size is None else check_image_size(size)
    if isinstance(image, str | os.PathLike):
        try:
            with Image.open(image) as im:
                return _decode_opened(im, target, size, background, str(image))
        except CorruptDataError:
            raise
        except Exception as e:  # Pillow raises several kinds for a file that is not an image
            raise CorruptDataError(f"{image}: cannot decode the image ({type(e).__name__}: "
                                   f"{e}).") from e
    if not isinstance(image, Image.Image):
        raise ValueError(f"decode_image needs a path or a PIL image, got "
                         f"{type(image).__name__}.")
    return _decode_opened(image, target, size, background,
                          getattr(image, "filename", "") or "the image")


def _decode_opened(im, target: str, size, background: float, name: str) -> np.ndarray:
    from PIL import Image

    h, w = size if size is not None else (im.size[1], im.size[0])
    if _exact_8bit(im):
        out = im.convert(target)
        if out.size != (w, h):
            out = out.resize((w, h), Image.Resampling.BILINEAR)
        return np.asarray(out, np.uint8).reshape(h, w, -1)
    pixels = _composite(*_values(im, name), background, name)
    if target == "RGB" and pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    elif target == "L" and pixels.shape[-1] == 3:
        pixels = pixels @ np.asarray(LUMA)[:, None]
    pixels = pixels.astype(np.float32)
    if pixels.shape[:2] != (h, w):
        pixels = np.stack([np.asarray(Image.fromarray(pixels[..., c], "F").resize(
            (w, h), Image.Resampling.BILINEAR)) for c in range(pixels.shape[-1])], axis=-1)
    return np.clip(pixels, 0.0, 1.0)


def _values(im, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """colour [H, W, C] float64 in [0, 1] and alpha [H, W] (None when opaque) of an image that
    is not 8-bit opaque."""
    mode = im.mode
    if mode in _16BIT:
        return np.asarray(im).astype(np.float64)[..., None] / 65535.0, None
    if mode == "I":
        x = np.asarray(im)
        if x.min() < 0:
            raise CorruptDataError(f"{name}: a 32-bit integer image with negative values "
                                   f"(range [{x.min()}, {x.max()}]); save it with values in "
                                   f"[0, {_INT32_MAX}] or as 16-bit.")
        return x.astype(np.float64)[..., None] / _INT32_MAX, None
    if mode == "F":
        x = np.asarray(im).astype(np.float64)
        if not np.isfinite(x).all():
            raise CorruptDataError(f"{name}: a float image with non-finite values.")
        if x.min() < 0 or x.max() > 1:
            raise CorruptDataError(
                f"{name}: a float image with values in [{x.min():.6g}, {x.max():.6g}], outside "
                "[0, 1]: float images are read as they are, so rescale it to [0, 1] (or save "
                "it as 16-bit integers).")
        return x[..., None], None
    if mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im if mode in ("RGBA", "LA") else im.convert("RGBA")
        x = np.asarray(rgba).astype(np.float64) / 255.0
        return x[..., :-1], x[..., -1]
    raise CorruptDataError(f"{name}: images of Pillow mode {mode!r} are not supported; save it "
                           "as 8- or 16-bit grey, RGB or RGBA.")


def _composite(colour: np.ndarray, alpha: np.ndarray | None, background: float,
               name: str) -> np.ndarray:
    """colour [H, W, C] over the background, weighted by alpha [H, W]."""
    if alpha is None:
        return colour
    out = alpha[..., None] * colour + (1.0 - alpha[..., None]) * background
    if np.ptp(out) < 0.5 / 255 and np.ptp(alpha) >= 0.5 / 255:
        raise CorruptDataError(
            f"{name}: all of its content is in the alpha channel (alpha in [{alpha.min():.3g}, "
            f"{alpha.max():.3g}]) and composited over background={background:g} it is one "
            "uniform colour; pass another background (e.g. background=1.0, white).")
    return out


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

    Pixels are decoded by `decode_image`'s rules (16-bit, float, palette, CMYK, alpha over
    ``background``). Every selected file's header is read when the source is opened (a file
    that is not an image is an error naming it; images of several sizes need ``image_size``);
    pixels are decoded only when a chunk is read, and a file that fails then is an error naming
    it. With ``skip_bad`` every file is decoded once when the source is opened, and each one
    that fails (not an image, truncated, refused by a rule) is skipped: named in a warning and
    in ``skipped_files``, counted in ``skipped`` and ``info.source``.

    Stored images (`fingerprint`) are uint8 when every file is 8-bit and opaque, else float32.
    """

    def __init__(self, root, split: str, parts: list[SplitSlice], *,
                 image_size: tuple[int, int] | None = None, color_mode: str = "rgb",
                 skip_bad: bool = False, background: float = 0.0):
        from PIL import Image

        self._mode, self._background = _check_options(color_mode, background)
        self._color_mode = color_mode
        folder = Path(root).expanduser().resolve()
        if not folder.is_dir():
            raise DataNotFoundError(f"{root}: no such image folder.")
        files, labels, classes = _select(folder, parts)
        bad, sizes, exact = [], {}, True
        for f in files:
            try:
                with Image.open(f) as im:
                    if skip_bad:  # decoding is the only way to find a truncated file
                        _decode_opened(im, self._mode, None, self._background, str(f))
                    sizes.setdefault((im.size[1], im.size[0]), f)
                    exact = exact and _exact_8bit(im)
            except Exception as e:  # Pillow raises several kinds for a file that is not an image
                if not skip_bad:
                    raise CorruptDataError(
                        f"{f} is not a readable image ({type(e).__name__}: {e}); remove it, or "
                        "pass skip_bad=True (--skip-bad-images) to skip such files.") from e
                bad.append((f, f"{type(e).__name__}: {e}"))
        if bad:
            skipped = {f for f, _ in bad}
            keep = [i for i, f in enumerate(files) if f not in skipped]
            files, labels = [files[i] for i in keep], [labels[i] for i in keep]
            warnings.warn(f"{folder}: skipped {len(bad)} unreadable image files: " + "; ".join(
                f"{f} ({why})" for f, why in bad), stacklevel=2)
        origin = f"folder:{folder}" + (f" ({len(bad)} unreadable files skipped)" if bad else "")
        if not files:
            describe(np.zeros((0, 1, 1)), [], str(root), split, origin)  # "selects no images"
        if image_size is None and len(sizes) > 1:
            examples = ", ".join(f"{h}x{w} ({p.name})" for (h, w), p in list(sizes.items())[:4])
            raise CorruptDataError(
                f"{folder}: images of {len(sizes)} different sizes ({examples}); pass "
                "image_size=(H, W) (--image-size H,W) to resize them to one.")
        self._size = image_size or next(iter(sizes))
        self._files, self._labels = files, np.asarray(labels, np.int32)
        self._dtype = np.uint8 if exact else np.float32
        self.skipped = len(bad)
        self.skipped_files = tuple(str(f) for f, _ in bad)
        self.options = {"color_mode": color_mode, "skip_bad": skip_bad,
                        **({"image_size": list(image_size)} if image_size else {}),
                        **({"background": self._background} if self._background else {})}
        channels = 3 if self._mode == "RGB" else 1
        self.info = DatasetInfo(str(root), split, tuple(classes), (*self._size, channels),
                                origin)

    def __len__(self) -> int:
        return len(self._files)

    def _stored(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        h, w = self._size
        out = []
        for f in self._files[start:stop]:
            try:
                pixels = _decode(f, self._color_mode, (h, w), self._background)
            except CorruptDataError as e:
                raise CorruptDataError(f"{e} Remove it, or pass skip_bad=True "
                                       "(--skip-bad-images) to skip such files.") from e
            if self._dtype != np.uint8 and pixels.dtype == np.uint8:
                pixels = pixels.astype(np.float32) / 255.0
            out.append(pixels)
        images = np.stack(out) if out else np.zeros((0, h, w, self.info.image_shape[2]),
                                                    self._dtype)
        return images, self._labels[start:stop]


def _select(folder: Path, parts: list[SplitSlice]) -> tuple[list[Path], list[int], list[str]]:
    """The files and labels a split string selects from a folder, and the class names."""
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
    return files, labels, classes
