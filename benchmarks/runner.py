"""The dataset runner's costs (issue 13): its time over in-memory `explain`, and its memory.

1. Overhead: the same images, chunk size and explainer, once with ``dv.explain`` (arrays in
   memory) and once with ``explain_dataset`` into a fresh Zarr store (reading the split by
   chunks, writing every array, markers), compiled first; per explainer, in one run, timed in
   turn several times (medians: this CPU's speed varies with load).
   Then the checks a finished store costs: `integrity.verify` of the last store (every chunk
   read back against its checksums) and re-running the finished run (identity, the teacher's
   probe, verification: nothing left to compute), each once.
2. Memory: peak resident memory (``ru_maxrss``) of a whole ``deepvid run`` in a fresh process,
   over 1,000 and over 10,000 images (the whole MNIST test split).

    python benchmarks/runner.py --checkpoints runs/mnist --count 2000 \\
        --explainers deepvid gradient --chunk 64 256 --memory-explainer gradient

Writes ``benchmarks/results/runner/runner.{json,md}``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from common import machine_info

from deepvid_jax import files
from deepvid_jax.data import sources as data
from deepvid_jax.explainers import registry as explainers
from deepvid_jax.runner import integrity, run

MEMORY_SCRIPT = """
import json, resource, sys
from deepvid_jax.cli import main
code = main(sys.argv[1:])
print("MAXRSS", json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
sys.exit(code)
"""


def overhead(models, source, name: str, chunk: int, seed: int, repeats: int,
             max_seconds: float) -> dict:
    """Seconds of in-memory explain and of the runner on the same images (all compiled first),
    timed in turn ``repeats`` times (fewer once ``max_seconds`` are spent); medians and minima.

    Three ways: ``explain`` handed the classes; ``explain`` finding them (the teacher's argmax,
    what it does without ``classes``: the in-memory equivalent of a run, which finds them and
    stores the teacher's probabilities too); the runner into a fresh Zarr store."""
    x, _ = source.read(0, len(source))
    classes = explainers.predicted_classes(x, models)
    key = jax.random.PRNGKey(seed)
    config = run.RunConfig(explainers=(name,), chunk_size=chunk, seed=seed)

    def given():
        explainers.explain(name, x, classes, key, models=models, chunk_size=chunk)

    def found():
        explainers.explain(name, x, None, key, models=models, chunk_size=chunk)

    stores = itertools.count()  # a fresh store each call

    def runner():
        run.explain_dataset(source, models, Path(tmp) / f"store{next(stores)}.zarr", config,
                            progress=False)

    times = {"in_memory_s": [], "in_memory_with_classes_s": [], "runner_s": []}
    with tempfile.TemporaryDirectory() as tmp:
        explainers.explain(name, x[:chunk], classes[:chunk], key, models=models,
                           chunk_size=chunk)
        explainers.predicted_classes(x[:256], models)
        warm = data.Source(*source.read(0, chunk), source.info)  # compile on one chunk
        run.explain_dataset(warm, models, Path(tmp) / "warm.zarr", config, progress=False)
        spent = time.perf_counter()
        for _ in range(repeats):
            for field, fn in zip(times, (given, found, runner), strict=True):
                start = time.perf_counter()
                fn()
                times[field].append(time.perf_counter() - start)
            if time.perf_counter() - spent > max_seconds:
                break
        last = Path(tmp) / f"store{next(stores) - 1}.zarr"
        start = time.perf_counter()
        damage = integrity.verify(last)
        verify_s = time.perf_counter() - start
        assert damage == [], damage
        start = time.perf_counter()
        again = run.explain_dataset(source, models, last, config, progress=False)
        resume_s = time.perf_counter() - start
        assert again["chunks_computed"] == 0
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"explainer": name, "images": len(source), "chunk": chunk,
            "repeats": len(times["runner_s"]), "times": times, **med,
            "verify_s": verify_s, "finished_rerun_s": resume_s,
            "overhead": med["runner_s"] / med["in_memory_with_classes_s"] - 1,
            "overhead_vs_explain_given_classes": med["runner_s"] / med["in_memory_s"] - 1,
            "overhead_of_minima": min(times["runner_s"])
            / min(times["in_memory_with_classes_s"]) - 1}


def peak_memory(args, count: int) -> dict:
    """Peak RSS (MiB) of ``deepvid run`` over the first ``count`` test images."""
    out = Path(tempfile.mkdtemp()) / "store.zarr"
    try:
        cmd = [sys.executable, "-c", MEMORY_SCRIPT, "run", "--dataset", args.dataset,
               "--split", f"test[:{count}]", "--explainers", args.memory_explainer,
               "--checkpoints", args.checkpoints, "--out", str(out), "--chunk-size",
               str(args.chunk[0]), "--quiet"]
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
    p.add_argument("--chunk", type=int, nargs="+", default=[64, 256],
                   help="chunk sizes of the overhead (the memory runs use the first)")
    p.add_argument("--explainers", nargs="+", default=["deepvid", "gradient"])
    p.add_argument("--memory-explainer", default="gradient")
    p.add_argument("--memory-counts", type=int, nargs="*", default=[1000, 10000])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=5,
                   help="timings of each way, in turn (medians reported)")
    p.add_argument("--max-seconds", type=float, default=300,
                   help="stop repeating an explainer once this is spent (DeepVID: once)")
    p.add_argument("--out", default="benchmarks/results/runner")
    p.add_argument("--append", action="store_true",
                   help="merge into the existing runner.json (rows of the same explainer and "
                        "chunk, and the memory rows when measured, are replaced)")
    args = p.parse_args(argv)

    models = explainers.Models.load(args.checkpoints)
    source = data.open_source(args.dataset, f"test[:{args.count}]", data_dir=args.data_dir)
    result = {"machine": machine_info(), "args": vars(args), "overhead": [], "memory": []}
    for name, chunk in [(n, c) for n in args.explainers for c in args.chunk]:
        r = overhead(models, source, name, chunk, args.seed, args.repeats, args.max_seconds)
        result["overhead"].append(r)
        print(f"{name}, chunk {chunk}: explain {r['in_memory_s']:.2f} s given the classes, "
              f"{r['in_memory_with_classes_s']:.2f} s finding them; runner "
              f"{r['runner_s']:.2f} s ({100 * r['overhead']:+.1f} %; over explain given the "
              f"classes {100 * r['overhead_vs_explain_given_classes']:+.1f} %); medians of "
              f"{r['repeats']}; verify {r['verify_s']:.2f} s, re-run of the finished store "
              f"{r['finished_rerun_s']:.2f} s", flush=True)
    for count in args.memory_counts:
        r = peak_memory(args, count)
        result["memory"].append(r)
        print(f"deepvid run {r['explainer']} over {count} images: peak RSS "
              f"{r['peak_rss_mib']:.0f} MiB ({r['seconds']:.0f} s)", flush=True)

    out = Path(args.out)
    if args.append and (out / "runner.json").exists():
        old = json.loads((out / "runner.json").read_text())
        new = {(r["explainer"], r["chunk"]) for r in result["overhead"]}
        result["overhead"] = [r for r in old["overhead"] if (r["explainer"], r["chunk"])
                              not in new] + result["overhead"]
        result["memory"] = result["memory"] or old["memory"]
        result["earlier_runs"] = [*old.get("earlier_runs", []),
                                  {"machine": old["machine"], "args": old["args"]}]
    lines = [f"Runner vs in-memory `dv.explain` at the same chunk size, {args.count} "
             f"{args.dataset} test images, compiled first; medians of the repeats, timed in "
             "turn:", "",
             "| explainer | chunk | repeats | explain, classes given (s) | explain, finding the "
             "classes (s) | runner into Zarr (s) | overhead | over explain given the classes | "
             "of the minima | verify the store (s) | re-run the finished store (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['explainer']} | {r['chunk']} | {r['repeats']} | {r['in_memory_s']:.2f} | "
              f"{r['in_memory_with_classes_s']:.2f} | {r['runner_s']:.2f} | "
              f"**{100 * r['overhead']:+.1f} %** | "
              f"{100 * r['overhead_vs_explain_given_classes']:+.1f} % | "
              f"{100 * r['overhead_of_minima']:+.1f} % | "
              + (f"{r['verify_s']:.2f} | {r['finished_rerun_s']:.2f} |" if "verify_s" in r
                 else "- | - |") for r in result["overhead"]]
    if result["memory"]:
        base = result["memory"][0]["peak_rss_mib"]
        lines += ["", f"Peak resident memory of `deepvid run --explainers "
                  f"{args.memory_explainer}` (a fresh process, whole run):", "",
                  "| images | peak RSS (MiB) | vs the first |", "|---|---|---|"]
        lines += [f"| {r['images']} | {r['peak_rss_mib']:.0f} | "
                  f"{r['peak_rss_mib'] / base:.2f}x |" for r in result["memory"]]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    files.write_json(out / "runner.json", result)
    files.write_text(out / "runner.md", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


