"""Attentive surrogate saliency (Sensors 2021, 21(4):1280): train once, then one forward pass
per saliency map.

Two networks (`networks.Surrogate`, `networks.SaliencyNet`), trained in turn:

1. **Surrogate** (student CNN, a spatial attention gate in every stage) distilled from the
   teacher's logits only: ``T^2 KL(softmax(t / T) || softmax(s / T))`` plus an optional
   cross-entropy on the teacher's argmax labels. The teacher is queried once per training image
   (`teacher_logits_of`), so any black box works.
2. **Explanation network**: fuses the surrogate's attention maps of all stages (upsampled to
   H x W) with the image into one map ``m in [0, 1]^(H x W)`` per class. It is trained, with the
   surrogate frozen, on the class c the teacher predicts, by `explainer_loss`:

   - ``preserve * CE(f(x * m), c)``: the image seen only through the map keeps class c;
   - ``delete * -log(1 - p_c(f(x * (1 - m))))``: the image with the map removed loses it;
   - ``area * mean(m)``: the map stays small (otherwise m = 1 satisfies the first term);
   - ``smooth * mean |grad m|``: total variation, so the map is made of regions, not speckle.

   f is the frozen surrogate: the teacher's differentiable stand-in, so the teacher stays a
   black box (pass ``scorer=functools.partial(teacher_apply, params)`` to `train_explainer`
   to use the teacher's own gradients when it is a JAX function).

   With a black (zero) hidden value, pixels that are already black cannot be "kept" or
   "removed", so on MNIST-like data the maps tend towards the strokes that carry the class;
   a larger ``area`` weight gives sparser maps.

`saliency` is then a single jitted forward pass of both networks, with no per-image
optimisation; `surrogate_attribution` is the same pass as the registered explainer (the
contract of `explainers.base`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from deepvid_jax import driver, validate
from deepvid_jax.explainers.base import Attribution, check_inputs, per_pixel
from deepvid_jax.explainers.deepvid.student import distillation_loss
from deepvid_jax.models import train
from deepvid_jax.models.bundle import Models
from deepvid_jax.models.networks import (
    ExplainerConfig,
    SaliencyNet,
    SurrogateConfig,
    TeacherApply,
    init_explainer,
    init_surrogate,
    surrogate_forward,
)


@dataclasses.dataclass(frozen=True)
class SurrogateLoss:
    """Weights of both training objectives (module docstring).

    Attributes:
      temperature: T of the distillation.
      hard_label_weight: weight of cross-entropy on the teacher's argmax labels.
      preserve, delete, area, smooth: weights of the explanation network's four terms.
    """

    temperature: float = 4.0
    hard_label_weight: float = 0.0
    preserve: float = 1.0
    delete: float = 1.0
    area: float = 1.0
    smooth: float = 0.5

    def __post_init__(self):
        validate.fields(self, positive=("temperature",),
                        nonneg=("hard_label_weight", "preserve", "delete", "area", "smooth"))


SURROGATE_TRAIN = train.TrainConfig(epochs=6)
EXPLAINER_TRAIN = train.TrainConfig(epochs=4)


def teacher_logits_of(teacher_apply: TeacherApply, teacher_params, images,
                      batch_size: int = 1000) -> np.ndarray:
    """The teacher's logits [N, K] on images [N, H, W, C], queried in batches (on the host);
    the teacher is probed first, and non-finite logits are an error."""
    images = validate.images(images)
    validate.teacher(teacher_apply, teacher_params, images)
    out = driver.map_batches(jax.jit(teacher_apply), teacher_params, images, batch_size)
    return validate.array(out, "the teacher's logits")


# --------------------------------------------------------------------------------------------
# Surrogate: distillation
# --------------------------------------------------------------------------------------------


def surrogate_loss(params, images, teacher_logits, config: SurrogateConfig, loss: SurrogateLoss):
    """Distillation (+ optional hard-label CE); aux: the surrogate's logits."""
    logits, _ = surrogate_forward(params, images, config)
    value = distillation_loss(logits, teacher_logits, loss.temperature)
    if loss.hard_label_weight:
        hard = jnp.argmax(teacher_logits, -1)
        value += loss.hard_label_weight * optax.softmax_cross_entropy_with_integer_labels(
            logits, hard).mean()
    return value, logits


