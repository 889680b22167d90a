"""Training orchestration: per-dataset recipes, a validated plan of what to train, and the
functions that train a model, save its checkpoint with its history and write its figures.

`plan` builds (and so validates) every config before any training starts and checks that the
training split holds a batch and that every checkpoint folder can be written; `train_teacher`
and `train_vae` then each train one stage (one progress bar), save ``out/<kind>`` with the
per-epoch history in its metrics, and draw the stage's figures beside it; `save_trained` does
the same for a model trained elsewhere (the attentive surrogate, an explainer above this
layer). The command line (`deepvid train-*`, `deepvid demo`) only parses and prints.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from deepvid_jax import validate, viz
from deepvid_jax.data.sources import Dataset
from deepvid_jax.models import checkpoint, train
from deepvid_jax.models import vae as vae_lib
from deepvid_jax.models.adapters import Teacher
from deepvid_jax.models.consistency import layer_names
from deepvid_jax.models.networks import (
    TeacherConfig,
    VAEConfig,
    teacher_config_for,
    vae_config_for,
)

# Training settings that differ from train.TEACHER_TRAIN / VAE_TRAIN, per dataset. The embedded
# digits are ~1.4k images: more epochs cost less than one MNIST epoch. The generated colour
# shapes need a faster teacher (at the default learning rate it stays near 90 % held out).
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "digits": {"teacher": {"epochs": 40}, "vae": {"epochs": 150}},
    "synthetic": {"teacher": {"epochs": 12, "learning_rate": 2e-3, "blur_augment": 1.0},
                  "vae": {"epochs": 15}},
    "synthetic_64": {"teacher": {"epochs": 12, "learning_rate": 2e-3, "blur_augment": 2.0},
                     "vae": {"epochs": 15}},
}
KINDS = ("teacher", "vae")


@dataclasses.dataclass(frozen=True)
class Overrides:
    """What a user sets on top of a dataset's recipe; None keeps the recipe's value.

    Attributes:
      seed: the training seed.
      epochs, learning_rate, lr_schedule: `train.TrainConfig` fields.
      teacher_weight: the VAE's perceptual term (`train.TrainConfig.teacher_weight`); an
        explicit 0 stays 0.
    """

    seed: int = 0
    epochs: int | None = None
    learning_rate: float | None = None
    lr_schedule: str | None = None
    teacher_weight: float | None = None

    def __post_init__(self):
        validate.integer(self.seed, "Overrides.seed", minimum=0)
        if self.epochs is not None:
            validate.integer(self.epochs, "Overrides.epochs", minimum=1)
        if self.lr_schedule is not None:
            validate.choice(self.lr_schedule, train.LR_SCHEDULES, "Overrides.lr_schedule")


def recipe(dataset: str, kind: str, base: train.TrainConfig) -> train.TrainConfig:
    """``base`` with the dataset's recipe (`RECIPES`) applied."""
    return dataclasses.replace(base, **RECIPES.get(dataset, {}).get(kind, {}))


