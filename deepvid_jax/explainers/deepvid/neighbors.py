"""Neighbourhoods of one image: VAE-latent samples (DeepVID) and pixel perturbations (baseline).

Functions here act on **one** instance (``image: [H, W, C]``) and return its neighbours; the
explain pipeline `jax.vmap`s them over instances. DeepVID's diagnosis views (interpolation between
two instances, traversal of each latent dimension) live here too.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from deepvid_jax import validate
from deepvid_jax.models import vae
from deepvid_jax.models.networks import VAEConfig

SAMPLERS = ("vae", "pixel", "mask")
# How the "vae" sampler's latent offsets are drawn (`NeighborConfig.draw`).
DRAWS = ("random", "antithetic", "lattice")
# How the calibration probes' directions are drawn (`NeighborConfig.probe_draw`).
PROBE_DRAWS = ("random", "fixed")
# How the calibrated radius is read off the probes (`NeighborConfig.calibration`).
CALIBRATIONS = ("bisect", "interpolate", "secant")


@dataclasses.dataclass(frozen=True)
class NeighborConfig:
    """How neighbours of an instance are drawn.

    Attributes:
      sampler: "vae" (decode z ~ N(mu(x), (scale * s)^2), DeepVID), "pixel" (x + Gaussian
        noise, clipped to [0, 1]) or "mask" (each pixel independently kept with probability
        ``mask_keep``, else set to ``mask_value``): the random-perturbation baselines.
      num: neighbours per instance (student training and held-out fidelity together).
      latent_scale: standard deviation of the latent perturbation, in prior units; None (the
        default): calibrated per instance to ``target_flip``.
      use_posterior_std: scale the latent noise by the encoder's own std exp(logvar / 2)
        instead of 1, so the neighbourhood follows the posterior's shape.
      latent_band: per latent dimension, an interval (low, high) of offsets from the
        instance's latent mean, in prior units (DeepVID's interface sets one band per
        dimension, e.g. from a traversal found meaningful): the "vae" sampler then draws each
        offset uniformly inside its band instead of Gaussian noise (times the posterior std
        with ``use_posterior_std``). A band (0, 0) holds a dimension fixed. A tuple of
        latent_dim (low, high) tuples. Takes precedence over the scale.
      target_flip: when the radius is calibrated (``latent_scale`` None, no band; property
        `calibrated`): the scale per instance at which this fraction (in (0, 1)) of
        neighbours gets another teacher label than the instance, found by bisection in
        [0, ``max_latent_scale``] on ``calibration_probes`` decoded probes (the same probe
        noise at every step, so the search sees a monotone-ish curve), ``calibration_steps``
        halvings, inside the jitted program. The probes cost ``probes x steps`` extra decodes
        and teacher rows. At scale 0 the neighbours are the VAE's reconstruction: where the
        teacher already relabels that, no radius reaches a smaller target, and the scale found
        tends to 0 (the reported flip fraction shows it). Default 0.2, chosen by measurement
        (docs/design/radius.md): a fixed scale gives 11 % label flips on MNIST and 54 % on
        KMNIST at scale 1; the target gives about the same on both.
      max_latent_scale: the upper end of that search.
      calibration_probes, calibration_steps: its size.
      calibration: "bisect" (each probe flips or not; the scale is the middle of the last
        bracket, so it takes one of ``2 ** calibration_steps`` values and the flip fraction
        it aims at moves in steps of ``1 / calibration_probes``) or "interpolate" (each probe
        counts ``1 - `` the teacher's probability of the instance's label, a flip fraction
        continuous in the scale, and the scale is interpolated linearly inside the last
        bracket: no quantisation, at the same probe work) or "secant" (the same soft flips, no
        bracket: the first step probes ``calibration_start``, each later one, and the answer,
        follow the secant of the logit of the flip fraction against the log of the scale
        through the last two steps (the first by the slope `radius.SECANT_SLOPE`;
        `radius.secant_scale`): the soft flip of a probe is close to logistic in the log scale,
        so two steps land where four halvings do).
      calibration_start: "secant" only: the scale of its first step (the median calibrated
        radius of the README's MNIST and KMNIST models is about 0.7).
      reuse_probes: with a calibrated radius, the last calibration step's probes, already
        decoded and labelled, are the first ``calibration_probes`` neighbours the student is
        fitted on (or as many as there are fitted neighbours neither patch-mixed nor held out:
        `core.reused_probes`), and only the others are drawn and decoded (the probes'
        decodings are then not extra work). They lie at the last step's scale, near the radius
        found, in the probes' directions. Like the other calibration fields, no effect
        without a calibrated radius.
      pixel_noise: standard deviation of the pixel noise of the "pixel" sampler.
      mask_keep: probability that the "mask" sampler keeps a pixel (all channels together).
      mask_value: what a masked pixel becomes.
      patch_mix: "vae" sampler only: 0 (off) or a patch side in pixels. Then a share
        ``patch_mix_share`` of the neighbours the student is fitted on (the last ones before
        the held-out ones; `mixed_rows`) take each patch of that size from the instance itself
        with probability 1/2, else from their own decoding (`patch_mix_masks`). VAE neighbours
        move correlated pixels together, so a student cannot tell the pixels the teacher reads
        from those that merely move with them; patches that change independently can (with
        the "lasso" student; docs/results/ground-truth.md). The held-out neighbours stay VAE
        decodings, so fidelity is measured on the data's manifold.
      patch_mix_share: that share, in (0, 1].
      patch_mix_keep: the probability, in (0, 1), that a mixed neighbour's patch is the
        instance's (1/2 above). Two patches' changes then correlate ``1 - patch_mix_keep`` times
        as much as in the decodings, at the price of fewer changed patches per neighbour.
      draw: how the "vae" sampler's latent offsets are drawn (`latent_offsets`): "random"
        (independent pseudo-random draws), "antithetic" (pairs ``+e, -e`` in consecutive rows:
        the sample mean is exactly the code, and a student's linear part is fitted on
        differences, where the teacher's even part cancels) or "lattice" (randomised
        quasi-Monte Carlo: a rank-1 lattice of the neighbours to fit, and one of the held-out
        ones, shifted at random and put in random order, mapped through the normal (or band's
        uniform) quantiles: each dimension's values spread evenly, so the fit sees less of the
        draw's luck). All three are pure functions of the key.
      probe_draw: the calibration probes' directions: "random" (from the instance's key) or
        "fixed" (the same orthonormal probes for every key and instance, `radius.probe_noise`:
        the calibrated radius is then a function of the image alone, not of the key).
    """

    sampler: str = "vae"
    num: int = 512
    latent_scale: float | None = None
    use_posterior_std: bool = False
    pixel_noise: float = 0.3
    mask_keep: float = 0.5
    mask_value: float = 0.0
    latent_band: tuple[tuple[float, float], ...] | None = None
    target_flip: float = 0.2
    max_latent_scale: float = 4.0
    # 8 x 4 = 32 probe decodes (6 % of 512 neighbours): as faithful, stable and local as
    # 16 x 6 (docs/design/radius.md), at less cost (docs/results/bench.md).
    calibration_probes: int = 8
    calibration_steps: int = 4
    calibration_start: float = 0.7
    reuse_probes: bool = False
    patch_mix: int = 0
    patch_mix_share: float = 0.5
    patch_mix_keep: float = 0.5
    patch_mix_shift: bool = False
    draw: str = "random"
    probe_draw: str = "random"
    calibration: str = "bisect"

    def __post_init__(self):
        validate.choice(self.sampler, SAMPLERS, "NeighborConfig.sampler")
        validate.choice(self.draw, DRAWS, "NeighborConfig.draw")
        validate.choice(self.probe_draw, PROBE_DRAWS, "NeighborConfig.probe_draw")
        validate.choice(self.calibration, CALIBRATIONS, "NeighborConfig.calibration")
        if self.draw != "random" and self.sampler != "vae":
            raise ValueError(f"NeighborConfig.draw={self.draw!r} shapes the VAE sampler's "
                             f"latent draws; the {self.sampler!r} sampler has none (use "
                             "sampler='vae' or draw='random').")
        validate.fields(self, nonneg=("latent_scale", "pixel_noise"),
                        probability=("mask_keep", "mask_value"))
        if validate.integer(self.num, "NeighborConfig.num") < 2:
            raise ValueError(f"NeighborConfig.num must be >= 2, got {self.num}.")
        validate.integer(self.patch_mix, "NeighborConfig.patch_mix", minimum=0)
        validate.number(self.patch_mix_share, "NeighborConfig.patch_mix_share", low=0.0,
                        high=1.0, low_open=True)
        validate.fields(self, open_probability=("patch_mix_keep",))
        if self.patch_mix and self.sampler != "vae":
            raise ValueError(f"NeighborConfig.patch_mix mixes VAE neighbours with the instance; "
                             f"the {self.sampler!r} sampler has none (use sampler='vae').")
        validate.fields(self, open_probability=("target_flip",),
                        positive=("max_latent_scale", "calibration_start"),
                        boolean=("use_posterior_std", "reuse_probes"),
                        positive_int=("calibration_probes", "calibration_steps"))
        if self.calibration_start > self.max_latent_scale:
            raise ValueError(f"NeighborConfig.calibration_start ({self.calibration_start}) must "
                             f"not exceed max_latent_scale ({self.max_latent_scale}).")
        if self.latent_band is not None:
            if not isinstance(self.latent_band, tuple) or not self.latent_band:
                raise ValueError("NeighborConfig.latent_band must be a non-empty tuple of "
                                 f"(low, high) pairs, got {self.latent_band!r}.")
            for i, band in enumerate(self.latent_band):
                name = f"NeighborConfig.latent_band[{i}]"
                if not isinstance(band, tuple) or len(band) != 2:
                    raise ValueError(f"{name} must be a (low, high) pair, got {band!r}.")
                low, high = (validate.number(v, name) for v in band)
                if low > high:
                    raise ValueError(f"{name} = {tuple(band)} is empty: low > high.")

    @property
    def calibrated(self) -> bool:
        """Whether the "vae" sampler's radius is calibrated per instance (`target_flip`)."""
        return self.sampler == "vae" and self.latent_band is None and self.latent_scale is None


def latent_neighbors(
    vae_params: dict,
    image: jax.Array,
    key: jax.Array,
    *,
    num: int,
    scale: float,
    use_posterior_std: bool = False,
    band: tuple[tuple[float, float], ...] | None = None,
    vae_config: VAEConfig = VAEConfig(),
    draw: str = "random",
    split: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Decoded samples around an image's latent code.

    Args:
      image: [H, W, C] float32 in [0, 1].
      key: PRNG key.
      num: N, neighbours to draw.
      scale: std of the Gaussian around the posterior mean.
      use_posterior_std: multiply the noise by the posterior std.
      band: per-dimension (low, high) offsets, drawn uniformly instead of Gaussian noise
        (`NeighborConfig.latent_band`); [Z] pairs.
      draw, split: `latent_offsets`'.

    Returns:
      (neighbours [N, H, W, C] in [0, 1], their latent codes [N, Z]).
    """
    z = latent_codes(vae_params, image, key, num=num, scale=scale,
                     use_posterior_std=use_posterior_std, band=band, vae_config=vae_config,
                     draw=draw, split=split)
    return vae.decode(vae_params, z, config=vae_config), z


def latent_codes(
    vae_params: dict,
    image: jax.Array,
    key: jax.Array,
    *,
    num: int,
    scale: float,
    use_posterior_std: bool = False,
    band: tuple[tuple[float, float], ...] | None = None,
    vae_config: VAEConfig = VAEConfig(),
    draw: str = "random",
    split: int | None = None,
) -> jax.Array:
    """The latent codes [N, Z] of `latent_neighbors`, not yet decoded (so that a caller can
    decode many instances' codes in blocks)."""
    mean, logvar = vae.encode(vae_params, image[None], config=vae_config)
    std = jnp.exp(0.5 * logvar) if use_posterior_std else jnp.ones_like(mean)
    offset = latent_offsets(key, num, vae_config.latent_dim, scale=scale, band=band, draw=draw,
                            split=split)
    return mean + std * offset


def latent_offsets(
    key: jax.Array, num: int, dim: int, *, scale: jax.Array | float = 1.0,
    band: tuple[tuple[float, float], ...] | None = None, draw: str = "random",
    split: int | None = None,
) -> jax.Array:
    """Latent offsets [num, dim] from the code: ``scale`` x standard normal, or uniform in
    ``band``'s per-dimension (low, high) intervals, drawn as ``draw`` says
    (`NeighborConfig.draw`).

    ``split``: "lattice" builds one lattice of the first ``split`` rows (the neighbours a
    student is fitted on) and one of the rest (the held-out ones), so each part is balanced by
    itself; None: one lattice of all rows.
    """
    validate.choice(draw, DRAWS, "draw")
    shape = (num, dim)
    if draw == "random":
        if band is not None:
            low, high = jnp.asarray(band, jnp.float32).T  # [Z] each
            return jax.random.uniform(key, shape, jnp.float32, low, high)
        return scale * jax.random.normal(key, shape)
    if draw == "antithetic":  # rows 2i, 2i + 1 mirror each other about the code (band: centre)
        half = latent_offsets(key, (num + 1) // 2, dim, scale=scale, band=band)
        mirror = -half if band is None else jnp.sum(jnp.asarray(band, jnp.float32), 1) - half
        return jnp.stack([half, mirror], axis=1).reshape(-1, dim)[:num]
    parts = [num] if split is None or not 0 < split < num else [split, num - split]
    u = jnp.concatenate([shifted_lattice(jax.random.fold_in(key, i), n, dim)
                         for i, n in enumerate(parts)])
    if band is not None:
        low, high = jnp.asarray(band, jnp.float32).T
        return low + (high - low) * u
    return scale * jax.scipy.special.ndtri(u)


_EDGE = 1e-6  # uniforms are kept this far from 0 and 1, where the normal quantile is infinite


def shifted_lattice(key: jax.Array, num: int, dim: int) -> jax.Array:
    """A randomly shifted rank-1 lattice [num, dim] in (0, 1), rows in random order:
    ``frac(k g / num + shift)``, k = 0..num-1, with the Korobov generator g of `lattice_generator`
    (each dimension's ``num`` values are evenly spaced, every pair of dimensions spread as
    evenly as the generator allows), ``shift`` uniform from ``key``, the order a permutation
    from ``key`` (so any contiguous rows are a random subset)."""
    k_shift, k_perm = jax.random.split(key)
    points = jnp.asarray(lattice_points(num, dim))  # [num, dim] in [0, 1)
    u = jnp.mod(points + jax.random.uniform(k_shift, (1, dim)), 1.0)
    return jnp.clip(jax.random.permutation(k_perm, u), _EDGE, 1 - _EDGE)


@functools.lru_cache(maxsize=64)
def lattice_points(num: int, dim: int) -> np.ndarray:
    """The unshifted rank-1 lattice ``frac(k g / num)`` [num, dim] of `lattice_generator`."""
    g = lattice_generator(num, dim)
    return ((np.arange(num)[:, None] * g[None, :]) % num / num).astype(np.float32)


@functools.lru_cache(maxsize=64)
def lattice_generator(num: int, dim: int) -> np.ndarray:
    """A Korobov generating vector (1, a, a^2, ...) mod ``num`` [dim]: of up to 128 candidates
    a coprime to ``num``, the one with the smallest worst-case integration error P_2 for
    functions with square-integrable mixed derivatives (Sloan & Joe 1994), computed on the
    host once per (num, dim)."""
    validate.integer(num, "num", minimum=1)
    validate.integer(dim, "dim", minimum=1)
    candidates = np.array([a for a in range(1, max(num, 2)) if math.gcd(a, num) == 1])
    if len(candidates) > 128:  # evenly spread over [1, num)
        candidates = candidates[np.linspace(0, len(candidates) - 1, 128).astype(int)]
    powers = np.ones((len(candidates), dim), np.int64)
    for j in range(1, dim):
        powers[:, j] = powers[:, j - 1] * candidates % max(num, 1)
    k = np.arange(num)
    scores = []
    for block in np.array_split(powers, max(1, len(powers) // 16)):
        x = (k[None, :, None] * block[:, None, :]) % num / num  # [A, num, dim]
        b2 = x * x - x + 1.0 / 6.0
        scores.append(np.mean(np.prod(1.0 + 2.0 * np.pi**2 * b2, axis=-1), axis=1))
    return powers[int(np.argmin(np.concatenate(scores)))]


def mixed_rows(config: NeighborConfig, num_fit: int) -> tuple[int, int]:
    """[start, stop) of the neighbours that `NeighborConfig.patch_mix` mixes: the last
    ``round(patch_mix_share * num_fit)`` of the ``num_fit`` the student is fitted on."""
    if not config.patch_mix:
        return num_fit, num_fit
    count = max(1, min(num_fit, round(config.patch_mix_share * num_fit)))
    return num_fit - count, num_fit


def patch_mix_masks(key: jax.Array, num: int, rows: tuple[int, int], height: int, width: int,
                    patch: int, keep: float = 0.5, shift: bool = False) -> jax.Array:
    """[num, H, W, 1] bool, True where a neighbour takes the instance's pixel: rows
    ``rows[0]..rows[1]-1`` each patch (``patch`` pixels a side, the grid from the top-left) with
    probability ``keep``, other rows nowhere; with ``shift``, each row's grid is moved by a
    random offset of 0 to ``patch - 1`` pixels down and right. `expand_patch_cells` of
    `patch_mix_cells`."""
    cells = patch_mix_cells(key, num, rows, height, width, patch, keep, shift)
    return expand_patch_cells(cells, height, width, patch, shift)


def patch_mix_cells(key: jax.Array, num: int, rows: tuple[int, int], height: int, width: int,
                    patch: int, keep: float = 0.5, shift: bool = False) -> jax.Array:
    """`patch_mix_masks` before its expansion to pixels: [num, gh * gw + 2] float32, per row its
    cells (1 where the row takes the instance's patch; gh x gw = the patch grid, one more cell a
    side with ``shift``) and its grid's offsets (down, right; 0 without ``shift``). Small enough
    to travel with a neighbour's latent code (`expand_patch_cells` makes the mask)."""
    validate.integer(patch, "patch", minimum=1)
    gh, gw = -(-height // patch) + shift, -(-width // patch) + shift
    cells = jax.random.bernoulli(key, keep, (num, gh, gw))
    row = jnp.arange(num)[:, None, None]
    cells = cells & (row >= rows[0]) & (row < rows[1])
    if shift:
        offsets = jax.random.randint(jax.random.fold_in(key, 1), (2, num), 0, patch).T
    else:
        offsets = jnp.zeros((num, 2), jnp.int32)
    return jnp.concatenate([cells.reshape(num, -1), offsets], 1).astype(jnp.float32)


def expand_patch_cells(cells: jax.Array, height: int, width: int, patch: int,
                       shift: bool = False) -> jax.Array:
    """`patch_mix_cells`' rows [M, gh * gw + 2] -> masks [M, H, W, 1] bool."""
    gh, gw = -(-height // patch) + shift, -(-width // patch) + shift
    validate.array(cells, "cells", shape=(None, gh * gw + 2))
    grid = cells[:, :-2].reshape(-1, gh, gw) > 0.5
    oy, ox = cells[:, -2].astype(jnp.int32), cells[:, -1].astype(jnp.int32)
    # Each neighbour's grid moved by its own offset in [0, patch): no fixed cell boundaries.
    cy = (jnp.arange(height)[None, :] + oy[:, None]) // patch  # [M, H]
    cx = (jnp.arange(width)[None, :] + ox[:, None]) // patch  # [M, W]
    pixels = jax.vmap(lambda c, y, x: c[y[:, None], x[None, :]])(grid, cy, cx)
    return pixels[..., None]


def pixel_neighbors(image: jax.Array, key: jax.Array, *, num: int, noise: float) -> jax.Array:
    """image [H, W, C] -> clip(image + noise * eps, 0, 1) [N, H, W, C]."""
    eps = jax.random.normal(key, (num, *image.shape))
    return jnp.clip(image[None] + noise * eps, 0.0, 1.0)


def mask_neighbors(
    image: jax.Array, key: jax.Array, *, num: int, keep: float, value: float = 0.0
) -> jax.Array:
    """image [H, W, C] -> [N, H, W, C]: each pixel kept with probability ``keep``, else
    ``value`` (one draw per pixel, shared by its channels)."""
    kept = jax.random.bernoulli(key, keep, (num, *image.shape[:-1], 1))
    return jnp.where(kept, image[None], jnp.asarray(value, image.dtype))


def sample_neighbors(
    image: jax.Array,
    key: jax.Array,
    vae_params: dict | None,
    config: NeighborConfig,
    vae_config: VAEConfig,
    scale: jax.Array | float | None = None,
    split: int | None = None,
) -> jax.Array:
    """Neighbours [config.num, H, W, C] of one image [H, W, C] with the configured sampler.

    ``scale``: the latent scale of a calibrated "vae" sampler (an `Explanation`'s ``scale``);
    calibrating needs the teacher, so a calibrated config without one is an error here.
    ``split``: the rows a student is fitted on (`latent_offsets`; e.g.
    `ExplainConfig.num_fit`)."""
    if config.sampler == "pixel":
        return pixel_neighbors(image, key, num=config.num, noise=config.pixel_noise)
    if config.sampler == "mask":
        return mask_neighbors(image, key, num=config.num, keep=config.mask_keep,
                              value=config.mask_value)
    if scale is None:
        if config.calibrated:
            raise ValueError("this NeighborConfig calibrates its latent scale to the teacher "
                             "(latent_scale=None): pass the scale (e.g. an Explanation's "
                             "`scale`) or set latent_scale.")
        scale = config.latent_scale
    return latent_neighbors(
        vae_params, image, key, num=config.num, scale=scale,
        use_posterior_std=config.use_posterior_std, band=config.latent_band,
        vae_config=vae_config, draw=config.draw, split=split,
    )[0]


def interpolate(
    vae_params: dict, a: jax.Array, b: jax.Array, steps: int, *, vae_config: VAEConfig
) -> jax.Array:
    """Decodes the straight line between the latent means of images a and b [H, W, C].

    Returns:
      [steps, H, W, C]; the first and last are the reconstructions of a and b.
    """
    validate.integer(steps, "steps", minimum=2)
    if jnp.shape(a) != tuple(vae_config.image_shape) or jnp.shape(b) != jnp.shape(a):
        raise ValueError(f"interpolate needs two images of shape {vae_config.image_shape}; got "
                         f"{list(jnp.shape(a))} and {list(jnp.shape(b))}.")
    means, _ = vae.encode(vae_params, jnp.stack([a, b]), config=vae_config)
    t = jnp.linspace(0.0, 1.0, steps)[:, None]
    return vae.decode(vae_params, (1 - t) * means[0] + t * means[1], config=vae_config)


def traverse(
    vae_params: dict, image: jax.Array, values: jax.Array, *, vae_config: VAEConfig
) -> jax.Array:
    """Moves the image's latent mean along each latent axis in turn.

    Args:
      image: [H, W, C].
      values: [V] offsets added to one latent coordinate at a time (prior units).

    Returns:
      [Z, V, H, W, C]: row d varies latent dimension d, the others held at the mean.
    """
    if jnp.shape(image) != tuple(vae_config.image_shape):
        raise ValueError(f"traverse needs one image of shape {vae_config.image_shape}; got "
                         f"{list(jnp.shape(image))}.")
    validate.array(values, "values", ndim=1)
    mean, _ = vae.encode(vae_params, image[None], config=vae_config)
    z_dim = vae_config.latent_dim
    offsets = jnp.eye(z_dim)[:, None, :] * values[None, :, None]  # [Z, V, Z]
    z = (mean[0] + offsets).reshape(-1, z_dim)
    out = vae.decode(vae_params, z, config=vae_config)
    return out.reshape(z_dim, values.shape[0], *out.shape[1:])
