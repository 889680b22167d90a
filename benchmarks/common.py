"""What every benchmark study shares: its settings (dataset, splits, checkpoints), one loader of
`dv.Models` and data, one parent argument parser, timing by `deepvid_jax.runner.bench.measure`,
the machine, mean +- 95 % intervals, and results written beside the study.

Imported as ``from common import ...``: the scripts are run as ``python benchmarks/<name>.py``,
which puts this folder on ``sys.path``. A study composes `dv.explain`, `dv.score`, `timing` and
`load`; it writes ``benchmarks/results/<study>/<stem>.{json,md}`` by `write_study`, the Markdown
rendered from the JSON with the command that regenerates it and the machine it ran on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import deepvid_jax as dv
from deepvid_jax import files, validate
from deepvid_jax.data import sources as data
from deepvid_jax.explainers import registry as explainers
from deepvid_jax.explainers.deepvid import core as ex
from deepvid_jax.metrics import stability
from deepvid_jax.models import checkpoint
from deepvid_jax.models.networks import teacher_apply_for
from deepvid_jax.runner import bench

RESULTS = Path(__file__).resolve().parent / "results"

# --------------------------------------------------------------------------------------------
# Settings: what each study is measured on
# --------------------------------------------------------------------------------------------

# MNIST and KMNIST offline have only their test split: models are fitted on its first 8,000
# images and studies measure on the other 2,000.
SHARED_TEST_FIT, SHARED_TEST_EVAL = "test[:8000]", "test[8000:]"


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting of the studies.

    Attributes:
      dataset: `dv.load_dataset`'s name.
      fit_split: the split the setting's models were trained on.
      eval_split: the split the studies explain and score.
      checkpoints: the folder of its models (``teacher``, ``vae``, ...) under the runs root.
    """

    dataset: str
    fit_split: str
    eval_split: str
    checkpoints: str

    def __post_init__(self):
        for name in ("dataset", "fit_split", "eval_split", "checkpoints"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"Setting.{name} must be a non-empty string, got "
                                 f"{getattr(self, name)!r}.")


SETTINGS: dict[str, Setting] = {
    "mnist": Setting("mnist", SHARED_TEST_FIT, SHARED_TEST_EVAL, "mnist"),
    "kmnist": Setting("kmnist", SHARED_TEST_FIT, SHARED_TEST_EVAL, "kmnist"),
    "synthetic": Setting("synthetic", "train", "test", "synthetic"),
}


def setting(name: str) -> Setting:
    """The setting called ``name``; a clear error listing the others."""
    validate.choice(name, tuple(SETTINGS), "benchmark setting")
    return SETTINGS[name]


def checkpoints(name: str, runs: str | Path = "runs") -> Path:
    """The checkpoint folder of setting ``name`` under the runs root (``runs/mnist``)."""
    return Path(runs) / setting(name).checkpoints


def dataset(name: str, part: str = "eval", *, data_dir: str | None = None,
            count: int | None = None) -> dv.Dataset:
    """Setting ``name``'s ``part`` ("fit" or "eval") split, its first ``count`` images (all
    when None)."""
    validate.choice(part, ("fit", "eval"), "split part")
    s = setting(name)
    ds = dv.load_dataset(s.dataset, s.fit_split if part == "fit" else s.eval_split,
                         data_dir=data_dir)
    if count is None:
        return ds
    validate.integer(count, "count", minimum=1)
    return dv.Dataset(ds.images[:count], ds.labels[:count], ds.info)


def load(name: str, *, runs: str | Path = "runs", data_dir: str | None = None,
         count: int | None = None) -> tuple[dv.Models, dv.Dataset]:
    """Setting ``name``'s models (`dv.Models.load` of its checkpoint folder) and the first
    ``count`` images of its evaluation split."""
    return dv.Models.load(checkpoints(name, runs)), dataset(name, data_dir=data_dir, count=count)


