"""Explain a whole dataset into a Zarr store, resumably (`explain_dataset`, `deepvid run`).

The store (Zarr format 3, a folder; ``zarr.open(path)`` gives numpy arrays)::

    indices [N] int64        the dataset indices explained (rows of the split)
    labels [N] int32         their labels
    classes [N] int32        the class explained per image (the teacher's unless told)
    teacher_probs [N, K]     the teacher's probabilities
    <explainer>/attributions [N, H, W, C] float32
    <explainer>/<extra> [N, ...]   the method's extras (DeepVID's fidelity, ...; its weights
                             for every class only with ``save_weights``: K times larger)

and in the root's attributes the run's full configuration, the library version, the commit,
the device and a fingerprint of the input data and of the models.

    done/<stage> [chunks] uint8  1 where a chunk of a stage (inputs, or an explainer) is done

Work is cut into chunks of ``chunk_size`` images, each a Zarr chunk of every array. A chunk of a
stage counts as done only once all its arrays are written: then its element of
``done/<stage>`` (a Zarr chunk of its own) is set. One background thread writes finished stages
while later ones compute (`_Writer`: the stages of up to a quarter second together, their arrays,
then their markers). Zarr writes every chunk file to a temporary name and renames it into place,
so a kill never leaves half a marker. Re-running the same command continues where it stopped:
chunks without a marker are computed again from scratch and overwrite whatever a killed writer
left, so a run killed at any moment resumes to the same arrays as an uninterrupted one (bit for
bit on CPU: the same compiled program sees the same inputs; instance ``i`` always gets
``fold_in(key, i)``). The store itself is created in a temporary folder and renamed into place,
so it exists complete or not at all.

With several processes (`jax.distributed`), process ``p`` of ``P`` explains chunks ``j`` with
``j % P == p`` on its own devices and writes only those; process 0 creates the store, reports
progress and the summary.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from deepvid_jax import __version__, files, validate
from deepvid_jax.data import sources as data
from deepvid_jax.data.sources import Source
from deepvid_jax.explainers import registry as explainers

INPUTS = "inputs"  # the stage that writes indices, labels, classes, teacher_probs
CLASS_CHOICES = ("predicted", "label")


class RunError(ValueError):
    """A store that cannot be used for this run: named path, what is wrong, what to do."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What `explain_dataset` does.

    Attributes:
      explainers: registered method names (`explainers.METHODS`).
      chunk_size: images per chunk (a Zarr chunk, a compiled call, the unit of resumption).
      seed: PRNG seed; image ``i`` of the split gets ``fold_in(PRNGKey(seed), i)``.
      classes: "predicted" (the teacher's class), "label" (the true one) or a class index
        for every image.
      save_weights: also store DeepVID's (and the other students') weight images for every
        class, [N, H, W, C, K].
    """

    explainers: tuple[str, ...] = ("deepvid",)
    chunk_size: int = 64
    seed: int = 0
    classes: str | int = "predicted"
    save_weights: bool = False

    def __post_init__(self):
        if not self.explainers or not isinstance(self.explainers, tuple):
            raise ValueError("RunConfig.explainers must be a non-empty tuple of method names.")
        for name in self.explainers:
            explainers.get(name)
        if len(set(self.explainers)) != len(self.explainers):
            raise ValueError(f"RunConfig.explainers names one twice: {self.explainers}.")
        validate.integer(self.chunk_size, "RunConfig.chunk_size", minimum=1)
        validate.integer(self.seed, "RunConfig.seed", minimum=0)
        if isinstance(self.classes, str):
            validate.choice(self.classes, CLASS_CHOICES, "RunConfig.classes")
        else:
            validate.integer(self.classes, "RunConfig.classes", minimum=0)
        validate.fields(self, boolean=("save_weights",))


# --------------------------------------------------------------------------------------------
# What a store records
# --------------------------------------------------------------------------------------------


def _tree_digest(tree) -> str | None:
    """sha256 (hex, 16 chars) of a pytree's arrays, or None for an empty one."""
    leaves = jax.tree.leaves(tree)
    return data.array_digest(leaves)[:16] if leaves else None


def _config_dict(config: Any) -> Any:
    return None if config is None else files.jsonable(dataclasses.asdict(config))


