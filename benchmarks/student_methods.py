"""DeepVID's student fitted four ways (today's default, the lasso, among them), and the ridge
student at fixed penalties: held-out fidelity, seed agreement, label-flip fraction and time per
explanation, in one run on one machine.

    python benchmarks/student_methods.py --settings mnist kmnist --count 64

Each method explains the same images of the setting's evaluation split (`common.SETTINGS`),
for the teacher's class, with the same neighbours (same keys); seed agreement is the mean
pairwise Pearson correlation of the class's weight images over ``--seeds`` keys (as in
`evaluate.py`); time is `deepvid_jax.runner.bench.measure` on one chunk. Writes
``benchmarks/results/student_methods/student_methods_<setting>.{json,md}``.
"""

from __future__ import annotations

import common
import numpy as np

from deepvid_jax.explainers.deepvid import core as ex
from deepvid_jax.explainers.deepvid.neighbors import NeighborConfig
from deepvid_jax.explainers.deepvid.student import GCV_PENALTIES, StudentConfig
from deepvid_jax.explainers.registry import predicted_classes

METHODS = {
    "adam (200 steps, the former default)": StudentConfig(method="adam"),
    "ridge (closed form, GCV)": StudentConfig(method="ridge", penalties=GCV_PENALTIES),
    "kd (ridge + 25 Adam steps)": StudentConfig(method="kd", steps=25, penalties=GCV_PENALTIES),
    # Today's default student (`ExplainConfig().student`), on the same neighbours as the others.
    "lasso (today's default)": ex.ExplainConfig().student,
}


def run(args, name: str) -> dict:
    models, ds = common.load(name, runs=args.runs, data_dir=args.data_dir, count=args.count)
    classes = predicted_classes(ds.images, models)
    methods = dict(METHODS)
    for rel in args.penalty_sweep:  # the stability / fidelity trade-off of the penalty
        methods[f"ridge, fixed penalty {rel:g} (relative)"] = StudentConfig(method="ridge",
                                                                           penalties=(rel,))
    results = {}
    for method, student in methods.items():
        config = ex.ExplainConfig(num_classes=models.num_classes, vae=models.vae_config,
                                  student=student,
                                  neighbors=NeighborConfig(num=args.neighbors,
                                                           latent_scale=args.latent_scale),
                                  holdout=args.holdout, chunk_size=args.chunk)
        r, a = common.deepvid_row(models, ds.images, classes, config, args.seeds,
                           chunk_size=args.chunk)
        if "penalty" in a.extras:
            r["penalty_median"] = float(np.median(a.extras["penalty"]))  # absolute
        results[method] = r
        common.print_row(method, r)
    return {"setting": name, "dataset": ds.info.name,
            "split": common.setting(name).eval_split, "args": vars(args), "methods": results}


def markdown(result: dict) -> str:
    a = result["args"]
    lines = [f"{common.where(result)}, {a['count']} images, {a['neighbors']} VAE "
             f"neighbours ({a['holdout']} held out) at latent scale {a['latent_scale']}, "
             f"{a['seeds']} seeds", "",
             "| student | held-out top-1 | held-out KL | seed agreement | label-flip fraction "
             "| penalty (median, absolute; ridge's L2 unless marked) | ms / explanation |",
             "|---|---|---|---|---|---|---|"]
    for name, r in result["methods"].items():
        penalty = f"{r['penalty_median']:.2f}" if "penalty_median" in r else "–"
        if "penalty_median" in r and METHODS.get(name, StudentConfig()).method == "lasso":
            penalty += " (L1)"  # the lasso reports its L1 penalty (the sweep's rows are ridge)
        lines.append(f"| {name} | {common.fidelity_cells(r)} | {penalty} | "
                     f"{r['ms_per_explanation']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = common.deepvid_options(common.arguments(__doc__.splitlines()[0], count=64))
    p.add_argument("--latent-scale", type=float, default=1.0)
    p.add_argument("--penalty-sweep", type=lambda t: [float(v) for v in t.split(",") if v],
                   default=[0.01, 0.3, 1.0, 10.0],
                   help="Also the ridge student at these fixed penalties (relative to the mean "
                   "eigenvalue); '' for none.")
    p.add_argument("--replot", action="store_true",
                   help="Only redraw the tables from the existing results.")
    args = p.parse_args(argv)
    out = common.out_dir(args, "student_methods")
    for name in args.settings:
        if args.replot:
            common.rewrite_study(out, f"student_methods_{name}", markdown)
        else:
            common.write_study(out, f"student_methods_{name}", run(args, name), markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
