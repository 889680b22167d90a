"""The explanation report of a few images: any registered method through the registry
(`explainers.registry.explain`), figures and a JSON summary in an output folder.

The folder is claimed first (`claim`: files of an earlier report listed in its manifest are
removed, unlisted results of an older version refuse the folder), so two reports never mix.
DeepVID's figures show the input, its VAE reconstruction, the neighbours and the student's
weight image of every class, plus a latent traversal; every other method's figure is its
attribution map.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from deepvid_jax import files, validate, viz
from deepvid_jax.explainers import registry
from deepvid_jax.explainers.deepvid import core as deepvid
from deepvid_jax.explainers.deepvid import neighbors
from deepvid_jax.models import vae as vae_lib
from deepvid_jax.models.bundle import Models

SUMMARY = "explanations.json"
TRAVERSAL = "traversal.png"  # DeepVID's latent traversal of the first image


def figure_name(i: int) -> str:
    """The file of instance ``i``'s figure."""
    return f"explanation_{i:03d}.png"


def planned_outputs(method: str, count: int, figures: int) -> list[str]:
    """The files a report of ``count`` images with ``figures`` figures writes."""
    extra = [TRAVERSAL] if method == "deepvid" else []
    return [SUMMARY, *extra, *(figure_name(i) for i in range(min(figures, count)))]


def claim(out: str | Path, method: str, count: int, figures: int) -> Path:
    """Prepares ``out`` for a report (`files.claim_output_dir`) before any work; returns it."""
    out = Path(out)
    legacy = [SUMMARY, TRAVERSAL, *(p.name for p in out.glob("explanation_[0-9]*.png"))] \
        if out.is_dir() else []
    return files.claim_output_dir(out, "explain", planned_outputs(method, count, figures),
                                  legacy)


def _jsonable_config(config: Any) -> Any:
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config


def explain_and_report(
    method: str,
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    models: Models,
    out: str | Path,
    *,
    config: Any = None,
    key: jax.Array | None = None,
    figures: int = 4,
    chunk_size: int = 64,
    progress: bool = False,
) -> dict:
    """Explains ``images`` [B, H, W, C] (for the teacher's class) with the registered
    ``method``, writes the first ``figures`` figures and ``explanations.json`` into ``out``
    (claimed beforehand with `claim`) and returns the summary written.

    The summary: method, instances, config, seconds (compile included), the teacher's
    accuracy on ``labels`` [B], the mean of each per-instance number the method returns
    (``fidelity_mean``: DeepVID's held-out fidelity, LIME's fit...) and one record per
    instance (label, teacher's class, those numbers), figures.

    Raises:
      ValueError: an unknown method, models lacking what it needs, malformed images or
        labels (`registry.explain`'s checks, before any work).
    """
    m = registry.get(method)
    config = m.config if config is None else config
    validate.integer(figures, "figures", minimum=0)
    labels = np.asarray(labels)
    key = jax.random.PRNGKey(0) if key is None else key
    out = Path(out)
    start = time.perf_counter()
    result = registry.explain(method, images, key=key, models=models, config=config,
                              chunk_size=chunk_size, progress=progress)
    seconds = time.perf_counter() - start
    images = np.asarray(images, np.float32)
    classes = registry.predicted_classes(images, models)
    per_image = {k: np.asarray(v) for k, v in result.extras.items()
                 if np.ndim(v) == 1 and np.issubdtype(np.asarray(v).dtype, np.number)}
    fidelity = {k.removeprefix("fidelity_"): v for k, v in per_image.items()
                if k.startswith("fidelity_")}
    others = {k: v for k, v in per_image.items() if not k.startswith("fidelity_")}

    n_fig = min(figures, len(images))
    written = (_deepvid_figures if method == "deepvid" else _attribution_figures)(
        method, images, n_fig, result, classes, class_names, models, config, key, out)
    summary = {
        "method": method,
        "instances": len(images),
        "config": _jsonable_config(config),
        "explain_seconds_incl_compile": seconds,
        "explanations_per_second_incl_compile": len(images) / seconds,
        "teacher_accuracy_on_explained": float(np.mean(classes == labels)),
        **({"fidelity_mean": {k: float(np.mean(v)) for k, v in fidelity.items()}}
           if fidelity else {}),
        **{f"{k}_mean": float(np.mean(v)) for k, v in others.items()},
        "per_instance": [
            {"label": int(labels[i]), "teacher": int(classes[i]),
             **({"student": int(np.argmax(result.extras["student_probs"][i]))}
                if "student_probs" in result.extras else {}),
             **{k: float(v[i]) for k, v in fidelity.items()},
             **{k: float(v[i]) for k, v in others.items()}}
            for i in range(len(images))
        ],
        "figures": [str(p) for p in written],
    }
    files.write_json(out / SUMMARY, summary)
    files.finish_output_dir(out, [*written, out / SUMMARY])
    return summary


def _attribution_figures(method, images, n, result, classes, class_names, models, config,
                         key, out: Path) -> list[Path]:
    return [viz.attribution_figure(
        images[i], np.asarray(result.attributions[i]), out / figure_name(i),
        title=f"{method}, teacher's class {class_names[int(classes[i])]}")
        for i in range(n)]


def _deepvid_figures(method, images, n, result, classes, class_names, models: Models,
                     config: deepvid.ExplainConfig, key, out: Path) -> list[Path]:
    """The first ``n`` images' explanations (the student's weights and fidelity of ``result``),
    with the neighbours they were fitted on; then the VAE's latent traversal of the first
    image."""
    written: list[Path] = []
    vcfg, vae_params = models.vae_config, models.vae_params
    if n:
        # The registry's extras carry no neighbours: the same instances again (instance i's
        # key is fold_in(key, i) in both) return them, for the figures' images only.
        shown = deepvid.explain_images(
            images[:n], key, teacher_apply=models.teacher_apply,
            teacher_params=models.teacher_params, vae_params=vae_params,
            config=dataclasses.replace(config, num_classes=models.num_classes, vae=vcfg,
                                       chunk_size=n, return_neighbors=True))
        recon = np.asarray(vae_lib.reconstruct(vae_params, images[:n], config=vcfg))
        extras = result.extras
        for i in range(n):
            written.append(viz.explanation_figure(
                images[i], recon[i], np.asarray(shown.neighbors[i]),
                np.asarray(shown.neighbor_probs[i]), np.asarray(extras["weights"][i]),
                np.asarray(extras["teacher_probs"][i]), class_names, out / figure_name(i),
                fidelity=(float(extras["fidelity_top1"][i]), float(extras["fidelity_kl"][i]))))
    values = np.linspace(-3, 3, 7)
    trav = neighbors.traverse(vae_params, images[0], values, vae_config=vcfg)
    written.append(viz.traversal_figure(np.asarray(trav), values, out / TRAVERSAL))
    return written
