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
import hashlib
import json
import math
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from deepvid_jax import __version__, files
from deepvid_jax.data import sources as data
from deepvid_jax.data.sources import Source
from deepvid_jax.explainers import registry as explainers

INPUTS = "inputs"  # the stage that writes indices, labels, classes, teacher_probs
INPUT_ARRAYS = ("indices", "labels", "classes", "teacher_probs")
FORMAT = 2  # stores without checksums and a probe (format 1) are refused
PROBE_IMAGES = 8  # the teacher is fingerprinted on the first images of the dataset
# Logits of the same teacher agree far closer than this on the same images (float rounding of
# another compilation or device); another model or preprocessing differs by far more.
PROBE_TOLERANCE = 1e-3
# Chunk files under this size are stored uncompressed: compressing a few hundred bytes saves
# nothing and costs Zarr a thread hop per file (markers, classes, labels, probabilities).
SMALL_CHUNK_BYTES = 16 << 10
# Marks the `done` group of a store of ours: a store whose root metadata is damaged is still
# recognised (and may be replaced with overwrite).
GROUP_MARK = "deepvid_jax_store"


class RunError(ValueError):
    """A store that cannot be used for this run: named path, what is wrong, what to do."""


OVERWRITE = "pass overwrite=True (deepvid run --overwrite) to replace it"


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


def zarr_module():
    try:
        import zarr
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise RunError("the dataset runner needs zarr>=3 (pip install 'zarr>=3').") from e
    return zarr


def layout(source: Source, models: explainers.Models, config: Any,
           configs: dict[str, Any]) -> tuple[dict[str, tuple[tuple[int, ...], str]],
                                             dict[str, list[str]]]:
    """Every data array of the store, path -> (shape, dtype), from one traced chunk per method;
    and each stage's arrays in the order of its checksums."""
    n, shape = len(source), tuple(source.info.image_shape)
    k = models.num_classes
    arrays = {"indices": ((n,), "int64"), "labels": ((n,), "int32"),
              "classes": ((n,), "int32"), "teacher_probs": ((n, k), "float32")}
    stages = {INPUTS: list(INPUT_ARRAYS)}
    x = jax.ShapeDtypeStruct((1, *shape), np.float32)
    c = jax.ShapeDtypeStruct((1,), np.int32)
    keys = jax.ShapeDtypeStruct((1, *jax.random.PRNGKey(0).shape), np.uint32)
    static = models.static()
    for name in config.explainers:
        m = explainers.get(name)
        out = jax.eval_shape(lambda p, x, c, k, m=m, name=name: m.fn(
            p, x, c, k, models=static, config=configs[name]), models.params(), x, c, keys)
        arrays[f"{name}/attributions"] = ((n, *out.attributions.shape[1:]), "float32")
        for extra, s in out.extras.items():
            if extra == "weights" and not config.save_weights:
                continue
            arrays[f"{name}/{extra}"] = ((n, *s.shape[1:]), str(np.dtype(s.dtype)))
        stages[name] = [a for a in arrays if a.startswith(f"{name}/")]
    return arrays, stages


def chunk_file(array, root_path: Path, name: str, chunk: int) -> Path:
    """The file of chunk ``chunk`` (rows) of the array ``name``."""
    coords = (chunk,) + (0,) * (len(array.shape) - 1)
    return root_path / name / array.metadata.encode_chunk_key(coords)


def checksum(values: np.ndarray) -> int:
    """A nonzero 64-bit hash of an array's bytes (its rows of one chunk, C order)."""
    digest = hashlib.blake2b(np.ascontiguousarray(values).data, digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


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


# --------------------------------------------------------------------------------------------
# Opening
# --------------------------------------------------------------------------------------------


def _attributes(meta_file: Path) -> dict | None:
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError):
        return None
    return (meta.get("attributes") or {}) if isinstance(meta, dict) else None


def is_store(path: Path) -> bool:
    """Whether ``path`` is a store this module made, even a damaged one: its root metadata, or
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
                                     "version": __version__, "commit": _commit(),
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
