"""The ``deepvid`` command line: train-teacher (optionally adversarial), train-vae,
train-surrogate, demo, explain."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

from deepvid_jax import files, validate, viz
from deepvid_jax.data import sources as data
from deepvid_jax.explainers import registry as explainers
from deepvid_jax.explainers import surrogate
from deepvid_jax.explainers.deepvid import core as explain_lib
from deepvid_jax.explainers.deepvid import neighbors
from deepvid_jax.explainers.deepvid import student as student_lib
from deepvid_jax.explainers.deepvid.student import StudentConfig
from deepvid_jax.models import adapters, adversarial, checkpoint, train
from deepvid_jax.models import vae as vae_lib
from deepvid_jax.models.consistency import layer_names
from deepvid_jax.models.networks import (
    DECODER_BLOCKS,
    SurrogateConfig,
    TeacherConfig,
    VAEConfig,
    init_teacher,
    teacher_config_for,
    teacher_logits,
    vae_config_for,
)
from deepvid_jax.runner import bench as bench_lib
from deepvid_jax.runner import report as report_lib
from deepvid_jax.runner import run as run_lib

DEFAULT_DATASET = data.EMBEDDED_DATASET
# Training recipes that differ from train.TEACHER_TRAIN / VAE_TRAIN, per dataset. The embedded
# digits are ~1.4k images: more epochs cost less than one MNIST epoch. The generated colour
# shapes need a faster teacher (20,000 images x 12 epochs: 97 % held out; at 1e-3 it is still
# near 90 %).
RECIPES = {
    "digits": {"teacher": {"epochs": 40}, "vae": {"epochs": 150}},
    "synthetic": {"teacher": {"epochs": 12, "learning_rate": 2e-3, "blur_augment": 1.0},
                  "vae": {"epochs": 15}},
    "synthetic_64": {"teacher": {"epochs": 12, "learning_rate": 2e-3, "blur_augment": 2.0},
                     "vae": {"epochs": 15}},
}
EXPLAIN_OUTPUTS = ("explanations.json", "traversal.png")  # plus explanation_NNN.png


# --------------------------------------------------------------------------------------------
# Argument types: a bad number is a usage error before anything runs
# --------------------------------------------------------------------------------------------


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _finite(low: float | None = None, high: float | None = None, low_open: bool = False,
            high_open: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
        if low is not None and (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low:g}, "
                                             f"got {value:g}")
        if high is not None and (value >= high if high_open else value > high):
            raise argparse.ArgumentTypeError(f"must be {'<' if high_open else '<='} {high:g}, "
                                             f"got {value:g}")
        return value

    parse.__name__ = "finite number"
    return parse


POSITIVE = _int_at_least(1)
NON_NEGATIVE = _int_at_least(0)


def _recipe(dataset: str, kind: str, base: train.TrainConfig) -> train.TrainConfig:
    """``base`` with the dataset's recipe (`RECIPES`) applied."""
    return dataclasses.replace(base, **RECIPES.get(dataset, {}).get(kind, {}))


def _data_options(args) -> dict:
    """The keyword arguments of `data.load` / `data.open_source` given on the command line."""
    return {"data_dir": args.data_dir, "image_size": args.image_size,
            "color_mode": args.color_mode, "skip_bad": args.skip_bad_images}


def _load(args, split: str) -> data.Dataset:
    return data.load(args.dataset, split, **_data_options(args))


def _load_splits(args) -> tuple[data.Dataset, data.Dataset]:
    tr, ev = _load(args, args.train_split), _load(args, args.eval_split)
    if tr.info.image_shape != ev.info.image_shape:
        raise ValueError(f"--train-split and --eval-split have different image shapes "
                         f"{tr.info.image_shape} and {ev.info.image_shape}.")
    print(f"data: {args.dataset} {args.train_split} ({len(tr.images)}) / {args.eval_split} "
          f"({len(ev.images)}), images {tr.info.image_shape}, from {tr.info.source}")
    return tr, ev


def _dataset_meta(args, tr: data.Dataset) -> dict:
    return {
        "name": args.dataset, "train_split": args.train_split, "eval_split": args.eval_split,
        "source": tr.info.source, "class_names": list(tr.info.class_names),
    }


def _checkpoint_config(folder: Path, kind: str, info: data.DatasetInfo):
    """The config of ``folder/kind``, checked (without loading weights) to take the dataset's
    images and predict its classes."""
    config, _ = checkpoint.read_config(folder / kind, kind)
    if tuple(config.image_shape) != tuple(info.image_shape):
        raise ValueError(f"the {kind} checkpoint {folder / kind} takes images "
                         f"{tuple(config.image_shape)}, but {info.name} {info.split} has images "
                         f"{tuple(info.image_shape)}.")
    k = getattr(config, "num_classes", None)
    if k is not None and k != info.num_classes:
        raise ValueError(f"the {kind} checkpoint {folder / kind} predicts {k} classes, but "
                         f"{info.name} has {info.num_classes}.")
    return config


FAST_HELP = (f"DeepVID's former default (deepvid.FAST: ridge over "
             f"{explain_lib.FAST.neighbors.num} plain VAE neighbours): 40 %% of the time on a "
             "CPU, but relevance leaks onto pixels the teacher does not read (README, 'Ground "
             "truth').")
TEACHER_HELP = ("Your model instead of --checkpoints' teacher/: 'package.module:function', a "
                "function returning (apply, params, num_classes), e.g. deepvid_jax.models.adapters."
                "from_keras(model) (searched on PYTHONPATH and in the current folder).")


