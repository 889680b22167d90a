"""How far each image's calibrated radius lies from the radius at which its own neighbours are
relabelled at the target, per calibration scheme (issue 31: "the achieved flip fraction within
+-0.03 of the target for 90 % of images").

The default calibrates each image's latent scale on a few decoded probes (`NeighborConfig`:
``calibration_probes`` probes, ``calibration_steps`` halvings, the teacher's probability of other
labels interpolated inside the last bracket). Its neighbours are many more random draws. This
study measures, per image, the *reference* radius: where the mean soft flip (1 - the teacher's
probability of the instance's label) of ``--reference`` plain Gaussian draws crosses the target
(``--halvings`` halvings, interpolated). Against it, each scheme's radius: the spread of the log
ratio, the share of images within 10 %, and the soft and hard flip fractions of ``--check``
other plain draws at that radius (independent of both, so the reference row shows what the
draws' own sampling allows), with the probe decodings each scheme pays and, for random probes,
how much the radius moves with the key.

    python benchmarks/calibration.py --settings mnist kmnist --count 200
"""

from __future__ import annotations

import dataclasses
import datetime
import json

import common
import jax
import jax.numpy as jnp
import numpy as np

from deepvid_jax import driver, files, validate, viz
from deepvid_jax.explainers.deepvid import core as ex
from deepvid_jax.explainers.deepvid import radius
from deepvid_jax.models import vae

DEFAULT = ex.ExplainConfig().neighbors

# label -> `NeighborConfig` fields changed from the default's (every scheme measures soft flips,
# as the default does, so all aim at the same quantity); the probe count, their draw and the
# search always named, so that a label says the same scheme whatever the default is.
SCHEMES = {
    "8 fixed x 4": {"calibration_probes": 8, "calibration_steps": 4},
    "8 random x 4": {"calibration_probes": 8, "calibration_steps": 4, "probe_draw": "random"},
    "8 fixed x 3": {"calibration_probes": 8, "calibration_steps": 3},
    "8 fixed x 5": {"calibration_probes": 8, "calibration_steps": 5},
    "16 fixed x 2": {"calibration_probes": 16, "calibration_steps": 2},
    "16 fixed x 3": {"calibration_probes": 16, "calibration_steps": 3},
    "16 fixed x 4": {"calibration_probes": 16, "calibration_steps": 4},
    "32 fixed x 4": {"calibration_probes": 32, "calibration_steps": 4},
    "16 fixed x 2 secant": {"calibration_probes": 16, "calibration_steps": 2,
                            "calibration": "secant"},
    "16 fixed x 3 secant": {"calibration_probes": 16, "calibration_steps": 3,
                            "calibration": "secant"},
    "8 fixed x 4 secant": {"calibration_probes": 8, "calibration_steps": 4,
                           "calibration": "secant"},
}
# The rows without "secant" in their label halve and interpolate.
SCHEMES = {k: {"calibration": "interpolate", "probe_draw": "fixed", **v}
           for k, v in SCHEMES.items()}
_REF_KEY, _CHECK_KEY = 101, 202  # the reference's and the check's draws (shared by all images)


def _flips(models, mean, std, labels, eps, scale):
    """Mean soft and hard flip fractions [B] of the plain decodings mean + scale * std * eps
    (mean, std [B, Z]; labels [B]; eps [R, Z] shared; scale [B])."""
    z = mean[:, None] + scale[:, None, None] * std[:, None] * eps[None]
    x = vae.decode(models.vae_params, z.reshape(-1, z.shape[-1]), config=models.vae_config)
    logits = models.teacher_apply(models.teacher_params, x).reshape(*z.shape[:2], -1)
    p_label = jnp.take_along_axis(jax.nn.softmax(logits, -1), labels[:, None, None], -1)[..., 0]
    return (jnp.mean(1.0 - p_label, 1),
            jnp.mean((jnp.argmax(logits, -1) != labels[:, None]).astype(jnp.float32), 1))


