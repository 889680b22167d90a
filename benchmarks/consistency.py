"""Neuron consistency and robustness of (a) a standard teacher, (b) adversarial training,
(c) adversarial training with the consistent loss (Dong et al. 2017), on MNIST and KMNIST.

Teachers are trained on each setting's fitting split (`common.SETTINGS`) with the library's
defaults (`train.TEACHER_TRAIN`, same seed for all three) and measured on its evaluation
split:

    python benchmarks/consistency.py --settings mnist kmnist

(a) is restored from ``runs/<setting>/teacher`` when present (``deepvid train-teacher``), else
trained; (b) and (c) from ``runs/<setting>/teacher_adv[_consistent]``, else trained and saved
there. Writes ``benchmarks/results/consistency/consistency.{json,md}`` and
``consistency_*.png`` beside them.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np
from common import arguments, checkpoints, dataset, out_dir, setting, write_study

import deepvid_jax as dv
from deepvid_jax import viz
from deepvid_jax.explainers.registry import predicted_classes
from deepvid_jax.models import adversarial, checkpoint, consistency, train
from deepvid_jax.models.adversarial import AttackConfig
from deepvid_jax.models.networks import TeacherConfig, teacher_apply_for

VARIANTS = ("standard", "adversarial", "adversarial+consistency")


def get_teacher(name: str, variant: str, tr, ev, args) -> tuple[dict, TeacherConfig, dict]:
    """Restores the variant's checkpoint under runs/<dataset>/ or trains and saves it."""
    folder = {"standard": "teacher", "adversarial": "teacher_adv",
              "adversarial+consistency": "teacher_adv_consistent"}[variant]
    path = checkpoints(name, args.runs) / folder
    cfg = TeacherConfig(num_classes=tr.info.num_classes, image_shape=tr.info.image_shape)
    adv = None
    if variant != "standard":
        attack = AttackConfig(method="pgd", epsilon=args.train_epsilon, steps=1,
                              step_size=1.25 * args.train_epsilon, random_start=True)
        weight = args.consistency_weight if variant == "adversarial+consistency" else 0.0
        adv = train.AdversarialTraining(attack=attack, consistency_weight=weight,
                                        layer=args.layer)
    record = None if adv is None else dataclasses.asdict(adv)
    if (path / "meta.json").exists() and not args.retrain:
        params, cfg, meta = checkpoint.restore(path, kind="teacher", config=cfg)
        if meta["metrics"].get("adversarial_training") == record:
            return params, cfg, meta["metrics"]
        print(f"  {path}: trained differently; retraining")
    tcfg = dataclasses.replace(train.TEACHER_TRAIN, seed=args.seed, epochs=args.epochs)
    start = time.perf_counter()
    params, history = train.train_teacher((tr.images, tr.labels), (ev.images, ev.labels), cfg,
                                          tcfg, adversarial_training=adv,
                                          progress=not args.quiet)
    metrics = {**history[-1], "train_seconds": time.perf_counter() - start,
               "adversarial_training": record}
    checkpoint.save(path, params, kind="teacher", config=cfg, metrics=metrics,
                    dataset={"name": tr.info.name, "train_split": setting(name).fit_split,
                             "train_count": len(tr.images),
                             "eval_split": setting(name).eval_split})
    return params, cfg, metrics


def measure(params, cfg, ev, args) -> tuple[dict, dict]:
    """Clean / FGSM / PGD accuracy and per-layer consistency; returns (row, pools for figures)."""
    apply = teacher_apply_for(cfg)
    models = dv.Models(apply, params, cfg.num_classes, teacher_config=cfg)
    x, y = ev.images, ev.labels
    key = jax.random.PRNGKey(args.seed)

    def accuracy(images):
        return float((predicted_classes(images, models) == y).mean())

    row = {"clean_accuracy": accuracy(x)}
    pgd_pool = None
    for eps in args.epsilons:
        for method in ("fgsm", "pgd"):
            cfg_a = AttackConfig(method=method, epsilon=eps, steps=args.pgd_steps)
            adv = adversarial.attack_dataset(x, y, key, teacher_apply=apply,
                                             teacher_params=params, config=cfg_a)
            row[f"{method}_accuracy@{eps:g}"] = accuracy(adv)
            if method == "pgd" and eps == args.consistency_epsilon:
                pgd_pool = adv
    if pgd_pool is None:
        raise SystemExit("--consistency-epsilon must be one of --epsilons")
    pools = {"real": x, "adversarial": pgd_pool, "concepts": y}
    for layer in args.layers:
        real = consistency.pool_activations(params, x, config=cfg, layer=layer)
        advf = consistency.pool_activations(params, pgd_pool, config=cfg, layer=layer)
        c = consistency.neuron_consistency(real, y, advf, y, k=args.k,
                                           num_concepts=cfg.num_classes)
        c = jax.tree.map(np.asarray, c)
        row[f"consistency_{layer}"] = {  # means over live neurons
            "joint_mean": float(np.nanmean(c.joint)), "real_mean": float(np.nanmean(c.real)),
            "adversarial_mean": float(np.nanmean(c.adversarial)),
            "agreement_mean": float(np.nanmean(c.agreement)),
            "alive": int(c.alive.sum()), "neurons": int(c.alive.size),
            "joint": [None if np.isnan(v) else float(v) for v in c.joint],
        }
        pools[layer] = c
    return row, pools


