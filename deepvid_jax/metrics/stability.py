"""Is an explainer stable? Max-sensitivity to small input noise, agreement across seeds, and the
per-instance correlations they rest on.

These measure an explainer, not one explanation: `max_sensitivity` takes an attribution
function and calls it again on perturbed inputs; `seed_agreement` takes the attributions of
several runs that differ only in their key. All are pure and batched over instances ``[B, ...]``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.scipy.stats

from deepvid_jax import validate


def _flat(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


def _same_shape(a, b, name_a: str = "a", name_b: str = "b") -> None:
    if jnp.shape(a) != jnp.shape(b) or jnp.ndim(a) < 1:
        raise ValueError(f"{name_a} and {name_b} must have the same shape [B, ...]; got "
                         f"{list(jnp.shape(a))} and {list(jnp.shape(b))}.")


def relative_change(reference: jax.Array, other: jax.Array) -> jax.Array:
    """||other - reference|| / ||reference|| per instance: [B, ...] x2 -> [B]; NaN where the
    reference is all zero (e.g. a Grad-CAM map whose ReLU removed everything): a relative
    change is undefined there."""
    _same_shape(reference, other, "reference", "other")
    num = jnp.linalg.norm(_flat(other - reference), axis=1)
    den = jnp.linalg.norm(_flat(reference), axis=1)
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), jnp.nan)


def max_sensitivity(
    attribute_fn: Callable[[jax.Array], jax.Array],
    images: jax.Array,
    key: jax.Array | None = None,
    *,
    keys: jax.Array | None = None,
    radius: float = 0.05,
    samples: int = 4,
    reference: jax.Array | None = None,
) -> jax.Array:
    """Max-sensitivity (Yeh et al. 2019), relative: the largest `relative_change` of the
    attribution when the input moves by uniform noise in an L-inf ball of ``radius`` (clipped to
    [0, 1]), over ``samples`` draws.

    Args:
      attribute_fn: images [B, H, W, C] -> attributions [B, H, W, C] (any batched explainer;
        a Python callable, so it may itself be a chunked driver).
      images: [B, H, W, C] in [0, 1].
      key: one PRNG key for the noise of the whole batch (draw s from ``split(key, samples)``).
      keys: instead of ``key``, [B] PRNG keys, one per image: image i's draw s from
        ``split(keys[i], samples)[s]``, so its value does not depend on the other images.
      reference: attributions [B, H, W, C] of ``images`` if already computed.

    Returns:
      [B]; NaN for instances whose reference attribution is all zero.

    Raises:
      ValueError: not a callable, malformed images, keys or reference, or bad settings.
    """
    if not callable(attribute_fn):
        raise ValueError("attribute_fn must be a callable images -> attributions.")
    images = validate.images(images)
    validate.number(radius, "radius", low=0.0)
    validate.integer(samples, "samples", minimum=1)
    if (key is None) == (keys is None):
        raise ValueError("max_sensitivity needs exactly one of key (one for the batch) and "
                         "keys ([B], one per image).")
    if keys is not None and jnp.shape(keys)[:1] != (images.shape[0],):
        raise ValueError(f"keys must be [B] = [{images.shape[0]}] PRNG keys (one per image), "
                         f"got shape {list(jnp.shape(keys))}.")
    if reference is not None:
        reference = validate.array(reference, "reference", shape=images.shape)
    ref = attribute_fn(images) if reference is None else reference
    if keys is None:
        draws = list(jax.random.split(key, samples))
        noise = [jax.random.uniform(k, images.shape, minval=-radius, maxval=radius)
                 for k in draws]
    else:
        per = jax.vmap(lambda k: jax.random.split(k, samples))(keys)  # [B, samples]
        noise = [jax.vmap(lambda k: jax.random.uniform(k, images.shape[1:], minval=-radius,
                                                       maxval=radius))(per[:, s])
                 for s in range(samples)]
    worst = jnp.zeros(images.shape[0])
    for d in noise:
        noisy = jnp.clip(images + d, 0.0, 1.0)
        worst = jnp.maximum(worst, relative_change(ref, attribute_fn(noisy)))  # NaN propagates
    return worst


def pearson(a: jax.Array, b: jax.Array) -> jax.Array:
    """Pearson correlation per instance: [B, ...] x2 -> [B] (0 where either is constant)."""
    _same_shape(a, b)
    a, b = _flat(a), _flat(b)
    a = a - jnp.mean(a, axis=1, keepdims=True)
    b = b - jnp.mean(b, axis=1, keepdims=True)
    den = jnp.linalg.norm(a, axis=1) * jnp.linalg.norm(b, axis=1)
    return jnp.where(den > 0, jnp.sum(a * b, axis=1) / jnp.maximum(den, 1e-30), 0.0)


def spearman(a: jax.Array, b: jax.Array) -> jax.Array:
    """Spearman rank correlation per instance (ties get average ranks): [B, ...] x2 -> [B]."""
    _same_shape(a, b)
    ra = jax.scipy.stats.rankdata(_flat(a), axis=1)
    rb = jax.scipy.stats.rankdata(_flat(b), axis=1)
    return pearson(ra, rb)


def seed_agreement(attributions: jax.Array) -> jax.Array:
    """Mean pairwise Pearson correlation between runs of a stochastic explainer that differ only
    in their seed: [R, B, ...] -> [B]; 1 = the seed does not matter."""
    if jnp.ndim(attributions) < 2:
        raise ValueError(f"seed_agreement needs attributions [R, B, ...]; got shape "
                         f"{list(jnp.shape(attributions))}.")
    r = attributions.shape[0]
    if r < 2:
        raise ValueError(f"seed_agreement needs >= 2 runs, got {r}.")
    attributions = validate.array(attributions, "attributions")
    pairs = [pearson(attributions[i], attributions[j]) for i in range(r) for j in range(i + 1, r)]
    return jnp.mean(jnp.stack(pairs), axis=0)