@functools.partial(jax.jit, static_argnames="loss")
def surrogate_train_step(state: train.TrainState, batch: tuple, key: jax.Array, *,
                         loss: SurrogateLoss = SurrogateLoss()):
    """One Adam step; batch = (images [B, H, W, C], teacher logits [B, K])."""
    del key
    images, t_logits = batch
    (value, logits), grads = jax.value_and_grad(surrogate_loss, has_aux=True)(
        state.params, images, t_logits, state.config, loss)
    agree = jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(t_logits, -1))
    return state.apply_gradients(grads=grads), {"loss": value, "agreement": agree}


def surrogate_agreement(params, images, teacher_logits, config: SurrogateConfig,
                        batch_size: int = 1000) -> float:
    """Top-1 agreement of surrogate and teacher on [N] images (teacher logits given)."""
    fn = jax.jit(lambda p, x: jnp.argmax(surrogate_forward(p, x, config)[0], -1))
    pred = driver.map_batches(fn, params, images, batch_size)
    return float((pred == np.asarray(teacher_logits).argmax(-1)).mean())


def train_surrogate(
    train_images: np.ndarray, train_teacher_logits: np.ndarray,
    eval_images: np.ndarray, eval_teacher_logits: np.ndarray,
    config: SurrogateConfig, train_config: train.TrainConfig = SURROGATE_TRAIN, *,
    loss: SurrogateLoss = SurrogateLoss(), progress: bool = True,
) -> tuple[dict, list[dict]]:
    """Distils a surrogate from teacher logits; returns (params, history with eval agreement).

    Images [N, H, W, C] in [0, 1] matching ``config.image_shape``; teacher logits [N, K] float
    with K = ``config.num_classes``, finite.
    """
    validate.config(config, SurrogateConfig, "config")
    validate.config(train_config, train.TrainConfig, "train_config")
    for split, (x, t) in {"train": (train_images, train_teacher_logits),
                          "eval": (eval_images, eval_teacher_logits)}.items():
        x = validate.images(x, name=f"{split}_images", image_shape=config.image_shape,
                            expected_by="the surrogate config")
        validate.array(t, f"{split}_teacher_logits", shape=(len(x), config.num_classes))
    params = init_surrogate(jax.random.PRNGKey(train_config.seed), config)
    state = train.create_state(params, config, train_config, len(train_images))
    step = functools.partial(surrogate_train_step, loss=loss)
    state, history = train.fit(
        state, step, (train_images, train_teacher_logits),
        lambda p: {"agreement": surrogate_agreement(p, eval_images, eval_teacher_logits,
                                                    config)},
        train_config, desc="surrogate", progress=progress)
    return state.params, history


# --------------------------------------------------------------------------------------------
# Explanation network
# --------------------------------------------------------------------------------------------


def saliency_maps(explainer_params, surrogate_params, images, *, surrogate_config: SurrogateConfig,
                  explainer_config: ExplainerConfig) -> jax.Array:
    """All classes' maps: images [B, H, W, C] -> [B, H, W, K] in [0, 1]."""
    _, maps = surrogate_forward(surrogate_params, images, surrogate_config)
    return jax.nn.sigmoid(SaliencyNet(explainer_config).apply({"params": explainer_params},
                                                              images, maps))


def total_variation(m: jax.Array) -> jax.Array:
    """Mean absolute difference of neighbouring pixels of maps [B, H, W]."""
    return 0.5 * (jnp.mean(jnp.abs(jnp.diff(m, axis=1))) + jnp.mean(jnp.abs(jnp.diff(m, axis=2))))