def train_config(dataset: str, kind: str, overrides: Overrides = Overrides()) -> train.TrainConfig:
    """The `train.TrainConfig` of ``kind`` ("teacher" or "vae") on ``dataset``: the default,
    then the dataset's recipe, then ``overrides``."""
    validate.choice(kind, KINDS, "kind")
    base = train.TEACHER_TRAIN if kind == "teacher" else train.VAE_TRAIN
    config = recipe(dataset, kind, base)
    o = overrides
    return dataclasses.replace(
        config, seed=o.seed, epochs=o.epochs or config.epochs,
        learning_rate=o.learning_rate or config.learning_rate,
        lr_schedule=o.lr_schedule or config.lr_schedule,
        teacher_weight=config.teacher_weight if o.teacher_weight is None else o.teacher_weight)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything to train, validated: the model and training configs of each kind in
    ``kinds``, the adversarial training of the teacher (or None) and the output folder."""

    out: Path
    kinds: tuple[str, ...]
    teacher_config: TeacherConfig | None = None
    teacher_train: train.TrainConfig | None = None
    adversarial: train.AdversarialTraining | None = None
    vae_config: VAEConfig | None = None
    vae_train: train.TrainConfig | None = None


def plan(kinds: tuple[str, ...], data: Dataset, out: str | Path, *, dataset: str,
         overrides: Overrides = Overrides(), adversarial: train.AdversarialTraining | None = None,
         latent_dim: int | None = None, decoder_blocks: int | None = None) -> Plan:
    """Builds every config of the models in ``kinds`` for the training split ``data`` (named
    ``dataset`` in `RECIPES`), checks that the split holds one batch of each and that
    ``out/<kind>`` can take a checkpoint: every error comes before any training.

    Raises:
      ValueError: an unknown kind, an adversarial layer the teacher lacks, a split smaller
        than a batch. CheckpointError: ``out/<kind>`` holds something that is not ours.
    """
    for kind in kinds:
        validate.choice(kind, KINDS, "kind")
    info = data.info
    fields: dict[str, Any] = {}
    if "teacher" in kinds:
        tcfg = teacher_config_for(info.image_shape, info.num_classes)
        if adversarial is not None:
            validate.config(adversarial, train.AdversarialTraining, "adversarial")
            names = layer_names(tcfg)
            if adversarial.layer not in names:
                raise ValueError(f"--layer {adversarial.layer!r} is not one of the teacher's "
                                 f"layers {names}.")
        fields.update(teacher_config=tcfg, adversarial=adversarial,
                      teacher_train=train_config(dataset, "teacher", overrides))
    if "vae" in kinds:
        fields.update(vae_config=vae_config_for(info.image_shape, latent_dim, decoder_blocks),
                      vae_train=train_config(dataset, "vae", overrides))
    out = Path(out)
    for kind in kinds:
        batch_fits(fields[f"{kind}_train"], len(data.images), kind)
        checkpoint.check_save_target(out / kind, kind)
    return Plan(out=out, kinds=tuple(kinds), **fields)


def batch_fits(config: train.TrainConfig, n: int, what: str) -> None:
    """A clear error when a training split of ``n`` images holds no batch of ``config``."""
    if config.batch_size > n:
        raise ValueError(f"{what}: the training split has {n} images, fewer than one batch of "
                         f"{config.batch_size}.")


def dataset_meta(dataset: str, train_data: Dataset, eval_data: Dataset) -> dict:
    """What a checkpoint records of its training data."""
    return {"name": dataset, "train_split": train_data.info.split,
            "eval_split": eval_data.info.split, "source": train_data.info.source,
            "class_names": list(train_data.info.class_names)}


class Trained(NamedTuple):
    """One trained, saved model: its parameters, config, metrics (the last epoch's, the
    training time and ``history``: one dict per epoch), checkpoint folder and figures."""

    params: Any
    config: Any
    metrics: dict
    path: Path
    figures: tuple[Path, ...]


def _metrics(history: list[dict], start: float, **extra) -> dict:
    return {**history[-1], "train_seconds": time.perf_counter() - start, **extra,
            "history": history}


def train_teacher(plan: Plan, train_data: Dataset, eval_data: Dataset, *, meta: dict | None = None,
                  progress: bool = True) -> Trained:
    """Trains the planned teacher on ``train_data``, evaluates on ``eval_data`` after each
    epoch, saves ``plan.out/teacher`` and its training curves."""
    if plan.teacher_config is None:
        raise ValueError("the plan has no teacher: plan(('teacher', ...), ...).")
    adv = plan.adversarial
    start = time.perf_counter()
    params, history = train.train_teacher(
        (train_data.images, train_data.labels), (eval_data.images, eval_data.labels),
        plan.teacher_config, plan.teacher_train, adversarial_training=adv, progress=progress)
    metrics = _metrics(history, start, adversarial_training=None if adv is None
                       else dataclasses.asdict(adv))
    path = checkpoint.save(plan.out / "teacher", params, kind="teacher",
                           config=plan.teacher_config, metrics=metrics, dataset=meta)
    curves = viz.training_curves(history, ["train_loss", "eval_accuracy"], path / "curves.png")
    return Trained(params, plan.teacher_config, metrics, path, (curves,))


def train_vae(plan: Plan, train_data: Dataset, eval_data: Dataset, *,
              teacher: Teacher | None = None, meta: dict | None = None,
              progress: bool = True) -> Trained:
    """Trains the planned VAE on ``train_data`` (``teacher``: the classifier of the plan's
    teacher_weight), saves ``plan.out/vae``, its curves and held-out reconstructions."""
    if plan.vae_config is None:
        raise ValueError("the plan has no VAE: plan(('vae', ...), ...).")
    config, tcfg = plan.vae_config, plan.vae_train
    start = time.perf_counter()
    params, history = train.train_vae(
        train_data.images, eval_data.images, config, tcfg,
        teacher=None if teacher is None else (teacher.apply, teacher.params), progress=progress)
    metrics = _metrics(history, start, lr_schedule=tcfg.lr_schedule,
                       teacher_weight=tcfg.teacher_weight)
    path = checkpoint.save(plan.out / "vae", params, kind="vae", config=config,
                           metrics=metrics, dataset=meta)
    originals = eval_data.images[:12]
    recons = np.asarray(vae_lib.reconstruct(params, originals, config=config))
    png = viz.reconstruction_grid(
        originals, recons, path / "reconstructions.png",
        title=f"VAE on {eval_data.info.name} {eval_data.info.split} (held out): "
        f"-ELBO {metrics['eval_neg_elbo']:.1f} nats, MSE {metrics['eval_recon_mse']:.4f}")
    curves = viz.training_curves(history, ["train_loss", "eval_neg_elbo", "eval_recon_mse"],
                                 path / "curves.png")
    return Trained(params, config, metrics, path, (png, curves))


def save_trained(out: str | Path, kind: str, params: Any, config: Any, history: list[dict],
                 seconds: float, *, curves: tuple[str, ...] = (), meta: dict | None = None,
                 **extra: Any) -> Trained:
    """Saves a model trained elsewhere (e.g. the attentive surrogate) as ``out/<kind>``: its
    metrics are the last epoch's, ``seconds``, ``extra`` and the per-epoch ``history``; draws
    the ``curves`` (history keys) beside it."""
    validate.choice(kind, tuple(checkpoint.KINDS), "kind")
    metrics = {**history[-1], "train_seconds": seconds, **extra, "history": history}
    path = checkpoint.save(Path(out) / kind, params, kind=kind, config=config, metrics=metrics,
                           dataset=meta)
    figures = (viz.training_curves(history, list(curves), path / "curves.png"),) if curves \
        else ()
    return Trained(params, config, metrics, path, figures)
