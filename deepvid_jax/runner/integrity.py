"""Opening a dataset store and checking it against the checksums its runs recorded
(`verify`, `deepvid verify`, `deepvid report`); the store's layout is `store`'s.

Every chunk of a stage that is marked done has, in its row of ``done/<stage>``, the checksum of
each of the stage's arrays over the chunk's rows and the size of each one's chunk file. `check`
reads the arrays back and names each chunk that differs: its file missing, shorter than written
(truncated), unreadable, or values other than those written (non-finite ones, or a checksum
mismatch). `explain_dataset(..., repair=True)` recomputes exactly those. Opening names the file
of every damaged piece of metadata (`open_store`, `open_array`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np

INPUTS = "inputs"  # the stage that writes indices, labels, classes, teacher_probs
INPUT_ARRAYS = ("indices", "labels", "classes", "teacher_probs")
FORMAT = 2  # stores without checksums and a probe (format 1) are refused
# Marks the `done` group of a store of ours: a store whose root metadata is damaged is still
# recognised (and may be replaced with overwrite).
GROUP_MARK = "deepvid_jax_store"


class RunError(ValueError):
    """A store that cannot be used for this run: named path, what is wrong, what to do."""


OVERWRITE = "pass overwrite=True (deepvid run --overwrite) to replace it"
REASONS = ("missing", "truncated", "unreadable", "non-finite", "checksum mismatch")


def zarr_module():
    try:
        import zarr
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise RunError("the dataset runner needs zarr>=3 (pip install 'zarr>=3').") from e
    return zarr


def chunk_file(array, root_path: Path, name: str, chunk: int) -> Path:
    """The file of chunk ``chunk`` (rows) of the array ``name``."""
    coords = (chunk,) + (0,) * (len(array.shape) - 1)
    return root_path / name / array.metadata.encode_chunk_key(coords)


def checksum(values: np.ndarray) -> int:
    """A nonzero 64-bit hash of an array's bytes (its rows of one chunk, C order)."""
    digest = hashlib.blake2b(np.ascontiguousarray(values).data, digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


def _attributes(meta_file: Path) -> dict | None:
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError):
        return None
    return (meta.get("attributes") or {}) if isinstance(meta, dict) else None


def is_store(path: Path) -> bool:
    """Whether ``path`` is a store the runner made, even a damaged one: its root metadata, or
    that of its ``done`` group, names us."""
    root = _attributes(path / "zarr.json")
    done = _attributes(path / "done" / "zarr.json")
    return bool((isinstance(root, dict) and "deepvid_jax" in root)
                or (isinstance(done, dict) and done.get(GROUP_MARK)))


def open_store(path: Path, mode: str = "r+"):
    """The store's root group and its deepvid_jax attributes; a RunError naming the file when
    it is not a readable store of ours of this format."""
    zarr = zarr_module()
    meta_file = path / "zarr.json"
    ours = is_store(path)
    if not meta_file.exists():
        if ours:
            raise RunError(f"{meta_file} is missing: the store's root metadata is lost; "
                           f"{OVERWRITE}.")
        raise RunError(f"{path} is not a deepvid_jax store (no zarr.json); choose another "
                       "output path.")
    try:
        json.loads(meta_file.read_text())
        root = zarr.open_group(str(path), mode=mode, zarr_format=3)
        attrs = dict(root.attrs)
    except Exception as e:  # zarr and json raise many kinds for a damaged store
        if not ours:
            raise RunError(f"{path} is not a readable Zarr store ({meta_file}: "
                           f"{type(e).__name__}: {e}); choose another output path.") from e
        raise RunError(f"{meta_file} is damaged ({type(e).__name__}: {e}); {OVERWRITE}.") from e
    meta = attrs.get("deepvid_jax")
    if not isinstance(meta, dict) or "identity" not in meta:
        raise RunError(f"{path} is a Zarr store but not one of deepvid_jax explanations (no "
                       "'deepvid_jax' attributes); choose another output path.")
    if meta.get("format") != FORMAT:
        raise RunError(f"{path} was made by an earlier version of deepvid_jax (store format "
                       f"{meta.get('format', 1)}, without checksums; this version writes "
                       f"format {FORMAT}): it cannot be verified or resumed; {OVERWRITE} "
                       "(recomputing it), or choose another output path.")
    return root, meta


