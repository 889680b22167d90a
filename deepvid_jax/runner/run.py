"""Explain a whole dataset into a Zarr store, resumably (`explain_dataset`, `deepvid run`).

The store's layout and what it records are `store`'s; checking it is `integrity`'s. Work is
cut into chunks of ``chunk_size`` images, each a Zarr chunk of every array. A chunk of a stage
(inputs, or an explainer) counts as done only once all its arrays are written: then its row of
``done/<stage>`` (a Zarr chunk of its own: the checksum and file size of each of the stage's
arrays) is set. One background thread writes finished stages while later ones compute
(`_Writer`: the stages of up to a quarter second together, their arrays, then their markers).
Zarr writes every chunk file to a temporary name and renames it into place, so a kill never
leaves half a marker. Re-running the same command continues where it stopped: chunks without a
marker are computed again from scratch and overwrite whatever a killed writer left, so a run
killed at any moment resumes to the same arrays as an uninterrupted one (bit for bit on CPU: the
same compiled program sees the same inputs; instance ``i`` always gets ``fold_in(key, i)``).
The store itself is created in a temporary folder and renamed into place, so it exists complete
or not at all.

A resumed store is first checked: the same data, models, explainers and configs (`identity`),
the same teacher as a function (its logits on the first images of the dataset, `probe`: a black
box is called too), and every chunk marked done read back against its checksums; a damaged
chunk is an error naming it, or with ``repair=True`` is computed again (exactly those chunks).
One run writes a store at a time (a lock file beside it): a second fails at once.

With several processes (`jax.distributed`), process ``p`` of ``P`` explains chunks ``j`` with
``j % P == p`` on its own devices and writes only those; process 0 creates the store, reports
progress and the summary.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from deepvid_jax import files, validate
from deepvid_jax.data.sources import Source
from deepvid_jax.explainers import registry as explainers
from deepvid_jax.runner import integrity
from deepvid_jax.runner import store as store_lib
from deepvid_jax.runner.integrity import INPUTS, RunError

CLASS_CHOICES = ("predicted", "label")


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

    A stage's marker is given as ``(name, chunk, None)``: its row [1, 2 A] is made here, after
    the stage's arrays are written, by ``row(arrays, writes, chunk)`` (default `_marker_row`:
    each array's checksum, then the size of its chunk file), so hashing costs the explainer's
    thread nothing.
    """

    def __init__(self, root, path: Path, max_bytes: int = 64 << 20, linger: float = 0.25,
                 row: Callable[[dict, list, int], np.ndarray] | None = None):
        self._root, self._path, self._max_bytes, self._linger = root, path, max_bytes, linger
        self._row = row or functools.partial(_marker_row, path=path)
        self._arrays: dict[str, Any] = {}  # opened once: opening reads the array's metadata
        self._cond = threading.Condition()
        self._queue: list[tuple[int, list[tuple[str, int, np.ndarray]]]] = []  # (bytes, stage)
        self._bytes = 0  # of the stages queued or being written
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="deepvid-store-writer",
                                        daemon=True)
        self._thread.start()

    def submit(self, writes: list[tuple[str, int, np.ndarray | None]]) -> None:
        """Queues one stage: ``(array name, first row, values)``, its marker ``(done/<stage>,
        chunk, None)`` last."""
        size = sum(np.asarray(v).nbytes for _, _, v in writes if v is not None)
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

    def _array(self, name: str):
        if name not in self._arrays:
            self._arrays[name] = self._root[name]
        return self._arrays[name]

    def _write(self, stages: list[list[tuple[str, int, np.ndarray | None]]]) -> None:
        """Every array of ``stages`` (consecutive rows merged), then every marker."""
        pieces: dict[str, list[tuple[int, np.ndarray]]] = {}
        for writes in stages:
            for name, start, values in writes[:-1]:
                pieces.setdefault(name, []).append((start, np.asarray(values)))
        for name, runs in pieces.items():
            for start, values in _runs(runs):
                _write(self._array(name), self._path, name, start, values)
        markers: dict[str, list[tuple[int, np.ndarray]]] = {}
        for writes in stages:
            name, chunk, _ = writes[-1]
            arrays = {n: self._array(n) for n, _, _ in writes[:-1]}
            markers.setdefault(name, []).append((chunk, self._row(arrays, writes[:-1], chunk)))
        for name, runs in markers.items():
            for start, values in _runs(runs):
                _write(self._array(name), self._path, name, start, values)


