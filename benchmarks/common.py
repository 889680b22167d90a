"""What every benchmark script reports the same way: the machine, and mean +- 95 % intervals.

Imported as ``from common import ...``: the scripts are run as ``python benchmarks/<name>.py``,
which puts this folder on ``sys.path``.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from deepvid_jax import files
from deepvid_jax.data import sources as data
from deepvid_jax.explainers.deepvid import core as ex
from deepvid_jax.metrics import fidelity as metrics
from deepvid_jax.models import checkpoint
from deepvid_jax.models.networks import teacher_logits
from deepvid_jax.runner import bench


def machine_info() -> dict:
    """`deepvid_jax.runner.bench.device_info` (the device's name, kind, count, JAX version) plus the
    operating system, the processor's name, core count, backend and devices."""
    device = bench.device_info()
    cpu = device["kind"] if device["platform"] == "cpu" else platform.machine()
    return {**device, "os": platform.platform(), "processor": cpu, "cpu_count": os.cpu_count(),
            "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()]}


def to_jpeg(png: Path) -> Path:
    """Noisy colour maps make megabyte PNGs: keep a JPEG (quality 85) instead."""
    from PIL import Image

    jpg = png.with_suffix(".jpg")
    Image.open(png).convert("RGB").save(jpg, quality=85)
    png.unlink()
    return jpg


def interval(x) -> dict:
    """Mean and normal-approximation 95 % interval half-width of per-image values; NaNs
    (undefined values) are left out and counted."""
    x = np.asarray(x, np.float64)
    undefined = int(np.isnan(x).sum())
    x = x[~np.isnan(x)]
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else float("nan")
    mean = float(x.mean()) if len(x) else float("nan")
    return {"mean": mean, "ci95": float(half), "n": len(x), "undefined": undefined}


# --------------------------------------------------------------------------------------------
# DeepVID variants measured alike (student_methods.py, locality.py, blocking.py)
# --------------------------------------------------------------------------------------------


def deepvid_arguments(description: str, tag: str):
    """The arguments every DeepVID-variant benchmark takes (models, data, sizes, output)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--checkpoints", default="runs/mnist")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--split", default="test[8000:]")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--count", type=int, default=64)
    p.add_argument("--neighbors", type=int, default=512)
    p.add_argument("--holdout", type=int, default=128)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--tag", default=tag)
    return p


def load_setup(args):
    """(teacher params, teacher config, VAE params, VAE config, teacher_apply, images, their
    teacher classes, dataset info) for a benchmark's --checkpoints/--dataset/--split/--count."""
    folder = Path(args.checkpoints)
    tp, tcfg, _ = checkpoint.restore(folder / "teacher", kind="teacher")
    vp, vcfg, _ = checkpoint.restore(folder / "vae", kind="vae")
    ds = data.load(args.dataset, args.split, data_dir=args.data_dir)
    images = ds.images[: args.count]
    apply = functools.partial(teacher_logits, config=tcfg)
    cls = np.asarray(apply(tp, jnp.asarray(images))).argmax(-1)
    return tp, tcfg, vp, vcfg, apply, images, cls, ds.info


def measure_explain(setup, config, seeds: int) -> tuple[dict, object]:
    """One DeepVID configuration on the setup's images: held-out fidelity, seed agreement of
    the teacher-class weight images over ``seeds`` seeds (key 0 and 100, 101, ...), label-flip
    fraction, and ms per explanation (the second of two identical calls; the first compiles).
    Returns (row, the key-0 `Explanation`)."""
    tp, _, vp, _, apply, images, cls, _ = setup

    def explain(seed):
        return ex.explain(images, jax.random.PRNGKey(seed), teacher_apply=apply,
                          teacher_params=tp, vae_params=vp, config=config)

    explain(0)  # compile
    start = time.perf_counter()
    e = explain(0)
    seconds = (time.perf_counter() - start) / len(images)
    runs = [e.class_weights(cls)] + [explain(s).class_weights(cls)
                                     for s in range(100, 100 + seeds - 1)]
    row = {"top1": interval(e.fidelity.top1), "kl": interval(e.fidelity.kl),
           "seed_agreement": interval(metrics.seed_agreement(jnp.stack(runs))),
           "flip_fraction": interval(e.flip_fraction), "ms_per_explanation": 1000 * seconds}
    return row, e


def fmt_interval(v: dict, digits: int = 3) -> str:
    return f"{v['mean']:.{digits}f} ± {v['ci95']:.{digits}f}"


def fidelity_cells(row: dict) -> str:
    """The Markdown cells every `measure_explain` row shares: held-out top-1 | KL | seed
    agreement | label-flip fraction."""
    return (f"{fmt_interval(row['top1'])} | {fmt_interval(row['kl'])} | "
            f"{fmt_interval(row['seed_agreement'], 2)} | {fmt_interval(row['flip_fraction'], 2)}")


def print_row(name: str, row: dict) -> None:
    """One progress line: the means of a `measure_explain` row."""
    print(name, {k: (v["mean"] if isinstance(v, dict) else v) for k, v in row.items()},
          flush=True)


def write_results(out, stem: str, result: dict, text: str) -> None:
    """``<out>/<stem>.json`` and ``.md``, atomically; prints the Markdown."""
    print("\n" + text)
    files.write_json(Path(out) / f"{stem}.json", result)
    files.write_text(Path(out) / f"{stem}.md", text)
