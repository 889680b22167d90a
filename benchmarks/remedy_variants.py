"""Quick comparisons of DeepVID remedy variants on a teacher blind to a known region.

    python benchmarks/remedy_variants.py --settings mnist --mask quadrant --count 32 \\
        --variants '{"ridge": {"student": "ridge"}, "shifted": {"num": 1536, "patch_mix": 4,
                     "patch_mix_shift": true, "lasso": 0.025}}'

Each variant is a dict of `NeighborConfig` fields plus ``student`` (its method, "lasso" by
default) and any other `StudentConfig` field (``lasso``, ``lasso_group``, ...); reported per
variant (`dv.explain` on the blind teacher's classes): the mean share of |relevance| on the
hidden region, the student's held-out top-1 on its own VAE neighbours, with ``--seeds`` 2 or
more the seed agreement of the maps (mean pairwise Pearson correlation over keys 0, 100, 101,
...), and the time an image (`deepvid_jax.runner.bench.measure` on ``--time-batch`` images).
The full protocol, with intervals and every explainer, is `ground_truth.py`. Writes
``benchmarks/results/remedy_variants/remedy_variants_<setting>_<mask>.{json,md}``.
"""

from __future__ import annotations

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
from common import arguments, load, out_dir, seed_runs, timing, write_study

import deepvid_jax as dv
from deepvid_jax.explainers.deepvid import core as deepvid
from deepvid_jax.explainers.deepvid.neighbors import NeighborConfig
from deepvid_jax.explainers.deepvid.student import StudentConfig
from deepvid_jax.explainers.registry import predicted_classes
from deepvid_jax.metrics import groundtruth, localisation, stability

STUDENT_FIELDS = tuple(f.name for f in dataclasses.fields(StudentConfig) if f.name != "method")


def config_of(fields: dict, base) -> deepvid.ExplainConfig:
    """A variant's fields (see the module's docstring) -> its `ExplainConfig` for ``base``'s
    models."""
    fields = dict(fields)
    student = StudentConfig(method=fields.pop("student", "lasso"),
                            **{f: fields.pop(f) for f in STUDENT_FIELDS if f in fields})
    return deepvid.ExplainConfig(neighbors=NeighborConfig(**fields), student=student,
                                 vae=base.vae_config, num_classes=base.num_classes)


def blind(name: str, args) -> tuple[dv.Models, dv.Models, np.ndarray, np.ndarray, np.ndarray]:
    """The setting's models, the same with the teacher blind to ``args.mask`` (it sees 0
    there), its first ``args.count`` images, the classes the blind teacher predicts, and the
    hidden region [H, W] (bool); as in `ground_truth.py`."""
    base, ds = load(name, runs=args.runs, data_dir=args.data_dir, count=args.count)
    h, w, _ = ds.info.image_shape
    hidden = groundtruth.region_mask(args.mask, h, w)
    teacher = groundtruth.masked_teacher(dv.Teacher(base.teacher_apply, base.teacher_params,
                                                    base.num_classes), hidden)
    models = dataclasses.replace(base, teacher_apply=teacher.apply, teacher_config=None)
    return base, models, ds.images, predicted_classes(ds.images, models), hidden


def run(args, name: str, variants: dict) -> dict:
    base, models, x, classes, hidden = blind(name, args)
    h, w = hidden.shape
    region = jnp.broadcast_to(jnp.asarray(hidden), (len(x), h, w))
    rows = {}
    for variant, fields in variants.items():
        config = config_of(fields, base)
        runs = seed_runs("deepvid", models, x, classes, args.seeds, config=config)
        leak = np.asarray(localisation.relevance_mass(jnp.asarray(runs[0].attributions),
                                                      region))
        b = min(args.time_batch, len(x))
        row = {"fields": fields, "hidden_share": float(leak.mean()),
               "heldout_top1": float(np.mean(runs[0].extras["fidelity_top1"])),
               "ms_per_image": 1e3 * timing("deepvid", models, x[:b], classes[:b],
                                            config=config)["seconds"] / b}
        if args.seeds > 1:
            row["seed_agreement"] = float(jnp.mean(stability.seed_agreement(
                jnp.asarray(np.stack([r.attributions for r in runs])))))
        rows[variant] = row
        print(f"{name} {args.mask} {variant:24s} {row}", flush=True)
    return {"setting": name, "mask": args.mask, "args": vars(args), "variants": rows}


def markdown(result: dict) -> str:
    lines = [f"{result['setting']}, teacher blind to the {result['mask']} region, "
             f"{result['args']['count']} images", "",
             "| variant | hidden share | held-out top-1 | seed agreement | ms / image |",
             "|---|---|---|---|---|"]
    for name, r in result["variants"].items():
        agreement = f"{r['seed_agreement']:.2f}" if "seed_agreement" in r else "–"
        lines.append(f"| {name} | {r['hidden_share']:.3f} | {r['heldout_top1']:.3f} | "
                     f"{agreement} | {r['ms_per_image']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = arguments(__doc__.split("\n")[0], count=32, seeds=1)
    p.add_argument("--mask", default="quadrant", choices=groundtruth.MASKS)
    p.add_argument("--variants", required=True, help="JSON: name -> fields (see above).")
    p.add_argument("--time-batch", type=int, default=8,
                   help="Images in the timed program of each variant.")
    args = p.parse_args(argv)
    variants = json.loads(args.variants)
    for name in args.settings:
        write_study(out_dir(args, "remedy_variants"), f"remedy_variants_{name}_{args.mask}",
                    run(args, name, variants), markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
