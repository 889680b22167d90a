"""Checkpoints of trained models: orbax for the parameters, JSON for what they are.

A checkpoint is a folder::

    <path>/meta.json           {"format", "kind", "config", "metrics", "dataset",
                                "params": "params-<id>", "files": {name: sha256}, "meta_sha256"}
    <path>/params-<id>/        orbax StandardCheckpointer tree

Saving never loses the previous checkpoint: the new parameters go to a fresh ``params-<id>``
folder, their checksums are computed, and only then is ``meta.json`` replaced atomically, which
is the commit point; the old parameter folder is removed after it. A save killed at any moment
leaves the old checkpoint or the new one, each complete (leftovers of a killed save are removed
by the next save). `save` refuses a folder that holds anything other than a checkpoint of the
same kind, and deletes nothing but its own parameter folders.

Restoring checks the metadata (format, fields, its own checksum), the kind and the architecture
config, then the SHA-256 of every parameter file, before orbax reads any array, then every
array's shape, dtype and finiteness: a mismatch or a corrupt file is a `CheckpointError` naming
it, never a half-loaded or silently wrong model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from deepvid_jax import files, logs
from deepvid_jax.models.networks import (
    ExplainerConfig,
    SurrogateConfig,
    TeacherConfig,
    VAEConfig,
    init_explainer,
    init_surrogate,
    init_teacher,
    init_vae,
)

FORMAT = "deepvid_jax/2"
LEGACY_FORMATS = ("deepvid_jax/1",)  # no checksums; params in "params/"
META = "meta.json"
KINDS = {
    "teacher": (TeacherConfig, init_teacher),
    "vae": (VAEConfig, init_vae),
    "surrogate": (SurrogateConfig, init_surrogate),
    "explainer": (ExplainerConfig, init_explainer),
}
_PARAMS_RE = re.compile(r"^params(-[0-9a-f]{8,32})?$")
# Our own entries in a checkpoint folder: parameter folders (also of killed saves), temporary
# files of atomic writes, and the figures the command line puts beside a checkpoint.
_OWN_RE = re.compile(r"^(params(-[0-9a-f]{8,32})?(\.orbax-checkpoint-tmp.*)?|\..+\.tmp-.*|"
                     r"meta\.json|curves\.png|reconstructions\.png|saliency\.png)$")


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or was made for another model or config; or a folder
    cannot be saved into without destroying something that is not a checkpoint."""


def _tuplify(value):
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuplify(v) for k, v in value.items()}
    return value