def arguments(description: str, *, settings: tuple[str, ...] = ("mnist",),
              count: int | None = 64, seeds: int = 3) -> argparse.ArgumentParser:
    """A study's parser, with the arguments every study shares (its parent): the settings
    measured, the runs root holding their checkpoints, the data folder, images per setting
    (None: the whole evaluation split), seeds, and the output folder (default
    ``benchmarks/results/<study>``)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--settings", nargs="+", choices=tuple(SETTINGS), default=list(settings),
                        help="The settings measured (dataset, splits, checkpoints: "
                        "benchmarks/common.py SETTINGS).")
    parent.add_argument("--runs", default="runs",
                        help="The folder holding each setting's checkpoints (runs/mnist, ...).")
    parent.add_argument("--data-dir", default=None,
                        help="Folder of raw dataset files (default $DEEPVID_DATA_DIR).")
    parent.add_argument("--count", type=int, default=count,
                        help="Images per setting" + (" (default all)." if count is None
                                                     else "."))
    parent.add_argument("--seeds", type=int, default=seeds,
                        help="Runs (keys) that seed agreement is measured over.")
    parent.add_argument("--out", default=None,
                        help="Output folder (default benchmarks/results/<study>).")
    parent.add_argument("--note", default=None,
                        help="A sentence recorded in the JSON and shown above the table (how "
                        "the run was made: what else ran on the machine, ...).")
    return argparse.ArgumentParser(description=description, parents=[parent])


def deepvid_options(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The sizes of the studies of DeepVID variants: neighbours, held out, chunk."""
    p.add_argument("--neighbors", type=int, default=512, help="VAE neighbours per image.")
    p.add_argument("--holdout", type=int, default=128,
                   help="Of them, held out to measure the student's fidelity.")
    p.add_argument("--chunk", type=int, default=16,
                   help="Images per compiled call (and the batch timed).")
    return p


def out_dir(args: argparse.Namespace, study: str) -> Path:
    """``--out``, else ``benchmarks/results/<study>``."""
    return Path(args.out) if args.out else RESULTS / study


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