def identity(source: Source, models: explainers.Models, config: RunConfig,
             configs: dict[str, Any]) -> dict:
    """What makes two runs the same (compared when a store is resumed): the data, the models,
    the explainers with their configs, and the chunking and seed."""
    info = source.info
    return files.jsonable({
        "dataset": {"name": info.name, "split": info.split, "count": len(source),
                    "image_shape": list(info.image_shape), "fingerprint": source.fingerprint(),
                    **({"options": source.options} if source.options else {})},
        "models": {"num_classes": models.num_classes,
                   "teacher": _tree_digest(models.teacher_params),
                   "teacher_config": _config_dict(models.teacher_config),
                   "vae": _tree_digest(models.vae_params),
                   "surrogate": _tree_digest(models.surrogate_params),
                   "explainer": _tree_digest(models.explainer_params),
                   # a user's teacher (--teacher): which one (absent for ours: stores made
                   # before it existed still resume)
                   **({"teacher_name": models.teacher_name} if models.teacher_name else {})},
        "run": dataclasses.asdict(config),
        "configs": {name: _config_dict(configs[name]) for name in config.explainers},
    })


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
# The store
# --------------------------------------------------------------------------------------------


def _zarr():
    try:
        import zarr
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise RunError("the dataset runner needs zarr>=3 (pip install 'zarr>=3').") from e
    return zarr


