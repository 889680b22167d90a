"""Does an explanation depend on the model? Cascading model-parameter randomisation (Adebayo et
al. 2018): the teacher's layers are re-initialised from the top down, one more at each stage,
and the explanation of the randomised teacher is compared with the original's. An explanation
that stays the same explains the input, not the model.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from deepvid_jax import validate
from deepvid_jax.metrics.stability import spearman
from deepvid_jax.models import consistency
from deepvid_jax.models.networks import TeacherConfig


def randomize_layers(params: dict, fresh: dict, layers: list[str]) -> dict:
    """A copy of ``params`` with the named top-level layers taken from ``fresh`` (a freshly
    initialised parameter pytree of the same model): one stage of Adebayo et al.'s cascading
    randomisation."""
    missing = [name for name in layers if name not in params]
    if missing:
        raise ValueError(f"randomize_layers: {missing} not in the parameters {list(params)}.")
    absent = [name for name in layers if name not in fresh]
    if absent:
        raise ValueError(f"randomize_layers: {absent} not in the fresh parameters "
                         f"{list(fresh)}.")
    return {name: (fresh[name] if name in layers else value) for name, value in params.items()}


def cascading_layers(names: list[str]) -> list[list[str]]:
    """Layer sets of cascading randomisation from layer names listed bottom to top: [[top],
    [top, below], ..., all names]."""
    if not names:
        raise ValueError("cascading_layers needs at least one layer name.")
    return [list(names[len(names) - i :]) for i in range(1, len(names) + 1)]


def teacher_layers(config: TeacherConfig) -> list[str]:
    """The parameterised layers of the library's teacher (`models.Teacher`), input to output."""
    validate.config(config, TeacherConfig, "teacher_config")
    return [*consistency.layer_names(config), "logits"]


def cascading_randomisation(
    attribute_fn: Callable[[dict, jax.Array], jax.Array],
    images: jax.Array,
    teacher_params: dict,
    fresh_params: dict,
    layers: list[str],
    *,
    reference: jax.Array | None = None,
) -> jax.Array:
    """Spearman correlation of |attribution| with the original's at each stage of cascading
    randomisation.

    Args:
      attribute_fn: (teacher parameters, images [B, H, W, C]) -> attributions [B, H, W, C];
        the same explainer (same keys) at every stage, only the teacher's parameters change.
      images: [B, H, W, C] in [0, 1].
      teacher_params: the trained teacher's parameters (top-level names are layers).
      fresh_params: a fresh initialisation of the same teacher.
      layers: the layer names, input to output (`teacher_layers`); stage s re-initialises the
        top s + 1 of them (`cascading_layers`).
      reference: attributions [B, H, W, C] of the trained teacher if already computed.

    Returns:
      [B, S] with S = len(layers): rho after stage s (1 = the map did not change).

    Raises:
      ValueError: not a callable, malformed images or reference, layers not in the parameters.
    """
    if not callable(attribute_fn):
        raise ValueError("attribute_fn must be a callable (teacher params, images) -> "
                         "attributions.")
    images = validate.images(images)
    stages = cascading_layers(list(layers))
    randomize_layers(teacher_params, fresh_params, stages[-1])  # names checked before any work
    if reference is None:
        reference = attribute_fn(teacher_params, images)
    reference = validate.array(reference, "reference", shape=images.shape)
    rows = []
    for s in stages:
        a = attribute_fn(randomize_layers(teacher_params, fresh_params, s), images)
        rows.append(spearman(jnp.abs(jnp.asarray(a)), jnp.abs(jnp.asarray(reference))))
    return jnp.stack(rows, axis=1)