def _user_teacher(args, info: data.DatasetInfo) -> adapters.Teacher | None:
    """The model of ``--teacher module:function``, checked against the dataset; None without."""
    spec = getattr(args, "teacher", None)
    if spec is None:
        return None
    if os.getcwd() not in sys.path:  # like `uvicorn module:app`: the current folder's modules
        sys.path.insert(0, os.getcwd())
    teacher = adapters.load_teacher(spec)
    if teacher.num_classes != info.num_classes:
        raise ValueError(f"--teacher {spec} predicts {teacher.num_classes} classes, but "
                         f"{info.name} has {info.num_classes}.")
    probe = np.zeros((2, *info.image_shape), np.float32)
    validate.teacher(teacher.apply, teacher.params, probe, num_classes=info.num_classes,
                     name=f"--teacher {spec}")
    return teacher


def _models(args, info: data.DatasetInfo) -> explainers.Models:
    """`--checkpoints` (teacher/, vae/, surrogate/, explainer/) and/or `--teacher`."""
    teacher = _user_teacher(args, info)
    folder = Path(args.checkpoints) if args.checkpoints else None
    if teacher is None:
        if folder is None:
            raise ValueError("give --checkpoints (a folder with teacher/) or --teacher "
                             "module:function.")
        _checkpoint_config(folder, "teacher", info)
    if folder is not None and (folder / "vae").exists():
        _checkpoint_config(folder, "vae", info)
    return explainers.Models.load(folder, teacher, teacher_name=getattr(args, "teacher", None))


def _adversarial_training(args) -> train.AdversarialTraining | None:
    if getattr(args, "adversarial", None) is None:
        if getattr(args, "consistency_weight", 0.0):
            raise ValueError("--consistency-weight needs --adversarial fgsm|pgd.")
        return None
    attack = adversarial.AttackConfig(
        method=args.adversarial, epsilon=args.epsilon, steps=args.attack_steps,
        step_size=1.25 * args.epsilon / args.attack_steps if args.epsilon > 0 else None,
        random_start=True)
    return train.AdversarialTraining(attack=attack, consistency_weight=args.consistency_weight,
                                     layer=args.layer)


def _given(value, default):
    """``value`` unless the flag was not given (None): an explicit 0 stays 0."""
    return default if value is None else value


def _train_config(args, kind: str, base: train.TrainConfig) -> train.TrainConfig:
    config = _recipe(args.dataset, kind, base)
    return dataclasses.replace(
        config, seed=args.seed, epochs=args.epochs or config.epochs,
        learning_rate=getattr(args, "learning_rate", None) or config.learning_rate,
        lr_schedule=getattr(args, "lr_schedule", None) or config.lr_schedule,
        teacher_weight=_given(getattr(args, "teacher_weight", None), config.teacher_weight))


def train_teacher_to(args, tr: data.Dataset, ev: data.Dataset,
                     plan: dict) -> tuple[dict, TeacherConfig, dict]:
    """Trains the teacher on ``tr``, evaluates on ``ev``, saves to ``<out>/teacher``."""
    config, tcfg, adv = plan["teacher_config"], plan["teacher_train"], plan["adversarial"]
    start = time.perf_counter()
    params, history = train.train_teacher(
        (tr.images, tr.labels), (ev.images, ev.labels), config, tcfg,
        adversarial_training=adv, progress=not args.quiet,
    )
    metrics = {**history[-1], "train_seconds": time.perf_counter() - start,
               "adversarial_training": None if adv is None else dataclasses.asdict(adv)}
    path = checkpoint.save(
        Path(args.out) / "teacher", params, kind="teacher", config=config,
        metrics=metrics, dataset=_dataset_meta(args, tr),
    )
    viz.training_curves(history, ["train_loss", "eval_accuracy"], path / "curves.png")
    print(f"teacher: eval accuracy {metrics['eval_accuracy']:.4f} on {args.eval_split} "
          f"({metrics['train_seconds']:.0f}s); saved to {path}")
    return params, config, metrics


def train_vae_to(args, tr: data.Dataset, ev: data.Dataset,
                 plan: dict) -> tuple[dict, VAEConfig, dict]:
    """Trains the VAE on ``tr``, evaluates on ``ev``, saves to ``<out>/vae`` with a recon PNG."""
    config, tcfg = plan["vae_config"], plan["vae_train"]
    start = time.perf_counter()
    params, history = train.train_vae(
        tr.images, ev.images, config, tcfg, teacher=plan.get("vae_teacher"),
        progress=not args.quiet
    )
    metrics = {**history[-1], "train_seconds": time.perf_counter() - start,
               "lr_schedule": tcfg.lr_schedule, "teacher_weight": tcfg.teacher_weight}
    path = checkpoint.save(
        Path(args.out) / "vae", params, kind="vae", config=config,
        metrics=metrics, dataset=_dataset_meta(args, tr),
    )
    originals = ev.images[:12]
    recons = np.asarray(vae_lib.reconstruct(params, originals, config=config))
    png = viz.reconstruction_grid(
        originals, recons, path / "reconstructions.png",
        title=f"VAE on {args.dataset} {args.eval_split} (held out): "
        f"-ELBO {metrics['eval_neg_elbo']:.1f} nats, MSE {metrics['eval_recon_mse']:.4f}",
    )
    viz.training_curves(history, ["train_loss", "eval_neg_elbo", "eval_recon_mse"],
                        path / "curves.png")
    print(f"vae: held-out -ELBO {metrics['eval_neg_elbo']:.2f} nats/image, reconstruction MSE "
          f"{metrics['eval_recon_mse']:.4f} ({metrics['train_seconds']:.0f}s); saved to {path}; "
          f"reconstructions in {png}")
    return params, config, metrics


