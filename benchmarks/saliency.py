"""Attentive surrogate saliency vs the others: quality and maps per second.

On each setting (`common.SETTINGS`: MNIST and KMNIST, ``--count`` images of the evaluation
split, the teacher's predicted class): deletion and insertion AUC (zero baseline, 28 steps, as
in ``benchmarks/evaluate.py``), and average drop / increase in confidence when the teacher sees
the image times the min-max-normalised map, by `dv.score`, for the attentive surrogate, RISE,
gradient, Integrated Gradients, Grad-CAM and DeepVID's weight images, by `dv.explain`. With
``--speed-only``: maps per second at each of a few batch sizes (`deepvid_jax.runner.bench.measure`,
one compiled program per batch, median of the timed calls) for the attentive surrogate, RISE and
DeepVID.

Needs ``runs/<setting>/{teacher,vae,surrogate,explainer}`` (``deepvid train-teacher``,
``train-vae``, ``train-surrogate``):

    python benchmarks/saliency.py --settings mnist kmnist --count 500
    python benchmarks/saliency.py --speed-only

Writes ``benchmarks/results/saliency/saliency.{json,md}`` and ``saliency_<setting>.png`` (or,
with ``--speed-only``, ``saliency_speed.{json,md}``).
"""

from __future__ import annotations

import jax
from common import (
    arguments,
    checkpoints,
    interval,
    load,
    out_dir,
    rewrite_study,
    setting,
    timing,
    write_study,
)

import deepvid_jax as dv
from deepvid_jax import viz
from deepvid_jax.explainers.registry import predicted_classes
from deepvid_jax.models import checkpoint

# shown as -> registered explainer (`deepvid_jax.explainers.registry`)
METHODS = {"attentive": "surrogate", "rise": "rise", "deepvid": "deepvid",
           "gradient": "gradient", "integrated_gradients": "integrated_gradients",
           "grad_cam": "grad_cam"}
SPEED = ("attentive", "rise", "deepvid")


def configs(args) -> dict:
    """Registered name -> the config used (the registered default otherwise)."""
    return {"rise": dv.RiseConfig(num_masks=args.rise_masks)}


def quality(models: dv.Models, x, cls, maps, chunk: int) -> dict:
    """Deletion / insertion (zero baseline, the library's default steps, as in evaluate.py) and
    average drop / increase of maps [B, H, W], by the registered metrics."""
    attr = maps[..., None]
    auc = dv.score("auc_zero", x, attr, cls, models=models, chunk_size=chunk)
    drop = dv.score("average_drop", x, attr, cls, models=models, chunk_size=chunk)
    return {"deletion": interval(auc["deletion"]), "insertion": interval(auc["insertion"]),
            "average_drop_pct": interval(100 * drop["average_drop"]),
            "increase_pct": interval(100 * drop["increase"])}


def quality_run(args) -> dict:
    result = {"args": vars(args), "quality": {}}
    for name in args.settings:
        models, ds = load(name, runs=args.runs, data_dir=args.data_dir, count=args.count)
        x = ds.images
        cls = predicted_classes(x, models)
        key = jax.random.PRNGKey(args.seed)
        smeta = checkpoint.read_meta(checkpoints(name, args.runs) / "surrogate")
        result["quality"][name] = {"split": setting(name).eval_split,
                                   "surrogate_agreement": smeta["metrics"].get("eval_agreement")}
        shown = {}
        for method, registered in METHODS.items():
            maps = dv.explain(registered, x, cls, key, models=models,
                              config=configs(args).get(registered),
                              chunk_size=args.chunk).attributions.sum(-1)
            q = quality(models, x, cls, maps, args.chunk)
            result["quality"][name][method] = q
            shown[method] = maps[:10]
            print(name, method, {k: round(v["mean"], 3) for k, v in q.items()}, flush=True)
        viz.saliency_grid(x[:10], shown, out_dir(args, "saliency") / f"saliency_{name}.png",
                          labels=[str(c) for c in cls[:10]],
                          title=f"{name} {setting(name).eval_split}: maps for the teacher's "
                          "class")
    return result


def speed_run(args) -> dict:
    name = args.settings[0]
    models, ds = load(name, runs=args.runs, data_dir=args.data_dir,
                      count=max(args.speed_batches))
    cls = predicted_classes(ds.images, models)
    rows = []
    for method in SPEED:
        registered = METHODS[method]
        for b in args.speed_batches:
            t = timing(registered, models, ds.images[:b], cls[:b],
                       config=configs(args).get(registered), repeats=3)
            rows.append({"method": method, "batch": b, "maps_per_s": t["explanations_per_s"]})
            print(f"speed {method:10s} batch {b:4d}: {rows[-1]['maps_per_s']:9.1f} maps/s",
                  flush=True)
    return {"args": vars(args), "setting": name, "speed": rows}


def quality_markdown(result: dict) -> str:
    lines = ["| dataset | method | deletion ↓ | insertion ↑ | average drop % ↓ | "
             "increase in confidence % ↑ |", "|---|---|---|---|---|---|"]
    for name, rows in result["quality"].items():
        for method in METHODS:
            q = rows[method]
            lines.append(
                f"| {name} | {method} | "
                f"{q['deletion']['mean']:.3f} ± {q['deletion']['ci95']:.3f} | "
                f"{q['insertion']['mean']:.3f} ± {q['insertion']['ci95']:.3f} | "
                f"{q['average_drop_pct']['mean']:.1f} ± {q['average_drop_pct']['ci95']:.1f} | "
                f"{q['increase_pct']['mean']:.1f} ± {q['increase_pct']['ci95']:.1f} |")
    return "\n".join(lines) + "\n"


def speed_markdown(result: dict) -> str:
    lines = ["| method | batch 1 (maps/s) | best batch | maps/s at best | vs RISE at best |",
             "|---|---|---|---|---|"]
    best = {m: max((r for r in result["speed"] if r["method"] == m),
                   key=lambda r: r["maps_per_s"]) for m in SPEED}
    for method, b in best.items():
        one = [r["maps_per_s"] for r in result["speed"] if r["method"] == method
               and r["batch"] == 1]
        lines.append(f"| {method} | {f'{one[0]:.1f}' if one else '–'} | {b['batch']} | "
                     f"{b['maps_per_s']:.1f} | "
                     f"{b['maps_per_s'] / best['rise']['maps_per_s']:.1f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = arguments(__doc__.split("\n")[0], settings=("mnist", "kmnist"), count=500)
    p.add_argument("--chunk", type=int, default=50)
    p.add_argument("--rise-masks", type=int, default=1000)
    p.add_argument("--speed-batches", type=int, nargs="+", default=[1, 16, 128])
    p.add_argument("--speed-only", action="store_true",
                   help="Only time maps/s on the first setting (run on an otherwise idle "
                   "machine); writes saliency_speed.{json,md}. Without it: quality only, "
                   "saliency.{json,md}.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--replot", action="store_true",
                   help="Only redraw the tables from the existing results.")
    args = p.parse_args(argv)
    if args.replot:
        rewrite_study(out_dir(args, "saliency"), "saliency", quality_markdown)
        rewrite_study(out_dir(args, "saliency"), "saliency_speed", speed_markdown)
    elif args.speed_only:
        write_study(out_dir(args, "saliency"), "saliency_speed", speed_run(args),
                    speed_markdown)
    else:
        write_study(out_dir(args, "saliency"), "saliency", quality_run(args), quality_markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
