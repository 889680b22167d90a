"""The Zarr store of a dataset run: its layout, what it records, creating and opening it.

The store (Zarr format 3, a folder; ``zarr.open(path)`` gives numpy arrays)::

    indices [N] int64        the dataset indices explained (rows of the split)
    labels [N] int32         their labels
    classes [N] int32        the class explained per image (the teacher's unless told)
    teacher_probs [N, K]     the teacher's probabilities
    <explainer>/attributions [N, H, W, C] float32
    <explainer>/<extra> [N, ...]   the method's extras (DeepVID's fidelity, ...; its weights
                             for every class only with ``save_weights``: K times larger)
    done/<stage> [chunks, 2 A] uint64   per chunk of a stage (inputs, or an explainer) with A
                             arrays: the checksum of each array's rows of the chunk, then the
                             size in bytes of each one's chunk file; all zero until it is done

The arrays of a stage are named, in that order, by the ``arrays`` attribute of its
``done/<stage>``. The root's attributes hold the run's identity (`identity`: data, models,
explainers and their configs), the teacher's outputs on the probe images (`probe`), the store's
format, the library version, the commit and the device.

Chunk ``j`` of every array holds rows ``[j * chunk_size, (j + 1) * chunk_size)``. A chunk of a
stage counts as done only once all its arrays are written and its row of ``done/<stage>`` is
(the row is one chunk file, written last): `integrity.verify` then reads the arrays back and
compares them with the row.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import functools
import json
import math
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from deepvid_jax import files
from deepvid_jax.data import sources as data
from deepvid_jax.data.sources import Source
from deepvid_jax.runner.integrity import (
    FORMAT,
    GROUP_MARK,
    OVERWRITE,
    RunError,
    is_store,
    open_array,
    open_store,
    stage_arrays,
    zarr_module,
)

if TYPE_CHECKING:  # the run's types; the store itself needs no explainer
    from deepvid_jax.explainers import registry as explainers

PROBE_IMAGES = 8  # the teacher is fingerprinted on the first images of the dataset
# Logits of the same teacher agree far closer than this on the same images (float rounding of
# another compilation or device); another model or preprocessing differs by far more.
PROBE_TOLERANCE = 1e-3
# Chunk files under this size are stored uncompressed: compressing a few hundred bytes saves
# nothing and costs Zarr a thread hop per file (markers, classes, labels, probabilities).
SMALL_CHUNK_BYTES = 16 << 10
# --------------------------------------------------------------------------------------------
# What a store records
# --------------------------------------------------------------------------------------------


def _tree_digest(tree) -> str | None:
    """sha256 (hex, 16 chars) of a pytree's arrays, or None for an empty one."""
    leaves = jax.tree.leaves(tree)
    return data.array_digest(leaves)[:16] if leaves else None


def _config_dict(config: Any) -> Any:
    return None if config is None else files.jsonable(dataclasses.asdict(config))


_PLAIN = (str, int, float, bool, type(None))


def describe(fn: Any, depth: int = 3) -> str:
    """Which function ``fn`` is, by name: its module and qualified name and, for a closure (an
    adapter's ``apply``), its captured options and the names of the functions it captures
    (the model's call, ``preprocess``, a callback), ``depth`` levels deep. Stable across
    processes: names and plain values only."""
    if isinstance(fn, _PLAIN):
        return repr(fn)
    if isinstance(fn, functools.partial):
        return f"partial({describe(fn.func, depth)})"
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    module = getattr(fn, "__module__", None) or type(fn).__module__
    text = f"{module}.{name}"
    closure = getattr(fn, "__closure__", None)
    code = getattr(fn, "__code__", None)
    if depth and closure and code is not None:
        parts = []
        for var, cell in zip(code.co_freevars, closure, strict=True):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if isinstance(value, _PLAIN) or callable(value):
                parts.append(f"{var}={describe(value, depth - 1)}")
        if parts:
            text += "(" + ", ".join(parts) + ")"
    return text


def identity(source: Source, models: explainers.Models, config: Any,
             configs: dict[str, Any]) -> dict:
    """What makes two runs the same (compared exactly when a store is resumed): the data, the
    models (parameter digests, the teacher function by name), the explainers with their
    configs, and the chunking and seed. The teacher's outputs are compared by `probe`."""
    info = source.info
    return files.jsonable({
        "dataset": {"name": info.name, "split": info.split, "count": len(source),
                    "image_shape": list(info.image_shape), "fingerprint": source.fingerprint(),
                    **({"options": source.options} if source.options else {})},
        "models": {"num_classes": models.num_classes,
                   "teacher": _tree_digest(models.teacher_params),
                   "teacher_config": _config_dict(models.teacher_config),
                   "teacher_function": describe(models.teacher_apply),
                   "black_box": models.black_box,
                   "vae": _tree_digest(models.vae_params),
                   "surrogate": _tree_digest(models.surrogate_params),
                   "explainer": _tree_digest(models.explainer_params),
                   **({"teacher_name": models.teacher_name} if models.teacher_name else {})},
        "run": dataclasses.asdict(config),
        "configs": {name: _config_dict(configs[name]) for name in config.explainers},
    })


def probe(source: Source, models: explainers.Models) -> dict:
    """The teacher as a function: its logits [P, K] on the first `PROBE_IMAGES` images of
    ``source`` (a black box is called on them too), so a resumed store is continued only by the
    same model with the same preprocessing."""
    x, _ = source.read(0, min(PROBE_IMAGES, len(source)))
    host_call = getattr(models.teacher_apply, "host_call", None)
    if host_call is not None:
        logits = host_call(x)
    else:
        logits = models.teacher_apply(models.teacher_params, jax.numpy.asarray(x))
    logits = np.asarray(logits, np.float64)
    return {"images": len(x), "logits": np.round(logits, 6).tolist()}


