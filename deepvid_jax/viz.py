"""Matplotlib figures, saved as PNG. Every function takes numpy-convertible arrays and a path."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deepvid_jax import files


def pyplot():
    """matplotlib.pyplot, imported at the first figure (half a second that `import deepvid_jax`
    and every `deepvid` command that draws nothing do not pay); on the file-only Agg backend
    unless the caller already chose one by importing pyplot."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _show(ax, image: np.ndarray, **kwargs) -> None:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    kwargs.setdefault("cmap", "gray" if image.ndim == 2 else None)
    ax.imshow(image, **kwargs)
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig, path: str | Path) -> Path:
    """Writes the figure atomically (a kill never leaves half a PNG) and closes it."""
    try:
        return files.savefig(fig, path, dpi=110, bbox_inches="tight")
    finally:
        pyplot().close(fig)


def reconstruction_grid(
    originals: np.ndarray, reconstructions: np.ndarray, path: str | Path, *, title: str = ""
) -> Path:
    """Two rows: originals [N, H, W, C] above reconstructions [N, H, W, C]; saves a PNG."""
    n = len(originals)
    fig, axes = pyplot().subplots(2, n, figsize=(1.1 * n, 2.5), squeeze=False)
    for i in range(n):
        _show(axes[0, i], originals[i], vmin=0, vmax=1)
        _show(axes[1, i], reconstructions[i], vmin=0, vmax=1)
    axes[0, 0].set_ylabel("input")
    axes[1, 0].set_ylabel("recon.")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def training_curves(history: Sequence[dict], keys: Sequence[str], path: str | Path) -> Path:
    """One panel per metric name in ``keys``, plotted against epoch."""
    fig, axes = pyplot().subplots(1, len(keys), figsize=(3.2 * len(keys), 2.6), squeeze=False)
    epochs = [h["epoch"] for h in history]
    for ax, key in zip(axes[0], keys, strict=True):
        ax.plot(epochs, [h[key] for h in history], marker="o")
        ax.set_title(key)
        ax.set_xlabel("epoch")
    fig.tight_layout()
    return _save(fig, path)


