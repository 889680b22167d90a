"""What the commands share: argument types (a bad value is a usage error before anything
runs), the option groups of data, training and DeepVID, and the one resolution of "the
teacher from --teacher or from --checkpoints"."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.machinery
import math
import os
import sys
from pathlib import Path

import numpy as np

from deepvid_jax import validate
from deepvid_jax.data import sources as data
from deepvid_jax.explainers.deepvid import core as deepvid
from deepvid_jax.explainers.deepvid import neighbors
from deepvid_jax.explainers.deepvid import student as student_lib
from deepvid_jax.models import adapters, checkpoint, recipes, train
from deepvid_jax.models.bundle import Models
from deepvid_jax.models.networks import DECODER_BLOCKS, teacher_apply_for

DEFAULT_DATASET = data.EMBEDDED_DATASET

# --------------------------------------------------------------------------------------------
# Argument types
# --------------------------------------------------------------------------------------------


def int_at_least(minimum: int):
    """An argparse type: an integer >= ``minimum``."""
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


def finite(low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False):
    """An argparse type: a finite number within the given bounds."""
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


POSITIVE = int_at_least(1)
NON_NEGATIVE = int_at_least(0)


def size(text: str) -> tuple[int, int]:
    """An argparse type: 'H,W', both positive."""
    try:
        h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,W, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"expected positive H,W, got {text!r}")
    return h, w


def int_list(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated positive integers."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") \
            from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def name_list(known, what: str):
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


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------

DATASET_HELP = (f"A TFDS name (mnist, kmnist, cifar10, ...), 'digits' (embedded), 'synthetic' "
                f"or 'synthetic_64' (generated), or an image folder's path (default "
                f"{DEFAULT_DATASET}).")


def image_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-size", type=size, default=None, metavar="H,W",
                   help="Resize every image (needed for a folder of mixed sizes).")
    p.add_argument("--color-mode", choices=sorted(data.COLOR_MODES), default="rgb",
                   help="An image folder's channels (default rgb).")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="Skip (and name) files of an image folder that do not decode; every "
                   "file is decoded when the folder is opened.")
    p.add_argument("--background", type=finite(0.0, 1.0), default=0.0,
                   help="The grey level in [0, 1] that transparent pixels of an image folder "
                   "are composited over (default 0, black).")


def split_options(p: argparse.ArgumentParser) -> None:
    """The data a command reads: one split of one dataset."""
    p.add_argument("--dataset", default=DEFAULT_DATASET, help=DATASET_HELP)
    p.add_argument("--split", default="test")
    p.add_argument("--data-dir", default=None)
    image_options(p)


def data_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of `data.load` / `data.open_source` given on the command line."""
    return {"data_dir": args.data_dir, "image_size": args.image_size,
            "color_mode": args.color_mode, "skip_bad": args.skip_bad_images,
            "background": args.background}


def load(args: argparse.Namespace, split: str) -> data.Dataset:
    return data.load(args.dataset, split, **data_options(args))


