"""How local are DeepVID's neighbourhoods? Fixed latent scales against the calibrated radius
(issue 12, part 2): held-out fidelity, seed agreement, label-flip fraction, time, and a figure of
neighbours, in one run on one machine.

    python benchmarks/locality.py --checkpoints runs/mnist --dataset mnist --split 'test[8000:]'

Every row uses the same student (ridge, fixed relative penalty 0.3: the most stable faithful
one in `student_methods.py`), the same images and seeds. Fidelity is measured on each row's own
held-out neighbours.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from common import interval, machine_info

from deepvid_jax import checkpoint, data, files, metrics, viz
from deepvid_jax import explain as ex
from deepvid_jax.models import teacher_logits
from deepvid_jax.neighbors import NeighborConfig
from deepvid_jax.student import StudentConfig

STUDENT = StudentConfig(method="ridge", penalties=(0.3,))
SETTINGS = {
    "latent scale 1 (default)": NeighborConfig(latent_scale=1.0),
    "latent scale 0.5": NeighborConfig(latent_scale=0.5),
    "calibrated, target flip 0.2": NeighborConfig(target_flip=0.2),
    "calibrated, target flip 0.1": NeighborConfig(target_flip=0.1),
}


def run(args) -> dict:
    folder = Path(args.checkpoints)
    tp, tcfg, _ = checkpoint.restore(folder / "teacher", kind="teacher")
    vp, vcfg, _ = checkpoint.restore(folder / "vae", kind="vae")
    ds = data.load(args.dataset, args.split, data_dir=args.data_dir)
    images = ds.images[: args.count]
    apply = functools.partial(teacher_logits, config=tcfg)
    cls = np.asarray(apply(tp, jnp.asarray(images))).argmax(-1)
    results, rows = {}, {}
    for name, nc in SETTINGS.items():
        nc = dataclasses.replace(nc, num=args.neighbors)
        config = ex.ExplainConfig(num_classes=tcfg.num_classes, vae=vcfg, student=STUDENT,
                                  neighbors=nc, holdout=args.holdout, chunk_size=args.chunk,
                                  return_neighbors=True)

        def explain(key, config=config):
            return ex.explain(images, key, teacher_apply=apply, teacher_params=tp,
                              vae_params=vp, config=config)

        explain(jax.random.PRNGKey(0))  # compile
        start = time.perf_counter()
        e = explain(jax.random.PRNGKey(0))
        seconds = (time.perf_counter() - start) / len(images)
        runs = [e.class_weights(cls)] + [explain(jax.random.PRNGKey(s)).class_weights(cls)
                                         for s in range(100, 100 + args.seeds - 1)]
        r = {"top1": interval(e.fidelity.top1), "kl": interval(e.fidelity.kl),
             "seed_agreement": interval(metrics.seed_agreement(jnp.stack(runs))),
             "flip_fraction": interval(e.flip_fraction),
             "ms_per_explanation": 1000 * seconds}
        if e.scale is not None:
            r["scale_median"] = float(np.median(e.scale))
        results[name] = r
        i = args.figure_index
        rows[name] = (e.neighbors[i, :10], e.neighbor_probs[i, :10].argmax(-1))
        print(name, {k: (v["mean"] if isinstance(v, dict) else v) for k, v in r.items()},
              flush=True)
    fig = viz.neighbour_rows(images[args.figure_index], rows, ds.info.class_names,
                             int(cls[args.figure_index]), Path(args.figures)
                             / f"{args.tag}_neighbours_locality.png",
                             title="VAE neighbours of one held-out image: teacher labels, "
                             "red where they differ from the input's")
    return {"args": vars(args), "machine": machine_info(), "settings": results,
            "figure": str(fig)}


def markdown(result: dict) -> str:
    a = result["args"]
    lines = [f"{a['dataset']} {a['split']}, {a['count']} images, {a['neighbors']} VAE "
             f"neighbours ({a['holdout']} held out), ridge student (penalty 0.3 relative), "
             f"{a['seeds']} seeds; {result['machine']['cpu_count']} cores, JAX "
             f"{result['machine']['jax']} {result['machine']['backend']}", "",
             "| neighbourhood | held-out top-1 | held-out KL | seed agreement | label-flip "
             "fraction | latent scale (median) | ms / explanation |",
             "|---|---|---|---|---|---|---|"]

    def f(v, digits=3):
        return f"{v['mean']:.{digits}f} ± {v['ci95']:.{digits}f}"

    for name, r in result["settings"].items():
        scale = f"{r['scale_median']:.2f}" if "scale_median" in r else name.split()[2]
        lines.append(f"| {name} | {f(r['top1'])} | {f(r['kl'])} | {f(r['seed_agreement'], 2)} "
                     f"| {f(r['flip_fraction'], 2)} | {scale} | {r['ms_per_explanation']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoints", default="runs/mnist")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--split", default="test[8000:]")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--count", type=int, default=64)
    p.add_argument("--neighbors", type=int, default=512)
    p.add_argument("--holdout", type=int, default=128)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--figure-index", type=int, default=10)  # a "3"
    p.add_argument("--figures", default="docs")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--tag", default="mnist")
    args = p.parse_args()
    result = run(args)
    text = markdown(result)
    print("\n" + text)
    files.write_json(Path(args.out) / f"locality_{args.tag}.json", result)
    files.write_text(Path(args.out) / f"locality_{args.tag}.md", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
