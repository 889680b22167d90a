"""How much keying `adversarial.attack_dataset`'s PGD random starts per image moved the
consistency study.

The former loop gave batch ``j`` of 500 images the key ``fold_in(key, j)``; the driver gives
image ``i`` the key ``fold_in(key, i)``. This measures `consistency.py`'s row of the standard
teachers in ``runs/<setting>/teacher`` both ways, same teacher, same seed:

    python benchmarks/attack_keys.py --settings mnist kmnist

Writes ``benchmarks/results/attack_keys/attack_keys.{json,md}``.
"""

from __future__ import annotations

import argparse

import consistency
import jax
import jax.numpy as jnp
import numpy as np
from common import arguments, checkpoints, dataset, out_dir, write_study

from deepvid_jax.models import adversarial, checkpoint
from deepvid_jax.models.networks import TeacherConfig

LAYERS = ("conv1", "dense")


def batch_keyed_attack_dataset(images, labels, key, *, teacher_apply, teacher_params, config,
                               batch_size=500):
    """The former loop: one key per batch of ``batch_size`` images."""
    out = []
    for j, i in enumerate(range(0, len(images), batch_size)):
        out.append(np.asarray(adversarial.attack(
            jnp.asarray(images[i:i + batch_size]), jnp.asarray(labels[i:i + batch_size]),
            jax.random.fold_in(key, j), teacher_apply=teacher_apply,
            teacher_params=teacher_params, config=config)))
    return np.concatenate(out)


def run(args) -> dict:
    # consistency.measure's arguments, at that study's defaults
    measure_args = argparse.Namespace(seed=0, epsilons=[0.1, 0.2], pgd_steps=args.pgd_steps,
                                      consistency_epsilon=0.1, layers=list(LAYERS), k=20)
    image_keyed = adversarial.attack_dataset
    rows = {}
    for name in args.settings:
        ev = dataset(name, "eval", data_dir=args.data_dir, count=args.count)
        cfg = TeacherConfig(num_classes=ev.info.num_classes, image_shape=ev.info.image_shape)
        params, cfg, _ = checkpoint.restore(checkpoints(name, args.runs) / "teacher",
                                            kind="teacher", config=cfg)
        for label, fn in (("old", batch_keyed_attack_dataset), ("new", image_keyed)):
            consistency.adversarial.attack_dataset = fn  # the study's attack, swapped
            try:
                row, _ = consistency.measure(params, cfg, ev, measure_args)
            finally:
                consistency.adversarial.attack_dataset = image_keyed
            for layer in LAYERS:
                row[f"consistency_{layer}"] = {k: v for k, v in
                                               row[f"consistency_{layer}"].items()
                                               if k != "joint"}
            rows[f"{name}/{label}"] = row
            print(name, label, row, flush=True)
    return {"args": vars(args), "rows": rows}


def markdown(result: dict) -> str:
    cols = ["clean_accuracy", "fgsm_accuracy@0.1", "pgd_accuracy@0.1", "fgsm_accuracy@0.2",
            "pgd_accuracy@0.2"]
    lines = ["| setting / keys | " + " | ".join(c.replace("_accuracy", " acc.") for c in cols)
             + " | " + " | ".join(f"consistency {layer}" for layer in LAYERS) + " |",
             "|---" * (1 + len(cols) + len(LAYERS)) + "|"]
    for name, r in result["rows"].items():
        lines.append(f"| {name} | " + " | ".join(f"{r[c]:.4f}" for c in cols) + " | "
                     + " | ".join(f"{r[f'consistency_{layer}']['joint_mean']:.3f}"
                                  for layer in LAYERS) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = arguments(__doc__.split("\n")[0], settings=("mnist", "kmnist"), count=None)
    p.add_argument("--pgd-steps", type=int, default=20)
    args = p.parse_args(argv)
    write_study(out_dir(args, "attack_keys"), "attack_keys", run(args), markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