def _marker_row(arrays: dict, writes: list[tuple[str, int, np.ndarray]], chunk: int, *,
                path: Path) -> np.ndarray:
    """A done marker [1, 2 A]: the checksum of each array's rows, then its chunk file's size
    (0: no file; Zarr writes no chunk that is all zeros)."""
    sums = [integrity.checksum(v) for _, _, v in writes]
    sizes = []
    for name, _, _ in writes:
        try:
            sizes.append(integrity.chunk_file(arrays[name], path, name, chunk).stat().st_size)
        except FileNotFoundError:
            sizes.append(0)
    return np.array([sums + sizes], np.uint64)


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


def _layout(source: Source, models: explainers.Models, config: Any,
           configs: dict[str, Any]) -> tuple[dict[str, tuple[tuple[int, ...], str]],
                                             dict[str, list[str]]]:
    """Every data array of the store, path -> (shape, dtype), from one traced chunk per method;
    and each stage's arrays in the order of its checksums."""
    n, shape = len(source), tuple(source.info.image_shape)
    k = models.num_classes
    arrays = {"indices": ((n,), "int64"), "labels": ((n,), "int32"),
              "classes": ((n,), "int32"), "teacher_probs": ((n, k), "float32")}
    stages = {INPUTS: list(integrity.INPUT_ARRAYS)}
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
    repair: bool = False,
    progress: bool = True,
) -> dict:
    """Explains every image of ``source`` with each of ``config.explainers`` into the Zarr
    store ``out`` (`store`), continuing a store of the same run where it stopped.

    Args:
      source: the split (`data.open_source`).
      models: `explainers.Models` (what the explainers need).
      out: the store's folder (created).
      config: `RunConfig`.
      configs: method name -> its config (default: the registered one).
      overwrite: replace a store of another run (only a deepvid_jax store is ever removed).
      repair: compute again exactly the chunks `integrity.verify` finds damaged (without it,
        a damaged chunk is an error naming it).
      progress: a progress bar (process 0) with images/s and the time left.

    Returns:
      summary dict: images, explainers, chunks computed now (of them repaired) and found
      done, seconds, images/s, the store path.

    Raises:
      RunError (a ValueError): an unwritable output, a damaged or foreign store, one of
        another configuration, dataset or teacher (without ``overwrite``), damaged chunks
        (without ``repair``), or another run writing the store; the message names the path.
      ValueError: unknown explainers, models that lack what one needs, a wrong class index.
    """
    validate.config(config, RunConfig, "config")
    validate.config(models, explainers.Models, "models")
    if not isinstance(source, Source):
        raise ValueError(f"source must be a data.Source (data.open_source), got "
                         f"{type(source).__name__}.")
    validate.boolean(overwrite, "overwrite")
    validate.boolean(repair, "repair")
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

    proc = jax.process_index()
    ident = store_lib.identity(source, models, config, configs)
    probed = store_lib.probe(source, models)
    arrays, stages = _layout(source, models, config, configs)
    if path.exists() and not path.is_dir():
        raise RunError(f"output {path} exists and is not a folder.")
    files.check_writable_dir(path.parent, "folder of the output store")
    with store_lib.writer_lock(path, proc):
        root = store_lib.prepare(path, ident, probed, arrays, stages, config.chunk_size,
                                 overwrite, primary=proc == 0)
        return _run(source, models, config, configs, root, path, arrays, stages, repair,
                    progress)


