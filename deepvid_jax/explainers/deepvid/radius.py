"""The calibrated radius of one instance's VAE neighbourhood: the latent scale at which the
teacher relabels ``NeighborConfig.target_flip`` of decoded probes around the instance's code.

`calibrate_scale` decodes the probes (`probe_noise`) of one instance and runs the configured
search (`search_scale`: halvings, `bisect_scale`, or secant steps, `secant_scale`) on their flips
(`probe_flips`); the explain pipeline runs the same search on a whole batch's probes, decoded
in blocks. Why the default searches as it does: docs/design/radius.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from deepvid_jax.explainers.deepvid.neighbors import NeighborConfig
from deepvid_jax.models import vae
from deepvid_jax.models.networks import VAEConfig


def calibrate_scale(
    vae_params: dict,
    image: jax.Array,
    key: jax.Array,
    logits_of: Callable[[jax.Array], jax.Array],
    label: jax.Array,
    config: NeighborConfig,
    vae_config: VAEConfig,
    with_last: bool = False,
):
    """The latent scale at which ``config.target_flip`` of the neighbours of ``image`` [H, W, C]
    get another label than ``label`` (`search_scale`; `NeighborConfig.target_flip`).

    Args:
      logits_of: images [P, H, W, C] -> the teacher's logits [P, K].
      with_last: also return the last step's probes [P, H, W, C] and their logits [P, K].

    Returns:
      scalar scale in [0, config.max_latent_scale] (with ``with_last``: (it, (probes,
      logits))).
    """
    mean, logvar = vae.encode(vae_params, image[None], config=vae_config)
    std = jnp.exp(0.5 * logvar) if config.use_posterior_std else jnp.ones_like(mean)
    eps = probe_noise(key, config, vae_config.latent_dim)

    def flips(scale):
        probes = vae.decode(vae_params, mean + scale * std * eps, config=vae_config)
        logits = logits_of(probes)
        return jnp.mean(probe_flips(logits, label, config)), (probes, logits)

    scale, last = search_scale(flips, config, with_last=True)
    return (scale, last) if with_last else scale


def probe_flips(logits: jax.Array, label: jax.Array, config: NeighborConfig) -> jax.Array:
    """Per probe, whether the teacher relabels it (logits [..., K], label [...] broadcast):
    1.0 / 0.0 ("bisect"), or 1 - the probability of ``label`` ("interpolate", "secant")."""
    if config.calibration != "bisect":
        p = jax.nn.softmax(logits, axis=-1)
        label = jnp.broadcast_to(jnp.asarray(label, jnp.int32), logits.shape[:-1])
        return 1.0 - jnp.take_along_axis(p, label[..., None], -1)[..., 0]
    return (jnp.argmax(logits, -1) != label).astype(jnp.float32)


def probe_noise(key: jax.Array, config: NeighborConfig, latent_dim: int) -> jax.Array:
    """The calibration probes' latent noise [calibration_probes, Z] of one instance: standard
    normal from ``key``; or with ``probe_draw="fixed"`` the same probes for every key and
    instance, each at the typical radius sqrt(Z) of a standard normal draw, their directions
    orthonormal in blocks of Z (the rows of fixed random rotations), so that a few probes
    spread over the directions as far as they can."""
    if config.probe_draw == "fixed":
        p = config.calibration_probes
        blocks = [jnp.linalg.qr(jax.random.normal(
            jax.random.fold_in(jax.random.PRNGKey(_FIXED_PROBE_SEED), b),
            (latent_dim, latent_dim)))[0].T for b in range(-(-p // latent_dim))]
        return jnp.sqrt(float(latent_dim)) * jnp.concatenate(blocks)[:p]
    return jax.random.normal(key, (config.calibration_probes, latent_dim))


_FIXED_PROBE_SEED = 0x5EED  # `probe_draw="fixed"`: the seed of the probes shared by all


def search_scale(
    flips: Callable, config: NeighborConfig, shape: tuple = (), *, with_last: bool = False,
):
    """The latent scales (of ``shape``) where ``flips(scales)`` (flip fractions, same shape)
    crosses ``config.target_flip``, by ``config.calibration``'s search: `secant_scale` for
    "secant", else `bisect_scale`.

    With ``with_last``, ``flips`` returns (fractions, anything, e.g. the probes and their
    logits) and so does the search: (scales, that of its last evaluation)."""
    measure = flips if with_last else (lambda s: (flips(s), None))
    search = secant_scale if config.calibration == "secant" else bisect_scale
    scale, last = search(measure, config, shape)
    return (scale, last) if with_last else scale


# "secant"'s first slope: the median slope of the logit of the 16 fixed probes' soft flip
# against the log scale where it crosses 0.16, on 100 held-out images of the README's MNIST
# (3.5) and KMNIST (3.0) models; the later slopes are measured, within [1/2, 10] (a noisy pair
# of steps may give any slope, or none).
SECANT_SLOPE, SECANT_SLOPES = 3.0, (0.5, 10.0)


def secant_scale(flips: Callable, config: NeighborConfig, shape: tuple = ()):
    """The latent scales (of ``shape``) where the soft flip fractions in [0, 1] of
    ``flips(scales) -> (fractions, aux)`` cross ``config.target_flip``, and the last
    evaluation's ``aux``: by the secant method on the logit of the flip fraction against the
    log of the scale, ``calibration_steps`` evaluations, the first at
    ``config.calibration_start``, each next one (and the answer) where the line through the
    last two (the first alone with the slope `SECANT_SLOPE`) meets the target's logit; every
    scale kept in [``max_latent_scale`` / 1024, ``max_latent_scale``]. A soft flip that is
    logistic in the log scale is hit exactly after two steps; the probes' flips are close to
    that near the target (docs/design/radius.md)."""
    def logit(f):  # flips of exactly 0 or 1 have none: clipped, they still say which way
        f = jnp.clip(f, 1e-4, 1.0 - 1e-4)
        return jnp.log(f) - jnp.log1p(-f)

    target = math.log(config.target_flip / (1.0 - config.target_flip))
    lo, hi = math.log(config.max_latent_scale / 1024), math.log(config.max_latent_scale)

    def step(_, state):
        a1, l1, slope, _ = state  # the last step (log scale, logit flip); the slope to use
        a2 = jnp.clip(a1 + (target - l1) / slope, lo, hi)
        f2, aux = flips(jnp.exp(a2))
        l2 = logit(f2)
        measured = (l2 - l1) / jnp.where(a2 == a1, 1.0, a2 - a1)
        return a2, l2, jnp.where(a2 == a1, slope, jnp.clip(measured, *SECANT_SLOPES)), aux

    a = jnp.full(shape, math.log(config.calibration_start), jnp.float32)
    first, aux = flips(jnp.exp(a))
    a, f, slope, aux = jax.lax.fori_loop(
        1, config.calibration_steps, step,
        (a, logit(first), jnp.full(shape, SECANT_SLOPE, jnp.float32), aux))
    return jnp.exp(jnp.clip(a + (target - f) / slope, lo, hi)), aux


def bisect_scale(flips: Callable, config: NeighborConfig, shape: tuple = ()):
    """The latent scales (of ``shape``) where the label-flip fractions of ``flips(scales) ->
    (fractions, aux)`` cross ``config.target_flip``, and the last evaluation's ``aux``:
    ``calibration_steps`` halvings of [0, ``max_latent_scale``], elementwise; then the middle
    of the last bracket ("bisect") or the linear interpolation of the flip fractions measured at
    its ends ("interpolate"; the ends never measured count as 0 at scale 0 and 1 at the top)."""
    target = config.target_flip

    def halve(_, state):
        lo, hi, f_lo, f_hi, _ = state
        mid = 0.5 * (lo + hi)
        f, aux = flips(mid)
        below = f < target
        return (jnp.where(below, mid, lo), jnp.where(below, hi, mid),
                jnp.where(below, f, f_lo), jnp.where(below, f_hi, f), aux)

    zeros = jnp.zeros(shape, jnp.float32)
    aux = jax.tree.map(lambda v: jnp.zeros(v.shape, v.dtype),
                       jax.eval_shape(lambda: flips(zeros)[1]))
    lo, hi, f_lo, f_hi, aux = jax.lax.fori_loop(
        0, config.calibration_steps, halve,
        (zeros, jnp.full(shape, config.max_latent_scale, jnp.float32), zeros, zeros + 1.0, aux))
    if config.calibration == "bisect":
        return 0.5 * (lo + hi), aux
    t = jnp.clip((target - f_lo) / jnp.maximum(f_hi - f_lo, 1e-6), 0.0, 1.0)
    return lo + t * (hi - lo), aux
