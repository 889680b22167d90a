"""Ground truth: do explanations point at the evidence the classifier really uses?

Two kinds of known evidence, every registered explainer through the same protocol:

1. A teacher that provably ignores a region: the trained MNIST / KMNIST teacher composed with a
   fixed input mask (`groundtruth.masked_teacher`; default: the left half hidden). Reported: the
   share of each map's |relevance| on the hidden pixels (lower is better; the hidden area
   fraction is what a map with no information scores), for the class the masked teacher
   predicts on held-out images (``test[8000:]``, the teachers trained on ``test[:8000]``).
2. `synthetic`, whose per-image masks mark the shape that carries the class: relevance mass
   accuracy, relevance rank accuracy and the pointing game on that mask (higher is better; a
   uniform map scores the mask's area fraction), for the true class.

    python benchmarks/ground_truth.py --count 500

The settings (dataset, split, checkpoints) are `common.SETTINGS`', the models loaded by
`common.load`; explanations by `dv.explain`, the metrics by `dv.score` (the registered
localisation metrics, each map against its region). Mean and 95 % interval (1.96 standard
errors) over the images; DeepVID's held-out top-1 on its
own VAE neighbours beside it. Grad-CAM reads the teacher's conv maps, so for a masked teacher it
runs on the masked images (exactly what the masked teacher computes). The attentive surrogate is
left out: it is distilled from one teacher and would need a surrogate per masked teacher.
Writes ``benchmarks/results/ground_truth/ground_truth.{json,md}`` (``--name``) and
``docs/ground_truth_*.jpg``; ``--methods M ... --merge`` recomputes some rows into the existing
results.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import common
import jax
import numpy as np
from common import fmt_interval, interval, machine_info, to_jpeg

import deepvid_jax as dv
from deepvid_jax import files, viz
from deepvid_jax.data.sources import open_source
from deepvid_jax.explainers.deepvid import core as deepvid
from deepvid_jax.metrics import groundtruth

# The registered localisation metrics of the synthetic setting, under the column names its
# results have always been stored with.
CLASS_MASK_METRICS = {"mass": "relevance_mass", "rank": "relevance_rank",
                      "pointing": "pointing_game"}
HIDDEN_SETTINGS = ("mnist", "kmnist")


# Rows beside the registered methods: (method, its config) (DeepVID's former default).
VARIANTS = {"deepvid_fast": ("deepvid", deepvid.FAST)}


def explain_all(methods, models, images, classes, key, masked_images=None):
    """name -> (Attribution, seconds) for every method (compiled first)."""
    out = {}
    for name in methods:
        m = models
        x = images
        if name == "grad_cam" and masked_images is not None:
            m, x = masked_images
        method, config = VARIANTS.get(name, (name, None))
        if config is not None:
            config = dataclasses.replace(config, vae=m.vae_config,
                                         num_classes=m.num_classes)
        dv.explain(method, x[:2], classes[:2], models=m, config=config)  # compile
        start = time.perf_counter()
        out[name] = (dv.explain(method, x, classes, key, models=m, config=config),
                     time.perf_counter() - start)
        print(f"  {name:22s} {out[name][1] / len(x) * 1e3:8.1f} ms/image", flush=True)
    return out


def blind_setting(name: str, mask: str, count: int, data_dir=None, runs="runs"):
    """The first ``count`` images of setting ``name`` and its teacher blind to ``mask``:
    (base models, models with the masked teacher, images [N, H, W, C], the classes the masked
    teacher predicts [N], hidden [H, W] bool)."""
    base, ds = common.load(name, runs=runs, data_dir=data_dir, count=count)
    x = ds.images
    h, w, _ = ds.info.image_shape
    hidden = groundtruth.region_mask(mask, h, w)
    teacher = groundtruth.masked_teacher(dv.Teacher(base.teacher_apply, base.teacher_params,
                                                    base.num_classes), hidden)
    models = dataclasses.replace(base, teacher_apply=teacher.apply, teacher_config=None)
    classes = np.asarray(jax.jit(teacher.apply)(teacher.params, x).argmax(-1))
    return base, models, x, classes, hidden


def hidden_setting(name: str, args, methods) -> dict:
    s = common.setting(name)
    dataset, split = s.dataset, s.eval_split
    base, models, x, classes, hidden = blind_setting(name, args.mask, args.count, args.data_dir,
                                                     args.runs)
    h, w = hidden.shape
    filled = np.where(hidden[None, :, :, None], 0.0, x).astype(np.float32)
    results = explain_all(methods, models, x, classes, jax.random.PRNGKey(args.seed),
                          masked_images=(base, filled))
    region = np.broadcast_to(hidden, (len(x), h, w))
    rows = {}
    for method, (attr, seconds) in results.items():
        leak = dv.score("relevance_mass", x, attr.attributions, regions=region)["relevance_mass"]
        rows[method] = {"hidden_mass": interval(leak), "seconds_per_image": seconds / len(x)}
        if "fidelity_top1" in attr.extras:  # the students' and LIME's held-out fit
            rows[method]["heldout_top1"] = interval(attr.extras["fidelity_top1"])
        print(f"{method:22s} mass on the hidden {args.mask}: {leak.mean():.3f}", flush=True)
    if not args.merge:
        maps = {k: np.abs(a.attributions[:6]).sum(-1) for k, (a, _) in results.items()}
        maps = {f"hidden ({args.mask})": np.broadcast_to(hidden, (6, h, w)).astype(np.float32),
                **maps}
        half = "half" if args.mask in ("left", "right", "top", "bottom") else ""
        to_jpeg(viz.saliency_grid(x[:6], maps, Path(args.figures) / f"ground_truth_{name}.png",
                                  title=f"{dataset}, teacher blind to the {args.mask} {half}: "
                                  "|attribution|"))
    return {"dataset": dataset, "split": split, "images": len(x), "hidden": args.mask,
            "hidden_area": float(hidden.mean()), "methods": rows}


def class_mask_setting(args, methods) -> dict:
    s = common.setting("synthetic")
    dataset, split = s.dataset, s.eval_split
    models = dv.Models.load(common.checkpoints("synthetic", args.runs))
    source = open_source(dataset, split)
    n = min(args.count, len(source))
    x, y = source.read(0, n)
    masks = source.masks()[:n]
    results = explain_all(methods, models, x, y, jax.random.PRNGKey(args.seed))
    rows = {}
    for method, (attr, seconds) in results.items():
        rows[method] = {k: interval(dv.score(metric, x, attr.attributions, regions=masks)[metric])
                        for k, metric in CLASS_MASK_METRICS.items()}
        rows[method]["seconds_per_image"] = seconds / n
        print(f"{method:22s} " + ", ".join(f"{k} {v['mean']:.3f}" for k, v in rows[method].items()
                                          if isinstance(v, dict)), flush=True)
    if not args.merge:
        maps = {"class mask": masks[:6].astype(np.float32),
                **{k: np.abs(a.attributions[:6]).sum(-1) for k, (a, _) in results.items()}}
        to_jpeg(viz.saliency_grid(x[:6], maps, Path(args.figures) / "ground_truth_synthetic.png",
                                  labels=[source.info.class_names[c] for c in y[:6]],
                                  title="synthetic: the shape carries the class; |attribution|"))
    return {"dataset": dataset, "split": split, "images": n,
            "mask_area": float(masks.mean()), "methods": rows}


def markdown(result: dict) -> str:
    lines = []
    for s in result["settings"].values():
        if "hidden" in s:
            lines += [f"**{s['dataset']}**, teacher blind to the {s['hidden']} region "
                      f"({s['hidden_area']:.0%} of the pixels; {s['images']} held-out images): "
                      "share of |relevance| on pixels the teacher never sees (lower is better)",
                      "", "| method | on the hidden region | student's held-out top-1 |",
                      "|---|---|---|"]
            for m, r in s["methods"].items():
                top1 = (f"{r['heldout_top1']['mean']:.3f}" if "heldout_top1" in r else "–")
                lines.append(f"| {m} | {fmt_interval(r['hidden_mass'])} | {top1} |")
            lines += [f"| (no information) | {s['hidden_area']:.3f} | |", ""]
        else:
            lines += [f"**{s['dataset']}**, the shape's mask ({s['mask_area']:.1%} of the pixels; "
                      f"{s['images']} test images), true class (higher is better)", "",
                      "| method | relevance mass accuracy | relevance rank accuracy | "
                      "pointing game |", "|---|---|---|---|"]
            for m, r in s["methods"].items():
                lines.append(f"| {m} | " + " | ".join(
                    fmt_interval(r[k]) for k in CLASS_MASK_METRICS) + " |")
            a = s["mask_area"]
            lines += [f"| (uniform map) | {a:.3f} | {a:.3f} | {a:.3f} |", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--settings", nargs="+", default=[*HIDDEN_SETTINGS, "synthetic"],
                   choices=[*HIDDEN_SETTINGS, "synthetic"],
                   help="mnist, kmnist: a teacher blind to --mask; synthetic: the shapes' masks "
                        "(datasets, splits, checkpoints: common.SETTINGS).")
    p.add_argument("--runs", default="runs",
                   help="The folder holding each setting's checkpoints (runs/mnist, ...).")
    p.add_argument("--count", type=int, default=500)
    p.add_argument("--mask", default="left", choices=groundtruth.MASKS)
    p.add_argument("--methods", nargs="+", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="benchmarks/results/ground_truth")
    p.add_argument("--figures", default="docs")
    p.add_argument("--name", default="ground_truth",
                   help="results file stem (the synthetic run: ground_truth_synthetic)")
    p.add_argument("--merge", action="store_true",
                   help="merge these methods' rows into the existing results (other methods and "
                        "settings kept; figures, which need every method, are not redrawn)")
    args = p.parse_args(argv)
    methods = args.methods or [*(m for m in dv.METHODS if m != "surrogate"), *VARIANTS]
    Path(args.figures).mkdir(parents=True, exist_ok=True)
    result = {"args": vars(args), "machine": machine_info(), "settings": {}}
    for name in args.settings:
        print(f"== {name}", flush=True)
        result["settings"][name] = (class_mask_setting(args, methods) if name == "synthetic"
                                    else hidden_setting(name, args, methods))
    out = Path(args.out)
    if args.merge and (out / f"{args.name}.json").exists():
        old = json.loads((out / f"{args.name}.json").read_text())
        for name, setting in result["settings"].items():
            if name in old["settings"]:
                rows = {**old["settings"][name]["methods"], **setting["methods"]}
                old["settings"][name] = {**setting, "methods": rows}
            else:
                old["settings"][name] = setting
        old.setdefault("merged", []).append({"args": vars(args), "machine": machine_info()})
        result = old
    text = markdown(result)
    print("\n" + text)
    files.write_json(out / f"{args.name}.json", result)
    files.write_text(out / f"{args.name}.md", text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
