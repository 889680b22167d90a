"""Which colour VAE keeps each shape's class? Trains VAE variants on `synthetic` with the command
line and judges their reconstructions with one or more teachers (issue 14).

    deepvid train-teacher --dataset synthetic --seed 1 --out runs/synthetic_seed1   # a 2nd judge
    python benchmarks/colour_vae.py --name guided300 -- --teacher-weight 300 \\
        --checkpoints runs/synthetic --lr-schedule cosine --learning-rate 2e-3
    python benchmarks/colour_vae.py --name guided_by_others -- --teacher-weight 300 \\
        --teacher colour_vae:guides --decoder-blocks 1 --lr-schedule cosine --learning-rate 2e-3

Each variant is ``deepvid train-vae --dataset synthetic`` (train / test splits, seed 0, the
recipe's 15 epochs) with the flags after ``--``, trained into ``runs/colour_vae/<name>`` unless
it is there already. Reported per judge (a teacher folder): its accuracy on the 2,000 test
images and on their reconstructions (decode(posterior mean)); the reconstruction MSE and
training time. A VAE guided by a teacher (``--teacher-weight``) serves that teacher, so judge it
also with one that never guided it. Results merge into
``benchmarks/results/colour_vae.{json,md}`` by name.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import numpy as np
from common import machine_info

import deepvid_jax as dv
from deepvid_jax import driver, files
from deepvid_jax.cli import commands as cli
from deepvid_jax.data import sources as data
from deepvid_jax.models import checkpoint, vae

# Teachers trained with other seeds (`deepvid train-teacher --dataset synthetic --seed 2|3 --out
# runs/synthetic_seed2|3`), none of them a judge: the guide of ``--teacher colour_vae:guides``.
GUIDES = ("runs/synthetic_seed2", "runs/synthetic_seed3")


def guides() -> dv.Teacher:
    """The ensemble of the `GUIDES` teachers (their mean probabilities): a perceptual term from
    networks other than the one explained or the judges."""
    return dv.ensemble([(m.teacher_apply, m.teacher_params, m.num_classes)
                        for m in map(dv.Models.load, GUIDES)])


def flag(flags: list[str], name: str, default):
    """The value after ``name`` in ``flags``, else ``default``."""
    return type(default)(flags[flags.index(name) + 1]) if name in flags else default


def judge(folder: Path, judges: list[str], flags: list[str]) -> dict:
    params, config, meta = checkpoint.restore(folder / "vae", kind="vae")
    test = data.load("synthetic", "test")
    recon = driver.map_batches(jax.jit(lambda p, x: vae.reconstruct(p, x, config=config)),
                               params, test.images, 500)
    row = {"recon_mse": float(np.mean((recon - test.images) ** 2)),
           "train_seconds": meta["metrics"].get("train_seconds"),
           "decoder_blocks": config.decoder_blocks,
           # Older checkpoints lack these: the flags they were trained with say them.
           "teacher_weight": meta["metrics"].get("teacher_weight",
                                                 flag(flags, "--teacher-weight", 0.0)),
           "lr_schedule": meta["metrics"].get("lr_schedule",
                                              flag(flags, "--lr-schedule", "constant")),
           "judges": {}}
    for j in judges:
        models = dv.Models.load(j)
        predict = jax.jit(lambda p, x, m=models: m.teacher_apply(p, x).argmax(-1))
        row["judges"][j] = {
            name: float((driver.map_batches(predict, models.teacher_params, x, 500)
                         == test.labels).mean())
            for name, x in (("originals", test.images), ("reconstructions", recon))}
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--name", required=True)
    p.add_argument("--folder", default=None,
                   help="An existing folder with vae/ to judge (default runs/colour_vae/NAME, "
                   "trained when missing); the flags then say how it was trained.")
    p.add_argument("--judges", nargs="+", default=["runs/synthetic", "runs/synthetic_seed1"])
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("train_flags", nargs=argparse.REMAINDER,
                   help="After --: flags of deepvid train-vae.")
    args = p.parse_args(argv)
    folder = Path(args.folder or f"runs/colour_vae/{args.name}")
    flags = [f for f in args.train_flags if f != "--"]
    if not (folder / "vae" / "meta.json").exists():
        code = cli.main(["train-vae", "--dataset", "synthetic", "--train-split", "train",
                         "--eval-split", "test", "--seed", "0", "--quiet", "--out", str(folder),
                         *flags])
        if code:
            raise SystemExit(f"train-vae failed ({code})")
    row = {**judge(folder, args.judges, flags), "flags": flags, "folder": str(folder)}
    path = Path(args.out) / "colour_vae.json"
    result = json.loads(path.read_text()) if path.exists() else {"variants": {}}
    result["variants"][args.name] = row
    result["machine"] = machine_info()
    files.write_json(path, result)
    lines = ["| variant | decoder blocks | teacher weight | schedule | MSE | train s | "
             + " | ".join(f"{j}: originals / reconstructions" for j in args.judges) + " |",
             "|---" * (6 + len(args.judges)) + "|"]
    for name, r in result["variants"].items():
        cells = [f"{r['judges'][j]['originals']:.3f} / **{r['judges'][j]['reconstructions']:.3f}**"
                 if j in r["judges"] else "–" for j in args.judges]
        secs = r["train_seconds"]
        lines.append(f"| {name} | {r['decoder_blocks']} | {r['teacher_weight']:g} | "
                     f"{r['lr_schedule']} | {r['recon_mse']:.4f} | "
                     f"{'–' if secs is None else f'{secs:.0f}'} | " + " | ".join(cells) + " |")
    files.write_text(Path(args.out) / "colour_vae.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
