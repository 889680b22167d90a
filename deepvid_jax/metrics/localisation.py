"""Does an explanation point at the evidence? Localisation metrics against a known region.

Each takes attributions ``[B, H, W, C]`` and a region ``[B, H, W]`` bool (the pixels that carry
the class, or the pixels a teacher provably cannot see) and returns ``[B]``. Relevance is pooled
over channels first: the sum of ``|a|`` over C ("abs", the default, what a heat map shows) or the
positive part of the channel sum ("positive", Arras et al. 2022's relevance mass).

Attributions must be finite floats and the region a bool mask (a clear error otherwise).
Ties count as their expectation over a random order (never raster order): a constant map scores
the region's area fraction on every metric, and a map equal to the region scores 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from deepvid_jax import validate

POOLINGS = ("abs", "positive")


def relevance(attributions: jax.Array, pooling: str = "abs") -> jax.Array:
    """[B, H, W, C] -> [B, H * W] non-negative relevance per pixel (module docstring)."""
    validate.choice(pooling, POOLINGS, "pooling")
    if pooling == "abs":
        r = jnp.abs(attributions).sum(-1)
    else:
        r = jnp.maximum(attributions.sum(-1), 0.0)
    return r.reshape(r.shape[0], -1)


def _inputs(attributions, region, pooling: str) -> tuple[jax.Array, jax.Array]:
    """The checked arguments of every metric here: relevance [B, H * W] and the region
    [B, H * W] as 0/1 of the attributions' dtype."""
    attributions = validate.array(attributions, "attributions", ndim=4)
    region = region if validate.is_traced(region) else np.asarray(region)
    if region.dtype != bool:
        raise ValueError(f"region must be a bool mask [B, H, W] (True: the pixels of the "
                         f"region), got dtype {region.dtype}.")
    if tuple(region.shape) != tuple(attributions.shape[:3]):
        raise ValueError(f"region must be [B, H, W] = {list(attributions.shape[:3])} (one bool "
                         f"per pixel), got {list(region.shape)}.")
    r = relevance(jnp.asarray(attributions), pooling)
    return r, jnp.asarray(region).reshape(region.shape[0], -1).astype(r.dtype)


def relevance_mass(attributions: jax.Array, region: jax.Array, pooling: str = "abs"
                   ) -> jax.Array:
    """[B] share of each map's relevance inside ``region`` (Arras et al. 2022's relevance mass
    accuracy when the region carries the class; the leak when the teacher cannot see it). A map
    with no relevance at all scores the area fraction (nothing to tell the pixels apart)."""
    r, m = _inputs(attributions, region, pooling)
    total = r.sum(-1)
    inside = (r * m).sum(-1)
    return jnp.where(total > 0, inside / jnp.where(total > 0, total, 1.0), m.mean(-1))


def _expected_hits(r: jax.Array, m: jax.Array, k: jax.Array) -> jax.Array:
    """Expected number of region pixels among the k most relevant of each row (ties broken
    uniformly at random): r, m [B, P]; k [B] -> [B]."""
    kth = jnp.take_along_axis(jnp.sort(r, axis=-1)[:, ::-1],
                              jnp.clip(k - 1, 0, r.shape[-1] - 1)[:, None], axis=-1)
    above, tied = r > kth, r == kth
    n_above, n_tied = above.sum(-1), tied.sum(-1)
    share_tied = (tied * m).sum(-1) / jnp.maximum(n_tied, 1)
    return (above * m).sum(-1) + (k - n_above) * share_tied


def relevance_rank_accuracy(attributions: jax.Array, region: jax.Array, pooling: str = "abs"
                            ) -> jax.Array:
    """[B] share of the region among each map's K most relevant pixels, K the region's size
    (Arras et al. 2022); 0 for an empty region (nothing to find)."""
    r, m = _inputs(attributions, region, pooling)
    k = m.sum(-1).astype(jnp.int32)
    return jnp.where(k > 0, _expected_hits(r, m, k) / jnp.maximum(k, 1), 0.0)


def pointing_game(attributions: jax.Array, region: jax.Array, pooling: str = "abs"
                  ) -> jax.Array:
    """[B] whether each map's most relevant pixel lies in the region (Zhang et al. 2018), in
    [0, 1]: ties at the maximum count as the share of them inside."""
    r, m = _inputs(attributions, region, pooling)
    return _expected_hits(r, m, jnp.ones(r.shape[0], jnp.int32))
