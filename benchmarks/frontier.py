"""DeepVID's stability / evidence / cost frontier: seed agreement, leak onto pixels the teacher
cannot see, and time per image, for each explainer variant at each sample count, in one run.

    python benchmarks/frontier.py --settings mnist kmnist --count 200
    python benchmarks/frontier.py --variants deepvid --samples 2048 --merge  # some rows again

Per setting (`common.SETTINGS`), on the first ``--count`` images of its evaluation split, each
row of `VARIANTS` (label -> registered method, config factory, sample counts) at each of its
sample counts (``--samples`` overrides them) is measured by:

- seed agreement: mean pairwise Pearson correlation of the maps over ``--seeds`` keys (0, 100,
  101, ...; `common.seed_runs`), for the teacher's class;
- the student's held-out top-1 (extras ``fidelity_top1``, averaged over the seeds), and when the
  method gives them: the label-flip fraction (mean over the seeds; the share of images, key 0,
  within the config's ``target_flip`` +- 0.03, and in brackets the share a radius hitting the
  target exactly would score, the binomial ceiling of that many neighbours), the same over the
  plain VAE decodings alone (the rows the radius is calibrated for; the patch-mixed ones are
  relabelled less), the 90th percentile over images of the relative spread of the calibrated latent
  scale over the seeds ((max - min) / mean), and the ``smooth`` penalty (mean over the seeds;
  the share of images, key 0, where it is 0);
- leak: the share of |relevance| on the region hidden from the teacher (`ground_truth.
  blind_setting`, one teacher per ``--regions`` entry; key 0, the blind teacher's class);
- per-pixel off-share: a linear teacher reading only `PIXELS` fixed random pixels (least squares
  of the trained teacher's logits on those pixels of 4,000 images of the fit split); the share
  of |relevance| off those pixels (key 0, its class);
- ms / image: `common.timing` on 16 images and, for VAE-sampling DeepVID rows, its ratio to
  decoding and classifying as many neighbours alone (`bench.program("decode_classify", ...)`):
  the median over `PAIRS` alternating pairs of calls (`bench.paired_ratio`, as `deepvid bench`),
  so that the machine's drift between the two measurements does not enter it.

Mean +- 95 % interval over the images. Writes ``benchmarks/results/frontier/frontier_<setting>.
{json,md,png}`` (``--merge``: only the given rows replaced in the existing JSON).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import common
import jax
import jax.numpy as jnp
import numpy as np
from common import fmt_interval, interval
from ground_truth import blind_setting
from scipy.stats import binom

import deepvid_jax as dv
from deepvid_jax import files, validate
from deepvid_jax.explainers import registry
from deepvid_jax.explainers.deepvid import core as ex
from deepvid_jax.explainers.deepvid.neighbors import mixed_rows
from deepvid_jax.metrics import groundtruth
from deepvid_jax.metrics.stability import seed_agreement
from deepvid_jax.runner import bench

PIXELS = 40  # the per-pixel teacher's inputs
TIME_BATCH = 16
PAIRS = 5  # alternating calls of a row and decode_classify for its time ratio
TARGETS = {"agreement": 0.85, "leak": 0.05}
FLIP_WIDTH = 0.03  # the flip fraction aimed at: the target +- this, for 90 % of images


def deepvid_variant(base: ex.ExplainConfig):
    """A config factory of a DeepVID row: ``base`` for the models' VAE and class count."""
    return lambda models, samples: dataclasses.replace(base, vae=models.vae_config,
                                                       num_classes=models.num_classes)


def default_with(**neighbors) -> ex.ExplainConfig:
    """`ExplainConfig()` with these `NeighborConfig` fields changed."""
    base = ex.ExplainConfig()
    return dataclasses.replace(base, neighbors=dataclasses.replace(base.neighbors, **neighbors))


def registry_default(models, samples):
    """The method's registered config (with the row's sample count)."""
    return None


