"""Is an explanation faithful to the teacher? The student's fidelity to the teacher (top-1
agreement, KL, probability R^2), deletion / insertion curves and average drop / increase in
confidence.

Everything here is pure and batched over instances. Attributions are ``[B, H, W, C]`` for one
class per instance, whatever method produced them, so every method is measured alike. Stability
(max-sensitivity, seed agreement) is in `metrics.stability`, cascading randomisation in
`metrics.randomisation`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from deepvid_jax import validate
from deepvid_jax.metrics.stability import (  # noqa: F401  (read here by modules outside metrics)
    max_sensitivity,
    pearson,
    relative_change,
    seed_agreement,
    spearman,
)
from deepvid_jax.models.networks import TeacherApply
from deepvid_jax.ops import gaussian_blur

BASELINES = ("zero", "blur", "mean")

# --------------------------------------------------------------------------------------------
# Fidelity of a surrogate to its teacher
# --------------------------------------------------------------------------------------------


def _same_logits_shape(a: jax.Array, b: jax.Array) -> None:
    if jnp.shape(a) != jnp.shape(b) or jnp.ndim(a) < 2:
        raise ValueError(f"student and teacher logits must both be [..., N, K] of one shape; got "
                         f"{list(jnp.shape(a))} and {list(jnp.shape(b))}.")


def top1_agreement(student_logits: jax.Array, teacher_logits: jax.Array) -> jax.Array:
    """Fraction of rows whose argmax agrees: [..., N, K] x2 -> [...]; NaN where any logit is
    NaN or inf (argmax of NaN would count as agreement)."""
    _same_logits_shape(student_logits, teacher_logits)
    agree = jnp.mean(jnp.argmax(student_logits, -1) == jnp.argmax(teacher_logits, -1), axis=-1)
    finite = jnp.all(jnp.isfinite(student_logits) & jnp.isfinite(teacher_logits), axis=(-2, -1))
    return jnp.where(finite, agree, jnp.nan)


def kl_divergence(teacher_logits: jax.Array, student_logits: jax.Array) -> jax.Array:
    """Mean over rows of KL(softmax(teacher) || softmax(student)), in nats: [..., N, K] -> [...]."""
    _same_logits_shape(student_logits, teacher_logits)
    t = jax.nn.log_softmax(teacher_logits)
    s = jax.nn.log_softmax(student_logits)
    return jnp.mean(jnp.sum(jnp.exp(t) * (t - s), axis=-1), axis=-1)


def probability_r2(teacher_logits: jax.Array, student_logits: jax.Array) -> jax.Array:
    """R^2 of the student's class probabilities against the teacher's, pooled over rows and
    classes: [..., N, K] -> [...]. 1 is perfect; 0 is no better than the teacher's mean."""
    _same_logits_shape(student_logits, teacher_logits)
    t = jax.nn.softmax(teacher_logits)
    s = jax.nn.softmax(student_logits)
    ss_res = jnp.sum((t - s) ** 2, axis=(-2, -1))
    ss_tot = jnp.sum((t - jnp.mean(t, axis=-2, keepdims=True)) ** 2, axis=(-2, -1))
    return 1.0 - ss_res / jnp.maximum(ss_tot, 1e-12)


class Fidelity(NamedTuple):
    """Student vs teacher on a set of neighbours (per instance: [B] when batched).

    top1: argmax agreement; kl: KL(teacher || student) in nats; r2: R^2 of class probabilities.
    """

    top1: jax.Array
    kl: jax.Array
    r2: jax.Array


def fidelity(teacher_logits: jax.Array, student_logits: jax.Array) -> Fidelity:
    """All three fidelity numbers: [..., N, K] x2 -> `Fidelity` of [...]."""
    return Fidelity(
        top1_agreement(student_logits, teacher_logits),
        kl_divergence(teacher_logits, student_logits),
        probability_r2(teacher_logits, student_logits),
    )


