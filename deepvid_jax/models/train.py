"""Training of the teacher classifier and the VAE.

Each model has a pure jitted ``train_step(state, batch, key) -> (state, metrics)`` and an
``evaluate_*`` function; `fit` is the one loop that drives either, with a progress bar and an
evaluation after every epoch.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from tqdm.auto import tqdm

from deepvid_jax import driver, ops, validate
from deepvid_jax.models import adversarial, consistency, vae
from deepvid_jax.models.networks import (
    TeacherConfig,
    VAEConfig,
    init_teacher,
    init_vae,
    teacher_apply_for,
    teacher_logits,
)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by both models.

    Attributes:
      epochs: passes over the training set.
      batch_size: examples per step; the last incomplete batch of an epoch is dropped so that
        one compiled step serves every batch (each epoch reshuffles, so all data is seen).
      learning_rate: Adam step size.
      seed: seeds parameter init, shuffling and the VAE's noise.
      eval_batch_size: examples per evaluation call.
      lr_schedule: "constant" (Adam at ``learning_rate`` throughout) or "cosine" (a linear
        warm-up over the first epoch, then a cosine decay to zero at the last step: the small
        steps of the end settle the weights, which lowers the colour VAE's reconstruction
        error by a sixth, docs/design/colour-vae.md).
      blur_augment: teachers only: the largest Gaussian blur (std in pixels) of the training
        augmentation; each training image is blurred with its own std drawn uniformly from
        [0, blur_augment] (`random_blur`). 0 turns it off. A teacher that never saw a smooth
        image may read pixel noise instead of shapes and then fails on every VAE decoding
        (which carries no pixel noise): on `synthetic` such a teacher classifies 19 % of the
        VAE's reconstructions right.
      teacher_weight: VAEs only: the weight of a perceptual term, the KL between a teacher's
        class probabilities on each training image and on its decoding
        (`guided_vae_train_step`; `train_vae(..., teacher=...)`). 0 turns it off. The VAE then
        serves that teacher: judge its reconstructions with another classifier.
    """

    epochs: int = 5
    batch_size: int = 128
    learning_rate: float = 1e-3
    seed: int = 0
    eval_batch_size: int = 1000
    blur_augment: float = 0.0
    lr_schedule: str = "constant"
    teacher_weight: float = 0.0

    def __post_init__(self):
        validate.fields(self, positive_int=("epochs", "batch_size", "eval_batch_size"),
                        positive=("learning_rate",), nonneg_int=("seed",),
                        nonneg=("blur_augment", "teacher_weight"))
        validate.choice(self.lr_schedule, LR_SCHEDULES, "TrainConfig.lr_schedule")


LR_SCHEDULES = ("constant", "cosine")


# Defaults measured on MNIST test[:8000] (docs/results/evaluation.md): ~97.9 % teacher
# accuracy, faithful VAE.
TEACHER_TRAIN = TrainConfig(epochs=6)
VAE_TRAIN = TrainConfig(epochs=20)


class TrainState(train_state.TrainState):
    """Flax's TrainState plus the model config, a static field (part of the jit cache key)."""

    config: Any = flax.struct.field(pytree_node=False, default=None)


def learning_rate(config: TrainConfig, examples: int) -> float | optax.Schedule:
    """Adam's step size for ``config`` over ``examples`` training examples (the steps that
    `fit` takes: ``examples // batch_size`` per epoch)."""
    if config.lr_schedule == "constant":
        return config.learning_rate
    if examples < config.batch_size:
        raise ValueError(f"a {config.lr_schedule!r} schedule needs the training set's size, at "
                         f"least one batch ({config.batch_size}); got examples={examples}.")
    per_epoch = examples // config.batch_size
    return optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, warmup_steps=per_epoch,
        decay_steps=max(per_epoch + 1, per_epoch * config.epochs))


def create_state(params: dict, model_config: Any, train_config: TrainConfig,
                 examples: int = 0) -> TrainState:
    """A TrainState with Adam at `learning_rate` (``examples``: the training set's size, which
    a schedule needs)."""
    return TrainState.create(
        apply_fn=None,
        params=params,
        tx=optax.adam(learning_rate(train_config, examples)),
        config=model_config,
    )