# The radius searches of the rows below, named whatever the default's is: 16 fixed probes,
# four halvings interpolated (64 probe decodings, none reused), or two secant steps.
HALVINGS = dict(calibration_probes=16, probe_draw="fixed", calibration="interpolate",
                calibration_steps=4, reuse_probes=False)
SECANT = dict(calibration_probes=16, probe_draw="fixed", calibration="secant",
              calibration_steps=2)

# label -> (registered method, config factory (models, samples) -> config or None, samples).
VARIANTS = {
    "deepvid": ("deepvid", deepvid_variant(ex.ExplainConfig()), (256, 512)),
    # The radius by four halvings, interpolated, the probes not reused (64 extra decodings; the
    # default takes three secant steps and reuses the last one's probes: 32); then with 8
    # calibration probes (half a basis of the 16-d latent: radii farther from their target,
    # benchmarks/calibration.py); then with three halvings (48).
    "deepvid_halvings": ("deepvid", deepvid_variant(default_with(**HALVINGS)), (512,)),
    "deepvid_8probes": ("deepvid", deepvid_variant(default_with(
        **HALVINGS | dict(calibration_probes=8))), (512,)),
    "deepvid_3halvings": ("deepvid", deepvid_variant(default_with(
        **HALVINGS | dict(calibration_steps=3))), (512,)),
    # The radius by two secant steps on the same 16 probes (32 probe decodings), none reused;
    # then with the last step's 16 probes reused as the first neighbours (496 more decoded, not
    # 512): 16 extra decodings, the default's three steps 32.
    "deepvid_secant": ("deepvid", deepvid_variant(default_with(**SECANT,
                                                               reuse_probes=False)), (512,)),
    "deepvid_secant_reuse": ("deepvid", deepvid_variant(default_with(**SECANT,
                                                                     reuse_probes=True)),
                             (512,)),
    "deepvid_fixed_smooth": ("deepvid", deepvid_variant(ex.FIXED_SMOOTH), (512, 1024)),
    "deepvid_fast": ("deepvid_fast", deepvid_variant(ex.FAST), (512, 1024)),
    "lime": ("lime", registry_default, (512, 1024)),
    "rise": ("rise", registry_default, (1024,)),
}


def config_for(label: str, models: dv.Models, samples: int):
    """(method, its config with ``samples`` samples) of row ``label``."""
    method, factory, _ = VARIANTS[label]
    config = factory(models, samples)
    config = registry.get(method).config if config is None else config
    return method, registry.with_samples(config, samples)


def pixel_teacher(name: str, models: dv.Models, args, shape) -> tuple[dv.Models, np.ndarray]:
    """The linear teacher on `PIXELS` random pixels (all channels) fitted to ``models``'
    logits, and the [H, W] bool mask of those pixels."""
    h, w, c = shape
    pos = np.sort(np.random.default_rng(0).choice(h * w, PIXELS, replace=False))
    idx = (pos[:, None] * c + np.arange(c)).ravel()
    fit = common.dataset(name, "fit", data_dir=args.data_dir, count=4000).images
    logits_of = jax.jit(models.teacher_apply)
    logits = np.concatenate([np.asarray(logits_of(models.teacher_params, fit[i:i + 500]))
                             for i in range(0, len(fit), 500)])
    inputs = np.asarray(fit, np.float64).reshape(len(fit), -1)[:, idx]
    coef = np.linalg.lstsq(np.c_[inputs, np.ones(len(fit))], logits, rcond=None)[0]
    cols = jnp.asarray(idx)

    def apply(params, x):
        return x.reshape(x.shape[0], -1)[:, cols] @ params["w"] + params["b"]

    params = {"w": jnp.asarray(coef[:-1], jnp.float32), "b": jnp.asarray(coef[-1], jnp.float32)}
    mask = np.zeros(h * w, bool)
    mask[pos] = True
    return (dataclasses.replace(models, teacher_apply=apply, teacher_params=params,
                                teacher_config=None), mask.reshape(h, w))


