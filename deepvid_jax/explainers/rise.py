"""RISE (Petsiuk et al. 2018), batched in JAX: saliency as the teacher's score averaged over
random masks, each weighted by how much of the pixel it keeps.

    S_c(x)[p] = 1 / (N * keep) * sum_i f_c(x * M_i) * M_i[p]

Masks: a ``grid x grid`` Bernoulli(keep) pattern, bilinearly upsampled to ``(grid + 1) * cell``
(cell = ceil(H / grid)) and cropped at a random offset in [0, cell), as in the paper, so that
mask edges fall anywhere.

Each image gets its own N masks, drawn from its own key (instance i: ``fold_in(key, i)``), so a
batch equals a loop over its images; the paper's implementation shares one set of masks across
a batch instead. `rise_attribution` is the registered explainer (the contract of
`explainers.base`); `rise` is the same computation on a bare teacher.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from deepvid_jax import validate
from deepvid_jax.driver import instance_keys
from deepvid_jax.explainers.base import Attribution, check_inputs, jitted, per_pixel
from deepvid_jax.models.bundle import Models
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

    def with_samples(self, num: int) -> RiseConfig:
        """This config with ``num`` masks (evaluated at most ``batch`` at a time)."""
        validate.integer(num, "num", minimum=1)
        return dataclasses.replace(self, num_masks=num, batch=min(self.batch, num))


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


def _saliency(images, classes, keys, teacher_apply: TeacherApply, teacher_params,
              config: RiseConfig) -> jax.Array:
    """RISE of images [B, H, W, C] for classes [B], image i's masks from ``keys[i]``: -> [B, H,
    W]. The teacher sees ``config.batch`` masked copies of every image per call, the whole batch
    flattened into one call: a vmap over the images of the same computation gives the same maps
    about 4x slower (batch 16, 512 masks, a 2-core CPU)."""
    b, h, w, _ = images.shape
    n_batches = -(-config.num_masks // config.batch)
    masks = jax.vmap(lambda k: rise_masks(k, n_batches * config.batch, h, w, config.grid,
                                          config.keep))(keys)
    masks = jnp.moveaxis(masks.reshape(b, n_batches, config.batch, h, w), 1, 0)
    valid = (jnp.arange(n_batches * config.batch) < config.num_masks).reshape(n_batches, -1)

    def body(total, mv):
        m, v = mv  # [B, M, H, W], [M]
        x = images[:, None] * m[..., None]  # [B, M, H, W, C]
        p = jax.nn.softmax(teacher_apply(teacher_params, x.reshape(-1, *images.shape[1:])))
        p = p.reshape(b, config.batch, -1)
        pc = jnp.take_along_axis(p, classes[:, None, None], axis=2)[..., 0] * v  # [B, M]
        return total + jnp.einsum("bm,bmhw->bhw", pc, m), None

    total, _ = jax.lax.scan(body, jnp.zeros((b, h, w)), (masks, valid))
    return total / (config.num_masks * config.keep)


def rise_attribution(params, images, classes, keys, *, models: Models,
                     config: RiseConfig = RiseConfig()) -> Attribution:
    """RISE as an explainer: images [B, H, W, C] in [0, 1], classes [B] in [0, K), keys [B]
    (image i's masks from ``keys[i]``) -> `Attribution` ([B, H, W, C], the map repeated over
    channels; no extras).

    Raises:
      ValueError: malformed images, classes, keys or config (values checked when concrete).
    """
    images, classes = check_inputs(images, classes, keys, models=models, config=config,
                                   config_type=RiseConfig)
    images, classes = jnp.asarray(images), jnp.asarray(classes, jnp.int32)

    maps = _saliency(images, classes, keys, models.teacher_apply, params["teacher"], config)
    return Attribution(per_pixel(maps, images.shape[-1]), {})


def rise(
    images: jax.Array, class_idx: jax.Array, key: jax.Array, *, teacher_apply: TeacherApply,
    teacher_params, config: RiseConfig = RiseConfig(),
) -> jax.Array:
    """RISE saliency of a bare teacher: images [B, H, W, C] in [0, 1], class_idx [B] in
    [0, K) -> [B, H, W]. Image i's masks come from ``fold_in(key, i)``: the registered "rise"
    with the same key gives the same numbers.

    Raises:
      ValueError: malformed images or class indices, or a teacher that does not give finite
        float logits.
    """
    validate.config(config, RiseConfig, "config")
    images, class_idx = validate.images_and_classes(images, class_idx, teacher_apply,
                                                    teacher_params)
    k = int(jax.eval_shape(teacher_apply, teacher_params,
                           jax.ShapeDtypeStruct(images.shape, images.dtype)).shape[-1])
    models = Models(teacher_apply, teacher_params, k)
    out = jitted(rise_attribution)(models.params(), images, class_idx,
                                   instance_keys(key, 0, images.shape[0]),
                                   models=models.static(), config=config)
    return out.attributions[..., 0]
