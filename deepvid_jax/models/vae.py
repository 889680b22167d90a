"""Pure functions of a trained VAE: encode, decode, reconstruct and the ELBO.

All take the parameter pytree first and a `VAEConfig` (the architecture) as a keyword; they are
jittable and vmappable (a leading batch axis is required by the convs, so vmap over an extra
axis, e.g. instances x neighbours).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from deepvid_jax.models.networks import VAE, VAEConfig


def encode(
    params: dict, images: jax.Array, *, config: VAEConfig = VAEConfig()
) -> tuple[jax.Array, jax.Array]:
    """Posterior parameters of q(z | x).

    Args:
      params: VAE parameter pytree.
      images: [B, H, W, C] float32 in [0, 1].
      config: the architecture.

    Returns:
      (mean [B, Z], logvar [B, Z]).
    """
    _check_shape(images, (None, *config.image_shape), "images", "[B, H, W, C]")
    return VAE(config).apply({"params": params}, images, method=VAE.encode)


def decode_logits(params: dict, z: jax.Array, *, config: VAEConfig = VAEConfig()) -> jax.Array:
    """z [B, Z] -> pixel logits [B, H, W, C] of the Bernoulli likelihood p(x | z)."""
    _check_shape(z, (None, config.latent_dim), "z", "[B, Z]")
    return VAE(config).apply({"params": params}, z, method=VAE.decode)


def decode(params: dict, z: jax.Array, *, config: VAEConfig = VAEConfig()) -> jax.Array:
    """z [B, Z] -> images [B, H, W, C] float32 in [0, 1] (the likelihood's pixel means)."""
    return jax.nn.sigmoid(decode_logits(params, z, config=config))


def reconstruct(params: dict, images: jax.Array, *, config: VAEConfig = VAEConfig()) -> jax.Array:
    """images [B, H, W, C] -> decode(posterior mean) [B, H, W, C] in [0, 1]."""
    mean, _ = encode(params, images, config=config)
    return decode(params, mean, config=config)


def _check_shape(x, want, name: str, spec: str) -> None:
    """Static shape check (valid under jit): None entries are free."""
    shape = tuple(getattr(x, "shape", ()))
    if len(shape) != len(want) or any(w is not None and w != s for w, s in zip(want, shape,
                                                                                strict=True)):
        raise ValueError(f"the VAE expects {name} {spec} = "
                         f"[{', '.join('B' if w is None else str(w) for w in want)}]; got "
                         f"{list(shape)}.")


def kl_to_prior(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed over the latent axis: [..., Z] -> [...]."""
    return 0.5 * jnp.sum(jnp.exp(logvar) + mean**2 - 1.0 - logvar, axis=-1)


def negative_elbo(
    params: dict, images: jax.Array, key: jax.Array, *, config: VAEConfig = VAEConfig(),
    return_decoded: bool = False,
) -> tuple[jax.Array, dict]:
    """Single-sample negative ELBO, in nats per image (up to a constant for the Gaussian
    likelihood: its normalisation, which does not depend on the parameters, is left out).

    Args:
      images: [B, H, W, C] in [0, 1]; Bernoulli means (the usual continuous relaxation) or
        Gaussian observations around sigmoid(logits), per ``config.likelihood``.
      key: PRNG key for the reparameterised sample.

    Returns:
      (mean negative ELBO, {"recon": mean reconstruction NLL, "kl": mean KL}), and with
      ``return_decoded`` also "decoded": the sample's decoded means [B, H, W, C] in [0, 1].
    """
    eps = jax.random.normal(key, (images.shape[0], config.latent_dim))
    logits, mean, logvar = VAE(config).apply({"params": params}, images, eps)
    if config.likelihood == "gaussian":
        sq = (jax.nn.sigmoid(logits) - images) ** 2
        recon = (0.5 / config.sigma**2) * sq.sum(axis=(1, 2, 3))
    else:
        recon = optax.sigmoid_binary_cross_entropy(logits, images).sum(axis=(1, 2, 3))
    kl = kl_to_prior(mean, logvar)
    aux = {"recon": jnp.mean(recon), "kl": jnp.mean(kl)}
    if return_decoded:
        aux["decoded"] = jax.nn.sigmoid(logits)
    return jnp.mean(recon + kl), aux