def calibration(runs: list[dv.Attribution], target: float = 0.2) -> dict:
    """Held-out top-1, flip fraction, scale spread and smoothness of the seeds' extras."""
    out = {}
    over = {k: np.stack([np.asarray(r.extras[k], np.float64) for r in runs])
            for k in ("fidelity_top1", "flip_fraction", "scale", "smooth") if k in runs[0].extras}
    if "fidelity_top1" in over:
        out["top1"] = interval(over["fidelity_top1"].mean(0))
    if "flip_fraction" in over:
        out["flip_fraction"] = interval(over["flip_fraction"].mean(0))
        out["flip_near_target"] = float(np.mean(near_target(over["flip_fraction"][0], target)))
    if "scale" in over:
        s = over["scale"]
        out["scale_spread_p90"] = float(np.percentile((s.max(0) - s.min(0)) / s.mean(0), 90))
        out["scale_median"] = float(np.median(s[0]))
    if "smooth" in over:
        out["smooth_mean"] = float(over["smooth"].mean())
        out["smooth_zero"] = float(np.mean(over["smooth"][0] == 0))
    return out


def near_target(fraction, target: float) -> np.ndarray:
    """Whether each flip fraction lies within ``target`` +- `FLIP_WIDTH` (bounds included)."""
    return np.abs(np.asarray(fraction) - target) <= FLIP_WIDTH + 1e-12


def near_target_ceiling(rows: int, target: float) -> float:
    """The share of images whose flip fraction over ``rows`` neighbours is `near_target` when
    the radius hits the target exactly: P(|Binomial(rows, target) / rows - target| <=
    `FLIP_WIDTH`). No calibration scores above it."""
    k = np.arange(rows + 1)
    return float(binom.pmf(k, rows, target)[near_target(k / rows, target)].sum())


def plain_flips(models: dv.Models, x, config: ex.ExplainConfig) -> dict:
    """The label-flip fraction (key 0) on the neighbours the radius is calibrated for: the
    plain VAE decodings, not the patch-mixed rows (`mixed_rows`), which the teacher relabels
    less; its share of images within the target +- `FLIP_WIDTH`, and that share's binomial
    ceiling (`near_target_ceiling`) over those rows and over all neighbours."""
    e = ex.explain_images(x, jax.random.PRNGKey(0), teacher_apply=models.teacher_apply,
                          teacher_params=models.teacher_params, vae_params=models.vae_params,
                          config=dataclasses.replace(config, return_neighbors=True))
    nc = config.neighbors
    start, stop = mixed_rows(nc, config.num_fit)
    plain = np.r_[0:start, stop:nc.num]
    label = np.argmax(e.teacher_probs, -1)[:, None]
    frac = np.mean(np.argmax(e.neighbor_probs[:, plain], -1) != label, axis=1)
    return {"flip_plain": interval(frac), "flip_plain_rows": int(len(plain)),
            "flip_plain_near_target": float(np.mean(near_target(frac, nc.target_flip))),
            "flip_plain_ceiling": near_target_ceiling(len(plain), nc.target_flip),
            "flip_ceiling": near_target_ceiling(nc.num, nc.target_flip)}


