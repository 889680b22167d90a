"""LIME for images (Ribeiro et al. 2016), batched in JAX: superpixels on/off, a weighted ridge.

For an image with segments ``0..S-1``, LIME draws binary vectors z in {0, 1}^S (the first is all
ones, the image itself), builds each perturbed image by replacing the pixels of the switched-off
segments with a "hidden" value, asks the teacher for class probabilities, weights each sample by
the exponential kernel ``sqrt(exp(-d^2 / width^2))`` of its cosine distance d to the all-ones
vector, and fits a ridge regression of each class's probability on z. The coefficients are the
explanation: one weight per segment and class.

This follows `lime.lime_image.LimeImageExplainer.explain_instance` with its defaults (kernel
width 0.25, cosine distance, ``Ridge(alpha=1)``, all features kept), with two documented
departures, both so that it can run batched on an accelerator:
- segments default to a regular grid of square patches (`grid_segments`) instead of quickshift;
  any segmentation (e.g. quickshift computed on the host) can be passed as ``segments``;
- the hidden value is a constant (default 0, MNIST's background) instead of each segment's mean.
The benchmark checks that the coefficients agree with the `lime` package given the same
segmentation and hidden value.

`lime_attribution` is the registered explainer (the contract of `explainers.base`, grid
segments); `explain_lime` runs any segmentation through the driver.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from deepvid_jax import validate
from deepvid_jax.driver import map_instances
from deepvid_jax.explainers.base import Attribution, check_inputs
from deepvid_jax.models.bundle import Models
from deepvid_jax.models.networks import TeacherApply


@dataclasses.dataclass(frozen=True)
class LimeConfig:
    """Settings of the batched LIME explainer (defaults: the `lime` package's, where it has one).

    Attributes:
      num_samples: perturbed images per instance, the unperturbed one included.
      holdout: of those, the last ``holdout`` are not fitted and measure fidelity.
      patch: side of the square grid segments, in pixels (when no segments are given).
      hide_value: the value of switched-off pixels.
      kernel_width: width of the exponential kernel on cosine distance.
      ridge: L2 weight of the ridge regression (`Ridge(alpha=...)`).
      keep_prob: probability that a segment is on in a sample (LIME: 0.5).
    """

    num_samples: int = 512
    holdout: int = 128
    patch: int = 4
    hide_value: float = 0.0
    kernel_width: float = 0.25
    ridge: float = 1.0
    keep_prob: float = 0.5

    def __post_init__(self):
        validate.fields(self, positive_int=("num_samples", "holdout", "patch"),
                        probability=("hide_value",), positive=("kernel_width",),
                        nonneg=("ridge",), open_probability=("keep_prob",))
        if not 1 <= self.holdout < self.num_samples - 1:
            raise ValueError(f"LimeConfig.holdout must be in [1, num_samples - 2], got "
                             f"{self.holdout} with num_samples {self.num_samples}.")

    @property
    def num_fit(self) -> int:
        return self.num_samples - self.holdout

    def with_samples(self, num: int) -> LimeConfig:
        """This config with ``num`` samples, the held-out share kept (at least one held out)."""
        validate.integer(num, "num", minimum=3)
        holdout = max(1, round(num * self.holdout / self.num_samples))
        return dataclasses.replace(self, num_samples=num, holdout=min(holdout, num - 2))


class LimeExplanation(NamedTuple):
    """Per instance (leading axis B when batched).

    coef: [B, S, K] ridge coefficient of each segment for each class's probability.
    intercept: [B, K].
    segments: [B, H, W] int32 segment id of every pixel.
    top1, r2: [B] fidelity on the held-out samples (argmax agreement and R^2 of probabilities
      predicted by the per-class ridges vs the teacher's).
    score: [B] weighted in-sample R^2 of the fit, LIME's own ``score``.
    """

    coef: jax.Array
    intercept: jax.Array
    segments: jax.Array
    top1: jax.Array
    r2: jax.Array
    score: jax.Array

    def attribution(self, class_idx: jax.Array, num_channels: int = 1) -> jax.Array:
        """Segment coefficients painted on their pixels: class_idx [B] -> [B, H, W, C]."""
        idx = validate.class_indices(class_idx, batch=self.coef.shape[0],
                                     num_classes=self.coef.shape[-1])
        validate.integer(num_channels, "num_channels", minimum=1)
        return segment_attribution(self.coef, self.segments, idx, num_channels)


def grid_segments(height: int, width: int, patch: int) -> np.ndarray:
    """[H, W] int32 ids of square ``patch`` x ``patch`` cells, row-major (edge cells smaller)."""
    rows = np.arange(height) // patch
    cols = np.arange(width) // patch
    return (rows[:, None] * (-(-width // patch)) + cols[None, :]).astype(np.int32)


def segment_attribution(
    coef: jax.Array, segments: jax.Array, class_idx: jax.Array, num_channels: int = 1
) -> jax.Array:
    """coef [B, S, K], segments [B, H, W], class_idx [B] -> [B, H, W, C] pixel attributions."""
    per_seg = jnp.take_along_axis(coef, jnp.asarray(class_idx)[:, None, None], axis=2)[..., 0]
    pix = jnp.take_along_axis(per_seg, segments.reshape(segments.shape[0], -1), axis=1)
    pix = pix.reshape(segments.shape)
    return jnp.repeat(pix[..., None], num_channels, axis=-1)


def cosine_kernel_weights(z: jax.Array, kernel_width: float) -> jax.Array:
    """LIME's sample weights: z [N, S] binary -> [N] = sqrt(exp(-d^2 / width^2)), d the cosine
    distance of each row to the all-ones row (d = 1 - sqrt(#on / S); an all-off row gets d = 1,
    as in scikit-learn's cosine distance of a zero vector)."""
    on = jnp.sum(z, axis=1)
    d = 1.0 - jnp.sqrt(on / z.shape[1])
    return jnp.sqrt(jnp.exp(-(d**2) / kernel_width**2))


def weighted_ridge(
    x: jax.Array, y: jax.Array, weights: jax.Array, alpha: float
) -> tuple[jax.Array, jax.Array]:
    """Weighted ridge regression with an unpenalised intercept, as scikit-learn's
    ``Ridge(alpha).fit(x, y, sample_weight=weights)``.

    Args:
      x: [N, S]; y: [N, K]; weights: [N] >= 0.

    Returns:
      (coef [S, K], intercept [K]).
    """
    w = weights / jnp.sum(weights)
    x_mean = w @ x
    y_mean = w @ y
    xc = x - x_mean
    yc = y - y_mean
    sw = weights[:, None]
    gram = xc.T @ (sw * xc) + alpha * jnp.eye(x.shape[1], dtype=x.dtype)
    coef = jnp.linalg.solve(gram, xc.T @ (sw * yc))
    return coef, y_mean - x_mean @ coef


def perturb(image: jax.Array, segments: jax.Array, z: jax.Array, hide_value: float) -> jax.Array:
    """image [H, W, C], segments [H, W], z [N, S] -> [N, H, W, C] with off segments hidden."""
    on = jnp.take(z, segments, axis=1)[..., None]  # [N, H, W, 1]
    return jnp.where(on > 0, image[None], jnp.asarray(hide_value, image.dtype))


def lime_instance(
    image: jax.Array,
    segments: jax.Array,
    key: jax.Array,
    *,
    teacher_apply: TeacherApply,
    teacher_params,
    num_segments: int,
    config: LimeConfig,
) -> LimeExplanation:
    """LIME for one image [H, W, C] with segment ids [H, W] in [0, num_segments)."""
    z = jax.random.bernoulli(key, config.keep_prob, (config.num_samples, num_segments))
    z = z.astype(image.dtype).at[0].set(1.0)
    probs = jax.nn.softmax(teacher_apply(teacher_params, perturb(image, segments, z,
                                                                 config.hide_value)))
    weights = cosine_kernel_weights(z, config.kernel_width)
    n = config.num_fit
    coef, intercept = weighted_ridge(z[:n], probs[:n], weights[:n], config.ridge)

    fit_pred = z[:n] @ coef + intercept
    wn = weights[:n] / jnp.sum(weights[:n])
    ss_res = jnp.sum(wn[:, None] * (probs[:n] - fit_pred) ** 2, axis=0)
    ss_tot = jnp.sum(wn[:, None] * (probs[:n] - wn @ probs[:n]) ** 2, axis=0)
    top = jnp.argmax(probs[0])  # LIME reports the score of the explained label's regression
    score = 1.0 - ss_res[top] / jnp.maximum(ss_tot[top], 1e-12)

    hold_pred = z[n:] @ coef + intercept
    hold = probs[n:]
    top1 = jnp.mean(jnp.argmax(hold_pred, -1) == jnp.argmax(hold, -1))
    r2 = 1.0 - jnp.sum((hold - hold_pred) ** 2) / jnp.maximum(
        jnp.sum((hold - jnp.mean(hold, axis=0)) ** 2), 1e-12)
    return LimeExplanation(coef, intercept, segments, top1, r2, score)


@functools.partial(jax.jit, static_argnames=("teacher_apply", "num_segments", "config"))
def lime_batch(
    images: jax.Array,
    segments: jax.Array,
    keys: jax.Array,
    *,
    teacher_apply: TeacherApply,
    teacher_params,
    num_segments: int,
    config: LimeConfig = LimeConfig(),
) -> LimeExplanation:
    """`lime_instance` vmapped over images [B, H, W, C], segments [B, H, W] and keys [B]."""
    fn = functools.partial(lime_instance, teacher_apply=teacher_apply,
                           teacher_params=teacher_params, num_segments=num_segments,
                           config=config)
    return jax.vmap(fn)(images, segments, keys)


def lime_attribution(params, images, classes, keys, *, models: Models,
                     config: LimeConfig = LimeConfig()) -> Attribution:
    """LIME on a grid of ``config.patch`` patches as an explainer: images [B, H, W, C] in
    [0, 1], classes [B] in [0, K), keys [B] (instance i's samples from ``keys[i]``) ->
    `Attribution`: [B, H, W, C] the class's segment coefficients painted on their pixels;
    extras ``coef`` [B, S, K], ``intercept`` [B, K], ``fidelity_top1`` / ``fidelity_r2`` [B]
    on the held-out samples and LIME's ``score`` [B].

    Raises:
      ValueError: malformed images, classes, keys or config (values checked when concrete).
    """
    images, classes = check_inputs(images, classes, keys, models=models, config=config,
                                   config_type=LimeConfig)
    b, h, w, c = images.shape
    seg = grid_segments(h, w, config.patch)  # numpy: its size is static
    e = lime_batch(jnp.asarray(images), jnp.broadcast_to(seg, (b, h, w)), keys,
                   teacher_apply=models.teacher_apply, teacher_params=params["teacher"],
                   num_segments=int(seg.max()) + 1, config=config)
    attr = segment_attribution(e.coef, e.segments, jnp.asarray(classes, jnp.int32), c)
    return Attribution(attr, {"coef": e.coef, "intercept": e.intercept,
                              "fidelity_top1": e.top1, "fidelity_r2": e.r2, "score": e.score})


def explain_lime(
    images,
    key: jax.Array,
    *,
    teacher_apply: TeacherApply,
    teacher_params,
    config: LimeConfig = LimeConfig(),
    segments=None,
    chunk_size: int = 64,
    shard: bool = True,
    progress: bool = False,
) -> LimeExplanation:
    """LIME for every image, in jitted chunks (the last one padded) sharded over the local
    devices, by the same driver as `deepvid.explain` (`driver.map_instances`): instance i uses
    ``fold_in(key, i)``.

    Args:
      images: [B, H, W, C] float in [0, 1].
      key: PRNG key.
      teacher_apply, teacher_params: the teacher.
      config: `LimeConfig`.
      segments: [B, H, W] or [H, W] int segment ids in [0, S); default `grid_segments`.
      chunk_size: instances per compiled call.
      shard: split each chunk's instances over the local devices when there are several.
      progress: show a progress bar over chunks.

    Returns:
      `LimeExplanation` of numpy arrays, leading axis B.
    """
    validate.config(config, LimeConfig, "config")
    arr = validate.images(images)
    b, h, w, _ = arr.shape
    if segments is None:
        segments = grid_segments(h, w, config.patch)
    seg = np.asarray(segments)
    if seg.dtype == bool or not np.issubdtype(seg.dtype, np.integer):
        raise ValueError(f"segments must be integer ids; got dtype {seg.dtype}.")
    if seg.ndim == 2 and seg.shape == (h, w):
        seg = np.broadcast_to(seg, (b, h, w))
    if seg.shape != (b, h, w):
        raise ValueError(f"segments must have shape [B, H, W] = {(b, h, w)} or [H, W]; got "
                         f"{seg.shape}.")
    if seg.min() < 0:
        raise ValueError("segments must be non-negative ids.")
    num_segments = int(seg.max()) + 1
    if num_segments > h * w:
        raise ValueError(f"segments has ids up to {num_segments - 1}; at most H * W = {h * w} "
                         "segments make sense (ids are 0..S-1).")
    seg = seg.astype(np.int32)
    validate.teacher(teacher_apply, teacher_params, arr)

    def fn(params, inp, keys):
        return lime_batch(inp[0], inp[1], keys, teacher_apply=teacher_apply,
                          teacher_params=params, num_segments=num_segments, config=config)

    return map_instances(fn, teacher_params, (arr, seg), key, chunk_size=chunk_size,
                         shard=shard, progress=progress, desc="lime", check=_finite_lime)


def _finite_lime(e: LimeExplanation, start: int) -> None:
    rows = validate.nonfinite_rows(e.coef, e.intercept, start=start)
    if rows:
        raise ValueError(f"LIME explanations of images {rows[:10]} are not finite: the teacher "
                         "returned NaN or inf on some perturbed images.")
