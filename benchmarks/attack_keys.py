"""How much moving `adversarial.attack_dataset` onto the driver moved the consistency benchmark.

Before, batch ``j`` of 500 images drew its PGD random starts from ``fold_in(key, j)``; now image
``i`` draws from ``fold_in(key, i)``. This measures `benchmarks/consistency.py`'s row of the
standard teachers in ``runs/<dataset>/teacher`` both ways, same teacher, same seed:

    python benchmarks/attack_keys.py   # -> benchmarks/results/attack_keys.json
"""

import argparse
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, "benchmarks")
import consistency as bench  # noqa: E402

from deepvid_jax.data import sources as data  # noqa: E402
from deepvid_jax.models import (
    adversarial,  # noqa: E402
    checkpoint,  # noqa: E402
)
from deepvid_jax.models.networks import TeacherConfig  # noqa: E402

new_attack_dataset = adversarial.attack_dataset

def old_attack_dataset(images, labels, key, *, teacher_apply, teacher_params, config,
                       batch_size=500):
    """The former loop: one key per batch."""
    out = []
    for j, i in enumerate(range(0, len(images), batch_size)):
        out.append(np.asarray(adversarial.attack(
            jnp.asarray(images[i:i + batch_size]), jnp.asarray(labels[i:i + batch_size]),
            jax.random.fold_in(key, j), teacher_apply=teacher_apply,
            teacher_params=teacher_params, config=config)))
    return np.concatenate(out)

args = argparse.Namespace(seed=0, epsilons=[0.1, 0.2], pgd_steps=20, consistency_epsilon=0.1,
                          layers=["conv1", "dense"], k=20)
res = {}
for name in ("mnist", "kmnist"):
    ev = data.load(name, "test[8000:]")
    cfg = TeacherConfig(num_classes=10, image_shape=ev.info.image_shape)
    params, cfg, _ = checkpoint.restore(f"runs/{name}/teacher", kind="teacher", config=cfg)
    for label, fn in (("old", old_attack_dataset), ("new", new_attack_dataset)):
        adversarial.attack_dataset = fn
        bench.adversarial.attack_dataset = fn
        row, _ = bench.measure(params, cfg, ev, args)
        for layer in args.layers:
            row[f"consistency_{layer}"] = {k: v for k, v in row[f"consistency_{layer}"].items()
                                           if k != "joint"}
        res[f"{name}/{label}"] = row
        print(name, label, json.dumps(row), flush=True)
with open("benchmarks/results/attack_keys.json", "w") as f:
    json.dump(res, f, indent=1)
