"""``deepvid explain``: explain images of a split with any registered method (DeepVID by
default) and trained checkpoints; figures and a JSON summary in ``--out``."""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np

from deepvid_jax.cli import options
from deepvid_jax.explainers import registry
from deepvid_jax.runner import explain_report


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Registers ``deepvid explain`` and returns its parser."""
    p = subparsers.add_parser("explain", help="Explain images with trained checkpoints, by any "
                              "registered method (DeepVID by default).")
    options.split_options(p)
    p.add_argument("--method", choices=tuple(registry.METHODS), default="deepvid",
                   help="The explainer (default deepvid); the DeepVID options below apply to "
                   "deepvid only.")
    p.add_argument("--indices", default="0:16", help="'start:stop' or 'i,j,k' within the split.")
    p.add_argument("--checkpoints", required=True,
                   help="Folder with teacher/ and vae/ (the --out of train-* or demo); "
                   "surrogate/ and explainer/ for --method surrogate.")
    options.teacher_option(p, " --checkpoints then gives the rest (vae/ for deepvid).")
    p.add_argument("--out", default="runs/explain")
    p.add_argument("--seed", type=options.NON_NEGATIVE, default=0)
    p.add_argument("--quiet", action="store_true")
    options.explain_options(p, count=0)
    p.set_defaults(func=run)
    return p


def parse_indices(text: str, n: int) -> np.ndarray:
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


def run(args: argparse.Namespace) -> int:
    """Checks everything, explains, prints one line."""
    options.check_presets(args)
    if args.method != "deepvid":
        given = options.deepvid_flags_given(args)
        if given:
            raise ValueError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} "
                             f"DeepVID's option{'s' if len(given) > 1 else ''}; --method "
                             f"{args.method} takes its registered config (leave "
                             f"{'it' if len(given) == 1 else 'them'} out).")
    ds = options.load(args, args.split)
    idx = parse_indices(args.indices, len(ds.images))
    method = registry.get(args.method)
    models = options.models(args, ds.info, vae="vae" in method.needs)
    config = (options.explain_config(args, ds.info.num_classes, models.vae_config)
              if args.method == "deepvid" else None)
    method.check(models, method.config if config is None else config)
    out = explain_report.claim(Path(args.out), args.method, len(idx), args.figures)
    s = explain_report.explain_and_report(
        args.method, ds.images[idx], ds.labels[idx], ds.info.class_names, models, out,
        config=config, key=jax.random.PRNGKey(args.seed), figures=args.figures,
        chunk_size=args.chunk_size, progress=not args.quiet)
    fidelity = s.get("fidelity_mean", {})
    line = (f"explain: {s['instances']} instances by {args.method} in "
            f"{s['explain_seconds_incl_compile']:.1f}s (incl. compile)")
    if "top1" in fidelity:
        line += f"; held-out fidelity top-1 {fidelity['top1']:.3f}"
        line += f", KL {fidelity['kl']:.3f}" if "kl" in fidelity else ""
    if "flip_fraction_mean" in s:
        line += f"; {s['flip_fraction_mean']:.0%} of neighbours change the teacher's label"
    print(line + f"; figures in {out}")
    return 0
