"""``deepvid train-teacher``: train the CNN classifier to be explained (optionally
adversarially) into ``--out/teacher``."""

from __future__ import annotations

import argparse

from deepvid_jax import files
from deepvid_jax.cli import options
from deepvid_jax.models import adversarial, recipes, train


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Registers ``deepvid train-teacher`` and returns its parser."""
    p = subparsers.add_parser("train-teacher", help="Train the CNN classifier to be explained.")
    options.training_options(p, out="runs/default")
    d = train.AdversarialTraining()
    p.add_argument("--adversarial", choices=adversarial.ATTACKS, default=None,
                   help="Adversarial training with this attack (default: standard training).")
    p.add_argument("--epsilon", type=options.finite(low=0.0, high=1.0), default=d.attack.epsilon,
                   help="L-inf radius of the training attack, in [0, 1].")
    p.add_argument("--attack-steps", type=options.POSITIVE, default=d.attack.steps,
                   help="PGD steps, each of 1.25 * epsilon / steps, from a random start.")
    p.add_argument("--consistency-weight", type=options.finite(low=0.0),
                   default=d.consistency_weight,
                   help="Weight of the consistent loss (Dong et al. 2017); 0 = plain "
                   "adversarial training.")
    p.add_argument("--layer", default=d.layer,
                   help="Layer whose representation the consistent loss aligns.")
    p.set_defaults(func=run)
    return p


def adversarial_training(args: argparse.Namespace) -> train.AdversarialTraining | None:
    """The flags' adversarial training; None without --adversarial."""
    if args.adversarial is None:
        if args.consistency_weight:
            raise ValueError("--consistency-weight needs --adversarial fgsm|pgd.")
        return None
    attack = adversarial.AttackConfig(
        method=args.adversarial, epsilon=args.epsilon, steps=args.attack_steps,
        step_size=1.25 * args.epsilon / args.attack_steps if args.epsilon > 0 else None,
        random_start=True)
    return train.AdversarialTraining(attack=attack, consistency_weight=args.consistency_weight,
                                     layer=args.layer)


def run(args: argparse.Namespace) -> int:
    """Trains, saves and prints one line."""
    files.check_writable_dir(args.out, "--out")
    tr, ev = options.load_splits(args)
    plan = options.plan(args, ("teacher",), tr, adversarial_training(args))
    trained = recipes.train_teacher(plan, tr, ev, meta=recipes.dataset_meta(args.dataset, tr, ev),
                                    progress=not args.quiet)
    print(options.trained_line("teacher", trained, args.eval_split))
    return 0