def machine_info() -> dict:
    """`deepvid_jax.runner.bench.device_info` (the device's name, kind, count, JAX version) plus the
    operating system, the processor's name, core count, backend and devices."""
    device = bench.device_info()
    cpu = device["kind"] if device["platform"] == "cpu" else platform.machine()
    return {**device, "os": platform.platform(), "processor": cpu, "cpu_count": os.cpu_count(),
            "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()]}


def timing(method: str, models: dv.Models, images, classes, *, config: Any = None,
           repeats: int = 3) -> dict:
    """`bench.measure` of the registered explainer ``method`` (its config, else the default) as
    one compiled program on all of ``images`` [B, H, W, C] for ``classes`` [B]: explanations/s,
    seconds (median of ``repeats`` calls or more), compile seconds, FLOPs and memory."""
    return timer(method, models, images, classes, config=config, repeats=repeats)[0]


def timer(method: str, models: dv.Models, images, classes, *, config: Any = None,
          repeats: int = 3) -> tuple[dict, Callable[[], float]]:
    """`timing`'s row, and a function that times one more call (`bench.measure_timer`)."""
    m = explainers.get(method)
    config = m.config if config is None else config
    m.check(models, config)
    params, static = models.params(), models.static()
    return bench.measure_timer(lambda x, c, keys: m.fn(params, x, c, keys, models=static,
                                                       config=config),
                               np.asarray(images), np.asarray(classes), repeats)


def interval(x) -> dict:
    """Mean and normal-approximation 95 % interval half-width of per-image values; NaNs
    (undefined values) are left out and counted."""
    x = np.asarray(x, np.float64)
    undefined = int(np.isnan(x).sum())
    x = x[~np.isnan(x)]
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else float("nan")
    mean = float(x.mean()) if len(x) else float("nan")
    return {"mean": mean, "ci95": float(half), "n": len(x), "undefined": undefined}


def seed_runs(method: str, models: dv.Models, images, classes, seeds: int, *,
              config: Any = None, chunk_size: int = 64) -> list[dv.Attribution]:
    """``method`` on the same images with keys 0, 100, 101, ... (``seeds`` runs)."""
    validate.integer(seeds, "seeds", minimum=1)
    return [dv.explain(method, images, classes, jax.random.PRNGKey(s), models=models,
                       config=config, chunk_size=chunk_size)
            for s in (0, *range(100, 100 + seeds - 1))]


def deepvid_row(models: dv.Models, images, classes, config: ex.ExplainConfig, seeds: int, *,
                chunk_size: int) -> tuple[dict, dv.Attribution]:
    """One DeepVID configuration on ``images`` [B, H, W, C] for ``classes`` [B]: held-out
    fidelity, seed agreement of the class's weight images over ``seeds`` keys (0, 100, ...),
    label-flip fraction, and ms per explanation (`timing` on one chunk of ``chunk_size``
    images). Returns (row, the key-0 `dv.Attribution`)."""
    validate.integer(seeds, "seeds (seed agreement compares runs)", minimum=2)
    runs = seed_runs("deepvid", models, images, classes, seeds, config=config,
                     chunk_size=chunk_size)
    a = runs[0]
    t = timing("deepvid", models, images[:chunk_size], classes[:chunk_size], config=config)
    row = {"top1": interval(a.extras["fidelity_top1"]), "kl": interval(a.extras["fidelity_kl"]),
           "seed_agreement": interval(stability.seed_agreement(
               jnp.stack([r.attributions for r in runs]))),
           "flip_fraction": interval(a.extras["flip_fraction"]),
           "ms_per_explanation": 1000 * t["seconds"] / min(chunk_size, len(images))}
    return row, a


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def where(result: dict) -> str:
    """``"<dataset> <split>"`` of a study's result (results written before `write_study`
    recorded them in their arguments)."""
    a = result.get("args", {})
    return f"{result.get('dataset', a.get('dataset'))} {result.get('split', a.get('split'))}"


def fmt_interval(v: dict, digits: int = 3) -> str:
    return f"{v['mean']:.{digits}f} ± {v['ci95']:.{digits}f}"


def fidelity_cells(row: dict) -> str:
    """The Markdown cells every `deepvid_row` row shares: held-out top-1 | KL | seed
    agreement | label-flip fraction."""
    return (f"{fmt_interval(row['top1'])} | {fmt_interval(row['kl'])} | "
            f"{fmt_interval(row['seed_agreement'], 2)} | {fmt_interval(row['flip_fraction'], 2)}")


def print_row(name: str, row: dict) -> None:
    """One progress line: the means of a `deepvid_row` row."""
    print(name, {k: (v["mean"] if isinstance(v, dict) else v) for k, v in row.items()},
          flush=True)


def to_jpeg(png: Path) -> Path:
    """Noisy colour maps make megabyte PNGs: keep a JPEG (quality 85) instead."""
    from PIL import Image

    jpg = png.with_suffix(".jpg")
    Image.open(png).convert("RGB").save(jpg, quality=85)
    png.unlink()
    return jpg


def command() -> str:
    """The command line that ran this script (what regenerates its results)."""
    return shlex.join(["python", *sys.argv])


def write_study(out: str | Path, stem: str, result: dict,
                markdown: Callable[[dict], str]) -> dict:
    """``<out>/<stem>.json`` (``result`` with the command and the machine added) and
    ``<out>/<stem>.md``: the run's note (``note``, else ``args.note``), ``markdown`` of that
    JSON, then the command that regenerates it and the machine it ran on. Atomic; prints the
    Markdown; returns the JSON written."""
    result = files.jsonable({**result, "command": result.get("command", command()),
                             "machine": result.get("machine", machine_info())})
    m = result["machine"]
    note = result.get("note") or result.get("args", {}).get("note")
    note = f"{note}\n\n" if note else ""
    text = (note + markdown(result).rstrip("\n") + "\n\n"
            f"Written by `{result['command']}` (from `{stem}.json`; do not edit by hand) on "
            f"{m['processor']}, {m['cpu_count']} cores, JAX {m['jax']} {m['backend']}.\n")
    print("\n" + text)
    files.write_json(Path(out) / f"{stem}.json", result)
    files.write_text(Path(out) / f"{stem}.md", text)
    return result



def rewrite_study(out: str | Path, stem: str, markdown: Callable[[dict], str]) -> dict:
    """The stored ``<out>/<stem>.json`` written again by `write_study` (its Markdown redrawn by
    ``markdown``; its command and machine kept): a study's ``--replot``. Returns the JSON."""
    path = Path(out) / f"{stem}.json"
    if not path.exists():
        raise SystemExit(f"--replot: no stored results at {path}; run the study without "
                         "--replot first.")
    return write_study(out, stem, json.loads(path.read_text()), markdown)


# --------------------------------------------------------------------------------------------
# The former loader (8-tuple), kept while other scripts move to `load`
# --------------------------------------------------------------------------------------------


def load_setup(args):
    """(teacher params, teacher config, VAE params, VAE config, teacher_apply, images, their
    teacher classes, dataset info) for a benchmark's --checkpoints/--dataset/--split/--count."""
    folder = Path(args.checkpoints)
    tp, tcfg, _ = checkpoint.restore(folder / "teacher", kind="teacher")
    vp, vcfg, _ = checkpoint.restore(folder / "vae", kind="vae")
    ds = data.load(args.dataset, args.split, data_dir=args.data_dir)
    images = ds.images[: args.count]
    apply = teacher_apply_for(tcfg)
    cls = np.asarray(apply(tp, jnp.asarray(images))).argmax(-1)
    return tp, tcfg, vp, vcfg, apply, images, cls, ds.info