def open_array(root, path: Path, name: str, shape=None, dtype=None):
    """``root[name]``, or a RunError naming its metadata file; checks shape and dtype when
    given."""
    meta_file = path / name / "zarr.json"
    try:
        array = root[name]
        if not hasattr(array, "shape"):
            raise TypeError("it is a group, not an array")
    except Exception as e:  # zarr raises many kinds for damaged metadata
        why = "missing" if not meta_file.exists() else f"damaged ({type(e).__name__}: {e})"
        raise RunError(f"{meta_file} is {why}; {OVERWRITE}.") from e
    if shape is not None and (tuple(array.shape) != tuple(shape)
                              or np.dtype(array.dtype) != np.dtype(dtype)):
        raise RunError(f"{meta_file} describes {array.dtype} {list(array.shape)}, not this run's "
                       f"{np.dtype(dtype)} {list(shape)}: the store was altered; {OVERWRITE}.")
    return array


def stage_arrays(root, path: Path, stage: str) -> list[str]:
    """The arrays of ``stage`` in the order of its checksums."""
    marker = open_array(root, path, f"done/{stage}")
    names = dict(marker.attrs).get("arrays")
    if (not isinstance(names, list) or not all(isinstance(n, str) for n in names)
            or marker.shape[1:] != (2 * len(names),)):
        raise RunError(f"{path / 'done' / stage / 'zarr.json'} does not name the arrays of its "
                       f"stage; {OVERWRITE}.")
    return names


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


READ_BYTES = 64 << 20  # chunks read back together, at most (one Zarr call, bounded memory)


def _blocks(array, chunks: list[int], chunk_size: int) -> list[list[int]]:
    """``chunks`` (sorted) cut into runs of consecutive chunks of at most `READ_BYTES`."""
    per_chunk = chunk_size * int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize
    most = max(1, READ_BYTES // max(per_chunk, 1))
    out: list[list[int]] = []
    for j in chunks:
        if out and out[-1][-1] == j - 1 and len(out[-1]) < most:
            out[-1].append(j)
        else:
            out.append([j])
    return out


def _read(array, block: list[int], chunk_size: int, n: int) -> dict[int, np.ndarray] | None:
    """The rows of consecutive chunks in one read, by chunk; None when any cannot be read."""
    lo, hi = block[0] * chunk_size, min(n, (block[-1] + 1) * chunk_size)
    try:
        values = np.asarray(array[lo:hi])
    except Exception:  # noqa: BLE001 - a damaged chunk: each is then read alone
        return None
    return {j: values[j * chunk_size - lo : min(n, (j + 1) * chunk_size) - lo] for j in block}


def _check_chunk(array, path: Path, name: str, stage: str, j: int, rows: slice, digest: int,
                 size: int, values: np.ndarray | None = None) -> Damage | None:
    """One chunk of one array against its checksum and file size (``values``: its rows, when
    already read)."""
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
        values = np.asarray(array[rows]) if values is None else values
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
        a = len(names)
        marked = sorted(j for j, row in rows.items() if row[:a].all())  # the others: not done
        bad_chunks: set[int] = set()
        for i, name in enumerate(names):
            array = open_array(root, path, name)
            for block in _blocks(array, marked, chunk_size):
                values = _read(array, block, chunk_size, n) or {}
                for j in block:
                    d = _check_chunk(array, path, name, stage, j,
                                     slice(j * chunk_size, min(n, (j + 1) * chunk_size)),
                                     int(rows[j][i]), int(rows[j][a + i]), values.get(j))
                    if d is not None:
                        damage.append(d)
                        bad_chunks.add(j)
        flags[[j for j in marked if j not in bad_chunks]] = True
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
