"""Every explainer x every metric on one protocol (issue 4): MNIST and KMNIST, 500 images each.

The settings are `common.SETTINGS`' (models trained on ``test[:8000]``, the only split available
offline; explanations of ``test[8000:][:count]``, for the class the teacher predicts), loaded by
`common.load`. Run, after training checkpoints into ``runs/<dataset>/{teacher,vae}``
(``deepvid train-teacher`` / ``train-vae`` with ``--train-split 'test[:8000]' --eval-split
'test[8000:]' --out runs/<dataset>``):

    python benchmarks/evaluate.py --settings mnist kmnist --count 500

Writes, per dataset, ``benchmarks/results/evaluate_<dataset>.{json,md}`` (mean and 95 % interval
of every metric, seconds per explanation) and figures ``docs/evaluate_*.png``.

Every explainer runs by `dv.explain`, every metric by the registry (`deepvid_jax.metrics`):
- fidelity of the pixel students (DeepVID = VAE neighbours, noise, mask) on held-out neighbours of
  every kind (fresh draws, not the ones fitted), and LIME's on its own held-out samples;
- the registered metrics of explanations (`dv.score`, each at its registered config): deletion
  and insertion AUC of the class probability (zero and blur baselines), average drop / increase
  in confidence;
- the registered metrics of an explainer (`metrics.score_explainer`) on the first ``--subset``
  images: max-sensitivity under uniform noise of radius 0.05, agreement across seeds (stochastic
  methods), and cascading randomisation (Adebayo et al.): Spearman correlation of |attribution|
  with the original as the teacher's layers are re-initialised from the top.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from tqdm.auto import tqdm

matplotlib.use("Agg")
import common  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from common import interval, machine_info  # noqa: E402

import deepvid_jax as dv  # noqa: E402
from deepvid_jax import driver, files  # noqa: E402
from deepvid_jax import metrics as evaluation  # noqa: E402
from deepvid_jax.explainers import lime as superpixel  # noqa: E402
from deepvid_jax.explainers.deepvid import core as ex  # noqa: E402
from deepvid_jax.explainers.deepvid.neighbors import NeighborConfig, sample_neighbors  # noqa: E402
from deepvid_jax.metrics import randomisation  # noqa: E402
from deepvid_jax.models import checkpoint  # noqa: E402

# The pixel students, each with the registered config (neighbours and student) it is fitted with.
SAMPLERS = {name: dv.get(name).config for name in ("deepvid", "noise", "mask")}


def fmt(s: dict | None, digits: int = 3) -> str:
    if s is None:
        return "–"
    # JSON has no NaN: an undefined mean or interval (one image) is stored as null
    mean, half = (f"{v:.{digits}f}" if v is not None else "nan" for v in (s["mean"], s["ci95"]))
    text = f"{mean} ± {half}"
    if s.get("undefined"):
        text += f" ({s['undefined']} undefined)"
    return text


def methods(models: dv.Models) -> dict[str, Callable]:
    """name -> fn(images, class_idx, key) -> `dv.Attribution`: every registered explainer these
    models can run (the surrogate when its checkpoints are there), each at its registered
    config by `dv.explain`, and a random map as the control."""
    out = {}
    for name, method in dv.METHODS.items():
        try:
            method.check(models, method.config)
        except ValueError:
            continue
        out[name] = functools.partial(dv.explain, name, models=models)
    out["random"] = lambda x, c, key, chunk_size=None: dv.Attribution(
        np.asarray(jax.random.normal(key, x.shape)), {})
    return out


def timed(fn: Callable, images, cls, key, warm: int, chunk: int) -> tuple[np.ndarray, dict, float]:
    """Runs fn once on ``warm`` images (compilation), then on all: attributions, extras and
    seconds per explanation."""
    fn(images[:warm], cls[:warm], key, chunk_size=chunk)
    start = time.perf_counter()
    out = fn(images, cls, key, chunk_size=chunk)
    attr = np.asarray(out.attributions)
    return attr, out.extras, (time.perf_counter() - start) / len(images)


@functools.partial(jax.jit, static_argnames=("models_apply", "config", "vcfg"))
def held_out_neighbors(images, keys, scales, vae_params, teacher_params, *, models_apply, config,
                       vcfg):
    """Fresh neighbours [B, N, H, W, C] of one kind and the teacher's logits on them; scales
    [B]: the calibrated latent scales of the VAE kind (None for the others)."""
    nb = jax.vmap(lambda x, k, s: sample_neighbors(x, k, vae_params, config, vcfg, scale=s))(
        images, keys, scales)
    logits = jax.vmap(lambda n: models_apply(teacher_params, n))(nb)
    return nb, logits


def cross_fidelity(models: dv.Models, images, students: dict, key, count: int, chunk: int,
                   scales=None) -> dict:
    """{student: {neighbour kind: {top1, kl, r2: interval}}} on ``count`` fresh held-out
    neighbours per image and kind; VAE neighbours at the latent scales [B] calibrated by the
    DeepVID explanations (``scales``; default: the "deepvid" student's)."""
    if scales is None and "deepvid" in students:
        scales = students["deepvid"]["scale"]
    result = {s: {} for s in students}
    for j, (kind, explain_cfg) in enumerate(SAMPLERS.items()):
        # fresh plain draws of each kind: patches are mixed into the fitted rows only
        cfg = dataclasses.replace(explain_cfg.neighbors, num=count, patch_mix=0)
        per = {s: [] for s in students}
        for i in range(0, len(images), chunk):
            x = jnp.asarray(images[i : i + chunk])
            keys = driver.instance_keys(jax.random.fold_in(key, j), i, len(x))
            sc = (jnp.asarray(scales[i : i + chunk])
                  if cfg.calibrated and scales is not None else None)
            nb, logits = held_out_neighbors(x, keys, sc, models.vae_params,
                                            models.teacher_params,
                                            models_apply=models.teacher_apply, config=cfg,
                                            vcfg=models.vae_config)
            for s, e in students.items():
                f = ex.student_fidelity(e["weights"][i : i + chunk], e["bias"][i : i + chunk],
                                        nb, logits)
                per[s].append(jax.tree.map(np.asarray, f))
        for s in students:
            f = jax.tree.map(lambda *xs: np.concatenate(xs), *per[s])
            result[s][kind] = {k: interval(v) for k, v in f._asdict().items()}
    return result


def score(models: dv.Models, name: str, images, attr, cls, chunk: int) -> dict:
    """One registered metric of attributions at its registered config (`dv.score`): {scalar
    output: interval, curve output: mean curve}."""
    out = dv.score(name, images, attr, cls, models=models, chunk_size=chunk)
    return {k: interval(v) if v.ndim == 1 else v.mean(0).tolist() for k, v in out.items()}


def lime_reference_agreement(models: dv.Models, images, cls, count: int, samples: int) -> dict:
    """Pearson correlation of our batched LIME's segment coefficients with the `lime` package's
    (same grid segmentation, hide value 0, kernel, ridge; independent random samples)."""
    try:
        from lime import lime_image
    except ImportError:
        return {"skipped": "lime not installed (pip install -e '.[bench]')"}
    cfg = dataclasses.replace(superpixel.LimeConfig(), num_samples=samples + 1, holdout=1)
    h, w, _ = images.shape[1:]
    seg = superpixel.grid_segments(h, w, cfg.patch)
    apply, tp = models.teacher_apply, models.teacher_params
    ours = superpixel.explain_lime(images[:count], jax.random.PRNGKey(7), teacher_apply=apply,
                                   teacher_params=tp, config=cfg)
    predict = jax.jit(lambda x: jax.nn.softmax(apply(tp, x)))
    corr = []
    quiet = contextlib.redirect_stderr(io.StringIO())  # lime 0.2 always draws a progress bar
    for i in range(count):
        explainer = lime_image.LimeImageExplainer(random_state=i)
        with quiet:
            e = explainer.explain_instance(
                np.repeat(images[i], 3, axis=-1).astype(np.float64),
                lambda b: np.asarray(predict(jnp.asarray(b[..., :1], jnp.float32))),
                labels=(int(cls[i]),), top_labels=None, hide_color=0, num_samples=samples,
                segmentation_fn=lambda _: seg, batch_size=samples,
                num_features=int(seg.max()) + 1)
        theirs = np.zeros(int(seg.max()) + 1)
        for f, v in e.local_exp[int(cls[i])]:
            theirs[f] = v
        corr.append(np.corrcoef(theirs, ours.coef[i, :, cls[i]])[0, 1])
    return {"pearson": interval(corr), "images": count, "samples": samples}


def subset_metrics(models: dv.Models, method: str, sub, sub_cls, reference, key, args) -> dict:
    """The registered metrics of an explainer (`metrics.score_explainer`) of one method on the
    first ``len(sub)`` images, with the explanations' key (``reference``: its attributions of
    ``sub``): max-sensitivity, agreement across ``--seeds`` runs (stochastic methods) and the
    per-stage Spearman correlations of cascading randomisation."""
    m = dv.get(method)

    def run(metric: str, config) -> dict:
        return evaluation.score_explainer(metric, m, sub, sub_cls, key, models=models,
                                          config=config, reference=reference,
                                          chunk_size=args.chunk)

    out = {"max_sensitivity": interval(run("max_sensitivity", evaluation.SensitivityConfig(
        radius=args.radius, samples=args.sensitivity_samples))["max_sensitivity"])}
    if m.stochastic:
        out["seed_agreement"] = interval(run("seed_agreement", evaluation.SeedConfig(
            runs=args.seeds))["seed_agreement"])
    rho = run("randomisation", evaluation.RandomisationConfig(seed=args.seed + 1))["spearman"]
    out["sanity_spearman"] = [interval(rho[:, s]) for s in range(rho.shape[1])]
    out["subset_images"] = len(sub)
    return out


def sanity_stages(models: dv.Models) -> list[str]:
    """The cascading randomisation's stages, top layer first, as "layer+layer+..."."""
    layers = randomisation.teacher_layers(models.teacher_config)
    return ["+".join(s) for s in randomisation.cascading_layers(layers)]


def load(name: str, args) -> tuple[dv.Models, np.ndarray, np.ndarray, np.ndarray]:
    """Setting ``name``'s models (`common.load`), its first ``--count`` evaluation images, their
    labels and the classes the teacher predicts."""
    models, ds = common.load(name, runs=args.runs, data_dir=args.data_dir, count=args.count)
    cls = np.asarray(jnp.argmax(models.teacher_apply(models.teacher_params,
                                                     jnp.asarray(ds.images)), -1))
    return models, ds.images, ds.labels, cls


def update_subset(name: str, methods_to_update: list[str], args) -> None:
    """Recomputes stability and the sanity check of some methods (all but `random` when none are
    named) in an existing result file on the first ``--subset`` images, with the same keys and
    settings as the full run (the reference attributions are recomputed: explanations do not
    depend on the chunking). Saves the JSON and Markdown after each method, so an interrupted
    run keeps what it finished."""
    path = Path(args.out) / f"evaluate_{name}.json"
    result = json.loads(path.read_text())
    models, images, _, cls = load(name, args)
    sub, sub_cls = images[: result["count"]][: args.subset], cls[: result["count"]][: args.subset]
    key = jax.random.PRNGKey(args.seed)
    fns = methods(models)
    for method in methods_to_update or [k for k in fns if k != "random"]:
        start = time.perf_counter()
        ref = np.asarray(fns[method](sub, sub_cls, key, chunk_size=args.chunk).attributions)
        result["methods"][method].update(
            subset_metrics(models, method, sub, sub_cls, ref, key, args))
        seconds = time.perf_counter() - start
        result.setdefault("updated", []).append(
            f"stability and sanity of {method} on {len(sub)} images ({seconds:.0f} s)")
        files.write_json(path, result)
        (Path(args.out) / f"evaluate_{name}.md").write_text(markdown(result))
        r = result["methods"][method]
        print(f"{name} {method}: max-sensitivity {fmt(r['max_sensitivity'])}, sanity "
              f"{fmt(r['sanity_spearman'][-1])} ({seconds:.0f} s)", flush=True)


def evaluate_dataset(name: str, args, only: list[str] | None = None,
                     result: dict | None = None) -> dict:
    """Every metric of every method (or of the methods ``only`` names, written into the
    existing ``result`` of the same settings; the pixel students go together, because their
    fidelity is one table)."""
    models, images, labels, cls = load(name, args)
    key = jax.random.PRNGKey(args.seed)
    split = common.setting(name).eval_split
    print(f"== {name}: {len(images)} images of {split}, teacher accuracy on them "
          f"{(cls == labels).mean():.4f}")
    if result is None:
        result = {"dataset": name, "count": len(images), "methods": {}}
    folder = common.checkpoints(name, args.runs)
    result.update(teacher=checkpoint.read_meta(folder / "teacher").get("metrics"),
                  vae=checkpoint.read_meta(folder / "vae").get("metrics"))

    attrs, extras = {}, {}
    fns = {k: fn for k, fn in methods(models).items() if only is None or k in only}
    for method, fn in tqdm(fns.items(), desc=f"{name}: explain", disable=args.quiet):
        attrs[method], extras[method], sec = timed(fn, images, cls, key, args.chunk, args.chunk)
        # update, not replace: --skip-stability keeps a method's stored stability and sanity
        result["methods"].setdefault(method, {})["seconds_per_explanation"] = sec
        if method == "deepvid":
            attrs["deepvid_x_input"] = attrs[method] * images
            result["methods"].setdefault("deepvid_x_input", {})["seconds_per_explanation"] = sec
        print(f"  {method:22s} {sec * 1e3:9.2f} ms/explanation", flush=True)

    if "deepvid" in fns:
        students = {s: extras[s] for s in SAMPLERS}
        fid = cross_fidelity(models, images, students, jax.random.fold_in(key, 1), args.holdout,
                             args.chunk)
        for s in SAMPLERS:
            result["methods"][s]["fidelity"] = fid[s]
    if "lime" in fns:
        lime_e = extras["lime"]
        result["methods"]["lime"]["fidelity"] = {
            "own": {"top1": interval(lime_e["fidelity_top1"]),
                    "r2": interval(lime_e["fidelity_r2"])}}

    for method, a in tqdm(attrs.items(), desc=f"{name}: metrics", disable=args.quiet):
        for metric in args.metrics:
            result["methods"][method][metric] = score(models, metric, images, a, cls, args.chunk)

    # The metrics of an explainer (stability, the sanity check), on a subset.
    k = args.subset
    for method in tqdm(fns, desc=f"{name}: stability, sanity", disable=args.quiet):
        if method != "random" and not args.skip_stability:
            result["methods"][method].update(subset_metrics(
                models, method, images[:k], cls[:k], attrs[method][:k], key, args))
    result["sanity_stages"] = sanity_stages(models)
    if "lime" in fns:
        result["lime_reference"] = lime_reference_agreement(models, images, cls, args.lime_images,
                                                            args.lime_samples)
    return result, models, images, cls


def sweep(models: dv.Models, images, cls, args) -> list[dict]:
    """DeepVID's fidelity and deletion AUC as the neighbour count and latent scale vary, with
    the ridge student over plain VAE neighbours (`ex.FAST`)."""
    rows = []
    # neighbour counts at the default (calibrated) radius; fixed latent scales at 512
    grid = [(n, None) for n in args.sweep_neighbors] + [(512, s) for s in args.sweep_scales]
    for n, s in tqdm(grid, desc="sweep", disable=args.quiet):
        cfg = dataclasses.replace(ex.FAST, neighbors=NeighborConfig(num=n, latent_scale=s),
                                  holdout=max(1, n // 4))
        start = time.perf_counter()
        e = dv.explain("deepvid", images, cls, jax.random.PRNGKey(args.seed), models=models,
                       config=cfg, chunk_size=args.chunk)
        sec = (time.perf_counter() - start) / len(images)
        scales = e.extras["scale"] if s is None else np.full(len(images), s, np.float32)
        vae_hold = cross_fidelity(models, images, {"s": e.extras}, jax.random.PRNGKey(5),
                                  args.holdout, args.chunk, scales=scales)["s"]
        auc = score(models, "auc_zero", images, e.attributions, cls, args.chunk)
        rows.append({"neighbors": n, "latent_scale": s, "seconds_per_explanation": sec,
                     "fidelity": vae_hold, "deletion": auc["deletion"],
                     "insertion": auc["insertion"]})
        print(f"  N={n:5d} scale={s or 'calibrated'}: top1 on VAE nbrs "
              f"{vae_hold['deepvid']['top1']['mean']:.3f}, on mask nbrs "
              f"{vae_hold['mask']['top1']['mean']:.3f}; insertion {auc['insertion']['mean']:.3f}",
              flush=True)
    return rows


METHOD_ORDER = ["deepvid", "deepvid_x_input", "noise", "mask", "lime", "gradient",
                "grad_x_input", "integrated_gradients", "smoothgrad", "grad_cam", "rise",
                "surrogate", "random"]


def markdown(result: dict) -> str:
    ms = result["methods"]
    lines = [f"### {result['dataset']} ({result['count']} images of test[8000:])", "",
             "Fidelity of the pixel students (top-1 agreement / KL in nats) on fresh held-out "
             "neighbours of each kind:", "",
             "| student \\ neighbours | VAE (DeepVID's) | Gaussian noise | random mask |",
             "|---|---|---|---|"]
    for s in SAMPLERS:
        cells = [f"{fmt(ms[s]['fidelity'][k]['top1'])} / {fmt(ms[s]['fidelity'][k]['kl'])}"
                 for k in SAMPLERS]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lf = ms["lime"]["fidelity"]["own"]
    lines += ["", f"LIME (ours, batched) on its own held-out samples: top-1 {fmt(lf['top1'])}, "
              f"R² {fmt(lf['r2'])}.", ""]
    # one column per scalar output of every registered metric of explanations this run measured
    cols = [(name, out, evaluation.get(name)) for name in evaluation.METRICS
            if evaluation.get(name).kind == "explanation" and any(name in r for r in ms.values())
            for out in evaluation.get(name).better]
    arrow = {"lower": "↓", "higher": "↑"}
    head = " | ".join(f"{out.replace('_', ' ')} {arrow[mt.better[out]]}"
                      + (f" ({mt.label})" if mt.label else "") for name, out, mt in cols)
    lines += [f"| method | ms / explanation | {head} | max-sensitivity ↓ | seed agreement ↑ | "
              f"sanity: ρ after all layers randomised ↓ |",
              "|---|---|" + "---|" * len(cols) + "---|---|---|"]
    order = [k for k in METHOD_ORDER if k in ms] + sorted(set(ms) - set(METHOD_ORDER))
    for method in order:
        r = ms[method]
        cells = " | ".join(fmt(r[name][out]) if name in r else "–" for name, out, _ in cols)
        san = fmt(r["sanity_spearman"][-1], 2) if "sanity_spearman" in r else "–"
        ms_per = "–" if method == "random" else f"{1e3 * r['seconds_per_explanation']:.2f}"
        lines.append(f"| {method} | {ms_per} | {cells} | "
                     f"{fmt(r.get('max_sensitivity'), 2)} | {fmt(r.get('seed_agreement'), 2)} | "
                     f"{san} |")
    groups: dict[int, list[str]] = {}
    for method, r in ms.items():
        if "max_sensitivity" in r:
            groups.setdefault(r.get("subset_images", result["args"]["subset"]), []).append(method)
    where = "; ".join(
        (f"all {k} images" if k == result["count"] else f"the first {k} images")
        + ("" if len(groups) == 1 else f" for {', '.join(names)}")
        for k, names in sorted(groups.items()))
    lines += ["", f"Max-sensitivity, seed agreement and the sanity check: {where}."]
    ref = result["lime_reference"]
    if "pearson" in ref:
        lines += ["", f"Our batched LIME vs the `lime` package (same segments, "
                  f"{ref['samples']} samples each, {ref['images']} images): Pearson correlation "
                  f"of segment coefficients {fmt(ref['pearson'])}."]
    return "\n".join(lines) + "\n"


def figures(results: list[dict], sweep_rows: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
    for ax, r in zip(axes[0], results, strict=True):
        for method in METHOD_ORDER:
            rows = r["methods"].get(method, {}).get("sanity_spearman")
            if rows:
                ax.plot(range(len(rows) + 1), [1.0] + [x["mean"] for x in rows], marker="o",
                        label=method, lw=2.5 if method.startswith("deepvid") else 1.2)
        ax.set_xticks(range(len(r["sanity_stages"]) + 1),
                      ["none"] + [s.split("+")[0] for s in r["sanity_stages"]])
        ax.set_xlabel("randomised down to layer (cascading, top first)")
        ax.set_ylabel("Spearman ρ of |attribution| with original")
        ax.set_title(f"Sanity check, {r['dataset']}")
        ax.axhline(0, color="gray", lw=0.5)
    axes[0][-1].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    files.savefig(fig, out / "evaluate_sanity.png", dpi=110)
    plt.close(fig)

    if sweep_rows:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, key, xlabel, pick in [
            (axes[0], "neighbors", "neighbours per instance (calibrated radius)",
             lambda r: r["latent_scale"] is None),
            (axes[1], "latent_scale", "fixed latent scale (N = 512)",
             lambda r: r["latent_scale"] is not None and r["neighbors"] == 512),
        ]:
            rows = [r for r in sweep_rows if pick(r)]
            rows.sort(key=lambda r: r[key])
            xs = [r[key] for r in rows]
            for kind, style, what in [("deepvid", "-o", "VAE neighbours (same radius)"),
                                      ("noise", "--s", "Gaussian-noise neighbours"),
                                      ("mask", ":^", "random-mask neighbours")]:
                ys = [r["fidelity"][kind]["top1"]["mean"] for r in rows]
                es = [r["fidelity"][kind]["top1"]["ci95"] for r in rows]
                ax.errorbar(xs, ys, yerr=es, fmt=style, label=f"top-1 on held-out {what}")
            ax.plot(xs, [r["insertion"]["mean"] for r in rows], "-x", color="k",
                    label="insertion AUC")
            ax.set_xscale("log", base=2)
            ax.set_xlabel(xlabel)
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("held-out fidelity / AUC")
        axes[1].legend(fontsize=8, loc="lower left")
        fig.suptitle("DeepVID on MNIST: fidelity of the student as the neighbourhood changes")
        fig.tight_layout()
        files.savefig(fig, out / "evaluate_sweep.png", dpi=110)
        plt.close(fig)


def main(argv=None) -> int:
    p = common.arguments(__doc__.split("\n")[0], settings=("mnist", "kmnist"), count=500,
                         seeds=3)
    p.add_argument("--subset", type=int, default=None,
                   help="Images for stability, seed agreement and the sanity check "
                        "(default: all --count; they cost ~10 more explanations per image).")
    p.add_argument("--chunk", type=int, default=50)
    p.add_argument("--holdout", type=int, default=128, help="Fresh neighbours per kind.")
    p.add_argument("--metrics", nargs="+", default=["auc_zero", "auc_blur", "average_drop"],
                   choices=sorted(n for n, m in evaluation.METRICS.items()
                                  if m.kind == "explanation"),
                   help="Registered metrics of explanations to compute (each at its registered "
                        "config).")
    p.add_argument("--radius", type=float, default=0.05)
    p.add_argument("--sensitivity-samples", type=int, default=3)
    p.add_argument("--lime-images", type=int, default=8)
    p.add_argument("--lime-samples", type=int, default=1000)
    p.add_argument("--sweep-dataset", default="mnist")
    p.add_argument("--sweep-count", type=int, default=64)
    p.add_argument("--sweep-neighbors", type=int, nargs="*", default=[64, 128, 256, 512, 1024])
    p.add_argument("--sweep-scales", type=float, nargs="*", default=[0.25, 0.5, 1.0, 2.0, 4.0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--figures", default="docs")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--replot", action="store_true",
                   help="Only redraw figures and Markdown from existing result files.")
    p.add_argument("--update-subset", nargs="*", default=None, metavar="METHOD",
                   help="Only recompute stability and the sanity check (on --subset images) of "
                        "these methods (all when none named) in existing result files.")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help="Recompute every metric of these methods only (and the sweep) in "
                        "existing result files of the same --count (stability on --subset "
                        "images, recorded per method); deepvid, noise and mask go together.")
    p.add_argument("--skip-stability", action="store_true",
                   help="With --methods: keep the stored stability and sanity results of these "
                        "methods (recompute the rest).")
    args = p.parse_args(argv)
    args.out = args.out or "benchmarks/results/evaluate"
    args.subset = args.count if args.subset is None else args.subset
    if args.skip_stability and args.methods is None:
        p.error("--skip-stability only applies to --methods updates")
    if args.methods is not None:
        known = [*dv.METHODS, "random"]
        unknown = sorted(set(args.methods) - set(known))
        if unknown:
            p.error(f"--methods: unknown {unknown}; known: {known}")
        if set(SAMPLERS) & set(args.methods) and not set(SAMPLERS) <= set(args.methods):
            p.error(f"--methods: {', '.join(SAMPLERS)} go together (one fidelity table)")
        for name in args.settings:
            path = Path(args.out) / f"evaluate_{name}.json"
            if not path.is_file():
                p.error(f"--methods updates existing results, and {path} does not exist")
            old = json.loads(path.read_text())["args"]["count"]
            if old != args.count:
                p.error(f"--methods: {path} has --count {old}; pass the same")
    if args.replot:
        results = [json.loads((Path(args.out) / f"evaluate_{n}.json").read_text())
                   for n in args.settings]
        for r in results:
            (Path(args.out) / f"evaluate_{r['dataset']}.md").write_text(markdown(r))
        sweep_rows = next((r["sweep"] for r in results if "sweep" in r), [])
        figures(results, sweep_rows, Path(args.figures))
        return 0
    if args.update_subset is not None:
        for name in args.settings:
            update_subset(name, args.update_subset, args)
        return 0

    machine = machine_info()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, sweep_rows = [], []
    for name in args.settings:
        start = time.perf_counter()
        previous = None
        if args.methods is not None:
            previous = json.loads((out / f"evaluate_{name}.json").read_text())
        result, m, images, cls = evaluate_dataset(name, args, args.methods, previous)
        if name == args.sweep_dataset and args.sweep_neighbors:
            sweep_rows = sweep(m, images[: args.sweep_count], cls[: args.sweep_count], args)
            result["sweep"] = sweep_rows
        elif "sweep" in result:
            sweep_rows = result["sweep"]
        seconds = time.perf_counter() - start
        if previous is None:
            result.update(machine=machine, args=vars(args), wall_seconds=seconds)
        else:
            result.setdefault("updated", []).append(
                ("every metric but stability and sanity" if args.skip_stability
                 else "every metric") + f" of {', '.join(args.methods)}"
                + (" and the sweep" if name == args.sweep_dataset and args.sweep_neighbors
                   else "") + f" recomputed on {machine['processor']} ({seconds:.0f} s)")
        text = markdown(result)
        print("\n" + text)
        files.write_json(out / f"evaluate_{name}.json", result)
        files.write_text(out / f"evaluate_{name}.md", text)
        results.append(result)
    figures(results, sweep_rows, Path(args.figures))
    print(f"wrote {out}/evaluate_*.{{json,md}} and {args.figures}/evaluate_*.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