def measure(label: str, samples: int, ctx: dict, args) -> dict:
    """One row: every column of one (variant, sample count)."""
    models, x, classes = ctx["models"], ctx["images"], ctx["classes"]
    method, config = config_for(label, models, samples)
    runs = common.seed_runs(method, models, x, classes, args.seeds, config=config)
    row = {"variant": label, "method": method, "samples": samples,
           "seed_agreement": interval(seed_agreement(jnp.stack([r.attributions
                                                                for r in runs]))),
           **calibration(runs, config.neighbors.target_flip
                         if isinstance(config, ex.ExplainConfig) else 0.2), "leak": {}}
    key = jax.random.PRNGKey(0)
    for region, (blind, blind_classes, hidden) in ctx["blind"].items():
        a = dv.explain(method, x, blind_classes, key, models=blind, config=config)
        row["leak"][region] = interval(dv.score(
            "relevance_mass", x, a.attributions,
            regions=np.broadcast_to(hidden, (len(x), *hidden.shape)))["relevance_mass"])
    linear, pixel_classes, pixels = ctx["pixel"]
    a = dv.explain(method, x, pixel_classes, key, models=linear, config=config)
    on = dv.score("relevance_mass", x, a.attributions,
                  regions=np.broadcast_to(pixels, (len(x), *pixels.shape)))["relevance_mass"]
    row["pixel_off_share"] = interval(1.0 - on)
    if isinstance(config, ex.ExplainConfig) and config.neighbors.calibrated:
        row.update(plain_flips(models, x, config))
    b = min(TIME_BATCH, len(x))
    t, call = common.timer(method, models, x[:b], classes[:b], config=config)
    row["ms_per_image"] = 1e3 * t["seconds"] / b
    if isinstance(config, ex.ExplainConfig) and config.neighbors.sampler == "vae":
        fn = bench.program("decode_classify", models, config.neighbors.num,
                           config.block_size or b * config.neighbors.num)
        ref, ref_call = bench.measure_timer(fn, x[:b], classes[:b], 3)
        row["decode_classify_ms_per_image"] = 1e3 * ref["seconds"] / b
        runs = bench.paired_ratio(call, ref_call, PAIRS)
        row["x_decode_classify"] = float(np.median(runs))
        row["x_decode_classify_pairs"] = len(runs)
    return row


def run(name: str, args, labels: list[str]) -> dict:
    models, ds = common.load(name, runs=args.runs, data_dir=args.data_dir, count=args.count)
    x, shape = ds.images, ds.info.image_shape
    classes = registry.predicted_classes(x, models)
    blind = {}
    for region in args.regions:
        _, b_models, _, b_classes, hidden = blind_setting(name, region, args.count,
                                                          args.data_dir, args.runs)
        blind[region] = (b_models, b_classes, hidden)
    linear, pixels = pixel_teacher(name, models, args, shape)
    pixel_classes = registry.predicted_classes(x, linear)
    ctx = {"models": models, "images": x, "classes": classes, "blind": blind,
           "pixel": (linear, pixel_classes, pixels)}
    rows = {}
    for label in labels:
        for samples in args.samples or VARIANTS[label][2]:
            r = rows[f"{label}@{samples}"] = measure(label, samples, ctx, args)
            leak = " ".join(f"{k} {v['mean']:.3f}" for k, v in r["leak"].items())
            print(f"[{name}] {label} S={samples}: agreement {r['seed_agreement']['mean']:.3f}, "
                  f"leak {leak}, off-pixels {r['pixel_off_share']['mean']:.3f}, "
                  f"top-1 {r['top1']['mean'] if 'top1' in r else float('nan'):.3f}, "
                  f"{r['ms_per_image']:.1f} ms/image", flush=True)
    s = common.setting(name)
    return {"setting": name, "dataset": s.dataset, "split": s.eval_split, "images": len(x),
            "seeds": args.seeds, "args": vars(args),
            "regions": {r: float(h.mean()) for r, (_, _, h) in blind.items()},
            "pixel_teacher": {"pixels": PIXELS, "area": float(pixels.mean()),
                              "agreement": float(np.mean(pixel_classes == classes))},
            "rows": rows}


def ordered(rows: dict) -> list[dict]:
    """Rows in `VARIANTS`' order (others after), then by sample count."""
    order = {k: i for i, k in enumerate(VARIANTS)}
    return sorted(rows.values(), key=lambda r: (order.get(r["variant"], len(order)),
                                                r["variant"], r["samples"]))


