"""The colour test bed: teacher and VAE on `synthetic` (32x32x3), every explainer on it, and
where each puts its mass relative to the shape masks.

    python benchmarks/synthetic.py            # trains into runs/synthetic when missing

Trains with the command line's recipes (`deepvid train-teacher` / `train-vae`: the models follow
the image size), then reports the teacher's held-out accuracy, the teacher's accuracy on the
VAE's reconstructions (do they keep each shape's class?), training times, and for every
explainer the time per image and the share of |attribution| on the shape's mask. Writes
``benchmarks/results/synthetic.{json,md}`` and ``docs/synthetic_*.png``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from common import machine_info, to_jpeg

import deepvid_jax as dv
from deepvid_jax import driver, files, viz
from deepvid_jax.cli import commands as cli
from deepvid_jax.data.sources import open_source
from deepvid_jax.metrics import localisation
from deepvid_jax.models import checkpoint, vae

DATASET = "synthetic"


def train_if_missing(folder: Path, args) -> None:
    common = ["--dataset", DATASET, "--train-split", "train", "--eval-split", "test",
              "--out", str(folder), "--seed", "0"] + (["--quiet"] if args.quiet else [])
    for kind, epochs in (("teacher", args.teacher_epochs), ("vae", args.vae_epochs)):
        if not (folder / kind / "meta.json").exists():
            code = cli.main([f"train-{kind}", *common, "--epochs", str(epochs)])
            if code:
                raise SystemExit(f"train-{kind} failed ({code})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoints", default="runs/synthetic")
    p.add_argument("--teacher-epochs", type=int, default=12)
    p.add_argument("--vae-epochs", type=int, default=15)
    p.add_argument("--count", type=int, default=200, help="Test images explained.")
    p.add_argument("--methods", nargs="+", default=None)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--figures", default="docs")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    folder = Path(args.checkpoints)
    train_if_missing(folder, args)

    models = dv.Models.load(folder)
    tmeta, vmeta = (checkpoint.read_meta(folder / k) for k in ("teacher", "vae"))
    source = open_source(DATASET, "test")
    x, y = source.read(0, len(source))
    masks = source.masks()
    predict = jax.jit(lambda p, im: models.teacher_apply(p, im).argmax(-1))
    recon_fn = jax.jit(lambda p, im: vae.reconstruct(p, im, config=models.vae_config))
    recon = driver.map_batches(recon_fn, models.vae_params, x, 500)
    teacher_acc = float((driver.map_batches(predict, models.teacher_params, x, 500) == y).mean())
    recon_acc = float((driver.map_batches(predict, models.teacher_params, recon, 500) == y).mean())
    print(f"teacher {teacher_acc:.4f} held out; on VAE reconstructions {recon_acc:.4f}")

    n = args.count
    images, classes = x[:n], y[:n]
    methods = args.methods or [m for m in dv.METHODS if m != "surrogate"]
    rows, maps = {}, {}
    for name in methods:
        dv.explain(name, images[:2], classes[:2], models=models)  # compile
        start = time.perf_counter()
        out = dv.explain(name, images, classes, jax.random.PRNGKey(0), models=models)
        seconds = time.perf_counter() - start
        share = np.asarray(localisation.relevance_mass(jnp.asarray(out.attributions),
                                                       jnp.asarray(masks[:n])))
        rows[name] = {"seconds_per_image": seconds / n, "mask_share": float(share.mean()),
                      "mask_share_ci95": float(1.96 * share.std() / np.sqrt(n))}
        maps[name] = out.attributions[:8]
        print(f"{name:22s} {seconds / n * 1e3:8.1f} ms/image, {share.mean():.3f} of the mass "
              "on the shape")
    area = float(masks[:n].mean())
    figures = Path(args.figures)
    figures.mkdir(parents=True, exist_ok=True)
    labels = [source.info.class_names[c] for c in classes[:8]]
    png = viz.saliency_grid(images[:8], {k: np.abs(v).sum(-1) for k, v in maps.items()},
                            figures / "synthetic_explanations.png", labels=labels,
                            title="synthetic 32x32x3: |attribution| for the true class")
    to_jpeg(png)
    viz.reconstruction_grid(x[:12], recon[:12], figures / "synthetic_reconstructions.png",
                            title=f"VAE on synthetic test: the teacher keeps the class of "
                            f"{recon_acc:.1%} of reconstructions")
    result = {
        "dataset": DATASET, "image_shape": list(source.info.image_shape),
        "teacher": {"features": list(models.teacher_config.features),
                    "accuracy": teacher_acc,
                    "train_seconds": tmeta["metrics"].get("train_seconds"),
                    "epochs": args.teacher_epochs},
        "vae": {"features": list(models.vae_config.features),
                "latent_dim": models.vae_config.latent_dim,
                "teacher_accuracy_on_reconstructions": recon_acc,
                "recon_mse": vmeta["metrics"].get("eval_recon_mse"),
                "train_seconds": vmeta["metrics"].get("train_seconds"),
                "epochs": args.vae_epochs},
        "explained": n, "mask_area": area, "methods": rows, "machine": machine_info(),
    }
    lines = ["| method | ms / image | share of \\|attribution\\| on the shape |", "|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['seconds_per_image'] * 1e3:.1f} | "
                     f"{r['mask_share']:.3f} ± {r['mask_share_ci95']:.3f} |")
    lines.append(f"| (uniform map) | – | {area:.3f} |")
    out = Path(args.out)
    files.write_json(out / "synthetic.json", result)
    files.write_text(out / "synthetic.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
