"""``deepvid bench``: explanations/s, FLOPs and memory of every explainer on this machine."""

from __future__ import annotations

import argparse
from pathlib import Path

from deepvid_jax import files
from deepvid_jax.cli import options
from deepvid_jax.models.bundle import Models
from deepvid_jax.runner import bench as bench_lib


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Registers ``deepvid bench`` and returns its parser."""
    p = subparsers.add_parser("bench", help="Explanations/s, FLOPs and memory of every "
                              "explainer on this machine (CPU, GPU, TPU); runs of several "
                              "machines merge.")
    d = bench_lib.BenchConfig()
    options.split_options(p)
    p.add_argument("--checkpoints", default=None,
                   help="Folder with teacher/ and vae/ (default: untrained models, speed only).")
    p.add_argument("--methods", type=options.name_list(bench_lib.ROWS, "method"),
                   default=d.methods,
                   help="Comma-separated, or 'all': " + ", ".join(bench_lib.ROWS) + ".")
    p.add_argument("--batch-sizes", type=options.int_list, default=d.batch_sizes,
                   help="Comma-separated, e.g. 16,64,256,1024.")
    p.add_argument("--samples", type=options.int_list, default=d.samples,
                   help="Neighbours / perturbations / masks per explanation, comma-separated.")
    p.add_argument("--repeats", type=options.POSITIVE, default=d.repeats)
    p.add_argument("--pairs", type=options.NON_NEGATIVE, default=d.pairs,
                   help="Alternating timed calls of each DeepVID row and decode_classify; "
                   "their median time ratio is the one reported (0: the rows' own ratio).")
    p.add_argument("--student-block", type=options.NON_NEGATIVE, default=d.student_block,
                   help="DeepVID's students are fitted this many instances at a time "
                   f"(default {d.student_block}, best on a CPU); 0: the whole batch at once "
                   "(try it on an accelerator).")
    p.add_argument("--lime-images", type=options.POSITIVE, default=d.lime_images)
    p.add_argument("--out", default="runs/bench")
    p.set_defaults(func=run)
    return p


def _models(args: argparse.Namespace, info) -> tuple[Models, bool]:
    """(--checkpoints' models, True), else (untrained models of the data's shape, False):
    speed does not depend on the weights."""
    if args.checkpoints:
        folder = Path(args.checkpoints)
        options.checkpoint_config(folder, "teacher", info)
        options.checkpoint_config(folder, "vae", info)
        return Models.load(folder), True
    print("no --checkpoints: untrained models (speed only)")
    return Models.untrained(info.image_shape, info.num_classes), False


def run(args: argparse.Namespace) -> int:
    """Benchmarks, writes the results, prints the ratios."""
    config = bench_lib.BenchConfig(methods=args.methods, batch_sizes=args.batch_sizes,
                                   samples=args.samples, repeats=args.repeats, pairs=args.pairs,
                                   lime_images=args.lime_images,
                                   student_block=args.student_block or None)
    out = files.check_writable_dir(args.out, "--out")
    ds = options.load(args, args.split)
    models, trained = _models(args, ds.info)
    result = bench_lib.run(models, ds.images[:256], config, trained=trained)
    result["data"] = f"{args.dataset} {args.split}"
    written = bench_lib.write(result, out)
    print("\n".join(bench_lib.ratios(result)))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
