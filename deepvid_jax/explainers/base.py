"""The contract every explainer answers, shared by the method modules and the registry.

An explainer is one pure batched function

    fn(params, images [B, H, W, C], classes [B], keys [B], *, models, config) -> Attribution

``params``: the pytree of `Models.params` ({"teacher", "vae", "surrogate", "explainer"});
``models``: the `Models` (or its array-free `Models.static`, under `jit`); ``config``: the
method's frozen config dataclass; ``keys``: one PRNG key per instance. Each method module defines
its function(s) with this signature (`deepvid.core.deepvid_attribution`,
`lime.lime_attribution`, `gradients.gradient_attribution`, ..., `rise.rise_attribution`,
`surrogate.surrogate_attribution`), and the registry registers exactly those.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from deepvid_jax import validate
from deepvid_jax.models.bundle import Models


class Attribution(NamedTuple):
    """What every method returns (leading axis B).

    Attributes:
      attributions: [B, H, W, C] relevance of each pixel for the requested class.
      extras: name -> [B, ...] the method's own outputs (e.g. DeepVID's ``weights``
        [B, H, W, C, K] and ``fidelity_top1`` [B]).
    """

    attributions: jax.Array
    extras: dict[str, jax.Array]


def check_inputs(images, classes, keys, *, models: Models, config: Any, config_type: type | None,
                 image_shape=None, expected_by: str = "the model") -> tuple[Any, Any]:
    """The checks of every explainer function: ``models`` a `Models`, ``config`` of
    ``config_type`` (None: the method takes no config), images [B, H, W, C] (of
    ``image_shape`` when given), classes [B] in [0, K) for the teacher's K, keys [B].

    Values (pixel range, finiteness, class range) are checked when the arrays are concrete;
    under `jit` only shapes and dtypes are (the caller, e.g. `registry.explain`, checked the
    values). Returns (images, classes)."""
    validate.config(models, Models, "models")
    if config_type is not None:
        validate.config(config, config_type, "config")
    images = validate.images(images, image_shape=image_shape, expected_by=expected_by)
    classes = validate.class_indices(classes, batch=images.shape[0],
                                     num_classes=models.num_classes, name="classes")
    keys = keys if validate.is_traced(keys) else jnp.asarray(keys)
    if keys.ndim < 1 or keys.shape[0] != images.shape[0]:
        raise ValueError(f"keys must hold one PRNG key per image ([{images.shape[0]}] keys, "
                         f"e.g. driver.instance_keys(key, 0, B)); got shape {list(keys.shape)}.")
    return images, classes


@functools.cache
def jitted(fn: Callable[..., Attribution]) -> Callable[..., Attribution]:
    """An explainer function jitted with ``models`` and ``config`` static (pass
    `Models.static`): one wrapper per function, so compilations are reused."""
    return jax.jit(fn, static_argnames=("models", "config"))


def per_pixel(maps: jax.Array, channels: int) -> jax.Array:
    """[B, H, W] -> [B, H, W, C]."""
    return jnp.repeat(maps[..., None], channels, axis=-1)