# --------------------------------------------------------------------------------------------
# Teacher
# --------------------------------------------------------------------------------------------


def teacher_loss(params: dict, images: jax.Array, labels: jax.Array, config: TeacherConfig):
    """Mean cross-entropy and the logits [B, K] (aux)."""
    logits = teacher_logits(params, images, config)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits


def random_blur(images: jax.Array, key: jax.Array, max_sigma: float) -> jax.Array:
    """Each image of [B, H, W, C] blurred by a separable Gaussian (edge-padded) of its own
    standard deviation, uniform in [0, max_sigma] pixels (0: the image unchanged)."""
    radius = max(1, math.ceil(3 * max_sigma))
    sigma = jax.random.uniform(key, (images.shape[0], 1), maxval=max_sigma)
    t = jnp.arange(-radius, radius + 1, dtype=images.dtype)
    k = jnp.exp(-0.5 * t**2 / jnp.maximum(sigma, 1e-3) ** 2)  # [B, 2R + 1]; sigma 0: a delta
    return ops.separable_blur(images, k / k.sum(-1, keepdims=True))


@functools.partial(jax.jit, static_argnames="blur_augment")
def teacher_train_step(state: TrainState, batch: tuple, key: jax.Array,
                       blur_augment: float = 0.0):
    """One Adam step on cross-entropy.

    Args:
      state: `TrainState` whose config is a `TeacherConfig`.
      batch: (images [B, H, W, C] float32 in [0, 1], labels [B] int32).
      key: the augmentation's randomness (unused without it: the teacher has no dropout).
      blur_augment: `TrainConfig.blur_augment`.

    Returns:
      (new state, {"loss", "accuracy"}).
    """
    images, labels = batch
    if blur_augment > 0:
        images = random_blur(images, key, blur_augment)
    (loss, logits), grads = jax.value_and_grad(teacher_loss, has_aux=True)(
        state.params, images, labels, state.config
    )
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return state.apply_gradients(grads=grads), {"loss": loss, "accuracy": accuracy}


@dataclasses.dataclass(frozen=True)
class AdversarialTraining:
    """Adversarial training, optionally with the consistent loss of Dong et al. (2017).

    Loss per batch: CE(x, y) + CE(x_adv, y) + consistency_weight * consistency_loss(phi(x),
    phi(x_adv)), with x_adv crafted against the current parameters by ``attack`` and phi the
    post-ReLU activations of ``layer`` (`consistency.consistency_loss`: squared distance
    relative to the clean representation's norm, clean side held fixed). consistency_weight 0
    is plain adversarial training (Goodfellow et al. 2015, equal weights on clean and
    adversarial cross-entropy).

    Attributes:
      attack: how x_adv is crafted during training. The default is one PGD step of 1.25 epsilon
        from a random start ("FGSM-RS", Wong et al. 2020): about as robust as multi-step PGD
        training on MNIST at a third of the cost.
      consistency_weight: lambda of the consistency term.
      layer: the Teacher layer whose representation is made consistent.
    """

    attack: adversarial.AttackConfig = adversarial.AttackConfig(
        method="pgd", epsilon=0.1, steps=1, step_size=0.125, random_start=True)
    consistency_weight: float = 0.0
    layer: str = "dense"

    def __post_init__(self):
        validate.config(self.attack, adversarial.AttackConfig, "AdversarialTraining.attack")
        validate.fields(self, nonneg=("consistency_weight",))
        if not isinstance(self.layer, str):
            raise ValueError(f"AdversarialTraining.layer must be a layer name, got "
                             f"{self.layer!r}.")


def adversarial_teacher_loss(
    params: dict, images: jax.Array, adv_images: jax.Array, labels: jax.Array,
    config: TeacherConfig, adv: AdversarialTraining,
):
    """The `AdversarialTraining` objective; aux: dict of its parts and the logits on x and x_adv."""
    both = jnp.concatenate([images, adv_images])
    # One forward pass for the logits and the layer's features.
    logits, feats = consistency.logits_and_features(params, both, config=config, layer=adv.layer,
                                                    pool=False)
    clean_logits, adv_logits = jnp.split(logits, 2)
    ce = optax.softmax_cross_entropy_with_integer_labels
    clean_ce, adv_ce = ce(clean_logits, labels).mean(), ce(adv_logits, labels).mean()
    loss = clean_ce + adv_ce
    cons = jnp.zeros(())
    if adv.consistency_weight:
        clean_f, adv_f = jnp.split(feats, 2)
        cons = consistency.consistency_loss(clean_f, adv_f)
        loss = loss + adv.consistency_weight * cons
    aux = {"clean_ce": clean_ce, "adv_ce": adv_ce, "consistency": cons}
    return loss, (aux, clean_logits, adv_logits)