def explainer_loss(
    explainer_params, surrogate_params, images, class_idx, *,
    surrogate_config: SurrogateConfig, explainer_config: ExplainerConfig, loss: SurrogateLoss,
    scorer: Callable[[jax.Array], jax.Array] | None = None,
):
    """The four-term objective of the module docstring for maps of classes ``class_idx [B]``.

    ``scorer(images) -> logits`` defaults to the frozen surrogate. Returns (value, aux parts).
    """
    maps = saliency_maps(explainer_params, surrogate_params, images,
                         surrogate_config=surrogate_config, explainer_config=explainer_config)
    m = jnp.take_along_axis(maps, class_idx[:, None, None, None], axis=-1)  # [B, H, W, 1]
    if scorer is None:
        def scorer(x):
            return surrogate_forward(jax.lax.stop_gradient(surrogate_params), x,
                                     surrogate_config)[0]
    kept = scorer(images * m)
    removed = jax.nn.softmax(scorer(images * (1.0 - m)))
    preserve = optax.softmax_cross_entropy_with_integer_labels(kept, class_idx).mean()
    p_removed = jnp.take_along_axis(removed, class_idx[:, None], axis=1)[:, 0]
    delete = -jnp.mean(jnp.log(jnp.clip(1.0 - p_removed, 1e-6, 1.0)))
    area = jnp.mean(m)
    smooth = total_variation(m[..., 0])
    value = (loss.preserve * preserve + loss.delete * delete + loss.area * area
             + loss.smooth * smooth)
    return value, {"preserve": preserve, "delete": delete, "area": area, "smooth": smooth}


@functools.partial(jax.jit, static_argnames=("surrogate_config", "loss", "scorer"))
def explainer_train_step(state: train.TrainState, batch: tuple, key: jax.Array, *,
                         surrogate_params, surrogate_config: SurrogateConfig,
                         loss: SurrogateLoss = SurrogateLoss(), scorer=None):
    """One Adam step on the explanation network; batch = (images, class_idx [B])."""
    del key
    images, class_idx = batch
    (value, aux), grads = jax.value_and_grad(explainer_loss, has_aux=True)(
        state.params, surrogate_params, images, class_idx, surrogate_config=surrogate_config,
        explainer_config=state.config, loss=loss, scorer=scorer)
    return state.apply_gradients(grads=grads), {"loss": value, **aux}


def train_explainer(
    surrogate_params: dict, surrogate_config: SurrogateConfig,
    train_images: np.ndarray, train_classes: np.ndarray,
    eval_images: np.ndarray, eval_classes: np.ndarray,
    train_config: train.TrainConfig = EXPLAINER_TRAIN, *,
    loss: SurrogateLoss = SurrogateLoss(), scorer=None, progress: bool = True,
) -> tuple[dict, ExplainerConfig, list[dict]]:
    """Trains the explanation network on a frozen surrogate, for the given classes (usually the
    teacher's predictions). ``scorer`` (a hashable ``images -> logits``, e.g. a JAX teacher
    bound to its params by `functools.partial`) replaces the surrogate in the loss.

    Returns:
      (params, its `ExplainerConfig`, history with held-out loss terms).
    """
    validate.config(surrogate_config, SurrogateConfig, "surrogate_config")
    for split, (x, c) in {"train": (train_images, train_classes),
                          "eval": (eval_images, eval_classes)}.items():
        x = validate.images(x, name=f"{split}_images", image_shape=surrogate_config.image_shape,
                            expected_by="the surrogate config")
        validate.class_indices(c, batch=len(x), num_classes=surrogate_config.num_classes,
                               name=f"{split}_classes")
    config = ExplainerConfig(num_classes=surrogate_config.num_classes,
                             num_stages=len(surrogate_config.features),
                             image_shape=surrogate_config.image_shape)
    params = init_explainer(jax.random.PRNGKey(train_config.seed), config)
    state = train.create_state(params, config, train_config, len(train_images))
    step = functools.partial(explainer_train_step, surrogate_params=surrogate_params,
                             surrogate_config=surrogate_config, loss=loss, scorer=scorer)
    eval_fn = jax.jit(functools.partial(
        explainer_loss, surrogate_config=surrogate_config, explainer_config=config, loss=loss,
        scorer=scorer))

    def evaluate(p):
        n = min(len(eval_images), 1000)
        value, aux = eval_fn(p, surrogate_params, jnp.asarray(eval_images[:n]),
                             jnp.asarray(eval_classes[:n], jnp.int32))
        return {"loss": float(value), **{k: float(v) for k, v in aux.items()}}

    state, history = train.fit(state, step, (train_images, np.asarray(train_classes, np.int32)),
                               evaluate, train_config, desc="explainer", progress=progress)
    return state.params, config, history