def markdown(result: dict) -> str:
    regions, pt = result["regions"], result["pixel_teacher"]
    dash = "–"
    lines = [f"{common.where(result)}, {result['images']} images, {result['seeds']} seeds. Leak: "
             "share of |relevance| on the region the teacher is blind to (" + ", ".join(
                 f"{r} {a:.0%} of the pixels" for r, a in regions.items()) + "); off-pixels: "
             f"share off the {pt['pixels']} pixels a linear teacher reads ({pt['area']:.1%} of "
             f"the image; it agrees with the teacher's class on {pt['agreement']:.0%}). Targets: "
             f"agreement >= {TARGETS['agreement']}, leak <= {TARGETS['leak']}.", "",
             "| variant | samples | seed agreement | " + " | ".join(f"leak {r}" for r in regions)
             + " | off-pixels | held-out top-1 | ms / image | x decode+classify | flip fraction "
             f"| flip target ± {FLIP_WIDTH} (ceiling) | flip, plain rows "
             f"| plain target ± {FLIP_WIDTH} (ceiling) "
             "| scale spread p90 | smooth mean (= 0) |",
             "|---|---|---|" + "---|" * len(regions) + "---|---|---|---|---|---|---|---|---|---|"]
    for r in ordered(result["rows"]):
        leak = " | ".join(fmt_interval(r["leak"][g]) if g in r["leak"] else dash
                          for g in regions)
        smooth = (f"{r['smooth_mean']:.3f} ({r['smooth_zero']:.0%})" if "smooth_mean" in r
                  else dash)
        cells = [r["variant"], r["samples"], fmt_interval(r["seed_agreement"], 2), leak,
                 fmt_interval(r["pixel_off_share"]),
                 fmt_interval(r["top1"]) if "top1" in r else dash, f"{r['ms_per_image']:.1f}",
                 ratio_cell(r),
                 fmt_interval(r["flip_fraction"], 2) if "flip_fraction" in r else dash,
                 ceiling(r, "flip_near_target", "flip_ceiling"),
                 fmt_interval(r["flip_plain"], 2) if "flip_plain" in r else dash,
                 ceiling(r, "flip_plain_near_target", "flip_plain_ceiling"),
                 f"{r['scale_spread_p90']:.3f}" if "scale_spread_p90" in r else dash, smooth]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    pairs = sorted({r["x_decode_classify_pairs"] for r in result["rows"].values()
                    if "x_decode_classify_pairs" in r})
    unpaired = any("x_decode_classify" in r and "x_decode_classify_pairs" not in r
                   for r in result["rows"].values())
    timed = [*(f"the median ratio over {p} alternating pairs of calls" for p in pairs),
             *(["* the ratio of two medians timed one after the other (rows measured before "
                "the pairing; the machine's drift between them enters it)"] if unpaired else [])]
    notes = [("x decode+classify: " + "; ".join(timed) + ". " if timed else "")
             + "Flip target: each row's config's `target_flip`.",
             *(f"Rows merged by `{c}`." if kind == "command" else c
               for kind, c in merges(result.get("merged", [])))]
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n"


def merges(merged: list[dict]) -> list[tuple[str, str]]:
    """The merge records in order, as ("command", it) or ("note", it); a command repeated is
    listed once, where it last ran (the rows it measured are its last run's)."""
    items = [("command", m["command"]) if "command" in m else ("note", m["note"])
             for m in merged]
    return list(dict.fromkeys(reversed(items)))[::-1]


def ratio_cell(row: dict) -> str:
    """The time ratio to decoding and classifying, starred when it was not paired."""
    if "x_decode_classify" not in row:
        return "–"
    return f"{row['x_decode_classify']:.2f}" + ("" if "x_decode_classify_pairs" in row else "*")


def ceiling(row: dict, share: str, top: str) -> str:
    """A share of images near the flip target, with its binomial ceiling when measured."""
    if share not in row:
        return "–"
    return f"{row[share]:.0%}" + (f" ({row[top]:.0%})" if top in row else "")


# Where a point's label may go, in points from the point: tried in order, the first that
# overlaps no label placed before is taken (rows close in time and value would overprint).
_LABEL_OFFSETS = [(3, 3), (3, -10), (3, 12), (3, -19), (3, 21), (3, -28), (3, 30)]