@functools.partial(jax.jit, static_argnames="adv")
def adversarial_teacher_train_step(
    state: TrainState, batch: tuple, key: jax.Array, *, adv: AdversarialTraining
):
    """One Adam step of (consistent) adversarial training; same signature as
    `teacher_train_step` once ``adv`` is bound.

    Returns:
      (new state, {"loss", "accuracy" (clean), "adv_accuracy", "clean_ce", "adv_ce",
      "consistency"}).
    """
    images, labels = batch
    apply = teacher_apply_for(state.config)
    adv_images = adversarial.attack(images, labels, key, teacher_apply=apply,
                                    teacher_params=state.params, config=adv.attack)
    adv_images = jax.lax.stop_gradient(adv_images)
    (loss, (aux, clean_logits, adv_logits)), grads = jax.value_and_grad(
        adversarial_teacher_loss, has_aux=True)(state.params, images, adv_images, labels,
                                                state.config, adv)
    metrics = {
        "loss": loss, **aux,
        "accuracy": jnp.mean(jnp.argmax(clean_logits, -1) == labels),
        "adv_accuracy": jnp.mean(jnp.argmax(adv_logits, -1) == labels),
    }
    return state.apply_gradients(grads=grads), metrics


@functools.partial(jax.jit, static_argnums=3)
def _teacher_eval_rows(params, images, labels, config):
    """Per image: cross-entropy [B] and whether the class is right [B]."""
    logits = teacher_logits(params, images, config)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return loss, jnp.argmax(logits, -1) == labels


def evaluate_teacher(
    params: dict, images: np.ndarray, labels: np.ndarray, config: TeacherConfig,
    batch_size: int = 1000,
) -> dict[str, float]:
    """Test loss and accuracy over [N, H, W, C] images and [N] labels."""
    images, labels = _labelled(images, labels, config, "eval")
    loss, hits = driver.map_instances(
        lambda p, xy, keys: _teacher_eval_rows(p, xy[0], xy[1], config), params,
        (images, labels), jax.random.PRNGKey(0), chunk_size=batch_size)
    return {"loss": float(np.mean(loss, dtype=np.float64)), "accuracy": float(np.mean(hits))}


# --------------------------------------------------------------------------------------------
# VAE
# --------------------------------------------------------------------------------------------


@jax.jit
def vae_train_step(state: TrainState, batch: tuple, key: jax.Array):
    """One Adam step on the negative ELBO.

    Args:
      state: `TrainState` whose config is a `VAEConfig`.
      batch: (images [B, H, W, C] float32 in [0, 1],) — labels, if present, are ignored.
      key: PRNG key for the reparameterised sample.

    Returns:
      (new state, {"loss" (negative ELBO, nats/image), "recon", "kl"}).
    """
    images = batch[0]
    (loss, aux), grads = jax.value_and_grad(vae.negative_elbo, has_aux=True)(
        state.params, images, key, config=state.config
    )
    return state.apply_gradients(grads=grads), {"loss": loss, **aux}