@functools.partial(jax.jit, static_argnames=("surrogate_config", "explainer_config"))
def _saliency(images, class_idx, surrogate_params, explainer_params, surrogate_config,
              explainer_config):
    logits, maps = surrogate_forward(surrogate_params, images, surrogate_config)
    if class_idx is None:
        class_idx = jnp.argmax(logits, -1)
    out = jax.nn.sigmoid(SaliencyNet(explainer_config).apply({"params": explainer_params},
                                                             images, maps))
    return jnp.take_along_axis(out, class_idx[:, None, None, None], axis=-1)[..., 0]


def saliency(
    images, *, surrogate_params, explainer_params, class_idx=None,
    surrogate_config: SurrogateConfig = SurrogateConfig(),
    explainer_config: ExplainerConfig = ExplainerConfig(),
) -> jax.Array:
    """Saliency maps in one jitted forward pass: images [B, H, W, C] in [0, 1] -> [B, H, W] in
    [0, 1], for ``class_idx [B]`` (default: the surrogate's predicted class).

    Raises:
      ValueError: malformed images (rank, dtype, NaN, range, shape) or class indices.
    """
    validate.config(surrogate_config, SurrogateConfig, "surrogate_config")
    validate.config(explainer_config, ExplainerConfig, "explainer_config")
    arr = validate.images(images, image_shape=surrogate_config.image_shape,
                          expected_by="the surrogate")
    if class_idx is not None:
        class_idx = jnp.asarray(validate.class_indices(
            class_idx, batch=len(arr), num_classes=surrogate_config.num_classes))
    return _saliency(jnp.asarray(arr), class_idx, surrogate_params, explainer_params,
                     surrogate_config, explainer_config)


def surrogate_attribution(params, images, classes, keys, *, models: Models,
                          config: None = None) -> Attribution:
    """The attentive surrogate as an explainer: one forward pass of ``models``' surrogate and
    explanation network (``params["surrogate"]``, ``params["explainer"]``) on images
    [B, H, W, C] for classes [B] in [0, K) (keys unused, no config) -> `Attribution`
    ([B, H, W, C] in [0, 1], the map repeated over channels; no extras).

    Raises:
      ValueError: models without the surrogate, or malformed images, classes or keys.
    """
    if models.surrogate_config is None or models.explainer_config is None:
        raise ValueError("the surrogate explainer needs the attentive surrogate and its "
                         "explainer network: Models(surrogate_config=..., explainer_config=...) "
                         "(deepvid train-surrogate).")
    if config is not None:
        raise ValueError(f"the surrogate explainer takes no config, got {config!r}.")
    images, classes = check_inputs(images, classes, keys, models=models, config=None,
                                   config_type=None,
                                   image_shape=models.surrogate_config.image_shape,
                                   expected_by="the surrogate")
    maps = _saliency(jnp.asarray(images), jnp.asarray(classes, jnp.int32), params["surrogate"],
                     params["explainer"], models.surrogate_config, models.explainer_config)
    return Attribution(per_pixel(maps, images.shape[-1]), {})