def _config_from_dict(kind: str, d: Any, where: Path) -> Any:
    cls = KINDS[kind][0]
    if not isinstance(d, dict):
        raise CheckpointError(f"{where}: 'config' must be an object, got {type(d).__name__}.")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise CheckpointError(f"{where}: {kind} config has unknown fields {sorted(unknown)}.")
    try:
        return cls(**_tuplify(d))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: invalid {kind} config ({e}).") from e


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _tree_checksums(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): _sha256(p)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _meta_digest(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _check_params_like_config(params: Any, kind: str, config: Any, what: str) -> Any:
    target = jax.eval_shape(lambda: KINDS[kind][1](jax.random.PRNGKey(0), config))
    _check_like(params, target, what)
    return target


def _describe(entries: list[Path]) -> str:
    names = sorted(e.name + ("/" if e.is_dir() else "") for e in entries)
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def check_save_target(path: str | Path, kind: str, overwrite: bool = True) -> dict | None:
    """The meta of the checkpoint already at ``path`` (None if there is none), or a
    CheckpointError if saving a ``kind`` checkpoint there could destroy something that is not
    ours. `save` calls it; a command line calls it before training, so a bad ``--out`` fails
    before the work."""
    path = Path(path).expanduser().resolve()
    if not path.exists():
        return None
    if not path.is_dir():
        raise CheckpointError(f"Cannot save a checkpoint to {path}: it is a file.")
    entries = list(path.iterdir())
    foreign = [e for e in entries if not _OWN_RE.match(e.name)]
    if foreign:
        raise CheckpointError(
            f"Refusing to save a {kind} checkpoint into {path}: it holds {_describe(foreign)}, "
            "which are not part of a deepvid_jax checkpoint. Choose an empty or new folder.")
    if not (path / META).exists():
        return None  # empty, or leftovers of a save killed before its first commit
    try:
        meta = read_meta(path)
    except CheckpointError as e:
        raise CheckpointError(f"Refusing to overwrite {path}: its metadata is unreadable ({e}); "
                              "remove the folder yourself if it is not needed.") from e
    if meta["kind"] != kind:
        raise CheckpointError(f"Refusing to overwrite the {meta['kind']} checkpoint at {path} "
                              f"with a {kind} checkpoint; choose another folder.")
    if not overwrite:
        raise CheckpointError(f"{path} already holds a {kind} checkpoint and overwrite=False.")
    return meta


def save(
    path: str | Path,
    params: dict,
    *,
    kind: str,
    config: Any,
    metrics: dict | None = None,
    dataset: dict | None = None,
    overwrite: bool = True,
) -> Path:
    """Writes ``params`` and their description to ``path`` (a folder); returns its absolute path.

    Everything is checked before the disk is touched: the params must be the model of
    ``config`` (tree, shapes, dtypes, finite values) and metrics/dataset JSON-serialisable.

    Args:
      kind: "teacher", "vae", "surrogate" or "explainer".
      config: the model's config dataclass.
      metrics: evaluation numbers to keep beside the weights (JSON-serialisable; numpy values
        are converted, NaN becomes null).
      dataset: what the model was trained on (name, splits, source).
      overwrite: replace an existing checkpoint of the same kind at ``path``.

    Raises:
      CheckpointError: ``path`` holds something else than a checkpoint of this kind (a file,
        foreign files, another kind; nothing is changed), or the params do not fit the config.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}.")
    if not isinstance(config, KINDS[kind][0]):
        raise TypeError(f"A {kind} checkpoint needs a {KINDS[kind][0].__name__}, got {config!r}.")
    _check_params_like_config(params, kind, config, f"params to save as {kind}")
    meta = {
        "format": FORMAT,
        "kind": kind,
        "config": dataclasses.asdict(config),
        "metrics": metrics or {},
        "dataset": dataset or {},
    }
    try:
        files.dumps_json(meta)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"metrics/dataset of the {kind} checkpoint are not "
                              f"JSON-serialisable: {e}") from e
    path = Path(path).expanduser().resolve()
    check_save_target(path, kind, overwrite)  # refuses before anything is written
    path.mkdir(parents=True, exist_ok=True)

    name = f"params-{uuid.uuid4().hex[:16]}"
    checkpointer = ocp.StandardCheckpointer()
    try:
        checkpointer.save(path / name, params)
        checkpointer.wait_until_finished()
    finally:
        checkpointer.close()
    meta["params"] = name
    meta["files"] = _tree_checksums(path / name)
    meta["meta_sha256"] = _meta_digest(files.jsonable(meta))
    files.write_json(path / META, meta)  # the commit point
    # The old params, and leftovers of killed saves, are no longer referenced.
    keep = {name, META}
    for entry in path.iterdir():
        if entry.name in keep or not _OWN_RE.match(entry.name):
            continue
        if entry.is_dir() and entry.name.startswith("params"):
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.is_file() and (entry.name.startswith("params") or ".tmp-" in entry.name):
            entry.unlink(missing_ok=True)
    return path


def read_meta(path: str | Path) -> dict:
    """The parsed, checked meta.json of a checkpoint folder (CheckpointError if malformed)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise CheckpointError(f"No checkpoint folder at {path}.")
    meta_file = path / META
    if not meta_file.is_file():
        raise CheckpointError(f"{path} is not a deepvid_jax checkpoint: meta.json is missing.")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise CheckpointError(f"{meta_file} is corrupt: {e}.") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_file} is corrupt: not a JSON object.")
    fmt = meta.get("format")
    if fmt not in (FORMAT, *LEGACY_FORMATS):
        raise CheckpointError(f"{meta_file}: unknown format {fmt!r} (expected {FORMAT!r}).")
    expected = {"kind": str, "config": dict, "metrics": dict, "dataset": dict}
    if fmt == FORMAT:
        expected.update({"params": str, "files": dict, "meta_sha256": str})
    for key, typ in expected.items():
        if key not in meta:
            raise CheckpointError(f"{meta_file} is corrupt: the field {key!r} is missing.")
        if not isinstance(meta[key], typ):
            raise CheckpointError(f"{meta_file} is corrupt: {key!r} must be a "
                                  f"{typ.__name__}, got {type(meta[key]).__name__}.")
    if meta["kind"] not in KINDS:
        raise CheckpointError(f"{meta_file}: unknown kind {meta['kind']!r}.")
    if fmt == FORMAT:
        if meta["meta_sha256"] != _meta_digest(meta):
            raise CheckpointError(f"{meta_file} is corrupt or was edited: its checksum does not "
                                  "match its content.")
        if not _PARAMS_RE.match(meta["params"]):
            raise CheckpointError(f"{meta_file} is corrupt: bad params folder "
                                  f"{meta['params']!r}.")
        bad = [k for k, v in meta["files"].items()
               if not isinstance(v, str) or ".." in Path(k).parts or Path(k).is_absolute()]
        if bad or not meta["files"]:
            raise CheckpointError(f"{meta_file} is corrupt: bad file list.")
    else:
        meta = {**meta, "params": "params", "files": None}
    return meta


