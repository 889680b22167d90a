"""Explanations per second of DeepVID (this library) and LIME, side by side, on one machine.

For each (batch size, neighbours per instance) the jitted `explain_batch` is compiled ahead of
time, then one call is timed; in the same run `lime_image` explains images of the same set with
the same number of samples, through the same teacher. Also: FLOPs of one explanation (XLA's
cost analysis) and the achieved FLOP/s against a measured large-matmul FLOP/s.

    python benchmarks/explain_throughput.py --checkpoints runs/mnist \
        --batch-sizes 1,8,64 --neighbors 64,256,1024     # the issue's full grid: 1..1024, 64..2048

Prints a Markdown table and writes JSON (and the table) to --out.
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
from common import machine_info

from deepvid_jax import checkpoint, data, files
from deepvid_jax import explain as ex
from deepvid_jax.models import teacher_logits
from deepvid_jax.neighbors import NeighborConfig


def matmul_flops_per_second(n: int = 2048, repeats: int = 5) -> float:
    """Best-of-``repeats`` float32 [n, n] @ [n, n] throughput."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n))
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = min(_timed(lambda: f(a).block_until_ready()) for _ in range(repeats))
    return 2 * n**3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_deepvid(images, apply, tp, vp, config: ex.ExplainConfig) -> dict:
    """Compile once (timed separately), then time one call on ``images`` [B, H, W, C]."""
    x = jnp.asarray(images)
    keys = ex.instance_keys(jax.random.PRNGKey(0), 0, len(images))
    start = time.perf_counter()
    compiled = ex.explain_batch.lower(
        x, keys, teacher_apply=apply, teacher_params=tp, vae_params=vp, config=config
    ).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    out = None

    def run():
        nonlocal out
        out = compiled(x, keys, teacher_params=tp, vae_params=vp)
        jax.block_until_ready(out)

    seconds = _timed(run)
    b = len(images)
    # R^2 of the teacher's top-class probability on held-out neighbours (comparable to LIME's
    # score, which is in-sample): student probs from the returned weights.
    n_fit = config.num_fit
    nb = np.asarray(out.neighbors)[:, n_fit:].reshape(b, -1, x[0].size)
    w = np.asarray(out.weights).reshape(b, x[0].size, -1)
    s_logits = np.einsum("bnd,bdk->bnk", nb, w) + np.asarray(out.bias)[:, None]
    s_prob = np.exp(s_logits - s_logits.max(-1, keepdims=True))
    s_prob /= s_prob.sum(-1, keepdims=True)
    t_prob = np.asarray(out.neighbor_probs)[:, n_fit:]
    top = np.asarray(out.teacher_probs).argmax(-1)
    r2 = []
    for i in range(b):
        t, s = t_prob[i, :, top[i]], s_prob[i, :, top[i]]
        r2.append(1 - np.sum((t - s) ** 2) / max(np.sum((t - t.mean()) ** 2), 1e-12))
    return {
        "explanations_per_s": b / seconds, "seconds": seconds, "compile_s": compile_s,
        "flops_per_explanation": flops / b, "achieved_flops_per_s": flops / seconds,
        "top1": float(np.mean(out.fidelity.top1)), "kl": float(np.mean(out.fidelity.kl)),
        "r2_top_class_heldout": float(np.median(r2)),
    }


