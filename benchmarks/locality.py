"""How local are DeepVID's neighbourhoods? Fixed latent scales against the calibrated radius:
held-out fidelity, seed agreement, label-flip fraction, time, and a figure of neighbours, in one
run on one machine.

    python benchmarks/locality.py --settings mnist kmnist
    python benchmarks/locality.py --settings mnist --tag probes --only probes

Every row uses the same student (ridge, fixed relative penalty 0.3: the most stable faithful
one in `student_methods.py`), the same images of the setting's evaluation split, the teacher's
class, and the same keys. Fidelity is measured on each row's own held-out neighbours. Writes
``benchmarks/results/locality/locality_[<tag>_]<setting>.{json,md}`` and the figure
``locality_[<tag>_]<setting>_neighbours.png`` beside them.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
from common import (
    arguments,
    deepvid_options,
    deepvid_row,
    fidelity_cells,
    load,
    out_dir,
    print_row,
    setting,
    where,
    write_study,
)

import deepvid_jax as dv
from deepvid_jax import viz
from deepvid_jax.explainers.deepvid import core as ex
from deepvid_jax.explainers.deepvid.neighbors import NeighborConfig
from deepvid_jax.explainers.deepvid.student import StudentConfig
from deepvid_jax.explainers.registry import predicted_classes

STUDENT = StudentConfig(method="ridge", penalties=(0.3,))
SETTINGS = {
    "latent scale 1 (the former default)": NeighborConfig(latent_scale=1.0),
    "latent scale 0.5": NeighborConfig(latent_scale=0.5),
    "calibrated, target flip 0.2, 16 probes x 6 steps": NeighborConfig(
        calibration_probes=16, calibration_steps=6),
    "calibrated, target flip 0.1, 16 probes x 6 steps": NeighborConfig(
        target_flip=0.1, calibration_probes=16, calibration_steps=6),
    # cheaper calibrations: probe decodes per instance 96 -> 48, 64, 32
    "calibrated, 8 probes x 6 steps": NeighborConfig(calibration_probes=8,
                                                     calibration_steps=6),
    "calibrated, 16 probes x 4 steps": NeighborConfig(calibration_probes=16,
                                                      calibration_steps=4),
    "calibrated, 8 probes x 4 steps (default)": NeighborConfig(calibration_probes=8,
                                                               calibration_steps=4),
}


def neighbours(models: dv.Models, images, i: int, config: ex.ExplainConfig):
    """Image ``i``'s first 10 neighbours and the teacher's labels of them, as `dv.explain`
    with key 0 draws them (instance i's key is ``fold_in(key, i)``)."""
    config = dataclasses.replace(config, return_neighbors=True)
    fn = jax.jit(functools.partial(ex.explain_batch, teacher_apply=models.teacher_apply,
                                   config=config))
    e = fn(images[i:i + 1], dv.instance_keys(jax.random.PRNGKey(0), i, 1),
           teacher_params=models.teacher_params, vae_params=models.vae_params)
    shown = np.asarray(e.neighbors[0, :10])
    return shown, predicted_classes(shown, models)


def run(args, name: str, stem: str) -> dict:
    if not 0 <= args.figure_index < args.count:
        raise SystemExit(f"--figure-index must be in [0, --count={args.count}), got "
                         f"{args.figure_index}.")
    models, ds = load(name, runs=args.runs, data_dir=args.data_dir, count=args.count)
    classes = predicted_classes(ds.images, models)
    results, rows = {}, {}
    i = args.figure_index
    for row_name, nc in SETTINGS.items():
        if args.only and not any(o in row_name for o in args.only):
            continue
        config = ex.ExplainConfig(num_classes=models.num_classes, vae=models.vae_config,
                                  student=STUDENT, neighbors=dataclasses.replace(
                                      nc, num=args.neighbors),
                                  holdout=args.holdout, chunk_size=args.chunk)
        r, a = deepvid_row(models, ds.images, classes, config, args.seeds,
                           chunk_size=args.chunk)
        if "scale" in a.extras:
            r["scale_median"] = float(np.median(a.extras["scale"]))
        results[row_name] = r
        rows[row_name] = neighbours(models, ds.images, i, config)
        print_row(row_name, r)
    fig = viz.neighbour_rows(ds.images[i], rows, ds.info.class_names, int(classes[i]),
                             out_dir(args, "locality") / f"{stem}_neighbours.png",
                             title="VAE neighbours of one held-out image: teacher labels, "
                             "red where they differ from the input's")
    return {"setting": name, "dataset": ds.info.name, "split": setting(name).eval_split,
            "args": vars(args), "settings": results, "figure": fig.name}


def markdown(result: dict) -> str:
    a = result["args"]
    lines = [f"{where(result)}, {a['count']} images, {a['neighbors']} VAE "
             f"neighbours ({a['holdout']} held out), ridge student (penalty 0.3 relative), "
             f"{a['seeds']} seeds", "",
             "| neighbourhood | held-out top-1 | held-out KL | seed agreement | label-flip "
             "fraction | latent scale (median) | ms / explanation |",
             "|---|---|---|---|---|---|---|"]
    for name, r in result["settings"].items():
        scale = f"{r['scale_median']:.2f}" if "scale_median" in r else name.split()[2]
        lines.append(f"| {name} | {fidelity_cells(r)} | {scale} | "
                     f"{r['ms_per_explanation']:.1f} |")
    lines += ["", f"![neighbours]({result['figure']})"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = deepvid_options(arguments(__doc__.splitlines()[0], count=64))
    p.add_argument("--figure-index", type=int, default=10)  # a "3" in the mnist setting
    p.add_argument("--only", nargs="*", default=None,
                   help="Only the rows whose names contain one of these strings.")
    p.add_argument("--tag", default=None, help="Written as locality_<tag>_<setting>.")
    args = p.parse_args(argv)
    for name in args.settings:
        stem = f"locality_{args.tag}_{name}" if args.tag else f"locality_{name}"
        write_study(out_dir(args, "locality"), stem, run(args, name, stem), markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
