"""``deepvid train-vae``: train the VAE whose latent space gives DeepVID's neighbours into
``--out/vae``."""

from __future__ import annotations

import argparse
from pathlib import Path

from deepvid_jax import files
from deepvid_jax.cli import options
from deepvid_jax.models import recipes


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Registers ``deepvid train-vae`` and returns its parser."""
    p = subparsers.add_parser("train-vae",
                              help="Train the VAE whose latent space gives neighbours.")
    options.training_options(p, out="runs/default")
    p.add_argument("--teacher-weight", type=options.finite(low=0.0), default=None,
                   help="Weight of a perceptual term: the KL between the teacher's class "
                   "probabilities on each image and on its decoding (default 0: none). The "
                   "teacher: --teacher, else teacher/ of --checkpoints, else of --out.")
    p.add_argument("--checkpoints", default=None,
                   help="Folder with the teacher/ of --teacher-weight (default: --out).")
    options.teacher_option(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Trains, saves and prints one line."""
    files.check_writable_dir(args.out, "--out")
    tr, ev = options.load_splits(args)
    plan = options.plan(args, ("vae",), tr)
    teacher = None
    if plan.vae_train.teacher_weight:
        teacher = options.teacher(args, tr.info, folder=Path(args.checkpoints or args.out),
                                  purpose="--teacher-weight")
    elif args.teacher or args.checkpoints:
        raise ValueError("train-vae reads a teacher (--teacher, --checkpoints) only for "
                         "--teacher-weight, which is 0.")
    trained = recipes.train_vae(plan, tr, ev, teacher=teacher,
                                meta=recipes.dataset_meta(args.dataset, tr, ev),
                                progress=not args.quiet)
    print(options.trained_line("vae", trained, args.eval_split))
    return 0
