"""Quick comparisons of DeepVID remedy variants on a teacher blind to a known region (issue 15).

    python benchmarks/remedy_variants.py --dataset mnist --mask quadrant --count 32 \\
        --variants '{"ridge": {"student": "ridge"}, "shifted": {"num": 1536, "patch_mix": 4,
                     "patch_mix_shift": true, "lasso": 0.025}}'

Each variant is a dict of `NeighborConfig` fields plus ``student`` (its method, "lasso" by
default) and any other `StudentConfig` field (``lasso``, ``lasso_group``, ...); printed per
variant: the mean share of |relevance| on the hidden region and the student's held-out top-1 on
its own VAE neighbours, and the time an image (with ``--seeds`` 2 or more, of the last seed's
run, which reuses the compiled program). The full protocol, with intervals and every explainer,
is `ground_truth.py`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from ground_truth import blind_setting

import deepvid_jax as dv
from deepvid_jax.explainers.deepvid import core as deepvid
from deepvid_jax.explainers.deepvid.neighbors import NeighborConfig
from deepvid_jax.explainers.deepvid.student import StudentConfig
from deepvid_jax.metrics import fidelity as metrics
from deepvid_jax.metrics import groundtruth, localisation

STUDENT_FIELDS = tuple(f.name for f in dataclasses.fields(StudentConfig) if f.name != "method")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="mnist", choices=["mnist", "kmnist"])
    p.add_argument("--mask", default="quadrant", choices=groundtruth.MASKS)
    p.add_argument("--count", type=int, default=32)
    p.add_argument("--variants", required=True, help="JSON: name -> fields (see above).")
    p.add_argument("--seeds", type=int, default=1,
                   help="With 2 or more: also the seed agreement of the maps (mean pairwise "
                   "Pearson correlation over keys 0, 100, 101, ...; `metrics.seed_agreement`).")
    args = p.parse_args(argv)
    variants = json.loads(args.variants)
    base, models, x, classes, hidden = blind_setting(args.dataset, args.mask, args.count)
    h, w = hidden.shape
    region = jnp.broadcast_to(jnp.asarray(hidden), (len(x), h, w))
    for name, fields in variants.items():
        fields = dict(fields)
        student = StudentConfig(method=fields.pop("student", "lasso"),
                                **{f: fields.pop(f) for f in STUDENT_FIELDS if f in fields})
        config = deepvid.ExplainConfig(neighbors=NeighborConfig(**fields), student=student,
                                       vae=base.vae_config, num_classes=base.num_classes)
        def run(seed, config=config):
            return dv.explain("deepvid", x, classes, jax.random.PRNGKey(seed), models=models,
                              config=config)

        start = time.perf_counter()
        out = run(0)
        seconds, timed = time.perf_counter() - start, "with compilation"
        leak = np.asarray(localisation.relevance_mass(jnp.asarray(out.attributions), region))
        agreement = ""
        if args.seeds > 1:
            maps = [out.attributions]
            for s in range(100, 100 + args.seeds - 1):
                start = time.perf_counter()
                maps.append(run(s).attributions)
                # the later seeds reuse the program: their time is the explainer's own
                seconds, timed = time.perf_counter() - start, "compiled"
            agreement = (f"  seed agreement "
                         f"{float(jnp.mean(metrics.seed_agreement(jnp.asarray(maps)))):.2f}")
        print(f"{args.dataset} {args.mask} {name:24s} hidden share {leak.mean():.3f}  "
              f"top-1 {np.mean(out.extras['fidelity_top1']):.3f}{agreement}  "
              f"({seconds / len(x) * 1e3:.0f} ms an image, {timed})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
