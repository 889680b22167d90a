"""Checking a store against the checksums its runs recorded (`verify`, `deepvid verify`).

Every chunk of a stage that is marked done has, in its row of ``done/<stage>``, the checksum of
each of the stage's arrays over the chunk's rows and the size of each one's chunk file
(`store`). `check` reads the arrays back and names each chunk that differs: its file missing,
shorter than written (truncated), unreadable, or values other than those written (non-finite
ones, or a checksum mismatch). `explain_dataset(..., repair=True)` recomputes exactly those.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from deepvid_jax.runner.store import (
    INPUTS,
    RunError,
    checksum,
    chunk_file,
    open_array,
    open_store,
    stage_arrays,
)

REASONS = ("missing", "truncated", "unreadable", "non-finite", "checksum mismatch")


@dataclasses.dataclass(frozen=True)
class Damage:
    """One damaged chunk of a store.

    Attributes:
      array: the array's path in the store (``"deepvid/attributions"``, ``"done/inputs"``).
      chunk: the chunk's index (rows ``[chunk * chunk_size, ...)``).
      stage: the stage that writes it (``"inputs"`` or an explainer): what a repair recomputes.
      reason: one of `REASONS`.
      file: the chunk's file.
      detail: what was found.
    """

    array: str
    chunk: int
    stage: str
    reason: str
    file: str
    detail: str = ""

    def __str__(self) -> str:
        return (f"{self.array} chunk {self.chunk} ({self.file}): {self.reason}"
                + (f" ({self.detail})" if self.detail else ""))


def _read_markers(root, path: Path, stage: str, chunks: list[int]) -> tuple[dict, list[Damage]]:
    """Rows of ``done/<stage>`` for ``chunks``: {chunk: row}; an unreadable row is damage."""
    marker = open_array(root, path, f"done/{stage}")
    try:
        rows = np.asarray(marker[:])
        return {j: rows[j] for j in chunks}, []
    except Exception:  # noqa: BLE001 - find the damaged rows one by one
        pass
    out, damage = {}, []
    for j in chunks:
        try:
            out[j] = np.asarray(marker[j])
        except Exception as e:  # noqa: BLE001 - zarr raises many kinds for a damaged file
            f = chunk_file(marker, path, f"done/{stage}", j)
            size = f.stat().st_size if f.exists() else None
            reason = "truncated" if size is not None and size < marker.shape[1] * 8 else \
                "unreadable"
            damage.append(Damage(f"done/{stage}", j, stage, reason, str(f),
                                 f"{type(e).__name__}: {e}"[:200]))
    return out, damage


def _check_chunk(array, path: Path, name: str, stage: str, j: int, rows: slice, digest: int,
                 size: int) -> Damage | None:
    f = chunk_file(array, path, name, j)
    try:
        actual = f.stat().st_size
    except FileNotFoundError:
        actual = 0
        if size:  # written, now gone (an all-zero chunk is never written: size 0)
            return Damage(name, j, stage, "missing", str(f))
    if actual < size:
        return Damage(name, j, stage, "truncated", str(f), f"{actual} of {size} bytes")
    try:
        values = np.asarray(array[rows])
    except Exception as e:  # noqa: BLE001 - zarr raises many kinds for a damaged file
        return Damage(name, j, stage, "unreadable", str(f), f"{type(e).__name__}: {e}"[:200])
    if checksum(values) == digest:
        return None
    if np.issubdtype(values.dtype, np.inexact) and not np.isfinite(values).all():
        return Damage(name, j, stage, "non-finite", str(f),
                      f"{int((~np.isfinite(values)).sum())} values not finite")
    return Damage(name, j, stage, "checksum mismatch", str(f),
                  "" if actual == size else f"{actual} bytes, written {size}")


def check(root, path: Path, stages: list[str], chunk_size: int, n: int,
          chunks: list[int] | None = None) -> tuple[dict[str, np.ndarray], list[Damage]]:
    """Which chunks of each stage are done, and the damaged chunks among them.

    Args:
      root: the store's open root group; path: its folder.
      stages: ``inputs`` and the explainers.
      chunk_size, n: rows per chunk and in all.
      chunks: the chunks to check (default: all).

    Returns:
      ({stage: done [chunks] bool}, damage): a damaged chunk is not counted done.
    """
    count = -(-n // chunk_size)
    chunks = list(range(count)) if chunks is None else chunks
    done, damage = {}, []
    for stage in stages:
        names = stage_arrays(root, path, stage)
        rows, bad = _read_markers(root, path, stage, chunks)
        damage += bad
        flags = np.zeros(count, bool)
        arrays = {name: open_array(root, path, name) for name in names}
        a = len(names)
        for j, row in rows.items():
            if not row[:a].all():
                continue  # not done (yet)
            found = [d for d in (_check_chunk(arrays[name], path, name, stage, j,
                                              slice(j * chunk_size, min(n, (j + 1) * chunk_size)),
                                              int(row[i]), int(row[a + i]))
                                 for i, name in enumerate(names)) if d is not None]
            damage += found
            flags[j] = not found
        done[stage] = flags
    return done, damage


def verify(store: str | os.PathLike) -> list[Damage]:
    """The damaged chunks of a store (`Damage`: array, chunk, reason, file), [] when every
    chunk marked done reads back as written. Raises RunError for a folder that is not a
    readable store of this format (naming the file)."""
    path = Path(store).expanduser()
    if not path.is_dir():
        raise RunError(f"{path} is not a store (no such folder).")
    root, meta = open_store(path, mode="r")
    run = meta["identity"]["run"]
    return check(root, path, [INPUTS, *run["explainers"]], int(run["chunk_size"]),
                 int(meta["identity"]["dataset"]["count"]))[1]


def summary(damage: list[Damage], limit: int = 10) -> str:
    """The damaged chunks, one a line (the first ``limit``)."""
    lines = [str(d) for d in damage[:limit]]
    if len(damage) > limit:
        lines.append(f"... and {len(damage) - limit} more")
    return "\n".join(lines)