def read_config(path: str | Path, kind: str) -> tuple[Any, dict]:
    """The config and checked meta of the ``kind`` checkpoint at ``path``, without reading its
    parameters (cheap: for checks before long work)."""
    path = Path(path).expanduser().resolve()
    meta = read_meta(path)
    if meta["kind"] != kind:
        raise CheckpointError(f"{path} holds a {meta['kind']!r} checkpoint, not {kind!r}.")
    return _config_from_dict(kind, meta["config"], path / META), meta


def verify(path: str | Path) -> dict:
    """Checks a checkpoint's metadata and the SHA-256 of every parameter file without loading
    anything; returns the meta. CheckpointError names the first missing or corrupt file."""
    path = Path(path).expanduser().resolve()
    meta = read_meta(path)
    params_dir = path / meta["params"]
    if not params_dir.is_dir():
        raise CheckpointError(f"{path}: the parameter folder {meta['params']}/ is missing.")
    if meta["files"] is None:
        warnings.warn(f"{path} was written by an older deepvid_jax without checksums; its "
                      "files cannot be verified (save it again to add them).", stacklevel=2)
        return meta
    for name, digest in meta["files"].items():
        f = params_dir / name
        if not f.is_file():
            raise CheckpointError(f"{path}: parameter file {meta['params']}/{name} is missing.")
        if _sha256(f) != digest:
            raise CheckpointError(f"{path}: parameter file {meta['params']}/{name} is corrupt "
                                  "(its SHA-256 does not match the one recorded at save time).")
    return meta


def restore(path: str | Path, *, kind: str, config: Any | None = None) -> tuple[dict, Any, dict]:
    """Loads a checkpoint written by `save`.

    Args:
      path: the checkpoint folder.
      kind: "teacher", "vae", "surrogate" or "explainer"; must match what was saved.
      config: if given, must equal the saved config (else `CheckpointError` listing the fields
        that differ); if None the saved config is used.

    Returns:
      (params pytree, config, meta dict).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}.")
    path = Path(path).expanduser().resolve()
    saved, meta = read_config(path, kind)
    if config is not None and config != saved:
        diffs = [
            f"{f.name}: saved {getattr(saved, f.name)!r} vs requested {getattr(config, f.name)!r}"
            for f in dataclasses.fields(saved)
            if getattr(saved, f.name) != getattr(config, f.name)
        ]
        raise CheckpointError(
            f"{path} was trained with a different {kind} config: " + "; ".join(diffs)
        )
    meta = verify(path)
    # on this process's first device (under jax.distributed the saving topology may differ)
    here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=here),
        jax.eval_shape(lambda: KINDS[kind][1](jax.random.PRNGKey(0), saved)))
    params_dir = path / meta["params"]
    try:
        with logs.quiet():
            # Every process reads the whole checkpoint on its own (no barrier with the
            # others: under jax.distributed each process of a run restores its own models).
            local = ocp.options.MultiprocessingOptions(
                primary_host=None, active_processes={jax.process_index()})
            checkpointer = ocp.StandardCheckpointer(multiprocessing_options=local)
            try:
                # Compare the stored shapes first: orbax failing half-way through a read
                # leaves pending coroutines that print noise at exit.
                stored = checkpointer.metadata(params_dir).item_metadata.tree
                _check_like(stored, target, str(path), values=False)
                params = checkpointer.restore(params_dir, target)
            finally:
                checkpointer.close()
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(
            f"{params_dir} is corrupt or incomplete ({type(e).__name__}: {str(e)[:300]})."
        ) from e
    _check_like(params, target, str(path))
    return params, saved, meta


def _check_like(params, target, what: str, values: bool = True) -> None:
    """params must have target's tree, shapes and dtypes (and, with ``values``, be finite)."""
    params = jax.tree.map(lambda a: a, params, is_leaf=lambda x: hasattr(x, "shape"))
    got = jax.tree_util.tree_structure(params, is_leaf=lambda x: hasattr(x, "shape"))
    want = jax.tree_util.tree_structure(target)
    if got != want:
        def paths(tree):
            leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: hasattr(x,
                                                                                      "shape"))
            return {jax.tree_util.keystr(kp) for kp, _ in leaves}
        have, need = paths(params), paths(target)
        raise CheckpointError(
            f"{what}: parameter tree does not match the config's model (missing "
            f"{sorted(need - have)[:5]}, unexpected {sorted(have - need)[:5]}).")
    for (kp, a), b in zip(
        jax.tree_util.tree_leaves_with_path(params), jax.tree_util.tree_leaves(target), strict=True
    ):
        if getattr(a, "shape", None) != b.shape or getattr(a, "dtype", None) != b.dtype:
            raise CheckpointError(
                f"{what}: {jax.tree_util.keystr(kp)} is {getattr(a, 'dtype', type(a))}"
                f"{list(getattr(a, 'shape', ()))}, expected {b.dtype}{list(b.shape)}."
            )
        if values and not np.all(np.isfinite(np.asarray(a))):
            raise CheckpointError(f"{what}: {jax.tree_util.keystr(kp)} holds NaN or inf.")