def _plan_training(args, kinds: tuple[str, ...], tr: data.Dataset) -> dict:
    """Every config of the models to train, built (and so validated) before any training, the
    training split checked to hold a batch, and every checkpoint folder they will be saved to
    checked."""
    plan: dict = {}
    info = tr.info
    if "teacher" in kinds:
        plan["adversarial"] = _adversarial_training(args)
        plan["teacher_config"] = teacher_config_for(info.image_shape, info.num_classes)
        plan["teacher_train"] = _train_config(args, "teacher", train.TEACHER_TRAIN)
        if plan["adversarial"] is not None:
            names = layer_names(plan["teacher_config"])
            if args.layer not in names:
                raise ValueError(f"--layer {args.layer!r} is not one of the teacher's layers "
                                 f"{names}.")
    if "vae" in kinds:
        plan["vae_config"] = vae_config_for(info.image_shape, args.latent_dim,
                                            getattr(args, "decoder_blocks", None))
        plan["vae_train"] = _train_config(args, "vae", train.VAE_TRAIN)
    for kind in kinds:
        _batch_fits(plan[f"{kind}_train"], len(tr.images), kind)
        checkpoint.check_save_target(Path(args.out) / kind, kind)
    return plan


def _batch_fits(config: train.TrainConfig, n: int, what: str) -> None:
    if config.batch_size > n:
        raise ValueError(f"{what}: the training split has {n} images, fewer than one batch of "
                         f"{config.batch_size}.")


def cmd_train_teacher(args) -> int:
    files.check_writable_dir(args.out, "--out")
    tr, ev = _load_splits(args)
    plan = _plan_training(args, ("teacher",), tr)
    train_teacher_to(args, tr, ev, plan)
    return 0


def cmd_train_vae(args) -> int:
    files.check_writable_dir(args.out, "--out")
    tr, ev = _load_splits(args)
    plan = _plan_training(args, ("vae",), tr)
    if plan["vae_train"].teacher_weight:
        plan["vae_teacher"] = _guide_teacher(args, tr.info)
    elif args.teacher or args.checkpoints:
        raise ValueError("train-vae reads a teacher (--teacher, --checkpoints) only for "
                         "--teacher-weight, which is 0.")
    train_vae_to(args, tr, ev, plan)
    return 0


def _guide_teacher(args, info: data.DatasetInfo) -> tuple:
    """(apply, params) of ``--teacher-weight``'s teacher: ``--teacher``, else the teacher/ of
    ``--checkpoints``, else of ``--out``."""
    teacher = _user_teacher(args, info)
    if teacher is not None:
        return teacher.apply, teacher.params
    folder = Path(args.checkpoints or args.out)
    if not (folder / "teacher").exists():
        raise ValueError(f"--teacher-weight needs a teacher: {folder / 'teacher'} does not "
                         "exist; give --checkpoints (a folder with teacher/) or --teacher "
                         "module:function.")
    _checkpoint_config(folder, "teacher", info)
    params, config, _ = checkpoint.restore(folder / "teacher", kind="teacher")
    return functools.partial(teacher_logits, config=config), params


def _check_presets(args) -> None:
    """--sparse (the default's former name) sets the neighbour count, patches and student
    itself: those flags may not be given beside it; nor may --fast."""
    if args.sparse and args.fast:
        raise ValueError("--sparse and --fast are two presets: give one.")
    if not args.sparse:
        return
    given = [flag for flag, value in (
        ("--neighbors", args.neighbors), ("--patch-mix", args.patch_mix),
        ("--student", args.student), ("--lasso", args.lasso)) if value is not None]
    if given:
        raise ValueError(f"--sparse sets {', '.join(given)} itself: leave "
                         f"{'it' if len(given) == 1 else 'them'} out.")


def _preset(args) -> explain_lib.ExplainConfig:
    """DeepVID's config before the flags: the default, or the former one with --fast."""
    return explain_lib.FAST if args.fast else explain_lib.ExplainConfig()