def place_labels(ax, labels: list[tuple[tuple[float, float], str]], size: float = 7) -> None:
    """Annotate each (data point, text) of ``labels`` beside its point, at the first of
    `_LABEL_OFFSETS` whose box (text at ``size`` pt, about 0.6 of the size per character)
    overlaps no box placed before; the last offset when every one does."""
    ax.figure.canvas.draw()  # the limits and scales final, so data -> points is too
    per_point = 72.0 / ax.figure.dpi
    boxes = []
    for (x, y), text in sorted(labels, key=lambda item: item[0]):
        px, py = ax.transData.transform((x, y)) * per_point
        w, h = 0.6 * size * len(text), size + 1
        for dx, dy in _LABEL_OFFSETS:
            box = (px + dx, py + dy, px + dx + w, py + dy + h)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3]
                       for b in boxes):
                break
        boxes.append(box)
        ax.annotate(text, (x, y), fontsize=size, xytext=(dx, dy), textcoords="offset points")


def plot(result: dict, path: Path) -> Path:
    """Seed agreement and leak (first region) against ms / image, a point per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    region = next(iter(result["regions"]), None)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    panels = [("seed_agreement", "seed agreement", TARGETS["agreement"]),
              ("leak", f"leak ({region} hidden)", TARGETS["leak"])]
    rows = ordered(result["rows"])
    for ax, (col, title, target) in zip(axes, panels, strict=True):
        labels = []
        for i, label in enumerate(dict.fromkeys(r["variant"] for r in rows)):
            pts = [(r["ms_per_image"], (r[col][region] if col == "leak" else r[col])["mean"],
                    r["samples"]) for r in rows if r["variant"] == label
                   and (col != "leak" or region in r["leak"])]
            if not pts:
                continue
            xs, ys, ss = zip(*pts, strict=True)
            ax.plot(xs, ys, "o-", color=plt.cm.tab10(i % 10), lw=1, label=label)
            labels += [((px, py), f"{label} {s}") for px, py, s in pts]
        ax.axhline(target, ls="--", color="k", lw=1, label=f"target {target}")
        ax.set_xscale("log")
        place_labels(ax, labels)
        ax.set_xlabel("ms / image")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(f"{common.where(result)}, {result['images']} images", fontsize=9)
    fig.tight_layout()
    files.savefig(fig, path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    p = common.arguments(__doc__.splitlines()[0], settings=("mnist", "kmnist"), count=200)
    p.add_argument("--variants", nargs="+", choices=tuple(VARIANTS), default=list(VARIANTS),
                   help="The rows measured (labels of VARIANTS).")
    p.add_argument("--samples", type=int, nargs="+", default=None,
                   help="Sample counts of every chosen row (default: each row's own).")
    p.add_argument("--regions", nargs="+", choices=groundtruth.MASKS,
                   default=["left", "quadrant", "patches"],
                   help="The regions hidden from the teacher (one blind teacher each).")
    p.add_argument("--merge", action="store_true",
                   help="Replace only these rows in the existing results (others kept).")
    p.add_argument("--replot", action="store_true",
                   help="Only redraw the tables and figures from the existing results.")
    args = p.parse_args(argv)
    validate.integer(args.seeds, "--seeds (seed agreement compares runs)", minimum=2)
    out = common.out_dir(args, "frontier")
    for name in args.settings:
        if args.replot:
            plot(common.rewrite_study(out, f"frontier_{name}", markdown),
                 out / f"frontier_{name}.png")
            continue
        result = run(name, args, args.variants)
        path = out / f"frontier_{name}.json"
        if args.merge and path.exists():
            old = json.loads(path.read_text())
            if (old["images"], old["seeds"]) != (result["images"], result["seeds"]):
                raise SystemExit(f"--merge: {path} has {old['images']} images and "
                                 f"{old['seeds']} seeds; rerun with the same --count, --seeds.")
            result = {**old, "regions": {**old["regions"], **result["regions"]},
                      "rows": {**old["rows"], **result["rows"]},
                      "merged": [*old.get("merged", []),
                                 {"command": common.command(), "args": vars(args),
                                  "machine": common.machine_info()}]}
        result = common.write_study(out, f"frontier_{name}", result, markdown)
        plot(result, out / f"frontier_{name}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
