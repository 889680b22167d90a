"""Teachers whose evidence is known: any teacher composed with a fixed input mask.

``masked_teacher(teacher, visible)`` replaces every pixel outside ``visible`` by a constant
before the teacher sees it, so its output provably does not depend on those pixels: an
explanation that gives them relevance is wrong about this teacher, whatever the data. The
named masks (`MASKS`, `region_mask`) are the hidden regions of the ground-truth benchmark.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from deepvid_jax import validate
from deepvid_jax.models.adapters import Teacher

MASKS = ("left", "right", "top", "bottom", "quadrant", "border", "patches")


def region_mask(name: str, height: int, width: int, seed: int = 0) -> np.ndarray:
    """[H, W] bool: the pixels hidden from the teacher by the mask called ``name``.

    left/right/top/bottom: that half; quadrant: the three quadrants other than the top-left
    one; border: a frame a quarter of the side wide; patches: a fixed random half of the
    4x4-pixel patches (from ``seed``).
    """
    validate.choice(name, MASKS, "mask")
    validate.integer(height, "height", minimum=2)
    validate.integer(width, "width", minimum=2)
    y, x = np.mgrid[:height, :width]
    if name == "left":
        return x < width // 2
    if name == "right":
        return x >= width // 2
    if name == "top":
        return y < height // 2
    if name == "bottom":
        return y >= height // 2
    if name == "quadrant":
        return (y >= height // 2) | (x >= width // 2)
    if name == "border":
        by, bx = max(1, height // 4), max(1, width // 4)
        return (y < by) | (y >= height - by) | (x < bx) | (x >= width - bx)
    cells = np.random.default_rng(seed).random((-(-height // 4), -(-width // 4))) < 0.5
    return cells[y // 4, x // 4]


def masked_teacher(teacher: Teacher, hidden, fill: float = 0.0) -> Teacher:
    """``teacher`` that sees ``fill`` wherever ``hidden`` [H, W] (bool) is True.

    The returned apply is pure and differentiable like the teacher's (gradients through hidden
    pixels are exactly 0); its logits do not change whatever the hidden pixels hold.
    """
    if not isinstance(teacher, Teacher):
        raise ValueError(f"masked_teacher wants a Teacher (dv.from_flax, ...), got "
                         f"{type(teacher).__name__}.")
    hidden = np.asarray(hidden)
    if hidden.dtype != bool or hidden.ndim != 2:
        raise ValueError(f"hidden must be an [H, W] bool mask, got {hidden.dtype} "
                         f"{list(hidden.shape)}.")
    fill = validate.number(fill, "fill", low=0.0, high=1.0)
    keep = jnp.asarray(~hidden, jnp.float32)[None, :, :, None]
    inner = teacher.apply

    def apply(params, images):
        if tuple(images.shape[1:3]) != hidden.shape:
            raise ValueError(f"the masked teacher's mask is {list(hidden.shape)}, the images "
                             f"are {list(images.shape[1:3])}.")
        return inner(params, images * keep + fill * (1.0 - keep))

    return Teacher(apply, teacher.params, teacher.num_classes)