@functools.partial(jax.jit, static_argnames=("teacher_apply", "weight"))
def guided_vae_train_step(state: TrainState, batch: tuple, key: jax.Array, teacher_params,
                          *, teacher_apply: Callable, weight: float):
    """`vae_train_step` with a perceptual term from a classifier: ``weight`` times the mean
    KL(teacher(images) || teacher(decoded sample)) in nats (`TrainConfig.teacher_weight`), so
    that decodings keep what the teacher reads in each image.

    Returns:
      (new state, {"loss" (the whole objective), "recon", "kl", "teacher_kl"}).
    """
    images = batch[0]
    target = jax.nn.log_softmax(teacher_apply(teacher_params, images))

    def objective(params):
        loss, aux = vae.negative_elbo(params, images, key, config=state.config,
                                      return_decoded=True)
        got = jax.nn.log_softmax(teacher_apply(teacher_params, aux.pop("decoded")))
        kd = jnp.mean(jnp.sum(jnp.exp(target) * (target - got), axis=-1))
        return loss + weight * kd, {**aux, "teacher_kl": kd}

    (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    return state.apply_gradients(grads=grads), {"loss": loss, **aux}


@functools.partial(jax.jit, static_argnums=3)
def _vae_eval_rows(params, images, keys, config):
    """Per image, its own sample (keys [B]): negative ELBO [B], its KL [B], reconstruction MSE
    [B]."""
    def one(x, key):
        loss, aux = vae.negative_elbo(params, x[None], key, config=config)
        return loss, aux["kl"]

    loss, kl = jax.vmap(one)(images, keys)
    recon = vae.reconstruct(params, images, config=config)
    return loss, kl, jnp.mean((recon - images) ** 2, axis=(1, 2, 3))



def evaluate_vae(
    params: dict, images: np.ndarray, key: jax.Array, config: VAEConfig, batch_size: int = 1000
) -> dict[str, float]:
    """Held-out negative ELBO (nats/image; image ``i``'s sample from ``fold_in(key, i)``, so
    the numbers do not depend on ``batch_size``), its KL part, and the reconstruction MSE per
    pixel."""
    images = validate.images(images, name="eval images", image_shape=config.image_shape,
                             expected_by="the VAE config")
    out = driver.map_instances(lambda p, x, keys: _vae_eval_rows(p, x, keys, config), params,
                               images, key, chunk_size=batch_size)
    neg_elbo, kl, mse = (float(np.mean(o, dtype=np.float64)) for o in out)
    return {"neg_elbo": neg_elbo, "kl": kl, "recon_mse": mse}


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def fit(
    state: TrainState,
    train_step: Callable,
    train_arrays: tuple[np.ndarray, ...],
    evaluate: Callable[[dict], dict[str, float]],
    config: TrainConfig,
    *,
    desc: str = "train",
    progress: bool = True,
) -> tuple[TrainState, list[dict[str, float]]]:
    """Runs ``config.epochs`` epochs of shuffled mini-batches, evaluating after each.

    Args:
      state: initial `TrainState`.
      train_step: pure jitted ``(state, batch, key) -> (state, metrics)``.
      train_arrays: arrays sharing a leading axis N; a batch is a tuple of slices of them.
      evaluate: ``params -> metrics`` run after every epoch.
      config: `TrainConfig`.
      desc: progress bar label.
      progress: show one tqdm bar for the whole run (the last epoch's eval metrics beside it).

    Returns:
      (final state, one dict per epoch with mean train metrics and eval metrics).
    """
    validate.config(config, TrainConfig, "config")
    n = validate.same_length(**{f"train_arrays[{i}]": a for i, a in enumerate(train_arrays)})
    steps = n // config.batch_size
    if steps == 0:
        raise ValueError(
            f"{desc}: batch_size {config.batch_size} exceeds the {n} training examples."
        )
    key = jax.random.PRNGKey(config.seed)
    history = []
    bar = tqdm(total=steps * config.epochs, desc=desc, disable=not progress, unit="step")
    for epoch in range(config.epochs):
        key, perm_key = jax.random.split(key)
        perm = np.asarray(jax.random.permutation(perm_key, n))
        sums: dict[str, float] = {}
        for s in range(steps):
            idx = perm[s * config.batch_size : (s + 1) * config.batch_size]
            batch = tuple(jnp.asarray(a[idx]) for a in train_arrays)
            key, step_key = jax.random.split(key)
            state, metrics = train_step(state, batch, step_key)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            bar.update(1)
        record = {"epoch": epoch + 1, **{f"train_{k}": v / steps for k, v in sums.items()}}
        record.update({f"eval_{k}": v for k, v in evaluate(state.params).items()})
        history.append(record)
        # one bar per stage: the epoch's held-out numbers ride on it; the history is returned
        bar.set_postfix({k: round(v, 4) for k, v in record.items() if k.startswith("eval_")})
    bar.close()
    return state, history


def train_teacher(
    train: tuple[np.ndarray, np.ndarray],
    eval: tuple[np.ndarray, np.ndarray],
    model_config: TeacherConfig,
    config: TrainConfig = TEACHER_TRAIN,
    *,
    adversarial_training: AdversarialTraining | None = None,
    progress: bool = True,
) -> tuple[dict, list[dict[str, float]]]:
    """Trains a teacher from scratch.

    Args:
      train: (images [N, H, W, C] float32 in [0, 1], labels [N] int32).
      eval: held-out (images, labels), evaluated after each epoch.
      model_config: `TeacherConfig`; its image_shape must match the images.
      adversarial_training: None for standard training, else `AdversarialTraining`.

    Returns:
      (params, history).
    """
    validate.config(model_config, TeacherConfig, "model_config")
    validate.config(config, TrainConfig, "config")
    train = _labelled(*train, model_config, "train")
    eval = _labelled(*eval, model_config, "eval")
    if adversarial_training is not None:
        validate.config(adversarial_training, AdversarialTraining, "adversarial_training")
        names = consistency.layer_names(model_config)
        if adversarial_training.layer not in names:
            raise ValueError(f"AdversarialTraining.layer {adversarial_training.layer!r} is not "
                             f"one of the teacher's layers {names}.")
    params = init_teacher(jax.random.PRNGKey(config.seed), model_config)
    state = create_state(params, model_config, config, len(train[0]))
    step = functools.partial(teacher_train_step, blur_augment=config.blur_augment)
    if adversarial_training is not None:
        if config.blur_augment:
            raise ValueError("TrainConfig.blur_augment is not supported with adversarial "
                             "training (its attack would see unblurred images).")
        step = functools.partial(adversarial_teacher_train_step, adv=adversarial_training)
    state, history = fit(
        state, step, train,
        lambda p: evaluate_teacher(p, *eval, model_config, config.eval_batch_size),
        config, desc="teacher", progress=progress,
    )
    return state.params, history


def train_vae(
    train_images: np.ndarray,
    eval_images: np.ndarray,
    model_config: VAEConfig,
    config: TrainConfig = VAE_TRAIN,
    *,
    teacher: tuple[Callable, Any] | None = None,
    progress: bool = True,
) -> tuple[dict, list[dict[str, float]]]:
    """Trains a VAE from scratch on [N, H, W, C] images in [0, 1]; returns (params, history).

    ``teacher`` (``(apply, params)``): the classifier of ``config.teacher_weight``'s
    perceptual term (`guided_vae_train_step`); required when that weight is not 0.
    """
    validate.config(model_config, VAEConfig, "model_config")
    validate.config(config, TrainConfig, "config")
    train_images = validate.images(train_images, name="train images",
                                   image_shape=model_config.image_shape,
                                   expected_by="the VAE config")
    eval_images = validate.images(eval_images, name="eval images",
                                  image_shape=model_config.image_shape,
                                  expected_by="the VAE config")
    step = vae_train_step
    if config.teacher_weight:
        if teacher is None:
            raise ValueError(f"TrainConfig.teacher_weight={config.teacher_weight} needs the "
                             "teacher: train_vae(..., teacher=(apply, params)).")
        apply, teacher_params = teacher
        step = functools.partial(guided_vae_train_step, teacher_params=teacher_params,
                                 teacher_apply=apply, weight=float(config.teacher_weight))
    params = init_vae(jax.random.PRNGKey(config.seed), model_config)
    state = create_state(params, model_config, config, len(train_images))
    eval_key = jax.random.PRNGKey(config.seed + 1)
    state, history = fit(
        state, step, (train_images,),
        lambda p: evaluate_vae(p, eval_images, eval_key, model_config, config.eval_batch_size),
        config, desc="vae", progress=progress,
    )
    return state.params, history


def _labelled(images, labels, config: TeacherConfig, split: str):
    """Checked (images [N, H, W, C] in [0, 1], labels [N] in [0, K)) of one split."""
    images = validate.images(images, name=f"{split} images", image_shape=config.image_shape,
                             expected_by="the teacher config")
    labels = validate.class_indices(labels, batch=len(images), num_classes=config.num_classes,
                                    name=f"{split} labels")
    return images, labels