def markdown(result: dict) -> str:
    a = result["args"]
    eps_cols = [f"{m}_accuracy@{e:g}" for e in a["epsilons"] for m in ("fgsm", "pgd")]
    head = ["dataset", "teacher", "clean acc.", *[c.replace("_accuracy@", " acc. ε=")
                                                  for c in eps_cols]]
    for layer in a["layers"]:
        head += [f"consistency {layer} (joint)", f"real/adv agreement {layer}",
                 f"live neurons {layer}"]
    head.append("train s")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, rows in result["results"].items():
        for variant, r in rows.items():
            cells = [name, variant, f"{r['clean_accuracy']:.4f}",
                     *[f"{r[c]:.4f}" for c in eps_cols]]
            for layer in a["layers"]:
                c = r[f"consistency_{layer}"]
                cells += [f"{c['joint_mean']:.3f}", f"{c['agreement_mean']:.3f}",
                          f"{c['alive']}/{c['neurons']}"]
            train_s = r.get("train_seconds")
            cells.append("–" if train_s is None else f"{train_s:.0f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run(args) -> dict:
    figures = out_dir(args, "consistency")
    results = {}
    for name in args.settings:
        tr = dataset(name, "fit", data_dir=args.data_dir, count=args.fit_count)
        ev = dataset(name, "eval", data_dir=args.data_dir, count=args.count)
        results[name], hist = {}, {}
        pools_by_variant = {}
        layer = args.layers[-1]
        for variant in VARIANTS:
            params, cfg, train_metrics = get_teacher(name, variant, tr, ev, args)
            row, pools = measure(params, cfg, ev, args)
            row["train_seconds"] = train_metrics.get("train_seconds")
            results[name][variant] = row
            pools_by_variant[variant] = pools
            joint = np.asarray(pools[layer].joint)
            hist[variant] = joint[~np.isnan(joint)]
            print(f"{name:7s} {variant:24s} clean {row['clean_accuracy']:.4f} "
                  + " ".join(f"{k.split('_')[0]}@{k.split('@')[1]} {v:.4f}"
                             for k, v in row.items() if "@" in k)
                  + f" consistency[{layer}] {row[f'consistency_{layer}']['joint_mean']:.3f}",
                  flush=True)
        n = len(ev.images)
        viz.consistency_histogram(
            hist, figures / f"consistency_hist_{name}.png",
            floor=1.0 / tr.info.num_classes,
            title=f"{name}: neurons of '{layer}' (top-{args.k} of {n} real + {n} PGD "
                  f"ε={args.consistency_epsilon:g} images)")
        for variant in ("standard", "adversarial+consistency"):
            pl = pools_by_variant[variant]
            c = pl[layer]
            order = np.argsort(np.where(c.alive, c.joint, np.inf))[: int(c.alive.sum())]
            shown = order[:3].tolist() + order[-1:].tolist()  # 3 least, 1 most consistent
            viz.neuron_top_images_figure(
                pl["real"], pl["concepts"], pl["adversarial"], pl["concepts"], c.real_top,
                c.adversarial_top, shown, c.joint,  # NaN for dead neurons
                figures / f"consistency_neurons_{name}_{variant.replace('+', '_')}.png",
                title=f"{name}, {variant} teacher, '{layer}' neurons: 3 least and 1 most "
                      f"consistent of {int(c.alive.sum())} live (score at left)")
    return {"args": vars(args), "results": results}


def main(argv=None) -> int:
    p = arguments(__doc__.split("\n")[0], settings=("mnist", "kmnist"), count=None)
    p.add_argument("--fit-count", type=int, default=None,
                   help="Train the teachers on the first this many of the fitting split "
                   "(default all).")
    p.add_argument("--epochs", type=int, default=train.TEACHER_TRAIN.epochs,
                   help="Epochs of the teachers trained here.")
    p.add_argument("--train-epsilon", type=float, default=0.1)
    p.add_argument("--consistency-weight", type=float, default=10.0)
    p.add_argument("--layer", default="dense", help="Layer of the consistent loss.")
    p.add_argument("--epsilons", type=float, nargs="+", default=[0.1, 0.2])
    p.add_argument("--pgd-steps", type=int, default=20)
    p.add_argument("--consistency-epsilon", type=float, default=0.1,
                   help="PGD epsilon of the adversarial pool of the consistency metric.")
    p.add_argument("--layers", nargs="+", default=["conv1", "dense"])
    p.add_argument("--k", type=int, default=20, help="Top images per neuron and pool.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.consistency_epsilon not in args.epsilons:
        p.error("--consistency-epsilon must be one of --epsilons")
    write_study(out_dir(args, "consistency"), "consistency", run(args), markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