def load_splits(args: argparse.Namespace) -> tuple[data.Dataset, data.Dataset]:
    """--train-split and --eval-split of --dataset (same image shape), announced in one line."""
    tr, ev = load(args, args.train_split), load(args, args.eval_split)
    if tr.info.image_shape != ev.info.image_shape:
        raise ValueError(f"--train-split and --eval-split have different image shapes "
                         f"{tr.info.image_shape} and {ev.info.image_shape}.")
    print(f"data: {args.dataset} {args.train_split} ({len(tr.images)}) / {args.eval_split} "
          f"({len(ev.images)}), images {tr.info.image_shape}, from {tr.info.source}")
    return tr, ev


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def training_options(p: argparse.ArgumentParser, *, out: str) -> None:
    """Data, model and training options of train-* and demo."""
    p.add_argument("--dataset", default=DEFAULT_DATASET, help=DATASET_HELP)
    image_options(p)
    p.add_argument("--train-split", default="train", help="TFDS split syntax, e.g. 'test[:8000]'.")
    p.add_argument("--eval-split", default="test", help="TFDS split syntax, e.g. 'test[8000:]'.")
    p.add_argument("--data-dir", default=None,
                   help=f"Folder of raw dataset files (default ${data.DATA_DIR_ENV}).")
    p.add_argument("--epochs", type=POSITIVE, default=None, help="Default depends on the dataset.")
    p.add_argument("--learning-rate", type=finite(0.0, low_open=True), default=None,
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


def overrides(args: argparse.Namespace) -> recipes.Overrides:
    """The training flags on top of the dataset's recipe."""
    return recipes.Overrides(
        seed=args.seed, epochs=args.epochs, learning_rate=getattr(args, "learning_rate", None),
        lr_schedule=getattr(args, "lr_schedule", None),
        teacher_weight=getattr(args, "teacher_weight", None))


def plan(args: argparse.Namespace, kinds: tuple[str, ...], tr: data.Dataset,
         adversarial: train.AdversarialTraining | None = None) -> recipes.Plan:
    """`recipes.plan` of the flags: every config built and every folder checked."""
    return recipes.plan(kinds, tr, args.out, dataset=args.dataset, overrides=overrides(args),
                        adversarial=adversarial, latent_dim=args.latent_dim,
                        decoder_blocks=args.decoder_blocks)


def trained_line(kind: str, trained: recipes.Trained, eval_split: str) -> str:
    """One line saying how a trained model did and where it and its figures are."""
    m = trained.metrics
    if kind == "teacher":
        what = f"eval accuracy {m['eval_accuracy']:.4f} on {eval_split}"
    elif kind == "vae":
        what = (f"held-out -ELBO {m['eval_neg_elbo']:.2f} nats/image, reconstruction MSE "
                f"{m['eval_recon_mse']:.4f}")
    elif kind == "surrogate":
        what = f"top-1 agreement with the teacher {m['eval_agreement']:.4f} on {eval_split}"
    else:
        what = (f"held-out preserve CE {m['eval_preserve']:.3f}, delete {m['eval_delete']:.3f}, "
                f"map area {m['eval_area']:.3f}")
    return (f"{kind}: {what} ({m['train_seconds']:.0f}s, {len(m['history'])} epochs); saved "
            f"to {trained.path} with its history and {', '.join(p.name for p in trained.figures)}")


# --------------------------------------------------------------------------------------------
# The teacher: --teacher, or teacher/ of a checkpoint folder
# --------------------------------------------------------------------------------------------

TEACHER_HELP = ("Your model instead of --checkpoints' teacher/: 'package.module:function', a "
                "function returning (apply, params, num_classes), e.g. deepvid_jax.models.adapters."
                "from_keras(model) (searched on PYTHONPATH, then in the current folder).")


def teacher_option(p: argparse.ArgumentParser, extra: str = "") -> None:
    p.add_argument("--teacher", default=None, metavar="MODULE:FUNCTION",
                   help=TEACHER_HELP + extra)


def checkpoint_config(folder: Path, kind: str, info: data.DatasetInfo):
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


def _same_place(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a or ".", b)
    except OSError:
        return False


def _import_user_module(spec: str) -> None:
    """Makes the module of ``spec`` importable without letting the current folder shadow
    installed packages: the current folder is searched after them, and a module of the
    current folder named like an installed package is refused."""
    module = spec.partition(":")[0]
    top = module.split(".")[0]
    if not top.isidentifier():
        return  # load_teacher names the malformed spec
    cwd = os.getcwd()
    here = Path(cwd, f"{top}.py") if Path(cwd, f"{top}.py").is_file() else Path(cwd, top)
    if not here.exists():
        return
    elsewhere = [p for p in sys.path if not _same_place(p, cwd)]
    installed = (top in sys.builtin_module_names or top in sys.stdlib_module_names
                 or importlib.machinery.PathFinder.find_spec(top, elsewhere) is not None)
    if installed:
        raise ValueError(f"--teacher {spec}: {here} in the current folder has the name of an "
                         f"installed module {top!r} and would shadow it; rename your file.")
    if not any(_same_place(p, cwd) for p in sys.path):
        sys.path.append(cwd)  # after the installed packages


def user_teacher(args: argparse.Namespace, info: data.DatasetInfo) -> adapters.Teacher | None:
    """The model of ``--teacher module:function``, checked against the dataset; None without."""
    spec = getattr(args, "teacher", None)
    if spec is None:
        return None
    _import_user_module(spec)
    teacher = adapters.load_teacher(spec)
    if teacher.num_classes != info.num_classes:
        raise ValueError(f"--teacher {spec} predicts {teacher.num_classes} classes, but "
                         f"{info.name} has {info.num_classes}.")
    probe = np.zeros((2, *info.image_shape), np.float32)
    validate.teacher(teacher.apply, teacher.params, probe, num_classes=info.num_classes,
                     name=f"--teacher {spec}")
    return teacher


NO_TEACHER = "give --checkpoints (a folder with teacher/) or --teacher module:function."


def _teacher_source(args: argparse.Namespace, info: data.DatasetInfo, folder: Path | None,
                    purpose: str | None) -> tuple[adapters.Teacher | None, Path | None]:
    """The one resolution of the teacher: ``--teacher`` (its model, checked), else teacher/
    of ``folder`` (its config checked against the dataset). Returns (the user's model or
    None, the folder)."""
    user = user_teacher(args, info)
    if user is None:
        if folder is None:
            raise ValueError(NO_TEACHER)
        if purpose is not None and not (folder / "teacher").exists():
            raise ValueError(f"{purpose} needs a teacher: {folder / 'teacher'} does not exist; "
                             + NO_TEACHER)
        checkpoint_config(folder, "teacher", info)
    return user, folder


def checkpoints_folder(args: argparse.Namespace) -> Path | None:
    value = getattr(args, "checkpoints", None)
    return Path(value) if value else None


def teacher(args: argparse.Namespace, info: data.DatasetInfo, *, folder: Path | None = None,
            purpose: str | None = None) -> adapters.Teacher:
    """The teacher of ``--teacher``, else of teacher/ in ``folder`` (default --checkpoints)."""
    user, folder = _teacher_source(args, info, folder or checkpoints_folder(args), purpose)
    if user is not None:
        return user
    params, config, _ = checkpoint.restore(folder / "teacher", kind="teacher")
    return adapters.Teacher(teacher_apply_for(config), params,
                            config.num_classes)


def models(args: argparse.Namespace, info: data.DatasetInfo, *, vae: bool = False) -> Models:
    """`Models.load` of --checkpoints (teacher/, and vae/, surrogate/, explainer/ when there)
    with --teacher instead of its teacher/; ``vae``: vae/ is required. Every config is checked
    against the dataset before any weights are read."""
    user, folder = _teacher_source(args, info, checkpoints_folder(args), None)
    if folder is not None:
        for kind in ("vae", "surrogate", "explainer"):
            if (kind == "vae" and vae) or (folder / kind).exists():
                checkpoint_config(folder, kind, info)
    return Models.load(folder, teacher=user, teacher_name=getattr(args, "teacher", None))


# --------------------------------------------------------------------------------------------
# DeepVID's options
# --------------------------------------------------------------------------------------------

FAST_HELP = (f"DeepVID's fastest preset (deepvid.FAST: ridge over "
             f"{deepvid.FAST.neighbors.num} plain VAE neighbours, solved in closed form; "
             "docs/results/bench.md), but relevance leaks onto pixels the teacher does not "
             "read (docs/results/ground-truth.md).")
# The options that only DeepVID's config reads (argparse dest names -> flags).
DEEPVID_ONLY = {"neighbors": "--neighbors", "latent_scale": "--latent-scale",
                "target_flip": "--target-flip", "sampler": "--sampler", "student": "--student",
                "lasso": "--lasso", "smooth": "--smooth", "fast": "--fast",
                "sparse": "--sparse", "patch_mix": "--patch-mix"}


def explain_options(p: argparse.ArgumentParser, count: int) -> None:
    """DeepVID's options (None: the preset's value), --chunk-size, --figures (and --count)."""
    d = deepvid.ExplainConfig()
    p.add_argument("--neighbors", type=int_at_least(2), default=None,
                   help=f"Neighbours per instance (fit + held out; default {d.neighbors.num}, "
                   f"--fast {deepvid.FAST.neighbors.num}).")
    p.add_argument("--latent-scale", type=finite(low=0.0), default=None,
                   help="Fixed latent scale of the VAE neighbours (default: calibrated per "
                   "image to --target-flip).")
    p.add_argument("--target-flip", type=finite(low=0.0, high=1.0, low_open=True,
                                                high_open=True), default=None,
                   help="Calibrated radius: the fraction of neighbours that should get another "
                   f"teacher label than the image (default {d.neighbors.target_flip}).")
    p.add_argument("--sampler", choices=neighbors.SAMPLERS, default=None,
                   help=f"How neighbours are drawn (default {d.neighbors.sampler}).")
    p.add_argument("--student", choices=student_lib.SOLVERS, default=None,
                   help=f"Default {d.student.method}: the reweighted group lasso stopped "
                   "early, its smoothness chosen per image (ExplainConfig().student); ridge: "
                   "closed form on centred logits (--fast); "
                   "adam: Adam on the KD loss; kd: ridge then Adam on the KD loss.")
    p.add_argument("--lasso", type=finite(low=0.0, high=1.0, low_open=True, high_open=True),
                   default=None,
                   help=f"The lasso's L1 penalty, relative to the smallest that zeroes every "
                   f"weight (default {d.student.lasso}).")
    p.add_argument("--smooth", type=finite(low=0.0), default=None,
                   help="The lasso's smoothness penalty on adjacent pixels' weights, relative "
                   "to the mean pixel variance, the same for every image (default: chosen per "
                   f"image from {d.student.lasso_smooth_grid} by held-out fit; 0 for a "
                   "classifier whose evidence is single pixels, not shapes).")
    p.add_argument("--fast", action="store_true",
                   help=FAST_HELP + " The other flags apply on top of it.")
    p.add_argument("--sparse", action="store_true",
                   help="An alias of the default, kept for scripts that pass it. Sets "
                   "--neighbors, --patch-mix, --student and --lasso itself.")
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


def deepvid_flags_given(args: argparse.Namespace) -> list[str]:
    """The DeepVID-only flags given on the command line."""
    given = {dest: getattr(args, dest, None) for dest in DEEPVID_ONLY}
    return [DEEPVID_ONLY[dest] for dest, value in given.items()
            if value is not None and value is not False]  # an explicit 0 is given


def check_presets(args: argparse.Namespace) -> None:
    """--sparse (an alias of the default, kept for scripts) sets the neighbour count, patches
    and student itself: those flags may not be given beside it; nor may --fast."""
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


def preset(args: argparse.Namespace) -> deepvid.ExplainConfig:
    """DeepVID's config before the flags: the default, or `deepvid.FAST` with --fast."""
    return deepvid.FAST if args.fast else deepvid.ExplainConfig()


def explain_config(args: argparse.Namespace, num_classes: int, vae_config) -> \
        deepvid.ExplainConfig:
    """The preset (`preset`) with the flags given on top of it."""
    d = preset(args)
    sampler = d.neighbors.sampler if args.sampler is None else args.sampler
    num = d.neighbors.num if args.neighbors is None else args.neighbors
    # patches mix VAE neighbours with the image: the default's, with the VAE sampler only
    patch_mix = (d.neighbors.patch_mix if sampler == "vae" else 0) \
        if args.patch_mix is None else args.patch_mix
    nb = dataclasses.replace(
        d.neighbors, sampler=sampler, num=num, patch_mix=patch_mix,
        latent_scale=d.neighbors.latent_scale if args.latent_scale is None else args.latent_scale,
        target_flip=d.neighbors.target_flip if args.target_flip is None else args.target_flip)
    method = d.student.method if args.student is None else args.student
    # the preset's student with another penalty, or another student with its own defaults
    student = d.student if method == d.student.method else student_lib.StudentConfig(method=method)
    if args.lasso is not None:
        student = dataclasses.replace(student, lasso=args.lasso)
    if args.smooth is not None:
        if student.method != "lasso":
            raise ValueError(f"--smooth is the lasso student's smoothness penalty; the "
                             f"{student.method} student has none (use --student lasso).")
        student = dataclasses.replace(student, lasso_smooth=args.smooth, lasso_smooth_grid=())
    return deepvid.ExplainConfig(
        num_classes=num_classes, vae=vae_config, chunk_size=args.chunk_size,
        holdout=max(1, min(d.holdout, nb.num // 4)), neighbors=nb, student=student)
