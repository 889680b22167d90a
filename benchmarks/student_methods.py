"""DeepVID's student fitted three ways (issue 12, part 1): held-out fidelity, seed agreement,
label-flip fraction and time per explanation, in one run on one machine.

    python benchmarks/student_methods.py --checkpoints runs/mnist --dataset mnist \\
        --split 'test[8000:]' --count 64

Each method explains the same images with the same neighbours (same seed); seed agreement is the
mean pairwise Pearson correlation of the teacher-class weight images over ``--seeds`` seeds (as
in `evaluate.py`); time is the second of two identical calls (the first compiles).
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from common import interval, machine_info

from deepvid_jax import checkpoint, data, files, metrics
from deepvid_jax import explain as ex
from deepvid_jax.models import teacher_logits
from deepvid_jax.neighbors import NeighborConfig
from deepvid_jax.student import StudentConfig

METHODS = {
    "adam (200 steps, today's default)": StudentConfig(),
    "ridge (closed form, GCV)": StudentConfig(method="ridge"),
    "kd (ridge + 25 Adam steps)": StudentConfig(method="kd", steps=25),
}


def run(args) -> dict:
    folder = Path(args.checkpoints)
    tp, tcfg, _ = checkpoint.restore(folder / "teacher", kind="teacher")
    vp, vcfg, _ = checkpoint.restore(folder / "vae", kind="vae")
    ds = data.load(args.dataset, args.split, data_dir=args.data_dir)
    images = ds.images[: args.count]
    apply = functools.partial(teacher_logits, config=tcfg)
    cls = np.asarray(apply(tp, jnp.asarray(images))).argmax(-1)
    results = {}
    methods = dict(METHODS)
    for rel in args.penalty_sweep:  # the stability / fidelity trade-off of the penalty
        methods[f"ridge, fixed penalty {rel:g} (relative)"] = StudentConfig(method="ridge",
                                                                           penalties=(rel,))
    for name, student in methods.items():
        config = ex.ExplainConfig(num_classes=tcfg.num_classes, vae=vcfg, student=student,
                                  neighbors=NeighborConfig(num=args.neighbors,
                                                           latent_scale=args.latent_scale),
                                  holdout=args.holdout, chunk_size=args.chunk)

        def explain(key, config=config):
            return ex.explain(images, key, teacher_apply=apply, teacher_params=tp,
                              vae_params=vp, config=config)

        explain(jax.random.PRNGKey(0))  # compile
        start = time.perf_counter()
        e = explain(jax.random.PRNGKey(0))
        seconds = (time.perf_counter() - start) / len(images)
        runs = [e.class_weights(cls)] + [explain(jax.random.PRNGKey(s)).class_weights(cls)
                                         for s in range(100, 100 + args.seeds - 1)]
        r = {
            "top1": interval(e.fidelity.top1), "kl": interval(e.fidelity.kl),
            "seed_agreement": interval(metrics.seed_agreement(jnp.stack(runs))),
            "flip_fraction": interval(e.flip_fraction),
            "ms_per_explanation": 1000 * seconds,
        }
        if e.penalty is not None:
            r["penalty_median"] = float(np.median(e.penalty))  # absolute
        results[name] = r
        print(name, {k: (v["mean"] if isinstance(v, dict) else v) for k, v in r.items()},
              flush=True)
    return {"args": vars(args), "machine": machine_info(), "methods": results}


def markdown(result: dict) -> str:
    a = result["args"]
    lines = [f"{a['dataset']} {a['split']}, {a['count']} images, {a['neighbors']} VAE "
             f"neighbours ({a['holdout']} held out) at latent scale {a['latent_scale']}, "
             f"{a['seeds']} seeds; {result['machine']['processor']}, "
             f"{result['machine']['cpu_count']} cores, JAX {result['machine']['jax']} "
             f"{result['machine']['backend']}", "",
             "| student | held-out top-1 | held-out KL | seed agreement | label-flip fraction "
             "| penalty (median, absolute) | ms / explanation |", "|---|---|---|---|---|---|---|"]

    def f(v, digits=3):
        return f"{v['mean']:.{digits}f} ± {v['ci95']:.{digits}f}"

    for name, r in result["methods"].items():
        penalty = f"{r['penalty_median']:.2f}" if "penalty_median" in r else "–"
        lines.append(f"| {name} | {f(r['top1'])} | {f(r['kl'])} | {f(r['seed_agreement'], 2)} | "
                     f"{f(r['flip_fraction'], 2)} | {penalty} | {r['ms_per_explanation']:.1f} |")
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
    p.add_argument("--latent-scale", type=float, default=1.0)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--penalty-sweep", type=lambda t: [float(v) for v in t.split(",") if v],
                   default=[0.01, 0.3, 1.0, 10.0],
                   help="Also the ridge student at these fixed penalties (relative to the mean "
                   "eigenvalue); '' for none.")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--tag", default="mnist")
    args = p.parse_args()
    result = run(args)
    text = markdown(result)
    print("\n" + text)
    out = Path(args.out)
    files.write_json(out / f"student_methods_{args.tag}.json", result)
    files.write_text(out / f"student_methods_{args.tag}.md", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
