"""The colour test bed: teacher and VAE on `synthetic` (32x32x3), every explainer on it, and
where each puts its mass relative to the shape masks.

    python benchmarks/synthetic.py            # trains into runs/synthetic when missing

Trains with the command line's recipes (`deepvid train-teacher` / `train-vae` on the setting's
splits, `common.SETTINGS`: the models follow the image size), then reports the teacher's
held-out accuracy, the teacher's accuracy on the VAE's reconstructions (do they keep each
shape's class?), training times, and for every explainer (`dv.explain`, the true class) the
time per image (`deepvid_jax.runner.bench.measure` on ``--time-batch`` images) and the share of
|attribution| on the shape's mask. Writes ``benchmarks/results/synthetic/synthetic.{json,md}``
and ``synthetic_{explanations.jpg,reconstructions.png}`` beside them.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from common import (
    arguments,
    checkpoints,
    load,
    out_dir,
    rewrite_study,
    setting,
    timing,
    to_jpeg,
    write_study,
)

import deepvid_jax as dv
from deepvid_jax import driver, viz
from deepvid_jax.cli import main as deepvid
from deepvid_jax.explainers.registry import predicted_classes
from deepvid_jax.metrics import localisation
from deepvid_jax.models import checkpoint, vae

SETTING = "synthetic"  # the one setting with shape masks


def train_if_missing(folder: Path, args) -> None:
    s = setting(SETTING)
    common = ["--dataset", s.dataset, "--train-split", s.fit_split, "--eval-split",
              s.eval_split, "--out", str(folder), "--seed", "0"] + (
                  ["--quiet"] if args.quiet else [])
    for kind, epochs in (("teacher", args.teacher_epochs), ("vae", args.vae_epochs)):
        if not (folder / kind / "meta.json").exists():
            code = deepvid([f"train-{kind}", *common, "--epochs", str(epochs)])
            if code:
                raise SystemExit(f"train-{kind} failed ({code})")


def run(args) -> dict:
    folder = checkpoints(SETTING, args.runs)
    train_if_missing(folder, args)
    models, test = load(SETTING, runs=args.runs, data_dir=args.data_dir)
    tmeta, vmeta = (checkpoint.read_meta(folder / k) for k in ("teacher", "vae"))
    x, y = test.images, test.labels
    masks = dv.open_source(test.info.name, test.info.split, data_dir=args.data_dir).masks()
    recon = driver.map_batches(
        jax.jit(lambda p, im: vae.reconstruct(p, im, config=models.vae_config)),
        models.vae_params, x, 500)
    teacher_acc = float((predicted_classes(x, models) == y).mean())
    recon_acc = float((predicted_classes(recon, models) == y).mean())
    print(f"teacher {teacher_acc:.4f} held out; on VAE reconstructions {recon_acc:.4f}")

    n = args.count
    images, classes = x[:n], y[:n]
    methods = args.methods or [m for m in dv.METHODS if m != "surrogate"]
    rows, maps = {}, {}
    for name in methods:
        out = dv.explain(name, images, classes, jax.random.PRNGKey(0), models=models)
        b = min(args.time_batch, n)
        seconds = timing(name, models, images[:b], classes[:b])["seconds"] / b
        share = np.asarray(localisation.relevance_mass(jnp.asarray(out.attributions),
                                                       jnp.asarray(masks[:n])))
        rows[name] = {"seconds_per_image": seconds, "mask_share": float(share.mean()),
                      "mask_share_ci95": float(1.96 * share.std() / np.sqrt(n))}
        maps[name] = out.attributions[:8]
        print(f"{name:22s} {seconds * 1e3:8.1f} ms/image, {share.mean():.3f} of the mass "
              "on the shape", flush=True)
    figures = out_dir(args, "synthetic")
    labels = [test.info.class_names[c] for c in classes[:8]]
    png = viz.saliency_grid(images[:8], {k: np.abs(v).sum(-1) for k, v in maps.items()},
                            figures / "synthetic_explanations.png", labels=labels,
                            title="synthetic 32x32x3: |attribution| for the true class")
    to_jpeg(png)
    viz.reconstruction_grid(x[:12], recon[:12], figures / "synthetic_reconstructions.png",
                            title=f"VAE on synthetic test: the teacher keeps the class of "
                            f"{recon_acc:.1%} of reconstructions")
    return {
        "args": vars(args), "dataset": test.info.name, "split": test.info.split,
        "image_shape": list(test.info.image_shape),
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
        "explained": n, "mask_area": float(masks[:n].mean()), "methods": rows,
    }


def markdown(result: dict) -> str:
    t, v = result["teacher"], result["vae"]
    split = result.get("split", setting(SETTING).eval_split)  # older results lack it
    lines = [f"{result['dataset']} {split}: teacher accuracy {t['accuracy']:.3f}, "
             f"on the VAE's reconstructions {v['teacher_accuracy_on_reconstructions']:.3f}; "
             f"{result['explained']} images explained for their true class", "",
             "| method | ms / image | share of \\|attribution\\| on the shape |", "|---|---|---|"]
    for name, r in result["methods"].items():
        lines.append(f"| {name} | {r['seconds_per_image'] * 1e3:.1f} | "
                     f"{r['mask_share']:.3f} ± {r['mask_share_ci95']:.3f} |")
    lines.append(f"| (uniform map) | – | {result['mask_area']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = arguments(__doc__.split("\n")[0], settings=(SETTING,), count=200)
    p.add_argument("--teacher-epochs", type=int, default=12)
    p.add_argument("--vae-epochs", type=int, default=15)
    p.add_argument("--methods", nargs="+", default=None)
    p.add_argument("--time-batch", type=int, default=16,
                   help="Images in the timed program of each explainer.")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--replot", action="store_true",
                   help="Only redraw the table from the existing results.")
    args = p.parse_args(argv)
    if args.settings != [SETTING]:
        p.error(f"only --settings {SETTING} has shape masks")
    if args.replot:
        rewrite_study(out_dir(args, "synthetic"), "synthetic", markdown)
    else:
        write_study(out_dir(args, "synthetic"), "synthetic", run(args), markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
