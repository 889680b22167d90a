"""RISE (Petsiuk et al. 2018), batched in JAX: saliency as the teacher's score averaged over
random masks, each weighted by how much of the pixel it keeps.

    S_c(x)[p] = 1 / (N * keep) * sum_i f_c(x * M_i) * M_i[p]

Masks: a ``grid x grid`` Bernoulli(keep) pattern, bilinearly upsampled to ``(grid + 1) * cell``
(cell = ceil(H / grid)) and cropped at a random offset in [0, cell), as in the paper, so that
mask edges fall anywhere.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from deepvid_jax import validate
from deepvid_jax.models.networks import TeacherApply


@dataclasses.dataclass(frozen=True)
class RiseConfig:
    """num_masks: N; grid: cells per side of the low-resolution mask; keep: probability a cell
    is kept; batch: masks evaluated per teacher call (bounds memory)."""

    num_masks: int = 1000
    grid: int = 7
    keep: float = 0.5
    batch: int = 100

    def __post_init__(self):
        # keep = 1 would keep every pixel in every mask: a constant, meaningless map.
        validate.fields(self, positive_int=("num_masks", "grid", "batch"),
                        open_probability=("keep",))


def rise_masks(key: jax.Array, num: int, height: int, width: int, grid: int,
               keep: float) -> jax.Array:
    """num smooth random masks [num, H, W] in [0, 1]."""
    cell_h, cell_w = -(-height // grid), -(-width // grid)
    k_bits, k_shift = jax.random.split(key)
    bits = jax.random.bernoulli(k_bits, keep, (num, grid, grid)).astype(jnp.float32)
    up = jax.image.resize(bits, (num, (grid + 1) * cell_h, (grid + 1) * cell_w), "bilinear")
    dy = jax.random.randint(k_shift, (num,), 0, cell_h)
    dx = jax.random.randint(jax.random.fold_in(k_shift, 1), (num,), 0, cell_w)
    return jax.vmap(lambda m, y, x: jax.lax.dynamic_slice(m, (y, x), (height, width)))(up, dy, dx)


def rise(
    images: jax.Array, class_idx: jax.Array, key: jax.Array, *, teacher_apply: TeacherApply,
    teacher_params, config: RiseConfig = RiseConfig(),
) -> jax.Array:
    """RISE saliency: images [B, H, W, C] in [0, 1], class_idx [B] in [0, K) -> [B, H, W].

    The same N masks serve every image of the batch (as in the paper's implementation).

    Raises:
      ValueError: malformed images or class indices, or a teacher that does not give finite
        float logits.
    """
    validate.config(config, RiseConfig, "config")
    images, class_idx = validate.images_and_classes(images, class_idx, teacher_apply,
                                                    teacher_params)
    return _rise(images, class_idx, key, teacher_apply=teacher_apply,
                 teacher_params=teacher_params, config=config)


@functools.partial(jax.jit, static_argnames=("teacher_apply", "config"))
def _rise(
    images: jax.Array, class_idx: jax.Array, key: jax.Array, *, teacher_apply: TeacherApply,
    teacher_params, config: RiseConfig = RiseConfig(),
) -> jax.Array:
    """`rise` without the checks, jitted."""
    b, h, w, _ = images.shape
    n_batches = -(-config.num_masks // config.batch)
    masks = rise_masks(key, n_batches * config.batch, h, w, config.grid, config.keep)
    masks = masks.reshape(n_batches, config.batch, h, w)
    valid = (jnp.arange(n_batches * config.batch) < config.num_masks).reshape(n_batches, -1)
    class_idx = jnp.asarray(class_idx, jnp.int32)

    def body(total, mv):
        m, v = mv
        x = images[:, None] * m[None, :, :, :, None]  # [B, M, H, W, C]
        p = jax.nn.softmax(teacher_apply(teacher_params, x.reshape(-1, *images.shape[1:])))
        p = p.reshape(b, config.batch, -1)
        pc = jnp.take_along_axis(p, class_idx[:, None, None], axis=2)[..., 0] * v  # [B, M]
        return total + jnp.einsum("bm,mhw->bhw", pc, m), None

    total, _ = jax.lax.scan(body, jnp.zeros((b, h, w)), (masks, valid))
    return total / (config.num_masks * config.keep)