# --------------------------------------------------------------------------------------------
# Deletion and insertion (Petsiuk et al. 2018, RISE)
# --------------------------------------------------------------------------------------------


def baseline_images(images: jax.Array, kind: str, blur_sigma: float = 2.0) -> jax.Array:
    """What deleted pixels become (and insertion starts from): [B, H, W, C] -> same shape.

    kind: "zero" (black), "blur" (a Gaussian-blurred copy, as in RISE's insertion) or "mean"
    (each image's mean value per channel).
    """
    if kind == "zero":
        return jnp.zeros_like(images)
    if kind == "blur":
        return gaussian_blur(images, blur_sigma)
    if kind == "mean":
        return jnp.broadcast_to(jnp.mean(images, axis=(1, 2), keepdims=True), images.shape)
    raise ValueError(f"Unknown baseline {kind!r}; expected one of {BASELINES}.")


class DeletionInsertion(NamedTuple):
    """deletion, insertion: [B] areas under the class-probability curves (deletion: lower is
    better; insertion: higher is better). *_curve: [B, steps + 1] the curves themselves, at
    fractions ``linspace(0, 1, steps + 1)`` of the pixels removed / inserted. *_spread: [B] the
    standard deviation of the area over the random orders of tied pixels (0 with one order)."""

    deletion: jax.Array
    insertion: jax.Array
    deletion_curve: jax.Array
    insertion_curve: jax.Array
    deletion_spread: jax.Array
    insertion_spread: jax.Array


def pixel_order_ranks(attributions: jax.Array, keys: jax.Array | None = None) -> jax.Array:
    """[B, H, W, C] -> [B, H * W] rank of each pixel, 0 = most important (largest attribution
    summed over channels). Ties keep raster order without ``keys``; with keys [B] they are
    broken by a random order per image (a map whose zeros tie, such as Grad-CAM's, would
    otherwise delete its top rows first)."""
    score = jnp.sum(attributions, axis=-1).reshape(attributions.shape[0], -1)
    if keys is None:
        order = jnp.argsort(-score, axis=1, stable=True)
    else:
        tie = jax.vmap(lambda k: jax.random.permutation(k, score.shape[1]))(keys)
        order = jnp.lexsort((tie, -score), axis=1)  # by score, then by the random priority
    return jnp.argsort(order, axis=1)


def trapezoid_auc(curve: jax.Array) -> jax.Array:
    """Mean of a curve sampled at evenly spaced points on [0, 1] by the trapezoid rule:
    [..., T + 1] -> [...]."""
    steps = curve.shape[-1] - 1
    return (jnp.sum(curve, axis=-1) - 0.5 * (curve[..., 0] + curve[..., -1])) / steps


def _attribution_inputs(images, attributions, class_idx, teacher_apply, teacher_params,
                        attributions_name: str = "attributions",
                        attribution_shape=None):
    """Checks of the common (images, attributions, class_idx, teacher) arguments of metrics."""
    images, class_idx = validate.images_and_classes(images, class_idx, teacher_apply,
                                                    teacher_params)
    attribution_shape = tuple(images.shape) if attribution_shape is None else attribution_shape
    attributions = validate.array(attributions, attributions_name, shape=attribution_shape)
    return images, attributions, class_idx


def require_finite(what: str, *scores: jax.Array, start: int = 0) -> None:
    """A clear error naming the images (offset by ``start``) whose ``scores`` [B, ...] are NaN
    or inf. The teacher was probed on the images themselves, so such a score means it returned
    NaN or inf on a perturbed copy (pixels deleted, inserted or masked): an average over the
    others would silently drop them. Skipped under tracing (values unknown)."""
    if any(validate.is_traced(s) for s in scores):
        return
    rows = validate.nonfinite_rows(*scores, start=start)
    if rows:
        raise ValueError(f"{what} of images {rows[:10]}{' ...' if len(rows) > 10 else ''} "
                         "is not finite: the teacher returned NaN or inf on their perturbed "
                         "copies (pixels deleted, inserted or masked).")


