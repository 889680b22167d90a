"""``synthetic``: coloured shapes on cluttered backgrounds, generated here (no download).

Each image holds one shape whose kind is its class (circle, square, triangle, cross, ring,
diamond), in a random colour, position and size, drawn over a background of a random two-colour
gradient crossed by distractor strokes and pixel noise. The shape is drawn last and hard-edged,
so its mask (the pixels that carry the class) is exact: every masked pixel has the shape's
colour, every other pixel is the background's. That makes it the colour test bed of the
library and a ground truth for explanations.

Image ``i`` of a split is a pure function of ``(seed, split, i)`` (`scene`), so any index range
is generated on its own, in any order, and the same scene is drawn at every size (32x32 or
64x64): only the sampling grid changes.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

CLASSES = ("circle", "square", "triangle", "cross", "ring", "diamond")
SIZES = {"synthetic": 32, "synthetic_64": 64}  # dataset name -> image side
SPLITS = {"train": 20_000, "test": 2_000}  # split -> number of images
SEED = 0  # the seed of the named datasets
_SPLIT_CODE = {"train": 1, "test": 2}
_MIN_CONTRAST = 0.45  # L2 distance in RGB [0, 1] between the shape and the background colours


class Scene(NamedTuple):
    """Everything drawn in one image, in coordinates relative to the image side ([0, 1])."""

    label: int
    colour: np.ndarray  # [3] in [0, 1]
    centre: np.ndarray  # [2] (y, x)
    radius: float
    background: np.ndarray  # [2, 3] the gradient's two colours
    direction: float  # the gradient's angle
    strokes: np.ndarray  # [S, 7] y0, x0, y1, x1, r, g, b
    noise_seed: int


def scene(index: int, split: str = "train", seed: int = SEED) -> Scene:
    """The scene of image ``index`` of ``split``: a pure function of (seed, split, index)."""
    if split not in _SPLIT_CODE:
        raise ValueError(f"synthetic has splits {list(_SPLIT_CODE)}, not {split!r}.")
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], index])
    label = int(rng.integers(len(CLASSES)))
    background = rng.uniform(0.0, 1.0, (2, 3))
    colour = rng.uniform(0.0, 1.0, 3)
    for _ in range(100):  # a colour that stands out of both ends of the gradient
        if np.linalg.norm(background - colour, axis=1).min() >= _MIN_CONTRAST:
            break
        colour = rng.uniform(0.0, 1.0, 3)
    radius = float(rng.uniform(0.16, 0.26))
    centre = rng.uniform(radius + 0.04, 1.0 - radius - 0.04, 2)
    n = int(rng.integers(3, 7))
    strokes = np.concatenate([rng.uniform(0.0, 1.0, (n, 4)), rng.uniform(0.0, 1.0, (n, 3))], 1)
    return Scene(label, colour, centre, radius, background, float(rng.uniform(0, 2 * np.pi)),
                 strokes, int(rng.integers(2**31)))


def shape_mask(kind: int, centre: np.ndarray, radius: float, size: int) -> np.ndarray:
    """[size, size] bool: the pixels (sampled at their centres) inside shape ``kind``."""
    grid = (np.arange(size) + 0.5) / size
    y, x = grid[:, None] - centre[0], grid[None, :] - centre[1]
    r = radius
    name = CLASSES[kind]
    if name == "circle":
        return y**2 + x**2 <= r**2
    if name == "square":
        return (np.abs(y) <= 0.8 * r) & (np.abs(x) <= 0.8 * r)
    if name == "triangle":  # apex up, base down
        return (y <= 0.8 * r) & (y >= -r + 2.0 * np.abs(x))
    if name == "cross":
        arm = 0.3 * r
        return (((np.abs(y) <= arm) & (np.abs(x) <= r))
                | ((np.abs(x) <= arm) & (np.abs(y) <= r)))
    if name == "ring":
        d2 = y**2 + x**2
        return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    if name == "diamond":
        return np.abs(y) + np.abs(x) <= r
    raise ValueError(f"unknown shape {kind}")


def _strokes(strokes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The distractor strokes: [size, size] stroke index (-1: none) and their colours."""
    grid = (np.arange(size) + 0.5) / size
    p = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1)  # [H, W, 2]
    which = np.full((size, size), -1)
    width = 1.0 / 32  # about one pixel at 32x32, two at 64x64
    for s, (y0, x0, y1, x1) in enumerate(strokes[:, :4]):
        a, b = np.array([y0, x0]), np.array([y1, x1])
        t = np.clip(((p - a) @ (b - a)) / max(float((b - a) @ (b - a)), 1e-9), 0.0, 1.0)
        dist = np.linalg.norm(p - (a + t[..., None] * (b - a)), axis=-1)
        which[dist <= width / 2 + 0.5 / size] = s
    return which, strokes[:, 4:]


def render(sc: Scene, size: int = 32, *, with_shape: bool = True
           ) -> tuple[np.ndarray, np.ndarray]:
    """image [size, size, 3] uint8 and mask [size, size] bool (all False without the shape)."""
    grid = (np.arange(size) + 0.5) / size
    along = (np.cos(sc.direction) * grid[:, None] + np.sin(sc.direction) * grid[None, :])
    along = (along - along.min()) / max(float(np.ptp(along)), 1e-9)
    image = (1.0 - along)[..., None] * sc.background[0] + along[..., None] * sc.background[1]
    which, colours = _strokes(sc.strokes, size)
    image = np.where(which[..., None] >= 0, colours[np.maximum(which, 0)], image)
    noise = np.random.default_rng(sc.noise_seed).normal(0.0, 0.04, (size, size, 3))
    image = np.clip(image + noise, 0.0, 1.0)
    mask = np.zeros((size, size), bool)
    if with_shape:
        mask = shape_mask(sc.label, sc.centre, sc.radius, size)
        image = np.where(mask[..., None], sc.colour, image)
    return np.round(image * 255.0).astype(np.uint8), mask


def generate(indices, split: str = "train", size: int = 32, seed: int = SEED
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images [n, size, size, 3] uint8, labels [n] int32 and masks [n, size, size] bool of the
    given indices of ``split``."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"synthetic image size must be an integer >= 8, got {size!r}.")
    images = np.zeros((len(indices), size, size, 3), np.uint8)
    masks = np.zeros((len(indices), size, size), bool)
    labels = np.zeros(len(indices), np.int32)
    for j, i in enumerate(indices):
        sc = scene(int(i), split, seed)
        images[j], masks[j] = render(sc, size)
        labels[j] = sc.label
    return images, labels, masks