def measure(models, images, args, stored: dict | None = None) -> dict:
    """The rows of one setting (see the module docstring); with ``stored`` (an earlier result
    of the same images and arguments), only the `SCHEMES` it lacks, against its reference."""
    images = jnp.asarray(images, jnp.float32)
    labels = jnp.argmax(models.teacher_apply(models.teacher_params, images), -1)
    mean, logvar = vae.encode(models.vae_params, images, config=models.vae_config)
    std = jnp.exp(0.5 * logvar) if DEFAULT.use_posterior_std else jnp.ones_like(mean)
    z_dim = mean.shape[-1]
    ref_eps = jax.random.normal(jax.random.PRNGKey(_REF_KEY), (args.reference, z_dim))
    check_eps = jax.random.normal(jax.random.PRNGKey(_CHECK_KEY), (args.check, z_dim))
    ref_config = dataclasses.replace(DEFAULT, calibration="interpolate",
                                     calibration_steps=args.halvings)

    inputs = {"mean": mean, "std": std, "labels": labels}

    def blocks(fn, seed: int = 0, **extra):
        """``fn(inputs, keys)`` over blocks of ``args.block`` images (the last padded: one
        program; image ``i`` gets ``fold_in(PRNGKey(seed), i)``), gathered on the host."""
        return driver.map_instances(lambda _, x, keys: fn(x, keys), None, {**inputs, **extra},
                                    jax.random.PRNGKey(seed), chunk_size=args.block,
                                    full_chunks=True)

    @jax.jit
    def reference_block(x, keys):
        return radius.search_scale(
            lambda sc: _flips(models, x["mean"], x["std"], x["labels"], ref_eps, sc)[0],
            ref_config, shape=(x["mean"].shape[0],))

    check_block = jax.jit(lambda x, keys: _flips(models, x["mean"], x["std"], x["labels"],
                                                 check_eps, x["scale"]))

    def check(scale):
        return blocks(check_block, scale=np.asarray(scale, np.float32))

    if stored is not None:
        reference = np.asarray(stored["reference_radius"], np.float32)
        past = np.zeros(len(reference), bool)
        past[stored["past_at_code"]] = True
        rows = dict(stored["rows"])
        return {**_schemes(models, images, labels, inputs, blocks, check, reference, past,
                           rows, args), "reference_radius": stored["reference_radius"],
                "past_at_code": stored["past_at_code"], "target_flip": DEFAULT.target_flip}
    reference = blocks(reference_block)
    # Images the teacher already relabels at their own code (soft flip of the decoded code at
    # or past the target): no radius brings their neighbours down to it, and the search ends
    # at 0, so they are left out of the ratios (and count as off target in every row).
    at_code = jax.jit(lambda x, keys: _flips(models, x["mean"], x["std"], x["labels"],
                                             jnp.zeros((1, z_dim)), jnp.zeros(len(keys)))[0])
    past = blocks(at_code) >= DEFAULT.target_flip
    rows = {"reference": _row(reference, reference, past, *check(reference),
                              decodes=args.reference * args.halvings, spread=None, args=args)}
    print("reference", json.dumps(rows["reference"]), flush=True)
    return {**_schemes(models, images, labels, inputs, blocks, check, reference, past, rows,
                       args), "reference_radius": np.asarray(reference).tolist(),
            "past_at_code": np.flatnonzero(past).tolist(), "target_flip": DEFAULT.target_flip}


def _schemes(models, images, labels, inputs, blocks, check, reference, past, rows, args):
    """``{"rows": rows}`` with a row added for each of `SCHEMES` not in ``rows``."""
    teacher = lambda x: models.teacher_apply(models.teacher_params, x)  # noqa: E731
    for label, change in SCHEMES.items():
        if label in rows:
            continue
        config = dataclasses.replace(DEFAULT, **change)
        calibrate = jax.jit(lambda x, keys, c=config: jax.vmap(
            lambda im, k, lab: radius.calibrate_scale(models.vae_params, im, k, teacher, lab, c,
                                                      models.vae_config))(
            x["images"], keys, x["labels"]))
        scales = [blocks(calibrate, seed, images=images)
                  for seed in range(args.seeds if config.probe_draw == "random" else 1)]
        scale = scales[0]
        spread = (np.max(scales, 0) / np.maximum(np.min(scales, 0), 1e-6) - 1.0
                  if len(scales) > 1 else None)
        rows[label] = _row(scale, reference, past, *check(scale), spread=spread,
                           decodes=config.calibration_probes * config.calibration_steps,
                           args=args)
        print(label, json.dumps(rows[label]), flush=True)
    return {"rows": rows}