def bench_lime(images, apply, tp, num_samples: int, count: int) -> dict:
    """lime_image on ``count`` images, ``num_samples`` perturbations each, same teacher."""
    from lime import lime_image

    predict_jit = jax.jit(lambda x: jax.nn.softmax(apply(tp, x)))

    def classifier_fn(batch):  # LIME passes RGB [n, H, W, 3]; our teacher is grayscale
        gray = np.asarray(batch, np.float32).mean(-1, keepdims=True)
        return np.asarray(predict_jit(gray))

    explainer = lime_image.LimeImageExplainer(random_state=0)
    scores = []
    start = time.perf_counter()
    for img in images[:count]:
        e = explainer.explain_instance(
            img[..., 0].astype(np.float64), classifier_fn, top_labels=1, hide_color=0,
            num_samples=num_samples, batch_size=256, random_seed=0,
        )
        scores.append(e.score)
    seconds = time.perf_counter() - start
    return {"explanations_per_s": count / seconds, "seconds": seconds,
            "r2_top_class_insample": float(np.median(scores)), "images": count}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoints", default="runs/mnist")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--split", default="test[8000:]")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--batch-sizes", default="1,8,64")
    p.add_argument("--neighbors", default="64,256,1024")
    p.add_argument("--lime-images", type=int, default=8)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--tag", default="", help="Suffix of the output file names.")
    args = p.parse_args(argv)

    tp, tcfg, _ = checkpoint.restore(Path(args.checkpoints) / "teacher", kind="teacher")
    vp, vcfg, _ = checkpoint.restore(Path(args.checkpoints) / "vae", kind="vae")
    ds = data.load(args.dataset, args.split, data_dir=args.data_dir)
    apply = functools.partial(teacher_logits, config=tcfg)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    neighbor_counts = [int(n) for n in args.neighbors.split(",")]
    if max(batch_sizes) > len(ds.images):
        raise SystemExit(f"largest batch {max(batch_sizes)} > {len(ds.images)} images")

    machine = machine_info()
    peak = matmul_flops_per_second()
    print(f"machine: {machine['backend']} {machine['devices']} ({machine['cpu_count']} cores); "
          f"measured 2048^2 f32 matmul: {peak / 1e9:.1f} GFLOP/s")
    rows = []
    for n in neighbor_counts:
        config = ex.ExplainConfig(
            num_classes=tcfg.num_classes, vae=vcfg, neighbors=NeighborConfig(num=n),
            holdout=max(1, n // 4), return_neighbors=True,
        )
        for b in batch_sizes:
            r = bench_deepvid(ds.images[:b], apply, tp, vp, config)
            rows.append({"method": "deepvid", "batch": b, "neighbors": n, **r})
            print(f"deepvid  B={b:5d} N={n:5d}: {r['explanations_per_s']:8.2f} expl/s  "
                  f"top1 {r['top1']:.3f} KL {r['kl']:.3f}  "
                  f"{r['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s", flush=True)
        r = bench_lime(ds.images, apply, tp, n, args.lime_images)
        rows.append({"method": "lime", "batch": 1, "neighbors": n, **r})
        print(f"lime     B=    1 N={n:5d}: {r['explanations_per_s']:8.2f} expl/s  "
              f"R2 {r['r2_top_class_insample']:.3f}", flush=True)

    table = ["| method | batch | samples/instance | explanations/s | fidelity | GFLOP/expl. | "
             "achieved GFLOP/s (% of matmul) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["method"] == "deepvid":
            fid = (f"top-1 {r['top1']:.3f}, KL {r['kl']:.3f}, "
                   f"R² {r['r2_top_class_heldout']:.2f} (held-out)")
            achieved = r["achieved_flops_per_s"]
            fl = (f"{r['flops_per_explanation'] / 1e9:.2f} | "
                  f"{achieved / 1e9:.1f} ({100 * achieved / peak:.0f} %)")
        else:
            fid = f"R² {r['r2_top_class_insample']:.2f} (in-sample, LIME's score)"
            fl = "– | –"
        table.append(f"| {r['method']} | {r['batch']} | {r['neighbors']} | "
                     f"{r['explanations_per_s']:.2f} | {fid} | {fl} |")
    text = "\n".join(table)
    print("\n" + text)
    for n in neighbor_counts:
        best = max(r["explanations_per_s"] for r in rows
                   if r["method"] == "deepvid" and r["neighbors"] == n)
        lime = next(r for r in rows if r["method"] == "lime" and r["neighbors"] == n)
        print(f"N={n}: best DeepVID batch is {best / lime['explanations_per_s']:.1f}x "
              "LIME's explanations/s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine, "matmul_flops_per_s": peak, "rows": rows,
              "args": vars(args), "config_defaults": dataclasses.asdict(ex.ExplainConfig())}
    tag = machine["backend"] + (f"_{args.tag}" if args.tag else "")
    files.write_json(out / f"explain_throughput_{tag}.json", result)
    files.write_text(out / f"explain_throughput_{tag}.md", text + "\n")
    print(f"wrote {out / f'explain_throughput_{tag}.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