def deletion_insertion(
    images: jax.Array,
    attributions: jax.Array,
    class_idx: jax.Array,
    *,
    teacher_apply: TeacherApply,
    teacher_params,
    steps: int = 49,
    baseline: str = "zero",
    blur_sigma: float = 2.0,
    keys: jax.Array | None = None,
    tie_orders: int = 1,
) -> DeletionInsertion:
    """Deletion and insertion AUC of attributions (Petsiuk et al. 2018).

    Pixels are removed from the image (deletion) or copied into the baseline (insertion) in
    decreasing order of attribution, ``H * W / steps`` at a time; the teacher's probability of
    the class after each step traces a curve on [0, 1] whose area is the score. Tied pixels go
    in raster order without ``keys`` (as Quantus' pixel flipping, which we match); with keys
    [B], in ``tie_orders`` random orders per image (order o from ``fold_in(keys[i], o)``) whose
    curves are averaged, their areas' spread reported.

    Args:
      images: [B, H, W, C] in [0, 1]; attributions: [B, H, W, C] finite; class_idx: [B] int in
        [0, K).
      teacher_apply, teacher_params: the teacher.
      steps: points of the curve after the first (all pixels are reached at the last).
      baseline: "zero", "blur" or "mean" (`baseline_images`).
      blur_sigma: std in pixels of the "blur" baseline.
      keys: [B] PRNG keys that order tied pixels at random (None: raster order).
      tie_orders: random tie orders averaged per image (with keys).

    Returns:
      `DeletionInsertion`.

    Raises:
      ValueError: malformed images, attributions, class indices, settings or teacher, or a
        teacher that returns NaN or inf on the perturbed images (`require_finite`).
    """
    images, attributions, class_idx = _attribution_inputs(images, attributions, class_idx,
                                                          teacher_apply, teacher_params)
    validate.integer(steps, "steps", minimum=1)
    validate.choice(baseline, BASELINES, "baseline")
    validate.number(blur_sigma, "blur_sigma", low=0.0, low_open=True)
    validate.integer(tie_orders, "tie_orders", minimum=1)
    if keys is not None and jnp.shape(keys)[:1] != (images.shape[0],):
        raise ValueError(f"keys must be [B] = [{images.shape[0]}] PRNG keys (one per image), "
                         f"got shape {list(jnp.shape(keys))}.")
    if keys is None and tie_orders > 1:
        raise ValueError("tie_orders > 1 needs keys (the random tie orders come from them).")
    out = _deletion_insertion(images, attributions, class_idx, teacher_apply=teacher_apply,
                              teacher_params=teacher_params, steps=steps, baseline=baseline,
                              blur_sigma=blur_sigma, keys=keys, tie_orders=tie_orders)
    require_finite("the deletion / insertion curve", out.deletion_curve, out.insertion_curve)
    return out


@functools.partial(jax.jit, static_argnames=("teacher_apply", "steps", "baseline", "blur_sigma",
                                             "tie_orders"))