def _explain_config(args, num_classes: int, vae_config: VAEConfig) -> explain_lib.ExplainConfig:
    """The preset (`_preset`) with the flags given on top of it."""
    d = _preset(args)
    num = d.neighbors.num if args.neighbors is None else args.neighbors
    # patches mix VAE neighbours with the image: the default's, with the VAE sampler only
    patch_mix = (d.neighbors.patch_mix if args.sampler == "vae" else 0) \
        if args.patch_mix is None else args.patch_mix
    neighbors = dataclasses.replace(d.neighbors, sampler=args.sampler, num=num,
                                    latent_scale=args.latent_scale,
                                    target_flip=args.target_flip, patch_mix=patch_mix)
    method = d.student.method if args.student is None else args.student
    # the preset's student with another penalty, or another student with its own defaults
    student = d.student if method == d.student.method else StudentConfig(method=method)
    if args.lasso is not None:
        student = dataclasses.replace(student, lasso=args.lasso)
    if args.smooth is not None:
        if student.method != "lasso":
            raise ValueError(f"--smooth is the lasso student's smoothness penalty; the "
                             f"{student.method} student has none (use --student lasso).")
        student = dataclasses.replace(student, lasso_smooth=args.smooth)
    return explain_lib.ExplainConfig(
        num_classes=num_classes, vae=vae_config, chunk_size=args.chunk_size,
        holdout=max(1, min(d.holdout, neighbors.num // 4)),
        neighbors=neighbors, student=student,
        return_neighbors=True,
    )


def _explain_outputs(count: int, figures: int) -> list[str]:
    return [*EXPLAIN_OUTPUTS, *(f"explanation_{i:03d}.png" for i in range(min(figures, count)))]


def _claim_explain_dir(out: Path, count: int, figures: int) -> Path:
    legacy = [*EXPLAIN_OUTPUTS, *(p.name for p in out.glob("explanation_[0-9]*.png"))] \
        if out.is_dir() else []
    return files.claim_output_dir(out, "explain", _explain_outputs(count, figures), legacy)


def explain_and_report(
    args, images: np.ndarray, labels: np.ndarray, class_names, models: dict, out: Path,
    config: explain_lib.ExplainConfig,
) -> dict:
    """Explains ``images`` with the restored/trained models; writes figures and returns a
    JSON-ready summary (per-instance fidelity, timings). ``out`` was claimed beforehand."""
    vcfg = models["vae_config"]
    apply = models["teacher_apply"]
    start = time.perf_counter()
    e = explain_lib.explain(
        images, jax.random.PRNGKey(args.seed), teacher_apply=apply,
        teacher_params=models["teacher"], vae_params=models["vae"], config=config,
        progress=not args.quiet,
    )
    seconds = time.perf_counter() - start
    n_fig = min(args.figures, len(images))
    figures = []
    if n_fig:
        recon = np.asarray(vae_lib.reconstruct(models["vae"], images[:n_fig], config=vcfg))
    for i in range(n_fig):
        figures.append(str(viz.explanation_figure(
            images[i], recon[i], e.neighbors[i], e.neighbor_probs[i], e.weights[i],
            e.teacher_probs[i], class_names, out / f"explanation_{i:03d}.png",
            fidelity=(float(e.fidelity.top1[i]), float(e.fidelity.kl[i])),
        )))
    values = np.linspace(-3, 3, 7)
    trav = neighbors.traverse(models["vae"], images[0], values, vae_config=vcfg)
    figures.append(str(viz.traversal_figure(np.asarray(trav), values, out / "traversal.png")))
    summary = {
        "instances": len(images),
        "config": dataclasses.asdict(config),
        "explain_seconds_incl_compile": seconds,
        "explanations_per_second_incl_compile": len(images) / seconds,
        "fidelity_mean": {k: float(np.mean(v)) for k, v in e.fidelity._asdict().items()},
        "teacher_accuracy_on_explained": float(np.mean(e.teacher_probs.argmax(-1) == labels)),
        "flip_fraction_mean": float(np.mean(e.flip_fraction)),
        "per_instance": [
            {"label": int(labels[i]), "teacher": int(e.teacher_probs[i].argmax()),
             "student": int(e.student_probs[i].argmax()),
             **{k: float(v[i]) for k, v in e.fidelity._asdict().items()},
             "flip_fraction": float(e.flip_fraction[i]),
             **({} if e.penalty is None else {"penalty": float(e.penalty[i])})}
            for i in range(len(images))
        ],
        "figures": figures,
    }
    files.write_json(out / "explanations.json", summary)
    files.finish_output_dir(out, [*figures, out / "explanations.json"])
    fm = summary["fidelity_mean"]
    print(f"explain: {len(images)} instances x {config.neighbors.num} neighbours in {seconds:.1f}s "
          f"(incl. compile); held-out fidelity top-1 {fm['top1']:.3f}, KL {fm['kl']:.3f}; "
          f"{summary['flip_fraction_mean']:.0%} of neighbours change the teacher's label; "
          f"figures in {out}")
    return summary


def _restore_models(folder: Path, teacher: adapters.Teacher | None = None) -> dict:
    """The teacher (``folder/teacher`` or a user's `Teacher`) and the VAE of ``folder``."""
    vp, vcfg, vmeta = checkpoint.restore(folder / "vae", kind="vae")
    models = {"vae": vp, "vae_config": vcfg, "vae_metrics": vmeta["metrics"]}
    if teacher is not None:
        return {**models, "teacher": teacher.params, "teacher_apply": teacher.apply,
                "teacher_config": None, "teacher_metrics": {}}
    tp, tcfg, tmeta = checkpoint.restore(folder / "teacher", kind="teacher")
    return {**models, "teacher": tp, "teacher_config": tcfg, "teacher_metrics": tmeta["metrics"],
            "teacher_apply": functools.partial(teacher_logits, config=tcfg)}


def cmd_demo(args) -> int:
    """Trains (or restores, with --reuse) teacher and VAE, explains test images, writes figures
    and a JSON summary."""
    if args.quick:
        args.epochs = args.epochs or 2
        args.count = min(args.count, 8)
        if not args.sparse:  # the preset keeps its own count
            args.neighbors = min(args.neighbors or _preset(args).neighbors.num, 128)
    out = files.check_writable_dir(args.out, "--out")
    tr, ev = _load_splits(args)
    n = min(args.count, len(ev.images))
    reuse = {kind: args.reuse and (out / kind / checkpoint.META).is_file()
             for kind in ("teacher", "vae")}
    reused = {kind: _checkpoint_config(out, kind, tr.info) for kind in reuse if reuse[kind]}
    plan = _plan_training(args, tuple(k for k in reuse if not reuse[k]), tr)
    vae_config = reused.get("vae") or plan["vae_config"]
    config = _explain_config(args, tr.info.num_classes, vae_config)
    files.claim_output_dir(out, "demo", ["summary.json"], legacy=["summary.json"])
    explain_dir = _claim_explain_dir(out / "explanations", n, args.figures)

    summary: dict = {"dataset": _dataset_meta(args, tr), "jax_backend": jax.default_backend(),
                     "devices": [str(d) for d in jax.devices()]}
    models: dict = {}
    for kind, trainer in (("teacher", train_teacher_to), ("vae", train_vae_to)):
        if reuse[kind]:
            params, config_k, meta = checkpoint.restore(out / kind, kind=kind)
            metrics = meta["metrics"]
            print(f"{kind}: restored from {out / kind}")
        else:
            params, config_k, metrics = trainer(args, tr, ev, plan)
        summary[kind] = metrics
        models.update({kind: params, f"{kind}_config": config_k, f"{kind}_metrics": metrics})
    models["teacher_apply"] = functools.partial(teacher_logits, config=models["teacher_config"])
    summary["explain"] = explain_and_report(
        args, ev.images[:n], ev.labels[:n], tr.info.class_names, models, explain_dir, config
    )
    files.write_json(out / "summary.json", summary)
    files.finish_output_dir(out, [out / "summary.json"])
    print(f"demo: teacher accuracy {summary['teacher']['eval_accuracy']:.4f}; summary in "
          f"{out / 'summary.json'}; figures in {explain_dir}")
    return 0


def cmd_train_surrogate(args) -> int:
    out = files.check_writable_dir(args.out, "--out")
    tr, ev = _load_splits(args)
    teacher = _user_teacher(args, tr.info)
    if teacher is None:
        if not args.checkpoints:
            raise ValueError("give --checkpoints (a folder with teacher/) or --teacher "
                             "module:function.")
        folder = Path(args.checkpoints)
        _checkpoint_config(folder, "teacher", tr.info)
    for kind in ("surrogate", "explainer"):
        checkpoint.check_save_target(out / kind, kind)
    tc_s = dataclasses.replace(surrogate.SURROGATE_TRAIN, seed=args.seed,
                               epochs=args.epochs or surrogate.SURROGATE_TRAIN.epochs)
    tc_e = dataclasses.replace(surrogate.EXPLAINER_TRAIN, seed=args.seed,
                               epochs=args.explainer_epochs or surrogate.EXPLAINER_TRAIN.epochs)
    _batch_fits(tc_s, len(tr.images), "surrogate")
    if teacher is None:
        tp, tcfg, _ = checkpoint.restore(folder / "teacher", kind="teacher")
        teacher = adapters.Teacher(functools.partial(teacher_logits, config=tcfg), tp,
                                   tcfg.num_classes)
    t_train = surrogate.teacher_logits_of(teacher.apply, teacher.params, tr.images)
    t_eval = surrogate.teacher_logits_of(teacher.apply, teacher.params, ev.images)
    scfg = SurrogateConfig(num_classes=teacher.num_classes, image_shape=tr.info.image_shape)
    meta = _dataset_meta(args, tr)

    start = time.perf_counter()
    sp, history = surrogate.train_surrogate(tr.images, t_train, ev.images, t_eval, scfg, tc_s,
                                            progress=not args.quiet)
    metrics = {**history[-1], "train_seconds": time.perf_counter() - start}
    path = checkpoint.save(out / "surrogate", sp, kind="surrogate", config=scfg,
                           metrics=metrics, dataset=meta)
    viz.training_curves(history, ["train_loss", "eval_agreement"], path / "curves.png")
    print(f"surrogate: top-1 agreement with the teacher {metrics['eval_agreement']:.4f} on "
          f"{args.eval_split} ({metrics['train_seconds']:.0f}s); saved to {path}")

    start = time.perf_counter()
    ep, ecfg, history = surrogate.train_explainer(
        sp, scfg, tr.images, t_train.argmax(-1), ev.images, t_eval.argmax(-1), tc_e,
        progress=not args.quiet)
    metrics = {**history[-1], "train_seconds": time.perf_counter() - start}
    path = checkpoint.save(out / "explainer", ep, kind="explainer", config=ecfg,
                           metrics=metrics, dataset=meta)
    x = ev.images[:10]
    maps = surrogate.saliency(x, surrogate_params=sp, explainer_params=ep,
                              class_idx=t_eval[:10].argmax(-1), surrogate_config=scfg,
                              explainer_config=ecfg)
    png = viz.saliency_grid(x, {"saliency": np.asarray(maps)}, path / "saliency.png",
                            labels=[str(c) for c in t_eval[:10].argmax(-1)],
                            title="attentive surrogate saliency, teacher's class")
    print(f"explainer: held-out preserve CE {metrics['eval_preserve']:.3f}, delete "
          f"{metrics['eval_delete']:.3f}, map area {metrics['eval_area']:.3f} "
          f"({metrics['train_seconds']:.0f}s); saved to {path}; maps in {png}")
    return 0


def _parse_indices(text: str, n: int) -> np.ndarray:
    """'start:stop' (Python slice bounds) or 'i,j,k' (each in [0, n) or [-n, -1]) -> indices."""
    try:
        if ":" in text:
            parts = text.split(":")
            if len(parts) != 2:
                raise ValueError
            start, stop = (int(p) if p.strip() else None for p in parts)
            idx = np.arange(n)[slice(start, stop)]
        else:
            idx = np.array([int(p) for p in text.split(",")], dtype=np.int64)
    except ValueError as e:
        raise ValueError(f"--indices {text!r}: expected 'start:stop' or 'i,j,k'.") from e
    if len(idx) == 0 or idx.max() >= n or idx.min() < -n:
        raise ValueError(f"--indices {text!r} selects nothing valid in {n} images.")
    return idx % n


def cmd_explain(args) -> int:
    folder = Path(args.checkpoints)
    ds = _load(args, args.split)
    idx = _parse_indices(args.indices, len(ds.images))
    teacher = _user_teacher(args, ds.info)
    if teacher is None:
        _checkpoint_config(folder, "teacher", ds.info)
    vcfg = _checkpoint_config(folder, "vae", ds.info)
    config = _explain_config(args, ds.info.num_classes, vcfg)
    out = _claim_explain_dir(Path(args.out), len(idx), args.figures)
    models = _restore_models(folder, teacher)
    explain_and_report(args, ds.images[idx], ds.labels[idx], ds.info.class_names, models, out,
                       config)
    return 0


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") \
            from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _name_list(known, what: str):
    """An argparse type: 'a,b' or 'all' -> names from ``known`` (a clear error for others)."""

    def parse(text: str) -> tuple[str, ...]:
        if text == "all":
            return tuple(known)
        names = tuple(v.strip() for v in text.split(",") if v.strip())
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {what}(s) {unknown or text!r}; choose "
                                             f"from {', '.join(known)} or 'all'")
        return names

    return parse


def cmd_bench(args) -> int:
    """Every explainer's explanations/s, FLOPs and memory on this machine (`runner.bench`)."""
    config = bench_lib.BenchConfig(methods=args.methods, batch_sizes=args.batch_sizes,
                                   samples=args.samples, repeats=args.repeats,
                                   lime_images=args.lime_images)
    out = files.check_writable_dir(args.out, "--out")
    ds = _load(args, args.split)
    if args.checkpoints:
        folder = Path(args.checkpoints)
        _checkpoint_config(folder, "teacher", ds.info)
        _checkpoint_config(folder, "vae", ds.info)
        m = _restore_models(folder)
        models = bench_lib.Models(m["teacher"], m["teacher_config"], m["vae"], m["vae_config"],
                                  trained=True)
    else:  # speed does not depend on the weights: untrained models of the data's shape
        tcfg = teacher_config_for(ds.info.image_shape, ds.info.num_classes)
        vcfg = vae_config_for(ds.info.image_shape)
        models = bench_lib.Models(init_teacher(jax.random.PRNGKey(0), tcfg), tcfg,
                                  vae_lib.init_vae(jax.random.PRNGKey(1), vcfg), vcfg,
                                  trained=False)
        print("no --checkpoints: untrained models (speed only)")
    result = bench_lib.run(models, ds.images[:256], config)
    result["data"] = f"{args.dataset} {args.split}"
    written = bench_lib.write(result, out)
    print("\n".join(bench_lib.ratios(result)))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _class_choice(text: str) -> str | int:
    if text in run_lib.CLASS_CHOICES:
        return text
    try:
        return NON_NEGATIVE(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected 'predicted', 'label' or a class index, got {text!r}") from None


def _distributed(args) -> None:
    """jax.distributed from the flags, or from the environment it reads itself (SLURM, TPU
    pods, JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID)."""
    flags = (args.coordinator, args.num_processes, args.process_id)
    if all(f is None for f in flags):
        if os.environ.get("JAX_COORDINATOR_ADDRESS"):
            jax.distributed.initialize()
        return
    if any(f is None for f in flags):
        raise ValueError("--coordinator, --num-processes and --process-id go together.")
    if not args.process_id < args.num_processes:
        raise ValueError(f"--process-id {args.process_id} must be < --num-processes "
                         f"{args.num_processes}.")
    jax.distributed.initialize(coordinator_address=args.coordinator,
                               num_processes=args.num_processes, process_id=args.process_id)


def cmd_run(args) -> int:
    """Explains a whole split into a Zarr store, resumably (`deepvid_jax.runner.run`)."""
    config = run_lib.RunConfig(explainers=args.explainers, chunk_size=args.chunk_size,
                               seed=args.seed, classes=args.class_, save_weights=args.weights)
    _distributed(args)
    source = data.open_source(args.dataset, args.split, **_data_options(args))
    models = _models(args, source.info)
    # --fast: DeepVID's former default (and nothing else changes; the store records it)
    configs = {"deepvid": explain_lib.FAST} if args.fast else None
    summary = run_lib.explain_dataset(source, models, args.out, config, configs=configs,
                                      overwrite=args.overwrite, progress=not args.quiet)
    if summary["process"] == 0:
        rate = summary["images_per_second"]
        print(f"{summary['images']} images x {len(summary['explainers'])} explainers "
              f"({', '.join(summary['explainers'])}): {summary['chunks_computed']} chunks "
              f"computed, {summary['chunks_found_done']} found done, "
              f"{summary['seconds']:.1f} s" + (f", {rate:.1f} images/s" if rate else "")
              + f"; {'complete' if summary.get('complete') else 'incomplete'} store "
              f"{summary['store']}")
    return 0


def cmd_report(args) -> int:
    """One self-contained HTML page about a store of `deepvid run` (`deepvid_jax.runner.report`)."""
    path = report_lib.write(args.store, args.out, data_dir=args.data_dir)
    print(f"wrote {path} (open it in a browser; it needs no network)")
    return 0


def _explain_options(p: argparse.ArgumentParser, count: int) -> None:
    d = explain_lib.ExplainConfig()
    p.add_argument("--neighbors", type=_int_at_least(2), default=None,
                   help=f"Neighbours per instance (fit + held out; default {d.neighbors.num}, "
                   f"--fast {explain_lib.FAST.neighbors.num}).")
    p.add_argument("--latent-scale", type=_finite(low=0.0), default=d.neighbors.latent_scale,
                   help="Fixed latent scale of the VAE neighbours (default: calibrated per "
                   "image to --target-flip).")
    p.add_argument("--target-flip", type=_finite(low=0.0, high=1.0, low_open=True,
                                                 high_open=True),
                   default=d.neighbors.target_flip,
                   help="Calibrated radius: the fraction of neighbours that should get another "
                   "teacher label than the image.")
    p.add_argument("--sampler", choices=neighbors.SAMPLERS, default=d.neighbors.sampler)
    p.add_argument("--student", choices=student_lib.METHODS, default=None,
                   help=f"Default {d.student.method}: the reweighted group lasso stopped early "
                   "(deepvid.DEFAULT_STUDENT); ridge: closed form on centred logits (--fast); "
                   "adam: Adam on the KD loss; kd: ridge then Adam on the KD loss.")
    p.add_argument("--lasso", type=_finite(low=0.0, high=1.0, low_open=True, high_open=True),
                   default=None,
                   help=f"The lasso's L1 penalty, relative to the smallest that zeroes every "
                   f"weight (default {d.student.lasso}).")
    p.add_argument("--smooth", type=_finite(low=0.0), default=None,
                   help=f"The lasso's smoothness penalty on adjacent pixels' weights, relative "
                   f"to the mean pixel variance (default {d.student.lasso_smooth}; 0 for a "
                   "classifier whose evidence is single pixels, not shapes).")
    p.add_argument("--fast", action="store_true",
                   help=FAST_HELP + " The other flags apply on top of it.")
    p.add_argument("--sparse", action="store_true",
                   help="The ground-truth remedy, the default since 2026-11-25 (kept so that "
                   "scripts that pass it run). Sets --neighbors, --patch-mix, --student and "
                   "--lasso itself.")
    p.add_argument("--patch-mix", type=NON_NEGATIVE, default=None,
                   help="Patch side: a share of the fitting neighbours (NeighborConfig."
                   "patch_mix_share) take random patches of this size from the image, so "
                   f"correlated pixels come apart (0: off; default {d.neighbors.patch_mix} with "
                   "the vae sampler, --fast 0).")
    p.add_argument("--chunk-size", type=POSITIVE, default=d.chunk_size)
    p.add_argument("--figures", type=NON_NEGATIVE, default=4,
                   help="Explanation figures to write (0: none).")
    if count:
        p.add_argument("--count", type=POSITIVE, default=count, help="Test images to explain.")


def _image_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-size", type=_size, default=None, metavar="H,W",
                   help="Resize every image (needed for a folder of mixed sizes).")
    p.add_argument("--color-mode", choices=sorted(data.COLOR_MODES), default="rgb",
                   help="An image folder's channels (default rgb).")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="Skip (and count) files of an image folder that are not images.")


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,W, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"expected positive H,W, got {text!r}")
    return h, w


