"""The ``deepvid`` command line: train-teacher, train-vae, demo (and explain)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

from deepvid_jax import checkpoint, data, train, viz
from deepvid_jax import vae as vae_lib
from deepvid_jax.models import TeacherConfig, VAEConfig

DEFAULT_DATASET = data.EMBEDDED_DATASET
# The embedded digits are ~1.4k images: more epochs cost less than one MNIST epoch.
EPOCHS = {
    "digits": {"teacher": 40, "vae": 150},
    None: {"teacher": train.TEACHER_TRAIN.epochs, "vae": train.VAE_TRAIN.epochs},
}


def _epochs(dataset: str, kind: str, requested: int | None) -> int:
    if requested is not None:
        return requested
    return EPOCHS.get(dataset, EPOCHS[None])[kind]


def _load_splits(args) -> tuple[data.Dataset, data.Dataset]:
    tr = data.load(args.dataset, args.train_split, data_dir=args.data_dir)
    ev = data.load(args.dataset, args.eval_split, data_dir=args.data_dir)
    print(f"data: {args.dataset} {args.train_split} ({len(tr.images)}) / {args.eval_split} "
          f"({len(ev.images)}), images {tr.info.image_shape}, from {tr.info.source}")
    return tr, ev


def _dataset_meta(args, tr: data.Dataset) -> dict:
    return {
        "name": args.dataset, "train_split": args.train_split, "eval_split": args.eval_split,
        "source": tr.info.source, "class_names": list(tr.info.class_names),
    }


def train_teacher_to(args, tr: data.Dataset, ev: data.Dataset) -> tuple[dict, TeacherConfig, dict]:
    """Trains the teacher on ``tr``, evaluates on ``ev``, saves to ``<out>/teacher``."""
    config = TeacherConfig(num_classes=tr.info.num_classes, image_shape=tr.info.image_shape)
    tcfg = dataclasses.replace(
        train.TEACHER_TRAIN, epochs=_epochs(args.dataset, "teacher", args.epochs), seed=args.seed
    )
    start = time.perf_counter()
    params, history = train.train_teacher(
        (tr.images, tr.labels), (ev.images, ev.labels), config, tcfg, progress=not args.quiet
    )
    metrics = {**history[-1], "train_seconds": time.perf_counter() - start}
    path = checkpoint.save(
        Path(args.out) / "teacher", params, kind="teacher", config=config,
        metrics=metrics, dataset=_dataset_meta(args, tr),
    )
    viz.training_curves(history, ["train_loss", "eval_accuracy"], path / "curves.png")
    print(f"teacher: eval accuracy {metrics['eval_accuracy']:.4f} on {args.eval_split} "
          f"({metrics['train_seconds']:.0f}s); saved to {path}")
    return params, config, metrics


def train_vae_to(args, tr: data.Dataset, ev: data.Dataset) -> tuple[dict, VAEConfig, dict]:
    """Trains the VAE on ``tr``, evaluates on ``ev``, saves to ``<out>/vae`` with a recon PNG."""
    config = VAEConfig(latent_dim=args.latent_dim, image_shape=tr.info.image_shape)
    tcfg = dataclasses.replace(
        train.VAE_TRAIN, epochs=_epochs(args.dataset, "vae", args.epochs), seed=args.seed
    )
    start = time.perf_counter()
    params, history = train.train_vae(
        tr.images, ev.images, config, tcfg, progress=not args.quiet
    )
    metrics = {**history[-1], "train_seconds": time.perf_counter() - start}
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


def cmd_train_teacher(args) -> int:
    tr, ev = _load_splits(args)
    train_teacher_to(args, tr, ev)
    return 0


def cmd_train_vae(args) -> int:
    tr, ev = _load_splits(args)
    train_vae_to(args, tr, ev)
    return 0


def cmd_demo(args) -> int:
    """Trains (or restores, with --reuse) teacher and VAE on the dataset and writes a summary."""
    if args.quick:
        args.epochs = args.epochs or 2
    tr, ev = _load_splits(args)
    out = Path(args.out)
    summary: dict = {"dataset": _dataset_meta(args, tr), "jax_backend": jax.default_backend()}
    for kind, trainer in (("teacher", train_teacher_to), ("vae", train_vae_to)):
        if args.reuse and (out / kind / "meta.json").is_file():
            _, _, meta = checkpoint.restore(out / kind, kind=kind)
            print(f"{kind}: restored from {out / kind}")
            summary[kind] = meta["metrics"]
        else:
            summary[kind] = trainer(args, tr, ev)[2]
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    print(f"demo: summary in {out / 'summary.json'}; "
          f"figures in {out / 'vae'} and {out / 'teacher'}")
    return 0


def _common(p: argparse.ArgumentParser, *, out: str) -> None:
    p.add_argument("--dataset", default=DEFAULT_DATASET,
                   help=f"TFDS name (mnist, fashion_mnist, kmnist) or 'digits' (embedded; "
                   f"default {DEFAULT_DATASET}).")
    p.add_argument("--train-split", default="train", help="TFDS split syntax, e.g. 'test[:8000]'.")
    p.add_argument("--eval-split", default="test", help="TFDS split syntax, e.g. 'test[8000:]'.")
    p.add_argument("--data-dir", default=None,
                   help=f"Folder of raw dataset files (default ${data.DATA_DIR_ENV}).")
    p.add_argument("--epochs", type=int, default=None, help="Default depends on the dataset.")
    p.add_argument("--out", default=out, help="Output folder.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latent-dim", type=int, default=VAEConfig.latent_dim)
    p.add_argument("--quiet", action="store_true", help="No progress bars.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepvid", description="Explain image classifiers by distillation (DeepVID, JAX)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train-teacher", help="Train the CNN classifier to be explained.")
    _common(p, out="runs/default")
    p.set_defaults(func=cmd_train_teacher)
    p = sub.add_parser("train-vae", help="Train the VAE whose latent space gives neighbours.")
    _common(p, out="runs/default")
    p.set_defaults(func=cmd_train_vae)
    p = sub.add_parser("demo", help="The README's main job, on the embedded dataset by default.")
    _common(p, out="runs/demo")
    p.add_argument("--quick", action="store_true", help="Smallest setting (CI): 2 epochs.")
    p.add_argument("--reuse", action="store_true", help="Restore existing checkpoints in --out.")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (data.DataNotFoundError, data.CorruptDataError, checkpoint.CheckpointError,
            ValueError) as e:
        print(f"deepvid {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