def _deletion_insertion(
    images: jax.Array,
    attributions: jax.Array,
    class_idx: jax.Array,
    *,
    teacher_apply: TeacherApply,
    teacher_params,
    steps: int = 49,
    baseline: str = "zero",
    blur_sigma: float = 2.0,
    keys: jax.Array | None = None,
    tie_orders: int = 1,
) -> DeletionInsertion:
    """`deletion_insertion` without the checks, jitted (for callers that validated)."""
    b, h, w, _ = images.shape
    base = baseline_images(images, baseline, blur_sigma)
    class_idx = jnp.asarray(class_idx, jnp.int32)
    counts = jnp.round(jnp.linspace(0.0, h * w, steps + 1)).astype(jnp.int32)

    def probs(x):
        p = jax.nn.softmax(teacher_apply(teacher_params, x))
        return jnp.take_along_axis(p, class_idx[:, None], axis=1)[:, 0]

    def curves(order_keys):  # [2, B, steps + 1] for one order of the tied pixels
        ranks = pixel_order_ranks(attributions, order_keys).reshape(b, h, w, 1)

        def at(k):  # one point of both curves: the top-k pixels removed / inserted
            top = ranks < k
            return probs(jnp.where(top, base, images)), probs(jnp.where(top, images, base))

        dele, ins = jax.lax.map(at, counts)  # [steps + 1, B] each; a loop bounds memory
        return jnp.stack([dele.T, ins.T])

    if keys is None:
        runs = curves(None)[None]
    else:  # [orders, 2, B, steps + 1]
        runs = jax.lax.map(lambda o: curves(jax.vmap(lambda k: jax.random.fold_in(k, o))(keys)),
                           jnp.arange(tie_orders))
    areas = trapezoid_auc(runs)  # [orders, 2, B]
    mean = runs.mean(0)
    spread = areas.std(0)
    return DeletionInsertion(trapezoid_auc(mean[0]), trapezoid_auc(mean[1]), mean[0], mean[1],
                             spread[0], spread[1])


# --------------------------------------------------------------------------------------------
# Average drop and increase in confidence (Chattopadhyay et al. 2018)
# --------------------------------------------------------------------------------------------


def average_drop_increase(
    images: jax.Array, maps: jax.Array, class_idx: jax.Array, *, teacher_apply: TeacherApply,
    teacher_params,
) -> tuple[jax.Array, jax.Array]:
    """Average drop and increase in confidence (Chattopadhyay et al. 2018): images
    [B, H, W, C] in [0, 1], maps [B, H, W] finite, class_idx [B] in [0, K) -> (drop [B],
    increase [B]); see `_average_drop_increase`. Raises ValueError on malformed input, or a
    teacher that returns NaN or inf on the masked images (`require_finite`)."""
    images, maps, class_idx = _attribution_inputs(
        images, maps, class_idx, teacher_apply, teacher_params, attributions_name="maps",
        attribution_shape=tuple(jnp.shape(images))[:3])
    drop, increase = _average_drop_increase(images, maps, class_idx, teacher_apply=teacher_apply,
                                            teacher_params=teacher_params)
    require_finite("the average drop", drop)
    return drop, increase


@functools.partial(jax.jit, static_argnames="teacher_apply")
def _average_drop_increase(
    images: jax.Array, maps: jax.Array, class_idx: jax.Array, *, teacher_apply: TeacherApply,
    teacher_params,
) -> tuple[jax.Array, jax.Array]:
    """Average drop and increase in confidence (Chattopadhyay et al. 2018, Grad-CAM++) when the
    teacher sees only the salient region: the image times its map scaled to [0, 1].

    Args:
      images: [B, H, W, C]; maps: [B, H, W] saliency (any scale; min-max normalised per image,
        a constant map counts as all ones);
      class_idx: [B].

    Returns:
      (drop [B] = max(0, p - o) / p, increase [B] = 1 if o > p else 0), p and o the class
      probabilities on the image and on the masked image; the paper reports their means (in %).
    """
    lo = jnp.min(maps, axis=(1, 2), keepdims=True)
    hi = jnp.max(maps, axis=(1, 2), keepdims=True)
    # A constant map ranks nothing: it keeps the whole image.
    m = jnp.where(hi > lo, (maps - lo) / jnp.maximum(hi - lo, 1e-12), 1.0)
    class_idx = jnp.asarray(class_idx, jnp.int32)

    def prob(x):
        p = jax.nn.softmax(teacher_apply(teacher_params, x))
        return jnp.take_along_axis(p, class_idx[:, None], axis=1)[:, 0]

    p, o = prob(images), prob(images * m[..., None])
    return jnp.maximum(p - o, 0.0) / p, (o > p).astype(jnp.float32)
