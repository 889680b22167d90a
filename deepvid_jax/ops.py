"""Array operations shared across families (a leaf: imports only `validate`)."""

import jax
import jax.numpy as jnp

from deepvid_jax import validate


def gaussian_blur(images: jax.Array, sigma: float) -> jax.Array:
    """Separable Gaussian blur of [B, H, W, C] (edge-padded), per channel."""
    sigma = validate.number(sigma, "blur sigma", low=0.0, low_open=True)
    radius = max(1, int(3 * sigma + 0.5))
    t = jnp.arange(-radius, radius + 1, dtype=images.dtype)
    k = jnp.exp(-0.5 * (t / sigma) ** 2)
    return separable_blur(images, (k / jnp.sum(k))[None])


def separable_blur(images: jax.Array, kernel: jax.Array) -> jax.Array:
    """images [B, H, W, C] filtered along H then W by the odd-length kernel [B or 1, 2R + 1]
    (each image its own, or one for all), edge-padded."""
    radius = kernel.shape[-1] // 2
    k = kernel[:, :, None, None, None]  # [B, 2R + 1, 1, 1, 1]: tap i scales whole images
    x = jnp.pad(images, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="edge")
    h, w = images.shape[1:3]
    x = sum(k[:, i] * x[:, i : i + h, :, :] for i in range(2 * radius + 1))
    return sum(k[:, i] * x[:, :, i : i + w, :] for i in range(2 * radius + 1))
