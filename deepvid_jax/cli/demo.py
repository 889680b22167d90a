"""``deepvid demo``: the whole pipeline end to end, on the embedded dataset by default: train
(or reuse) the teacher and the VAE, explain test images with DeepVID, write figures and a
summary (docs/getting-started.md)."""

from __future__ import annotations

import argparse

import jax

from deepvid_jax import files
from deepvid_jax.cli import options
from deepvid_jax.models import checkpoint, recipes
from deepvid_jax.models.bundle import Models
from deepvid_jax.runner import explain_report

SUMMARY = "summary.json"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Registers ``deepvid demo`` and returns its parser."""
    p = subparsers.add_parser("demo",
                              help="Train a teacher and a VAE and explain test images with "
                              "DeepVID, on the embedded dataset by default.")
    options.training_options(p, out="runs/demo")
    p.add_argument("--quick", action="store_true",
                   help="Smallest setting (CI): 2 epochs, 8 instances, 128 neighbours.")
    p.add_argument("--reuse", action="store_true", help="Restore existing checkpoints in --out.")
    options.explain_options(p, count=64)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Every check first, then one progress bar per stage and a short summary."""
    options.check_presets(args)
    if args.quick:
        args.epochs = args.epochs or 2
        args.count = min(args.count, 8)
        if not args.sparse:  # the preset keeps its own count
            args.neighbors = min(args.neighbors or options.preset(args).neighbors.num, 128)
    out = files.check_writable_dir(args.out, "--out")
    tr, ev = options.load_splits(args)
    n = min(args.count, len(ev.images))
    reuse = {kind: args.reuse and (out / kind / checkpoint.META).is_file()
             for kind in recipes.KINDS}
    reused = {kind: options.checkpoint_config(out, kind, tr.info)
              for kind in recipes.KINDS if reuse[kind]}
    plan = options.plan(args, tuple(k for k in recipes.KINDS if not reuse[k]), tr)
    config = options.explain_config(args, tr.info.num_classes,
                                    reused.get("vae") or plan.vae_config)
    files.claim_output_dir(out, "demo", [SUMMARY], legacy=[SUMMARY])
    explain_dir = explain_report.claim(out / "explanations", "deepvid", n, args.figures)

    meta = recipes.dataset_meta(args.dataset, tr, ev)
    summary: dict = {"dataset": meta, "jax_backend": jax.default_backend(),
                     "devices": [str(d) for d in jax.devices()]}
    for kind, trainer in (("teacher", recipes.train_teacher), ("vae", recipes.train_vae)):
        if reuse[kind]:
            metrics = checkpoint.read_meta(out / kind)["metrics"]
            print(f"{kind}: restored from {out / kind}")
        else:
            trained = trainer(plan, tr, ev, meta=meta, progress=not args.quiet)
            metrics = trained.metrics
            print(options.trained_line(kind, trained, args.eval_split))
        # the per-epoch history stays in the checkpoint's meta.json
        summary[kind] = {k: v for k, v in metrics.items() if k != "history"}
    models = Models.load(out)
    summary["explain"] = explain_report.explain_and_report(
        "deepvid", ev.images[:n], ev.labels[:n], tr.info.class_names, models, explain_dir,
        config=config, key=jax.random.PRNGKey(args.seed), figures=args.figures,
        chunk_size=args.chunk_size, progress=not args.quiet)
    files.write_json(out / SUMMARY, summary)
    files.finish_output_dir(out, [out / SUMMARY])
    fm = summary["explain"]["fidelity_mean"]
    print(f"demo: teacher accuracy {summary['teacher']['eval_accuracy']:.4f}; {n} images "
          f"explained, held-out fidelity top-1 {fm['top1']:.3f}, KL {fm['kl']:.3f}; figures "
          f"in {explain_dir}, training curves beside the checkpoints in {out}; summary in "
          f"{out / SUMMARY}")
    return 0
