"""DeepVID's student fitted three ways (issue 12, part 1): held-out fidelity, seed agreement,
label-flip fraction and time per explanation, in one run on one machine.

    python benchmarks/student_methods.py --checkpoints runs/mnist --dataset mnist \\
        --split 'test[8000:]' --count 64

Each method explains the same images with the same neighbours (same seed); seed agreement is the
mean pairwise Pearson correlation of the teacher-class weight images over ``--seeds`` seeds (as
in `evaluate.py`); time is the second of two identical calls (the first compiles).
"""

from __future__ import annotations

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

from deepvid_jax.explainers.deepvid import core as ex
from deepvid_jax.explainers.deepvid.neighbors import NeighborConfig
from deepvid_jax.explainers.deepvid.student import GCV_PENALTIES, StudentConfig

METHODS = {
    "adam (200 steps, the former default)": StudentConfig(method="adam"),
    "ridge (closed form, GCV)": StudentConfig(method="ridge", penalties=GCV_PENALTIES),
    "kd (ridge + 25 Adam steps)": StudentConfig(method="kd", steps=25, penalties=GCV_PENALTIES),
}


def run(args) -> dict:
    setup = load_setup(args)
    vcfg, num_classes = setup[3], setup[1].num_classes
    methods = dict(METHODS)
    for rel in args.penalty_sweep:  # the stability / fidelity trade-off of the penalty
        methods[f"ridge, fixed penalty {rel:g} (relative)"] = StudentConfig(method="ridge",
                                                                           penalties=(rel,))
    results = {}
    for name, student in methods.items():
        config = ex.ExplainConfig(num_classes=num_classes, vae=vcfg, student=student,
                                  neighbors=NeighborConfig(num=args.neighbors,
                                                           latent_scale=args.latent_scale),
                                  holdout=args.holdout, chunk_size=args.chunk)
        r, e = measure_explain(setup, config, args.seeds)
        if e.penalty is not None:
            r["penalty_median"] = float(np.median(e.penalty))  # absolute
        results[name] = r
        print_row(name, r)
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
    for name, r in result["methods"].items():
        penalty = f"{r['penalty_median']:.2f}" if "penalty_median" in r else "–"
        lines.append(f"| {name} | {fidelity_cells(r)} | {penalty} | "
                     f"{r['ms_per_explanation']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = deepvid_arguments(__doc__.splitlines()[0], tag="mnist")
    p.add_argument("--latent-scale", type=float, default=1.0)
    p.add_argument("--penalty-sweep", type=lambda t: [float(v) for v in t.split(",") if v],
                   default=[0.01, 0.3, 1.0, 10.0],
                   help="Also the ridge student at these fixed penalties (relative to the mean "
                   "eigenvalue); '' for none.")
    args = p.parse_args()
    result = run(args)
    write_results(args.out, f"student_methods_{args.tag}", result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