def probe_difference(stored: dict, new: dict) -> str | None:
    """None when two `probe` records are of the same teacher, else what differs."""
    a = np.asarray(stored.get("logits"), dtype=np.float64)
    b = np.asarray(new["logits"], dtype=np.float64)
    if a.shape != b.shape:
        return f"its logits on the probe images have shape {list(a.shape)}, this run's " \
               f"{list(b.shape)}"
    close = np.isclose(a, b, rtol=PROBE_TOLERANCE, atol=PROBE_TOLERANCE, equal_nan=True)
    if close.all():
        return None
    i, k = np.unravel_index(np.argmax(np.where(close, 0, np.abs(np.nan_to_num(a - b, nan=1e9)))),
                            a.shape)
    return (f"the teacher's logits on the first {a.shape[0]} images of the dataset differ "
            f"(image {i}, class {k}: store {a[i, k]:.6g}, this run {b[i, k]:.6g}): another "
            "model, weights or preprocess")


def _version() -> str:
    """The library's version: the package (always imported before this module) says it."""
    return sys.modules["deepvid_jax"].__version__


def _commit() -> str | None:
    """The git commit of the library's checkout, when it is one."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _device() -> dict:
    from deepvid_jax.runner.bench import device_info  # the name `deepvid bench` keys its runs on

    return {**device_info(), "local_devices": jax.local_device_count(),
            "processes": jax.process_count()}


# --------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------


def create(path: Path, arrays: dict, stages: dict[str, list[str]], attrs: dict,
           chunk: int) -> None:
    """Creates the store in a temporary sibling and renames it into place."""
    zarr = zarr_module()
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        for name, (shape, dtype) in arrays.items():
            rows = min(chunk, shape[0])
            small = rows * math.prod(shape[1:]) * np.dtype(dtype).itemsize < SMALL_CHUNK_BYTES
            root.create_array(name, shape=shape, dtype=dtype, chunks=(rows, *shape[1:]),
                              fill_value=0, **({"compressors": None} if small else {}))
        done = root.create_group("done", attributes={GROUP_MARK: True})
        n = next(iter(arrays.values()))[0][0]
        for stage, names in stages.items():
            marker = done.create_array(stage, shape=(-(-n // chunk), 2 * len(names)),
                                       dtype="uint64", chunks=(1, 2 * len(names)), fill_value=0,
                                       compressors=None)  # a file per chunk
            marker.attrs.update({"arrays": names})
        root.attrs.update(attrs)
        try:
            os.replace(tmp, path)
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            raise RunError(f"{path} was created by another process while this one prepared "
                           "it; re-run to continue that store.") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files.fsync_dir(path.parent)


def differences(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += differences(a.get(k), b.get(k), f"{where}.{k}" if where else k)
        return out
    return [] if a == b else [f"{where}: store has {json.dumps(a)[:80]}, this run "
                              f"{json.dumps(b)[:80]}"]


@contextlib.contextmanager
def writer_lock(path: Path, process: int = 0) -> Iterator[None]:
    """Holds the store's lock file (``.<name>.lock-<process>`` beside it) for this process's
    writes: a second run on the same store fails at once with a clear message."""
    lock = path.parent / f".{path.name}.lock-{process}"
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise RunError(f"cannot lock {lock}: {e.strerror or e}.") from e
            raise RunError(f"{path} is being written by another deepvid run (process id "
                           f"{holder}, lock {lock}); wait for it to finish (re-running then "
                           "continues where it stopped) or choose another output path.") from e
        try:  # the file may have been removed by the last holder between open and lock
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)


def prepare(path: Path, ident: dict, probed: dict, arrays: dict, stages: dict, chunk: int,
            overwrite: bool, primary: bool):
    """Opens the store at ``path`` for this run, creating it (process 0) when absent; a
    RunError naming what differs when it holds another run."""
    if path.exists() and not path.is_dir():
        raise RunError(f"output {path} exists and is not a folder.")
    if primary:
        files.check_writable_dir(path.parent, "folder of the output store")
        if path.exists() and overwrite:
            if not is_store(path):
                raise RunError(f"{path} exists and is not a deepvid_jax store: overwrite "
                               "replaces only stores of ours; choose another path.")
            shutil.rmtree(path)
        if path.exists() and any(path.iterdir()):
            open_store(path)  # a clear error for a damaged or foreign store
        elif path.exists():
            path.rmdir()  # an empty folder: take its place
        if not path.exists():
            attrs = {"deepvid_jax": {"format": FORMAT, "identity": ident, "probe": probed,
                                     "version": _version(), "commit": _commit(),
                                     "device": _device(),
                                     "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}}
            create(path, arrays, stages, attrs, chunk)
    else:
        deadline = time.monotonic() + 600
        while not is_store(path):  # process 0 creates it
            if time.monotonic() > deadline:
                raise RunError(f"{path}: process 0 did not create the store in 10 minutes.")
            time.sleep(0.2)
    root, meta = open_store(path)
    diff = differences(meta["identity"], ident)
    if diff:
        raise RunError(f"{path} holds a run with another configuration ("
                       + "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4
                                                else "")
                       + f"): {OVERWRITE}, or choose another output path.")
    why = probe_difference(meta.get("probe") or {}, probed)
    if why:
        raise RunError(f"{path} holds a run of another teacher ({why}): {OVERWRITE}, or "
                       "choose another output path.")
    for name, (shape, dtype) in arrays.items():
        open_array(root, path, name, shape, dtype)
    for stage, names in stages.items():
        if stage_arrays(root, path, stage) != names:
            raise RunError(f"{path / 'done' / stage / 'zarr.json'} names other arrays than this "
                           f"run's {names}; {OVERWRITE}.")
    return root
