"""Attentive surrogate saliency vs the others: quality and maps per second (issue 5).

On MNIST and KMNIST (models trained on ``test[:8000]``, ``count`` images of ``test[8000:]``,
the teacher's predicted class): deletion and insertion AUC (zero baseline, as in
``benchmarks/evaluate.py``), and average drop / increase in confidence when the teacher sees the
image times the min-max-normalised map, for the attentive surrogate, RISE, gradient, Integrated
Gradients, Grad-CAM and DeepVID's weight images. With ``--speed-only``: maps per second at
batch 1 and at the best of a few batch sizes, side by side in one run, for the attentive
surrogate, RISE and DeepVID.

Needs ``runs/<dataset>/{teacher,vae,surrogate,explainer}`` (``deepvid train-teacher``,
``train-vae``, ``train-surrogate``):

    python benchmarks/saliency.py --datasets mnist kmnist --count 500
    python benchmarks/saliency.py --speed-only
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from common import interval, machine_info

from deepvid_jax import files, viz
from deepvid_jax.data import sources as data
from deepvid_jax.explainers import registry as explainers
from deepvid_jax.explainers import rise
from deepvid_jax.metrics import registry as evaluation
from deepvid_jax.models import checkpoint

# shown as -> registered explainer (`deepvid_jax.explainers.registry`)
METHODS = {"attentive": "surrogate", "rise": "rise", "deepvid": "deepvid",
           "gradient": "gradient", "integrated_gradients": "integrated_gradients",
           "grad_cam": "grad_cam"}


class Setup:
    def __init__(self, root: Path, chunk: int, rise_masks: int):
        self.models = explainers.Models.load(root)
        self.apply, self.tp = self.models.teacher_apply, self.models.teacher_params
        self.smeta = checkpoint.read_meta(root / "surrogate")
        self.chunk = chunk
        self.configs = {"rise": rise.RiseConfig(num_masks=rise_masks)}

    def run(self, method: str, x: np.ndarray, cls: np.ndarray, key,
            chunk: int | None = None) -> np.ndarray:
        """Maps [B, H, W] (attributions summed over channels), by the registered explainer,
        in chunks of ``chunk`` images (default: the setup's)."""
        name = METHODS[method]
        out = explainers.explain(name, x, cls, key, models=self.models,
                                 config=self.configs.get(name), chunk_size=chunk or self.chunk)
        return out.attributions.sum(-1)


def quality(s: Setup, x, cls, maps) -> dict:
    """Deletion / insertion (zero baseline, 28 steps as in evaluate.py) and average drop /
    increase, by the registered metrics."""
    attr = maps[..., None]
    auc = evaluation.score("auc_zero", x, attr, cls, models=s.models, chunk_size=s.chunk,
                           config=evaluation.DeletionConfig(steps=28))
    drop = evaluation.score("average_drop", x, attr, cls, models=s.models, chunk_size=s.chunk)
    return {"deletion": interval(auc["deletion"]), "insertion": interval(auc["insertion"]),
            "average_drop_pct": interval(100 * drop["average_drop"]),
            "increase_pct": interval(100 * drop["increase"])}


def maps_per_second(s: Setup, method: str, x, cls, batch: int, repeats: int) -> float:
    """Steady-state maps/s at one batch size (compiled first; ``repeats`` timed calls)."""
    xs, cs = x[:batch], cls[:batch]
    s.run(method, xs, cs, jax.random.PRNGKey(0), chunk=batch)  # compile
    start = time.perf_counter()
    for r in range(repeats):
        s.run(method, xs, cs, jax.random.PRNGKey(r), chunk=batch)
    return repeats * batch / (time.perf_counter() - start)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", default=["mnist", "kmnist"])
    p.add_argument("--checkpoints", default="runs")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--count", type=int, default=500)
    p.add_argument("--chunk", type=int, default=50)
    p.add_argument("--rise-masks", type=int, default=1000)
    p.add_argument("--speed-batches", type=int, nargs="+", default=[1, 16, 128])
    p.add_argument("--speed-dataset", default="mnist")
    p.add_argument("--speed-only", action="store_true",
                   help="Only time maps/s (run on an otherwise idle machine); writes "
                   "saliency_speed.{json,md}. Without it: quality only, saliency.{json,md}.")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--figures", default="docs")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    result = {"machine": machine_info(), "args": vars(args), "quality": {}, "speed": []}
    lines = ["| dataset | method | deletion ↓ | insertion ↑ | average drop % ↓ | "
             "increase in confidence % ↑ |", "|---|---|---|---|---|---|"]
    for name in [] if args.speed_only else args.datasets:
        s = Setup(Path(args.checkpoints) / name, args.chunk, args.rise_masks)
        ds = data.load(name, "test[8000:]", data_dir=args.data_dir)
        x = ds.images[: args.count]
        cls = np.asarray(jnp.argmax(s.apply(s.tp, jnp.asarray(x)), -1))
        key = jax.random.PRNGKey(args.seed)
        result["quality"][name] = {"surrogate_agreement": s.smeta["metrics"].get(
            "eval_agreement")}
        shown = {}
        for method in METHODS:
            maps = s.run(method, x, cls, key)
            q = quality(s, x, cls, maps)
            result["quality"][name][method] = q
            shown[method] = maps[:10]
            lines.append(
                f"| {name} | {method} | "
                f"{q['deletion']['mean']:.3f} ± {q['deletion']['ci95']:.3f} | "
                f"{q['insertion']['mean']:.3f} ± {q['insertion']['ci95']:.3f} | "
                f"{q['average_drop_pct']['mean']:.1f} ± {q['average_drop_pct']['ci95']:.1f} | "
                f"{q['increase_pct']['mean']:.1f} ± {q['increase_pct']['ci95']:.1f} |")
            print(lines[-1], flush=True)
        viz.saliency_grid(x[:10], shown, Path(args.figures) / f"saliency_{name}.png",
                          labels=[str(c) for c in cls[:10]],
                          title=f"{name} test[8000:]: maps for the teacher's class")
    if args.speed_only:
        s = Setup(Path(args.checkpoints) / args.speed_dataset, args.chunk, args.rise_masks)
        x = data.load(args.speed_dataset, "test[8000:]", data_dir=args.data_dir).images
        x = x[: max(args.speed_batches)]
        cls = np.asarray(jnp.argmax(s.apply(s.tp, jnp.asarray(x)), -1))
        for method in ("attentive", "rise", "deepvid"):
            for b in args.speed_batches:
                rate = maps_per_second(s, method, x, cls, b, repeats=3 if b < 16 else 1)
                result["speed"].append({"method": method, "batch": b, "maps_per_s": rate})
                print(f"speed {method:10s} batch {b:4d}: {rate:9.1f} maps/s", flush=True)

    speed = ["| method | batch 1 (maps/s) | best batch | maps/s at best | vs RISE at best |",
             "|---|---|---|---|---|"]
    best = {}
    for method in ("attentive", "rise", "deepvid"):
        rows = [r for r in result["speed"] if r["method"] == method]
        if rows:
            best[method] = max(rows, key=lambda r: r["maps_per_s"])
    for method, b in best.items():
        one = next(r for r in result["speed"] if r["method"] == method and r["batch"] == 1)
        speed.append(f"| {method} | {one['maps_per_s']:.1f} | {b['batch']} | "
                     f"{b['maps_per_s']:.1f} | "
                     f"{b['maps_per_s'] / best['rise']['maps_per_s']:.1f}x |")
    text = "\n".join(speed if args.speed_only else lines) + "\n"
    print("\n" + text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "saliency_speed" if args.speed_only else "saliency"
    files.write_json(out / f"{stem}.json", result)
    files.write_text(out / f"{stem}.md", text)
    print(f"wrote {out}/{stem}.{{json,md}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
