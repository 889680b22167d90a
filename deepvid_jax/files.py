"""Files the library writes: atomically, and never over another run's results.

Every file is written to a temporary sibling, flushed to disk and renamed into place
(`os.replace` is atomic on POSIX), so a reader sees the old file or the new one, never half of
one, whatever kills the writer. JSON is strict: NaN and inf become ``null`` (Python's ``NaN``
token is not JSON), numpy scalars and arrays become numbers and lists.

An output folder that a command writes into records what it wrote in a manifest
(`MANIFEST`); the next run into that folder removes exactly those files first, so results of
two runs are never mixed, and files the library did not write are never touched. A single page
written anywhere (`deepvid report`) carries `GENERATOR` in its head instead: `made_by_library`
tells the library's own files from a user's.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST = ".deepvid-run.json"
# The mark in the first bytes of a text file the library wrote outside a manifest (an HTML
# head's <meta name="generator">); the second is what report pages carried before it.
GENERATOR = "deepvid_jax"
_SIGNATURES = (f'<meta name="generator" content="{GENERATOR}'.encode(),
               b"<title>deepvid_jax report:")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; on success it is renamed onto ``path``.

    On any exception (or a kill) the temporary file is removed (or left as a hidden
    ``.name.tmp-*`` file) and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:12]}"
    # os.open with 0o666 honours the umask (mkstemp would make every result 0600).
    os.close(os.open(tmp_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:  # the data must be on disk before the rename
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Makes a rename inside ``folder`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def jsonable(value: Any) -> Any:
    """``value`` with numpy types converted and non-finite floats as None (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "__array__") and hasattr(value, "shape"):  # jax arrays
        return jsonable(np.asarray(value))
    return value


def dumps_json(value: Any) -> str:
    """Strict JSON text of ``value`` (see `jsonable`); raises TypeError for other objects."""
    return json.dumps(jsonable(value), indent=2, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, value: Any) -> Path:
    """Strict JSON, written atomically. The text is made before the file is touched, so an
    unserialisable value raises without writing anything."""
    return write_text(path, dumps_json(value))


def savefig(fig, path: str | os.PathLike, **kwargs) -> Path:
    """``fig.savefig`` to ``path`` atomically (the format is taken from the suffix)."""
    path = Path(path)
    kwargs.setdefault("format", path.suffix.lstrip(".") or "png")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **kwargs)
    return path


# --------------------------------------------------------------------------------------------
# Output folders
# --------------------------------------------------------------------------------------------


def check_writable_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Creates ``path`` if needed and proves it writable (a probe file is made and removed),
    so a bad ``--out`` fails before any work. Raises ValueError naming the path."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} exists and is not a folder.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".deepvid-write-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"cannot write to {what} {path}: {e.strerror or e}.") from e
    return path


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """The manifest of the last run into ``folder``, or None (absent or unreadable)."""
    try:
        value = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def claim_output_dir(folder: str | os.PathLike, command: str, planned: Iterable[str],
                     legacy: Iterable[str] = ()) -> Path:
    """Prepares ``folder`` for a run that will write the files named in ``planned`` (relative
    names): removes the files a previous run recorded in the manifest, then records this run's.

    ``legacy`` names files an earlier version wrote without a manifest: if any exists the
    folder is refused (ValueError), since they cannot be told apart from a user's own files.
    """
    folder = check_writable_dir(folder)
    previous = read_manifest(folder)
    if previous is None:
        stale = sorted(n for n in legacy if (folder / n).exists())
        if stale:
            raise ValueError(
                f"{folder} holds results of an earlier run ({', '.join(stale[:4])}"
                f"{', ...' if len(stale) > 4 else ''}) that this run would mix with its own; "
                "remove them or choose another output folder.")
    else:
        for name in previous.get("files", []):
            target = (folder / str(name)).resolve()
            if target.parent == folder.resolve() and target.is_file():  # never outside it
                target.unlink()
    write_json(folder / MANIFEST, {"command": command, "status": "running",
                                   "files": sorted(set(planned))})
    return folder


def finish_output_dir(folder: str | os.PathLike, written: Iterable[str | os.PathLike]) -> None:
    """Marks the run in ``folder`` complete, listing the files it wrote."""
    folder = Path(folder)
    manifest = read_manifest(folder) or {}
    names = set(manifest.get("files", [])) | {Path(w).name for w in written}
    write_json(folder / MANIFEST, {**manifest, "status": "complete", "files": sorted(names)})


def made_by_library(path: str | os.PathLike) -> bool:
    """Whether the file at ``path`` was written by the library: listed in its folder's manifest,
    or carrying `GENERATOR` in its first 4 KiB."""
    path = Path(path)
    manifest = read_manifest(path.parent) or {}
    if path.name in manifest.get("files", []):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return any(sig in head for sig in _SIGNATURES)


def check_replaceable(path: str | os.PathLike, what: str = "output") -> Path:
    """``path`` may be written: absent, or a file the library made (`made_by_library`); else a
    ValueError naming it (a user's file, or a folder, is never replaced)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; give a file name.")
    if path.exists() and not made_by_library(path):
        raise ValueError(f"{what} {path} exists and was not written by deepvid_jax: it is never "
                         "replaced; remove it or choose another path.")
    return path