def explanation_figure(
    image: np.ndarray,
    reconstruction: np.ndarray,
    neighbors: np.ndarray,
    neighbor_probs: np.ndarray,
    weights: np.ndarray,
    teacher_probs: np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    *,
    fidelity: tuple[float, float] | None = None,
    num_neighbors: int = 10,
) -> Path:
    """One DeepVID explanation.

    Row 1: input, VAE reconstruction, evidence (weights x input) for the teacher's class.
    Row 2: neighbours with the teacher's label and probability.
    Row 3: the student's weight image per class (red pushes towards the class, blue away),
    one diverging colour scale centred at zero and shared by every class.

    Args:
      image, reconstruction: [H, W, C]; neighbors: [N, H, W, C]; neighbor_probs: [N, K];
      weights: [H, W, C, K]; teacher_probs: [K]; fidelity: (top-1, KL) on held-out neighbours.
    """
    k = weights.shape[-1]
    cols = max(k, num_neighbors)
    fig, axes = pyplot().subplots(3, cols, figsize=(1.25 * cols, 4.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    pred = int(np.argmax(teacher_probs))
    w = weights.mean(axis=2)  # average over channels: [H, W, K]
    evidence = (weights[..., pred] * image).sum(axis=-1)
    vmax = float(np.abs(w).max()) or 1.0
    ev_max = float(np.abs(evidence).max()) or 1.0
    panels = [
        (image, dict(vmin=0, vmax=1), f"input\nteacher: {class_names[pred]} "
         f"({teacher_probs[pred]:.2f})"),
        (reconstruction, dict(vmin=0, vmax=1), "VAE recon."),
        (evidence, dict(cmap="RdBu_r", vmin=-ev_max, vmax=ev_max), f"evidence for '{pred}'"
         if str(pred) == class_names[pred] else f"evidence: {class_names[pred]}"),
    ]
    for ax, (img, kw, title) in zip(axes[0], panels, strict=False):
        ax.axis("on")
        _show(ax, img, **kw)
        ax.set_title(title, fontsize=8)
    if fidelity is not None:
        axes[0, 3].text(0, 0.5, "student fidelity on held-out\nneighbours: "
                        f"top-1 {fidelity[0]:.2f},\nKL {fidelity[1]:.3f} nats",
                        fontsize=8, va="center")
    for i in range(min(num_neighbors, len(neighbors))):
        ax = axes[1, i]
        ax.axis("on")
        lab = int(np.argmax(neighbor_probs[i]))
        _show(ax, neighbors[i], vmin=0, vmax=1)
        ax.set_title(f"{class_names[lab]} ({neighbor_probs[i, lab]:.2f})", fontsize=8,
                     color="black" if lab == pred else "crimson")
    axes[1, 0].set_ylabel("neighbours", fontsize=8)
    for c in range(k):
        ax = axes[2, c]
        ax.axis("on")
        im = _show_return(ax, w[..., c], cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        ax.set_title(f"W[{class_names[c]}]", fontsize=8, fontweight="bold" if c == pred else None)
    fig.colorbar(im, ax=axes[2, :].tolist(), shrink=0.8, pad=0.01)
    return _save(fig, path)


def _show_return(ax, image, **kwargs):
    im = ax.imshow(image, **kwargs)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def traversal_figure(traversal: np.ndarray, values: Sequence[float], path: str | Path) -> Path:
    """Latent traversal [Z, V, H, W, C]: row d moves latent dimension d through ``values``."""
    z, v = traversal.shape[:2]
    fig, axes = pyplot().subplots(z, v, figsize=(0.9 * v, 0.9 * z), squeeze=False)
    for d in range(z):
        for j in range(v):
            _show(axes[d, j], traversal[d, j], vmin=0, vmax=1)
        axes[d, 0].set_ylabel(f"z{d}", fontsize=7, rotation=0, labelpad=10)
    for j in range(v):
        axes[0, j].set_title(f"{values[j]:+.1f}", fontsize=7)
    fig.suptitle("latent traversal (offset from the instance's code)", fontsize=9)
    return _save(fig, path)


def neuron_top_images_figure(
    real_images: np.ndarray,
    real_concepts: np.ndarray,
    adversarial_images: np.ndarray,
    adversarial_concepts: np.ndarray,
    real_top: np.ndarray,
    adversarial_top: np.ndarray,
    neurons: Sequence[int],
    scores: np.ndarray,
    path: str | Path,
    *,
    title: str = "",
) -> Path:
    """For each neuron, one row: its top real images, then its top adversarial images.

    Args:
      real_images, adversarial_images: the pools [P, H, W, C]; *_concepts: [P] ints.
      real_top, adversarial_top: [F, k] pool indices (`consistency.NeuronConsistency`).
      neurons: which neurons (rows) to show.
      scores: [F] consistency shown beside each row.
    """
    k = min(real_top.shape[1], 8)
    fig, axes = pyplot().subplots(len(neurons), 2 * k,
                                  figsize=(0.75 * 2 * k + 1, 0.9 * len(neurons)), squeeze=False)
    for r, n in enumerate(neurons):
        for j in range(k):
            i = int(real_top[n, j])
            _show(axes[r, j], real_images[i], vmin=0, vmax=1)
            axes[r, j].set_title(str(real_concepts[i]), fontsize=7, pad=1)
            i = int(adversarial_top[n, j])
            ax = axes[r, k + j]
            _show(ax, adversarial_images[i], vmin=0, vmax=1)
            ax.set_title(str(adversarial_concepts[i]), fontsize=7, pad=1, color="C3")
        axes[r, 0].set_ylabel(f"n{n}\n{scores[n]:.2f}", fontsize=7, rotation=0, labelpad=16)
    axes[0, 0].annotate("top real images (concept above)", (0, 1.6), xycoords="axes fraction",
                        fontsize=8)
    axes[0, k].annotate("top adversarial images (concept of their source)", (0, 1.6),
                        xycoords="axes fraction", fontsize=8, color="C3")
    if title:
        fig.suptitle(title, y=1.02, fontsize=9)
    return _save(fig, path)


def consistency_histogram(
    scores: dict[str, np.ndarray], path: str | Path, *, title: str = "", floor: float | None = None
) -> Path:
    """Overlaid histograms of per-neuron consistency, one per model: {label: [F]}."""
    fig, ax = pyplot().subplots(figsize=(6, 3.4))
    bins = np.linspace(0, 1, 26)
    for label, s in scores.items():
        s = np.asarray(s)
        ax.hist(s, bins=bins, alpha=0.45, label=f"{label} (mean {s.mean():.3f})")
    if floor is not None:
        ax.axvline(floor, color="gray", ls=":", lw=1)
    ax.set_xlabel("neuron consistency (joint, real + adversarial top images)")
    ax.set_ylabel("neurons")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def saliency_grid(
    images: np.ndarray, maps: dict[str, np.ndarray], path: str | Path, *,
    labels: Sequence[str] | None = None, title: str = "",
) -> Path:
    """First row: images [N, H, W, C]; then one row per method in ``maps`` ({name: [N, H, W]}),
    each map drawn over its image with its own colour scale."""
    n = len(images)
    rows = 1 + len(maps)
    fig, axes = pyplot().subplots(rows, n, figsize=(1.2 * n + 1.2, 1.25 * rows), squeeze=False)
    for i in range(n):
        _show(axes[0, i], images[i], vmin=0, vmax=1)
        if labels is not None:
            axes[0, i].set_title(labels[i], fontsize=7, pad=2)
        for r, (name, m) in enumerate(maps.items(), start=1):
            _show(axes[r, i], images[i], vmin=0, vmax=1)
            axes[r, i].imshow(np.asarray(m[i]), cmap="jet", alpha=0.5)
            if i == 0:
                axes[r, 0].set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def neighbour_rows(
    image: np.ndarray,
    rows: dict[str, tuple[np.ndarray, np.ndarray]],
    class_names: Sequence[str],
    label: int,
    path: str | Path,
    *,
    title: str = "",
) -> Path:
    """The instance, then one row of neighbours per setting, each titled with the teacher's
    label (red where it differs from the instance's).

    Args:
      image: [H, W, C]; rows: name -> (neighbours [n, H, W, C], teacher labels [n]).
    """
    n = max(len(nb) for nb, _ in rows.values())
    fig, axes = pyplot().subplots(len(rows), n + 1, figsize=(1.05 * (n + 1), 1.35 * len(rows)),
                                  squeeze=False)
    for r, (name, (nb, labels)) in enumerate(rows.items()):
        _show(axes[r, 0], image, vmin=0, vmax=1)
        axes[r, 0].set_title(f"input: {class_names[label]}", fontsize=8)
        axes[r, 0].set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
        for i in range(n):
            ax = axes[r, i + 1]
            if i >= len(nb):
                ax.axis("off")
                continue
            _show(ax, nb[i], vmin=0, vmax=1)
            ax.set_title(class_names[int(labels[i])], fontsize=8,
                         color="black" if int(labels[i]) == label else "crimson")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def attribution_figure(image: np.ndarray, attribution: np.ndarray, path: str | Path, *,
                       title: str = "") -> Path:
    """Any explainer's attribution of one image: the input, the map (summed over channels,
    one diverging colour scale centred at zero: red for the class, blue against it) and the
    map's magnitude over the input.

    Args:
      image: [H, W, C] in [0, 1]; attribution: [H, W, C].
    """
    relevance = np.asarray(attribution, np.float64).sum(axis=-1)
    vmax = float(np.abs(relevance).max()) or 1.0
    fig, axes = pyplot().subplots(1, 3, figsize=(6.0, 2.3), squeeze=False)
    _show(axes[0, 0], image, vmin=0, vmax=1)
    axes[0, 0].set_title("input", fontsize=8)
    im = axes[0, 1].imshow(relevance, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
    axes[0, 1].set_xticks([])
    axes[0, 1].set_yticks([])
    axes[0, 1].set_title("attribution", fontsize=8)
    fig.colorbar(im, ax=axes[0, 1], shrink=0.8, pad=0.02)
    _show(axes[0, 2], image, vmin=0, vmax=1)
    axes[0, 2].imshow(np.abs(relevance), cmap="jet", alpha=0.5)
    axes[0, 2].set_title("|attribution| over input", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)
