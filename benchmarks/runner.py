"""The dataset runner's costs (issue 13): its time over in-memory `explain`, and its memory.

1. Overhead: the same images, chunk size and explainer, once with ``dv.explain`` (arrays in
   memory) and once with ``explain_dataset`` into a fresh Zarr store (reading the split by
   chunks, writing every array, markers), compiled first; per explainer, in one run.
2. Memory: peak resident memory (``ru_maxrss``) of a whole ``deepvid run`` in a fresh process,
   over 1,000 and over 10,000 images (the whole MNIST test split).

    python benchmarks/runner.py --checkpoints runs/mnist --count 2000 \\
        --explainers deepvid gradient --memory-explainer gradient

Writes ``benchmarks/results/runner.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
from common import machine_info

from deepvid_jax import data, explainers, files, run

MEMORY_SCRIPT = """
import json, resource, sys
from deepvid_jax.cli import main
code = main(sys.argv[1:])
print("MAXRSS", json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
sys.exit(code)
"""


def overhead(models, source, name: str, chunk: int, seed: int) -> dict:
    """Seconds of in-memory explain and of the runner on the same images (both compiled)."""
    x, _ = source.read(0, len(source))
    classes = explainers.predicted_classes(x, models)
    key = jax.random.PRNGKey(seed)
    explainers.explain(name, x[:chunk], classes[:chunk], key, models=models, chunk_size=chunk)
    start = time.perf_counter()
    explainers.explain(name, x, classes, key, models=models, chunk_size=chunk)
    memory = time.perf_counter() - start
    # The runner also finds the classes (and the probabilities) with the teacher: what a user
    # of in-memory explain does first, timed too for the like-for-like comparison.
    explainers.predicted_classes(x[:chunk], models, chunk_size=chunk)
    start = time.perf_counter()
    explainers.predicted_classes(x, models, chunk_size=chunk)
    predict = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        config = run.RunConfig(explainers=(name,), chunk_size=chunk, seed=seed)
        warm = data.Source(*source.read(0, chunk), source.info)  # compile on one chunk
        run.explain_dataset(warm, models, Path(tmp) / "warm.zarr", config, progress=False)
        start = time.perf_counter()
        run.explain_dataset(source, models, Path(tmp) / "store.zarr", config, progress=False)
        runner = time.perf_counter() - start
    return {"explainer": name, "images": len(source), "chunk": chunk,
            "in_memory_s": memory, "predict_s": predict, "runner_s": runner,
            "overhead": runner / memory - 1,
            "overhead_vs_predict_and_explain": runner / (memory + predict) - 1}


def peak_memory(args, count: int) -> dict:
    """Peak RSS (MiB) of ``deepvid run`` over the first ``count`` test images."""
    out = Path(tempfile.mkdtemp()) / "store.zarr"
    try:
        cmd = [sys.executable, "-c", MEMORY_SCRIPT, "run", "--dataset", args.dataset,
               "--split", f"test[:{count}]", "--explainers", args.memory_explainer,
               "--checkpoints", args.checkpoints, "--out", str(out), "--chunk-size",
               str(args.chunk), "--quiet"]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    kib = json.loads(proc.stdout.split("MAXRSS")[-1])
    return {"images": count, "explainer": args.memory_explainer, "peak_rss_mib": kib / 1024,
            "seconds": seconds}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoints", default="runs/mnist")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--explainers", nargs="+", default=["deepvid", "gradient"])
    p.add_argument("--memory-explainer", default="gradient")
    p.add_argument("--memory-counts", type=int, nargs="*", default=[1000, 10000])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)

    models = explainers.Models.load(args.checkpoints)
    source = data.open_source(args.dataset, f"test[:{args.count}]", data_dir=args.data_dir)
    result = {"machine": machine_info(), "args": vars(args), "overhead": [], "memory": []}
    for name in args.explainers:
        r = overhead(models, source, name, args.chunk, args.seed)
        result["overhead"].append(r)
        print(f"{name}: in memory {r['in_memory_s']:.2f} s (+ classes {r['predict_s']:.2f} s), "
              f"runner {r['runner_s']:.2f} s ({100 * r['overhead']:+.1f} %; "
              f"{100 * r['overhead_vs_predict_and_explain']:+.1f} % over classes + explain)",
              flush=True)
    for count in args.memory_counts:
        r = peak_memory(args, count)
        result["memory"].append(r)
        print(f"deepvid run {r['explainer']} over {count} images: peak RSS "
              f"{r['peak_rss_mib']:.0f} MiB ({r['seconds']:.0f} s)", flush=True)

    lines = [f"Runner vs in-memory `dv.explain`, {args.count} {args.dataset} test images, chunk "
             f"{args.chunk}, compiled first:", "",
             "| explainer | in memory (s) | + the teacher's classes (s) | runner into Zarr (s) "
             "| overhead over explain | over classes + explain |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['explainer']} | {r['in_memory_s']:.2f} | {r['predict_s']:.2f} | "
              f"{r['runner_s']:.2f} | {100 * r['overhead']:+.1f} % | "
              f"{100 * r['overhead_vs_predict_and_explain']:+.1f} % |"
              for r in result["overhead"]]
    if result["memory"]:
        base = result["memory"][0]["peak_rss_mib"]
        lines += ["", f"Peak resident memory of `deepvid run --explainers "
                  f"{args.memory_explainer}` (a fresh process, whole run):", "",
                  "| images | peak RSS (MiB) | vs the first |", "|---|---|---|"]
        lines += [f"| {r['images']} | {r['peak_rss_mib']:.0f} | "
                  f"{r['peak_rss_mib'] / base:.2f}x |" for r in result["memory"]]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    out = Path(args.out)
    files.write_json(out / "runner.json", result)
    files.write_text(out / "runner.md", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


