"""``deepvid train-surrogate``: distil the teacher into the attentive surrogate and train its
saliency network, into ``--out/surrogate`` and ``--out/explainer``."""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from deepvid_jax import files, viz
from deepvid_jax.cli import options
from deepvid_jax.explainers import surrogate
from deepvid_jax.models import checkpoint, recipes
from deepvid_jax.models.networks import SurrogateConfig


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Registers ``deepvid train-surrogate`` and returns its parser."""
    p = subparsers.add_parser("train-surrogate",
                              help="Distil the attentive surrogate and its saliency network.")
    options.training_options(p, out="runs/default")
    p.add_argument("--checkpoints", default=None, help="Folder with the teacher/ to distil.")
    options.teacher_option(p)
    p.add_argument("--explainer-epochs", type=options.POSITIVE, default=None)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Checks everything, trains both networks (`explainers.surrogate`), saves them
    (`recipes.save_trained`) with a saliency grid, prints one line each."""
    out = files.check_writable_dir(args.out, "--out")
    tr, ev = options.load_splits(args)
    teacher = options.teacher(args, tr.info)
    for kind in ("surrogate", "explainer"):
        checkpoint.check_save_target(out / kind, kind)
    tc_s = dataclasses.replace(surrogate.SURROGATE_TRAIN, seed=args.seed,
                               epochs=args.epochs or surrogate.SURROGATE_TRAIN.epochs)
    tc_e = dataclasses.replace(surrogate.EXPLAINER_TRAIN, seed=args.seed,
                               epochs=args.explainer_epochs or surrogate.EXPLAINER_TRAIN.epochs)
    recipes.batch_fits(tc_s, len(tr.images), "surrogate")
    meta = recipes.dataset_meta(args.dataset, tr, ev)
    t_train = surrogate.teacher_logits_of(teacher.apply, teacher.params, tr.images)
    t_eval = surrogate.teacher_logits_of(teacher.apply, teacher.params, ev.images)
    scfg = SurrogateConfig(num_classes=teacher.num_classes, image_shape=tr.info.image_shape)

    start = time.perf_counter()
    sp, history = surrogate.train_surrogate(tr.images, t_train, ev.images, t_eval, scfg, tc_s,
                                            progress=not args.quiet)
    trained = recipes.save_trained(out, "surrogate", sp, scfg, history,
                                   time.perf_counter() - start,
                                   curves=("train_loss", "eval_agreement"), meta=meta)
    print(options.trained_line("surrogate", trained, args.eval_split))

    start = time.perf_counter()
    ep, ecfg, history = surrogate.train_explainer(
        sp, scfg, tr.images, t_train.argmax(-1), ev.images, t_eval.argmax(-1), tc_e,
        progress=not args.quiet)
    trained = recipes.save_trained(out, "explainer", ep, ecfg, history,
                                   time.perf_counter() - start, meta=meta)
    x, classes = ev.images[:10], t_eval[:10].argmax(-1)
    maps = surrogate.saliency(x, surrogate_params=sp, explainer_params=ep, class_idx=classes,
                              surrogate_config=scfg, explainer_config=ecfg)
    png = viz.saliency_grid(x, {"saliency": np.asarray(maps)}, trained.path / "saliency.png",
                            labels=[str(c) for c in classes],
                            title="attentive surrogate saliency, teacher's class")
    print(options.trained_line("explainer", trained._replace(figures=(png,)), args.eval_split))
    return 0
