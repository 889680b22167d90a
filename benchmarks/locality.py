"""How local are DeepVID's neighbourhoods? Fixed latent scales against the calibrated radius
(issue 12, part 2): held-out fidelity, seed agreement, label-flip fraction, time, and a figure of
neighbours, in one run on one machine.

    python benchmarks/locality.py --checkpoints runs/mnist --dataset mnist --split 'test[8000:]'

Every row uses the same student (ridge, fixed relative penalty 0.3: the most stable faithful
one in `student_methods.py`), the same images and seeds. Fidelity is measured on each row's own
held-out neighbours.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from common import (
    deepvid_arguments,
    fidelity_cells,
    load_setup,
    machine_info,
    measure_explain,
    print_row,
    write_results,
)

from deepvid_jax import viz
from deepvid_jax.explainers.deepvid import core as ex
from deepvid_jax.explainers.deepvid.neighbors import NeighborConfig
from deepvid_jax.explainers.deepvid.student import StudentConfig

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


def run(args) -> dict:
    setup = load_setup(args)
    tcfg, vcfg, images, cls, info = setup[1], setup[3], setup[5], setup[6], setup[7]
    results, rows = {}, {}
    i = args.figure_index
    for name, nc in SETTINGS.items():
        if args.only and not any(o in name for o in args.only):
            continue
        config = ex.ExplainConfig(num_classes=tcfg.num_classes, vae=vcfg, student=STUDENT,
                                  neighbors=dataclasses.replace(nc, num=args.neighbors),
                                  holdout=args.holdout, chunk_size=args.chunk,
                                  return_neighbors=True)
        r, e = measure_explain(setup, config, args.seeds)
        if e.scale is not None:
            r["scale_median"] = float(np.median(e.scale))
        results[name] = r
        rows[name] = (e.neighbors[i, :10], e.neighbor_probs[i, :10].argmax(-1))
        print_row(name, r)
    fig = viz.neighbour_rows(images[i], rows, info.class_names, int(cls[i]),
                             Path(args.figures) / f"{args.tag}_neighbours_locality.png",
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
    for name, r in result["settings"].items():
        scale = f"{r['scale_median']:.2f}" if "scale_median" in r else name.split()[2]
        lines.append(f"| {name} | {fidelity_cells(r)} | {scale} | "
                     f"{r['ms_per_explanation']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = deepvid_arguments(__doc__.splitlines()[0], tag="mnist")
    p.add_argument("--figure-index", type=int, default=10)  # a "3"
    p.add_argument("--figures", default="docs")
    p.add_argument("--only", nargs="*", default=None,
                   help="Only the settings whose names contain one of these strings.")
    args = p.parse_args()
    result = run(args)
    write_results(args.out, f"locality_{args.tag}", result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
