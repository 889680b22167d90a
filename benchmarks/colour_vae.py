"""Which colour VAE keeps each shape's class? Trains VAE variants on `synthetic` with the command
line and judges their reconstructions with one or more teachers.

    deepvid train-teacher --dataset synthetic --seed 1 --out runs/synthetic_seed1   # a 2nd judge
    python benchmarks/colour_vae.py --name guided300 -- --teacher-weight 300 \\
        --checkpoints runs/synthetic --lr-schedule cosine --learning-rate 2e-3
    python benchmarks/colour_vae.py --name guided_by_others -- --teacher-weight 300 \\
        --teacher colour_vae:guides --decoder-blocks 1 --lr-schedule cosine --learning-rate 2e-3

Each variant is ``deepvid train-vae --dataset synthetic`` (the setting's splits, train / test,
seed 0, the recipe's 15 epochs) with the flags after ``--``, trained into
``<runs>/colour_vae/<name>`` unless it is there already. Reported per judge (a teacher
folder): its accuracy on the 2,000 test images and on their reconstructions (decode(posterior
mean)); the reconstruction MSE and training time. A VAE guided by a teacher
(``--teacher-weight``) serves that teacher, so judge it also with one that never guided it.
Results merge into ``benchmarks/results/colour_vae/colour_vae.{json,md}`` by name, each variant
with the command that measured it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import numpy as np
from common import arguments, command, dataset, out_dir, setting, write_study

import deepvid_jax as dv
from deepvid_jax import driver
from deepvid_jax.cli import main as deepvid
from deepvid_jax.explainers.registry import predicted_classes
from deepvid_jax.models import checkpoint, vae

SETTING = "synthetic"
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


def judge(folder: Path, judges: list[str], flags: list[str], test: dv.Dataset) -> dict:
    params, config, meta = checkpoint.restore(folder / "vae", kind="vae")
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
        row["judges"][j] = {name: float((predicted_classes(x, models) == test.labels).mean())
                            for name, x in (("originals", test.images),
                                            ("reconstructions", recon))}
    return row


def markdown(result: dict) -> str:
    judges = list(dict.fromkeys(j for r in result["variants"].values() for j in r["judges"]))
    lines = ["| variant | decoder blocks | teacher weight | schedule | MSE | train s | "
             + " | ".join(f"{j}: originals / reconstructions" for j in judges) + " |",
             "|---" * (6 + len(judges)) + "|"]
    for name, r in result["variants"].items():
        cells = [f"{r['judges'][j]['originals']:.3f} / **{r['judges'][j]['reconstructions']:.3f}**"
                 if j in r["judges"] else "–" for j in judges]
        secs = r["train_seconds"]
        lines.append(f"| {name} | {r['decoder_blocks']} | {r['teacher_weight']:g} | "
                     f"{r['lr_schedule']} | {r['recon_mse']:.4f} | "
                     f"{'–' if secs is None else f'{secs:.0f}'} | " + " | ".join(cells) + " |")
    measured = [f"- {name}: `{r['command']}`" for name, r in result["variants"].items()
                if r.get("command")]
    if measured:
        lines += ["", "Each variant measured by:", "", *measured]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = arguments(__doc__.split("\n")[0], settings=(SETTING,), count=None)
    p.add_argument("--name", required=True)
    p.add_argument("--folder", default=None,
                   help="An existing folder with vae/ to judge (default <runs>/colour_vae/NAME, "
                   "trained when missing); the flags then say how it was trained.")
    p.add_argument("--judges", nargs="+", default=["runs/synthetic", "runs/synthetic_seed1"])
    p.add_argument("train_flags", nargs=argparse.REMAINDER,
                   help="After --: flags of deepvid train-vae.")
    args = p.parse_args(argv)
    if args.settings != [SETTING]:
        p.error(f"the colour VAEs are judged on --settings {SETTING} only")
    folder = Path(args.folder or Path(args.runs) / "colour_vae" / args.name)
    flags = [f for f in args.train_flags if f != "--"]
    s = setting(SETTING)
    if not (folder / "vae" / "meta.json").exists():
        code = deepvid(["train-vae", "--dataset", s.dataset, "--train-split", s.fit_split,
                         "--eval-split", s.eval_split, "--seed", "0", "--quiet", "--out",
                         str(folder), *flags])
        if code:
            raise SystemExit(f"train-vae failed ({code})")
    test = dataset(SETTING, "eval", data_dir=args.data_dir, count=args.count)
    row = {**judge(folder, args.judges, flags, test), "flags": flags, "folder": str(folder),
           "command": command()}
    out = out_dir(args, "colour_vae")
    path = out / "colour_vae.json"
    result = json.loads(path.read_text()) if path.exists() else {"variants": {}}
    result["variants"][args.name] = row
    result.pop("machine", None)  # this run's machine, and its command
    write_study(out, "colour_vae", {**result, "command": command()}, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