def _row(scale, reference, past, soft, hard, *, decodes: int, spread, args) -> dict:
    """One row: the log ratio of ``scale`` to ``reference`` over the images not ``past`` the
    target at their code, the flips of every image, the key spread."""
    log_ratio = np.log(np.asarray(scale)[~past] / np.asarray(reference)[~past])
    near = np.abs(soft - DEFAULT.target_flip) <= args.tolerance
    return {"probe_decodes": decodes, "past_at_code": int(np.sum(past)),
            "log_ratio": {"median": float(np.median(log_ratio)), "std": float(np.std(log_ratio)),
                          "iqr": float(np.subtract(*np.percentile(log_ratio, [75, 25])))},
            "within_10pct": float(np.mean(np.abs(log_ratio) <= np.log(1.1))),
            "soft_flip": common.interval(soft), "soft_within": float(np.mean(near)),
            "hard_flip": common.interval(hard),
            "key_spread_p90": None if spread is None else float(np.percentile(spread, 90)),
            "scales": np.asarray(scale).tolist()}


def markdown(result: dict) -> str:
    t, tol = result["target_flip"], result["args"]["tolerance"]
    lines = [
        f"{common.where(result)}, {result['images']} images. Reference: the radius at which "
        f"{result['args']['reference']} plain Gaussian draws get a mean soft flip (1 - the "
        f"teacher's probability of the instance's label) of {t}; the flips are those of "
        f"{result['args']['check']} other plain draws at each row's radius. The radius ratios "
        f"leave out the {result['rows']['reference']['past_at_code']} images whose own decoded "
        f"code the teacher already gives a soft flip of {t} or more (no radius brings them to "
        f"the target; they count as off target in every row).",
        "",
        f"| probes x steps | probe decodes | log(radius / reference): median | IQR | std | "
        f"within 10 % | soft flip | within {t} ± {tol} | hard flip | key spread p90 |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in result["rows"].items():
        spread = "–" if r["key_spread_p90"] is None else f"{100 * r['key_spread_p90']:.0f}%"
        lines.append(
            f"| {shown(label)} | {r['probe_decodes']} | {r['log_ratio']['median']:+.3f} | "
            f"{r['log_ratio']['iqr']:.3f} | {r['log_ratio']['std']:.3f} | "
            f"{100 * r['within_10pct']:.0f}% | "
            f"{common.fmt_interval(r['soft_flip'])} | {100 * r['soft_within']:.0f}% | "
            f"{common.fmt_interval(r['hard_flip'])} | {spread} |")
    return "\n".join([*lines, *("\n" + n for n in result.get("notes", []))]) + "\n"


PLOTTED = ("8 fixed x 4", "8 random x 4", "16 fixed x 4", "32 fixed x 4", "16 fixed x 3 secant")


def default_label() -> str | None:
    """The `SCHEMES` label of today's default calibration (None if it is none of them)."""
    return next((k for k, c in SCHEMES.items()
                 if dataclasses.replace(DEFAULT, **c) == DEFAULT), None)


def shown(label: str) -> str:
    """``label`` as the table and figure show it: the default's marked."""
    return f"{label} (default)" if label == default_label() else label


def plot(result: dict, path):
    """Per scheme of `PLOTTED`, each image's calibrated radius against its reference (log axes,
    the images past the target at their code left out), with the 10 % band."""
    plt = viz.pyplot()
    ref = np.asarray(result["reference_radius"])
    keep = np.ones(len(ref), bool)
    keep[result["past_at_code"]] = False
    labels = [k for k in PLOTTED if k in result["rows"]]
    fig, axes = plt.subplots(1, len(labels), figsize=(3.0 * len(labels), 3.2), sharey=True,
                             squeeze=False)
    lo = float(ref[keep].min()) * 0.7
    hi = float(max(ref[keep].max(), *(np.asarray(result["rows"][k]["scales"])[keep].max()
                                       for k in labels))) * 1.3
    line = np.array([lo, hi])
    for ax, label in zip(axes[0], labels, strict=True):
        r = result["rows"][label]
        ax.scatter(ref[keep], np.asarray(r["scales"])[keep], s=7, alpha=0.6)
        ax.plot(line, line, "k-", lw=0.8)
        for f in (1.1, 1 / 1.1):
            ax.plot(line, f * line, "k:", lw=0.6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_title(f"{shown(label)}\n{100 * r['within_10pct']:.0f}% within 10 %", fontsize=8)
        ax.set_xlabel("reference radius", fontsize=8)
    axes[0][0].set_ylabel("calibrated radius", fontsize=8)
    fig.suptitle(f"{common.where(result)}: {int(keep.sum())} of {len(ref)} images (the others "
                 f"past the target at their code)", fontsize=9)
    fig.tight_layout()
    files.savefig(fig, path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = common.arguments(__doc__.splitlines()[0], settings=("mnist", "kmnist"), count=200)
    p.add_argument("--reference", type=int, default=256,
                   help="Plain Gaussian draws per image that the reference radius is found on.")
    p.add_argument("--check", type=int, default=512,
                   help="Other plain draws per image that each radius's flips are measured on.")
    p.add_argument("--halvings", type=int, default=12, help="The reference search's halvings.")
    p.add_argument("--tolerance", type=float, default=0.03,
                   help="A soft flip this near the target counts as on target.")
    p.add_argument("--block", type=int, default=16, help="Images per compiled call.")
    p.add_argument("--merge", action="store_true",
                   help="Add only the schemes the stored results lack, against their stored "
                   "reference (same images and arguments), and note the command.")
    p.add_argument("--replot", action="store_true",
                   help="Only redraw the tables and figures from the existing results.")
    args = p.parse_args(argv)
    for name in ("reference", "check", "halvings", "block"):
        validate.integer(getattr(args, name), f"--{name}", minimum=1)
    validate.number(args.tolerance, "--tolerance", low=0.0, high=1.0)
    out = common.out_dir(args, "calibration")
    for name in args.settings:
        if args.replot:
            plot(common.rewrite_study(out, f"calibration_{name}", markdown),
                 out / f"calibration_{name}.png")
            continue
        models, ds = common.load(name, runs=args.runs, data_dir=args.data_dir, count=args.count)
        s = common.setting(name)
        stored = _stored(out, name, args) if args.merge else None
        result = {**measure(models, ds.images, args, stored), "images": len(ds.images),
                  "dataset": s.dataset, "split": s.eval_split, "args": vars(args)}
        if stored is not None:
            added = [k for k in result["rows"] if k not in stored["rows"]]
            result.update(args=stored["args"], command=stored["command"],
                          machine=stored["machine"], notes=[
                              *stored.get("notes", []),
                              f"{datetime.date.today()}: rows {', '.join(added) or 'none'} "
                              f"added by `{common.command()}` against the stored reference."])
        result = common.write_study(out, f"calibration_{name}", result, markdown)
        plot(result, out / f"calibration_{name}.png")
    return 0


def _stored(out, name: str, args) -> dict:
    """The stored result that ``--merge`` adds to, checked to be of the same images and
    arguments."""
    path = out / f"calibration_{name}.json"
    if not path.exists():
        raise SystemExit(f"--merge: no stored results at {path}; run without --merge first.")
    stored = json.loads(path.read_text())
    for key in ("count", "reference", "check", "halvings", "tolerance", "seeds"):
        if stored["args"].get(key) != getattr(args, key):
            raise SystemExit(f"--merge: the stored results have --{key} "
                             f"{stored['args'].get(key)}, this run {getattr(args, key)}.")
    return stored


if __name__ == "__main__":
    raise SystemExit(main())