def _layout(source: Source, models: explainers.Models, config: RunConfig,
            configs: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every array of the store: path -> (shape, dtype), from one traced chunk per method."""
    n, shape = len(source), tuple(source.info.image_shape)
    k = models.num_classes
    arrays = {"indices": ((n,), "int64"), "labels": ((n,), "int32"),
              "classes": ((n,), "int32"), "teacher_probs": ((n, k), "float32")}
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
    for stage in (INPUTS, *config.explainers):
        arrays[f"done/{stage}"] = ((-(-n // config.chunk_size),), "uint8")
    return arrays


# Chunk files under this size are stored uncompressed: compressing a few hundred bytes saves
# nothing and costs Zarr a thread hop per file (markers, classes, labels, probabilities).
SMALL_CHUNK_BYTES = 16 << 10


def _create(path: Path, arrays: dict, attrs: dict, chunk: int) -> None:
    """Creates the store in a temporary sibling and renames it into place."""
    zarr = _zarr()
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        for name, (shape, dtype) in arrays.items():
            rows = 1 if name.startswith("done/") else min(chunk, shape[0])  # a file per marker
            small = rows * math.prod(shape[1:]) * np.dtype(dtype).itemsize < SMALL_CHUNK_BYTES
            root.create_array(name, shape=shape, dtype=dtype, chunks=(rows, *shape[1:]),
                              fill_value=0, **({"compressors": None} if small else {}))
        root.attrs.update(attrs)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files.fsync_dir(path.parent)


def _open(path: Path, mode: str = "r+"):
    """The store's root group and its deepvid_jax attributes; RunError when it is not a
    readable store of ours."""
    zarr = _zarr()
    try:
        root = zarr.open_group(str(path), mode=mode, zarr_format=3)
        attrs = dict(root.attrs)
    except Exception as e:  # zarr raises many kinds for a damaged store
        raise RunError(f"{path} is not a readable Zarr store ({type(e).__name__}: {e}); it "
                       "may be damaged: move it away, or pass overwrite=True (--overwrite) to "
                       "replace it.") from e
    if "deepvid_jax" not in attrs or "identity" not in attrs.get("deepvid_jax", {}):
        raise RunError(f"{path} is a Zarr store but not one of deepvid_jax explanations (no "
                       "'deepvid_jax' attributes); choose another output path.")
    return root, attrs["deepvid_jax"]


def _differences(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _differences(a.get(k), b.get(k), f"{where}.{k}" if where else k)
        return out
    return [] if a == b else [f"{where}: store has {json.dumps(a)[:80]}, this run "
                              f"{json.dumps(b)[:80]}"]


def _is_store(path: Path) -> bool:
    """Whether ``path`` is a store this module made (its root metadata names us)."""
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "deepvid_jax" in (meta.get("attributes") or {})


def _prepare(path: Path, ident: dict, arrays: dict, chunk: int, overwrite: bool,
             primary: bool):
    """Opens the store at ``path`` for this run, creating it (process 0) when absent."""
    if path.exists() and not path.is_dir():
        raise RunError(f"output {path} exists and is not a folder.")
    if primary:
        files.check_writable_dir(path.parent, "folder of the output store")
        if path.exists() and overwrite:
            if not _is_store(path):
                raise RunError(f"{path} exists and is not a deepvid_jax store: overwrite "
                               "replaces only stores of ours; choose another path.")
            shutil.rmtree(path)
        if path.exists() and any(path.iterdir()):
            _open(path)  # a clear error for a damaged or foreign store
        elif path.exists():
            path.rmdir()  # an empty folder: take its place
        if not path.exists():
            attrs = {"deepvid_jax": {"identity": ident, "version": __version__,
                                     "commit": _commit(), "device": _device(),
                                     "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}}
            _create(path, arrays, attrs, chunk)
    else:
        deadline = time.monotonic() + 600
        while not _is_store(path):  # process 0 creates it
            if time.monotonic() > deadline:
                raise RunError(f"{path}: process 0 did not create the store in 10 minutes.")
            time.sleep(0.2)
    root, meta = _open(path)
    diff = _differences(meta["identity"], ident)
    if diff:
        raise RunError(f"{path} holds a run with another configuration ("
                       + "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4
                                                else "")
                       + "): pass overwrite=True (--overwrite) to replace it, or choose "
                       "another output path.")
    return root


def _write(array, path: Path, name: str, start: int, values: np.ndarray) -> None:
    try:
        array[start : start + len(values)] = values
    except OSError as e:
        raise RunError(f"cannot write {name} to {path}: {e.strerror or e} (disk full or "
                       "read-only?); the chunks written so far are kept: re-run to "
                       "continue.") from e


class _Writer:
    """Writes finished chunk stages on one background thread while later chunks compute.

    The thread takes every stage queued within ``linger`` seconds of the first and writes them
    together: an array's rows from consecutive chunks in one Zarr call, then the stages' done
    markers, so a marker never precedes its stage's arrays. A Zarr call costs about a
    millisecond of CPU besides its chunk files, and that CPU is taken from the explainer: for the
    gradient on MNIST (50 ms a chunk), a call per array per chunk slowed the run by 10-30 %.
    Slow stages (DeepVID, seconds a chunk) are still written within ``linger`` of finishing, so
    a kill loses at most that much finished work. After the first failed write nothing more is
    written (arrays of later stages may be, never their markers) and the error, a RunError
    naming the path, is raised by the next `submit` or by `close`. Queued stages hold at most
    ``max_bytes`` (beyond that `submit` waits; reaching it also starts a write at once), which
    bounds their memory.
    """

    def __init__(self, root, path: Path, max_bytes: int = 64 << 20, linger: float = 0.25):
        self._root, self._path, self._max_bytes, self._linger = root, path, max_bytes, linger
        self._arrays: dict[str, Any] = {}  # opened once: opening reads the array's metadata
        self._cond = threading.Condition()
        self._queue: list[tuple[int, list[tuple[str, int, np.ndarray]]]] = []  # (bytes, stage)
        self._bytes = 0  # of the stages queued or being written
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="deepvid-store-writer",
                                        daemon=True)
        self._thread.start()

    def submit(self, writes: list[tuple[str, int, np.ndarray]]) -> None:
        """Queues one stage: ``(array name, first row, values)``, its marker last."""
        size = sum(np.asarray(v).nbytes for _, _, v in writes)
        with self._cond:
            while (self._error is None and self._bytes
                   and self._bytes + size > self._max_bytes):
                self._cond.wait()
            if self._error is not None:
                raise self._error
            self._queue.append((size, writes))
            self._bytes += size
            self._cond.notify_all()

    def close(self) -> None:
        """Waits for every queued write; raises the first write error."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        if self._error is not None:
            raise self._error

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                until = time.monotonic() + self._linger
                while (not self._closed and self._bytes < self._max_bytes
                       and time.monotonic() < until):
                    self._cond.wait(until - time.monotonic())
                queued, self._queue = self._queue, []
            try:
                self._write([writes for _, writes in queued])
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                with self._cond:
                    self._error, self._queue = e, []
                    self._cond.notify_all()
                return
            with self._cond:
                self._bytes -= sum(size for size, _ in queued)
                self._cond.notify_all()

    def _write(self, stages: list[list[tuple[str, int, np.ndarray]]]) -> None:
        """Every array of ``stages`` (consecutive rows merged), then every marker."""
        pieces: dict[str, list[tuple[int, np.ndarray]]] = {}
        for writes in stages:
            for name, start, values in writes:
                pieces.setdefault(name, []).append((start, np.asarray(values)))
        markers = [n for n in pieces if n.startswith("done/")]
        for name in [n for n in pieces if n not in markers] + markers:
            for start, values in _runs(pieces[name]):
                if name not in self._arrays:
                    self._arrays[name] = self._root[name]
                _write(self._arrays[name], self._path, name, start, values)


def _runs(pieces: list[tuple[int, np.ndarray]]) -> list[tuple[int, np.ndarray]]:
    """``(first row, rows)`` pieces of one array -> the fewest contiguous ones, in row order."""
    out: list[tuple[int, list[np.ndarray]]] = []
    end = None  # the row after the last run
    for start, values in sorted(pieces, key=lambda p: p[0]):
        if start == end:
            out[-1][1].append(values)
        else:
            out.append((start, [values]))
        end = start + len(values)
    return [(s, v[0] if len(v) == 1 else np.concatenate(v)) for s, v in out]


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


class _Stages:
    """The jitted work of one run: the inputs stage and one program per explainer, every
    chunk padded to ``chunk_size`` (one compiled program each, results as `dv.explain`'s)."""

    def __init__(self, models: explainers.Models, config: RunConfig, configs: dict):
        self.models, self.config, self.configs = models, config, configs
        self.key = jax.random.PRNGKey(config.seed)

    def inputs(self, x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """classes [n] and teacher_probs [n, K] of a chunk."""
        probs = explainers.teacher_probabilities(x, self.models,
                                                 chunk_size=self.config.chunk_size,
                                                 full_chunks=True)
        if self.config.classes == "predicted":
            classes = probs.argmax(-1)
        elif self.config.classes == "label":
            classes = labels
        else:
            classes = np.full(len(x), self.config.classes)
        return classes.astype(np.int32), probs.astype(np.float32)

    def explain(self, name: str, x, classes, offset: int) -> explainers.Attribution:
        return explainers.run_method(explainers.get(name), self.models, self.configs[name], x,
                                     classes, self.key, chunk_size=self.config.chunk_size,
                                     offset=offset, full_chunks=True)


def explain_dataset(
    source: Source,
    models: explainers.Models,
    out: str | os.PathLike,
    config: RunConfig = RunConfig(),
    *,
    configs: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Explains every image of ``source`` with each of ``config.explainers`` into the Zarr
    store ``out`` (module docstring), continuing a store of the same run where it stopped.

    Args:
      source: the split (`data.open_source`).
      models: `explainers.Models` (what the explainers need).
      out: the store's folder (created).
      config: `RunConfig`.
      configs: method name -> its config (default: the registered one).
      overwrite: replace a store of another run (only a deepvid_jax store is ever removed).
      progress: a progress bar (process 0) with images/s and the time left.

    Returns:
      summary dict: images, explainers, chunks computed now and found done, seconds, images/s,
      the store path.

    Raises:
      RunError (a ValueError): an unwritable output, a damaged or foreign store, or one of
        another configuration or dataset (without ``overwrite``); the message names the path.
      ValueError: unknown explainers, models that lack what one needs, a wrong class index.
    """
    validate.config(config, RunConfig, "config")
    validate.config(models, explainers.Models, "models")
    if not isinstance(source, Source):
        raise ValueError(f"source must be a data.Source (data.open_source), got "
                         f"{type(source).__name__}.")
    configs = {name: (configs or {}).get(name, explainers.get(name).config)
               for name in config.explainers}
    for name in config.explainers:
        explainers.get(name).check(models, configs[name])
    if not isinstance(config.classes, str) and config.classes >= models.num_classes:
        raise ValueError(f"RunConfig.classes = {config.classes} is not a class of a "
                         f"{models.num_classes}-class teacher.")
    needs_vae = any("vae" in explainers.get(n).needs for n in config.explainers)
    if needs_vae and tuple(models.vae_config.image_shape) != tuple(source.info.image_shape):
        raise ValueError(f"the VAE expects images {tuple(models.vae_config.image_shape)}, the "
                         f"dataset has {tuple(source.info.image_shape)}.")
    path = Path(out).expanduser()
    x0, _ = source.read(0, min(len(source), 4))
    validate.teacher(models.teacher_apply, models.teacher_params, x0,
                     num_classes=models.num_classes)

    n, chunk = len(source), config.chunk_size
    proc, procs = jax.process_index(), jax.process_count()
    ident = identity(source, models, config, configs)
    root = _prepare(path, ident, _layout(source, models, config, configs), chunk, overwrite,
                    primary=proc == 0)
    stages = _Stages(models, config, configs)
    mine = [j for j in range(-(-n // chunk)) if j % procs == proc]
    names = (INPUTS, *config.explainers)
    marks = {s_: np.asarray(root[f"done/{s_}"][:]).astype(bool) for s_ in names}
    todo = [j for j in mine if not all(marks[s_][j] for s_ in names)]
    kept = {name: set(root[name].array_keys()) for name in config.explainers}  # extras stored
    size = {j: min(chunk, n - j * chunk) for j in mine}
    bar = tqdm(total=sum(size.values()), initial=sum(size.values()) - sum(size[j] for j in todo),
               desc=f"explain {source.info.name}", unit="img", disable=not progress or proc > 0,
               smoothing=0.1)
    start_time = time.perf_counter()
    writer = _Writer(root, path)
    try:
        for j in todo:
            lo, hi = j * chunk, j * chunk + size[j]
            x, labels = source.read(lo, hi)
            if not marks[INPUTS][j]:
                classes, probs = stages.inputs(x, labels)
                writer.submit([("indices", lo, np.arange(lo, hi)), ("labels", lo, labels),
                               ("classes", lo, classes), ("teacher_probs", lo, probs),
                               (f"done/{INPUTS}", j, np.ones(1, np.uint8))])
            else:  # a resumed chunk: the classes its inputs stage chose
                classes = np.asarray(root["classes"][lo:hi])
            for name in config.explainers:
                if marks[name][j]:
                    continue
                a = stages.explain(name, x, classes, lo)
                rows = validate.nonfinite_rows(a.attributions, start=lo)
                if rows:
                    raise RunError(f"{name} attributions of images {rows[:10]} are not finite "
                                   "(the teacher gave NaN or inf on some input); nothing of "
                                   f"this chunk was recorded as done in {path}.")
                writer.submit([(f"{name}/attributions", lo, a.attributions),
                               *((f"{name}/{extra}", lo, v) for extra, v in a.extras.items()
                                 if extra in kept[name]),
                               (f"done/{name}", j, np.ones(1, np.uint8))])
            bar.update(size[j])
    except BaseException:
        try:  # keep what finished before the error; the error raised is the first one
            writer.close()
        except Exception:
            pass
        raise
    writer.close()
    bar.close()
    seconds = time.perf_counter() - start_time
    computed = sum(size[j] for j in todo)
    summary = {"store": str(path), "images": n, "explainers": list(config.explainers),
               "chunks": len(mine), "chunks_computed": len(todo),
               "chunks_found_done": len(mine) - len(todo), "seconds": seconds,
               "images_per_second": computed / seconds if computed and seconds else None,
               "process": proc, "processes": procs}
    if proc == 0:
        if procs > 1:
            _wait_for_all(root, path, names)
        summary["complete"] = all(np.asarray(root[f"done/{s_}"][:]).all() for s_ in names)
        root.attrs.update({"summary": files.jsonable(summary)})  # atomic, like every write
    return summary


def _wait_for_all(root, path: Path, names, stall: float = 600) -> None:
    """Process 0 waits until every process's chunks are marked done; a RunError when none
    is marked for ``stall`` seconds (another process died: re-running finishes its chunks)."""
    count, last = -1, time.monotonic()
    while True:
        marks = sum(int(np.asarray(root[f"done/{s}"][:]).sum()) for s in names)
        total = sum(root[f"done/{s}"].shape[0] for s in names)
        if marks == total:
            return
        if marks != count:
            count, last = marks, time.monotonic()
        elif time.monotonic() - last > stall:
            raise RunError(f"{path}: {total - marks} chunk stages of other processes are not "
                           f"done and none finished in {stall:.0f} s; re-run the command to "
                           "complete them.")
        time.sleep(0.5)