DATASET_HELP = (f"A TFDS name (mnist, kmnist, cifar10, ...), 'digits' (embedded), 'synthetic' "
                f"or 'synthetic_64' (generated), or an image folder's path (default "
                f"{DEFAULT_DATASET}).")


def _split_options(p: argparse.ArgumentParser) -> None:
    """The data a command reads: one split of one dataset."""
    p.add_argument("--dataset", default=DEFAULT_DATASET, help=DATASET_HELP)
    p.add_argument("--split", default="test")
    p.add_argument("--data-dir", default=None)
    _image_options(p)


def _common(p: argparse.ArgumentParser, *, out: str) -> None:
    p.add_argument("--dataset", default=DEFAULT_DATASET, help=DATASET_HELP)
    _image_options(p)
    p.add_argument("--train-split", default="train", help="TFDS split syntax, e.g. 'test[:8000]'.")
    p.add_argument("--eval-split", default="test", help="TFDS split syntax, e.g. 'test[8000:]'.")
    p.add_argument("--data-dir", default=None,
                   help=f"Folder of raw dataset files (default ${data.DATA_DIR_ENV}).")
    p.add_argument("--epochs", type=POSITIVE, default=None, help="Default depends on the dataset.")
    p.add_argument("--learning-rate", type=_finite(0.0, low_open=True), default=None,
                   help="Adam step size (default depends on the dataset).")
    p.add_argument("--lr-schedule", choices=train.LR_SCHEDULES, default=None,
                   help="constant, or cosine: a one-epoch warm-up, then a cosine decay to 0 "
                   "(default depends on the dataset).")
    p.add_argument("--out", default=out, help="Output folder.")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    p.add_argument("--latent-dim", type=POSITIVE, default=None,
                   help="Default 16 for grayscale (a dense code); colour: a grid of 8 "
                   "channels per cell at the last stage (a multiple of the cell count).")
    p.add_argument("--decoder-blocks", type=NON_NEGATIVE, default=None,
                   help="Residual blocks the VAE's decoder applies before each upsampling "
                   f"(default {DECODER_BLOCKS['grayscale']} for grayscale, "
                   f"{DECODER_BLOCKS['colour']} for colour).")
    p.add_argument("--quiet", action="store_true", help="No progress bars.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepvid", description="Explain image classifiers by distillation (DeepVID, JAX)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train-teacher", help="Train the CNN classifier to be explained.")
    _common(p, out="runs/default")
    d = train.AdversarialTraining()
    p.add_argument("--adversarial", choices=adversarial.ATTACKS, default=None,
                   help="Adversarial training with this attack (default: standard training).")
    p.add_argument("--epsilon", type=_finite(low=0.0, high=1.0), default=d.attack.epsilon,
                   help="L-inf radius of the training attack, in [0, 1].")
    p.add_argument("--attack-steps", type=POSITIVE, default=d.attack.steps,
                   help="PGD steps, each of 1.25 * epsilon / steps, from a random start.")
    p.add_argument("--consistency-weight", type=_finite(low=0.0), default=d.consistency_weight,
                   help="Weight of the consistent loss (Dong et al. 2017); 0 = plain "
                   "adversarial training.")
    p.add_argument("--layer", default=d.layer,
                   help="Layer whose representation the consistent loss aligns.")
    p.set_defaults(func=cmd_train_teacher)
    p = sub.add_parser("train-vae", help="Train the VAE whose latent space gives neighbours.")
    _common(p, out="runs/default")
    p.add_argument("--teacher-weight", type=_finite(low=0.0), default=None,
                   help="Weight of a perceptual term: the KL between the teacher's class "
                   "probabilities on each image and on its decoding (default 0: none). The "
                   "teacher: --teacher, else teacher/ of --checkpoints, else of --out.")
    p.add_argument("--checkpoints", default=None,
                   help="Folder with the teacher/ of --teacher-weight (default: --out).")
    p.add_argument("--teacher", default=None, metavar="MODULE:FUNCTION", help=TEACHER_HELP)
    p.set_defaults(func=cmd_train_vae)
    p = sub.add_parser("train-surrogate",
                       help="Distil the attentive surrogate and its saliency network.")
    _common(p, out="runs/default")
    p.add_argument("--checkpoints", default=None, help="Folder with the teacher/ to distil.")
    p.add_argument("--teacher", default=None, metavar="MODULE:FUNCTION", help=TEACHER_HELP)
    p.add_argument("--explainer-epochs", type=POSITIVE, default=None)
    p.set_defaults(func=cmd_train_surrogate)
    p = sub.add_parser("demo", help="The README's main job, on the embedded dataset by default.")
    _common(p, out="runs/demo")
    p.add_argument("--quick", action="store_true",
                   help="Smallest setting (CI): 2 epochs, 8 instances, 128 neighbours.")
    p.add_argument("--reuse", action="store_true", help="Restore existing checkpoints in --out.")
    _explain_options(p, count=64)
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("explain", help="Explain images with trained checkpoints.")
    _split_options(p)
    p.add_argument("--indices", default="0:16", help="'start:stop' or 'i,j,k' within the split.")
    p.add_argument("--checkpoints", required=True,
                   help="Folder with teacher/ and vae/ (the --out of train-* or demo).")
    p.add_argument("--teacher", default=None, metavar="MODULE:FUNCTION",
                   help=TEACHER_HELP + " --checkpoints then only gives vae/.")
    p.add_argument("--out", default="runs/explain")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    p.add_argument("--quiet", action="store_true")
    _explain_options(p, count=0)
    p.set_defaults(func=cmd_explain)
    p = sub.add_parser("bench", help="Explanations/s, FLOPs and memory of every explainer on "
                       "this machine (CPU, GPU, TPU); runs of several machines merge.")
    d = bench_lib.BenchConfig()
    _split_options(p)
    p.add_argument("--checkpoints", default=None,
                   help="Folder with teacher/ and vae/ (default: untrained models, speed only).")
    p.add_argument("--methods", type=_name_list(bench_lib.METHODS, "method"),
                   default=d.methods,
                   help="Comma-separated, or 'all': " + ", ".join(bench_lib.METHODS) + ".")
    p.add_argument("--batch-sizes", type=_int_list, default=d.batch_sizes,
                   help="Comma-separated, e.g. 16,64,256,1024.")
    p.add_argument("--samples", type=_int_list, default=d.samples,
                   help="Neighbours / perturbations / masks per explanation, comma-separated.")
    p.add_argument("--repeats", type=POSITIVE, default=d.repeats)
    p.add_argument("--lime-images", type=POSITIVE, default=d.lime_images)
    p.add_argument("--out", default="runs/bench")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("run", help="Explain a whole split with several explainers into a "
                       "Zarr store; re-run to resume; several processes with jax.distributed.")
    d = run_lib.RunConfig()
    _split_options(p)
    p.add_argument("--checkpoints", default=None,
                   help="Folder with teacher/ (and vae/, surrogate/, explainer/ as needed).")
    p.add_argument("--teacher", default=None, metavar="MODULE:FUNCTION",
                   help=TEACHER_HELP + " --checkpoints then gives the rest (vae/ for deepvid).")
    p.add_argument("--explainers", type=_name_list(explainers.METHODS, "explainer"),
                   default=d.explainers,
                   help="Comma-separated, or 'all': " + ", ".join(explainers.METHODS) + ".")
    p.add_argument("--out", required=True, help="The Zarr store (a folder), e.g. test.zarr.")
    p.add_argument("--chunk-size", type=POSITIVE, default=d.chunk_size)
    p.add_argument("--seed", type=NON_NEGATIVE, default=d.seed)
    p.add_argument("--class", dest="class_", metavar="CLASS", type=_class_choice,
                   default=d.classes,
                   help="The class explained: 'predicted' (the teacher's), 'label', or an "
                   "index for every image.")
    p.add_argument("--weights", action="store_true",
                   help="Also store the students' weight images for every class (K x larger).")
    p.add_argument("--fast", action="store_true", help="deepvid with " + FAST_HELP)
    p.add_argument("--overwrite", action="store_true",
                   help="Replace a store of another run (only a deepvid_jax store).")
    p.add_argument("--coordinator", default=None,
                   help="jax.distributed coordinator host:port (multi-process runs).")
    p.add_argument("--num-processes", type=POSITIVE, default=None)
    p.add_argument("--process-id", type=NON_NEGATIVE, default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("report", help="A self-contained HTML page about a store of "
                       "'deepvid run': configuration, fidelity, class means, galleries.")
    p.add_argument("store", help="The Zarr store written by 'deepvid run'.")
    p.add_argument("--out", default=None, help="The HTML file (default: STORE.html).")
    p.add_argument("--data-dir", default=None,
                   help="Where to read the input images for the galleries (default "
                   f"${data.DATA_DIR_ENV}).")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs one command; a problem the user can fix is one line on stderr and exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        if hasattr(args, "sparse"):
            _check_presets(args)  # before any long work
        return args.func(args)
    except (data.DataNotFoundError, data.CorruptDataError, checkpoint.CheckpointError,
            ValueError) as e:
        print(f"deepvid {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permissions, ...: name the file, no traceback
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"deepvid {args.command}: error: {e.strerror or e}{where}; files written "
              "before this point are complete, checkpoints are the previous ones.",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"deepvid {args.command}: interrupted; checkpoints and result files are the "
              "previous complete ones.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
