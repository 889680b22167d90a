"""Matplotlib figures, saved as PNG. Every function takes numpy-convertible arrays and a path."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # Files only; never needs a display.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _show(ax, image: np.ndarray, **kwargs) -> None:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    kwargs.setdefault("cmap", "gray" if image.ndim == 2 else None)
    ax.imshow(image, **kwargs)
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def reconstruction_grid(
    originals: np.ndarray, reconstructions: np.ndarray, path: str | Path, *, title: str = ""
) -> Path:
    """Two rows: originals [N, H, W, C] above reconstructions [N, H, W, C]; saves a PNG."""
    n = len(originals)
    fig, axes = plt.subplots(2, n, figsize=(1.1 * n, 2.5), squeeze=False)
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
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.6), squeeze=False)
    epochs = [h["epoch"] for h in history]
    for ax, key in zip(axes[0], keys, strict=True):
        ax.plot(epochs, [h[key] for h in history], marker="o")
        ax.set_title(key)
        ax.set_xlabel("epoch")
    fig.tight_layout()
    return _save(fig, path)