def _run(source, models, config: RunConfig, configs: dict, root, path: Path, arrays: dict,
         stages: dict, repair: bool, progress: bool) -> dict:
    """The chunks of this process that are not done, into the prepared store."""
    n, chunk = len(source), config.chunk_size
    proc, procs = jax.process_index(), jax.process_count()
    mine = [j for j in range(-(-n // chunk)) if j % procs == proc]
    names = (INPUTS, *config.explainers)
    marks, damage = integrity.check(root, path, list(names), chunk, n, mine)
    if damage and not repair:
        raise RunError(f"{path} has {len(damage)} damaged chunk(s) (their stored values are "
                       "not those written):\n" + integrity.summary(damage) + "\npass repair="
                       "True (deepvid run --repair) to compute exactly these again.")
    repaired = sorted({(d.stage, d.chunk) for d in damage})
    todo = [j for j in mine if not all(marks[s_][j] for s_ in names)]
    size = {j: min(chunk, n - j * chunk) for j in mine}
    bar = tqdm(total=sum(size.values()), initial=sum(size.values()) - sum(size[j] for j in todo),
               desc=f"explain {source.info.name}", unit="img", disable=not progress or proc > 0,
               smoothing=0.1)
    stages_run = _Stages(models, config, configs)
    start_time = time.perf_counter()
    writer = _Writer(root, path)

    def rows(name: str, lo: int, values) -> tuple[str, int, np.ndarray]:
        return name, lo, np.asarray(values, dtype=arrays[name][1])

    try:
        for j in todo:
            lo, hi = j * chunk, j * chunk + size[j]
            x, labels = source.read(lo, hi)
            if not marks[INPUTS][j]:
                classes, probs = stages_run.inputs(x, labels)
                writer.submit([rows("indices", lo, np.arange(lo, hi)),
                               rows("labels", lo, labels), rows("classes", lo, classes),
                               rows("teacher_probs", lo, probs), (f"done/{INPUTS}", j, None)])
            else:  # a resumed chunk: the classes its inputs stage chose (verified)
                classes = np.asarray(root["classes"][lo:hi])
            for name in config.explainers:
                if marks[name][j]:
                    continue
                a = stages_run.explain(name, x, classes, lo)
                bad = validate.nonfinite_rows(a.attributions, start=lo)
                if bad:
                    raise RunError(f"{name} attributions of images {bad[:10]} are not finite "
                                   "(the teacher gave NaN or inf on some input); nothing of "
                                   f"this chunk was recorded as done in {path}.")
                extras = {f"{name}/{k}": v for k, v in a.extras.items()}
                writer.submit([rows(f"{name}/attributions", lo, a.attributions),
                               *(rows(k, lo, extras[k]) for k in stages[name][1:]),
                               (f"done/{name}", j, None)])
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
               "chunks_repaired": len({j for _, j in repaired}),
               "chunks_found_done": len(mine) - len(todo), "seconds": seconds,
               "images_per_second": computed / seconds if computed and seconds else None,
               "process": proc, "processes": procs}
    if proc == 0:
        if procs > 1:
            _wait_for_all(root, path, names)
        summary["complete"] = all(_done(root[f"done/{s_}"]).all() for s_ in names)
        root.attrs.update({"summary": files.jsonable(summary)})  # atomic, like every write
    return summary


def _done(marker) -> np.ndarray:
    """Which chunks a ``done/<stage>`` array marks done: [chunks] bool."""
    rows = np.asarray(marker[:])
    return rows[:, : rows.shape[1] // 2].all(1)


def _wait_for_all(root, path: Path, names, stall: float = 600) -> None:
    """Process 0 waits until every process's chunks are marked done; a RunError when none
    is marked for ``stall`` seconds (another process died: re-running finishes its chunks)."""
    count, last = -1, time.monotonic()
    while True:
        marks = sum(int(_done(root[f"done/{s}"]).sum()) for s in names)
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
