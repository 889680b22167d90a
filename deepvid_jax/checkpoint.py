"""Checkpoints of trained models: orbax for the parameters, JSON for what they are.

A checkpoint is a folder::

    <path>/meta.json   {"format", "kind", "config", "metrics", "dataset"}
    <path>/params/     orbax StandardCheckpointer tree

Restoring checks the kind and the architecture config before reading any array, then checks
every array's shape and dtype, so a mismatch or a corrupt folder is a `CheckpointError` naming
the problem, never a half-loaded model.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from deepvid_jax.models import (
    ExplainerConfig,
    SurrogateConfig,
    TeacherConfig,
    VAEConfig,
    init_explainer,
    init_surrogate,
    init_teacher,
)
from deepvid_jax.vae import init_vae

FORMAT = "deepvid_jax/1"
KINDS = {
    "teacher": (TeacherConfig, init_teacher),
    "vae": (VAEConfig, init_vae),
    "surrogate": (SurrogateConfig, init_surrogate),
    "explainer": (ExplainerConfig, init_explainer),
}


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or was made for another model or config."""


def _tuplify(value):
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuplify(v) for k, v in value.items()}
    return value


def _config_from_dict(kind: str, d: dict) -> Any:
    cls = KINDS[kind][0]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise CheckpointError(f"{kind} config has unknown fields {sorted(unknown)}.")
    return cls(**_tuplify(d))


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

    Args:
      kind: "teacher" or "vae".
      config: the model's config dataclass.
      metrics: evaluation numbers to keep beside the weights (JSON-serialisable).
      dataset: what the model was trained on (name, splits, source).
      overwrite: replace an existing checkpoint at ``path``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}.")
    if not isinstance(config, KINDS[kind][0]):
        raise TypeError(f"A {kind} checkpoint needs a {KINDS[kind][0].__name__}, got {config!r}.")
    path = Path(path).expanduser().resolve()
    if path.exists():
        if not overwrite:
            raise CheckpointError(f"{path} exists and overwrite=False.")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path / "params", params)
    checkpointer.wait_until_finished()
    checkpointer.close()
    meta = {
        "format": FORMAT,
        "kind": kind,
        "config": dataclasses.asdict(config),
        "metrics": metrics or {},
        "dataset": dataset or {},
    }
    (path / "meta.json").write_text(json.dumps(meta, indent=2, default=float))
    return path


def read_meta(path: str | Path) -> dict:
    """The parsed meta.json of a checkpoint folder."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise CheckpointError(f"No checkpoint folder at {path}.")
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise CheckpointError(f"{path} is not a deepvid_jax checkpoint: meta.json is missing.")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{meta_file} is corrupt: {e}.") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_file}: unknown format (expected {FORMAT!r}).")
    return meta


def restore(path: str | Path, *, kind: str, config: Any | None = None) -> tuple[dict, Any, dict]:
    """Loads a checkpoint written by `save`.

    Args:
      path: the checkpoint folder.
      kind: "teacher" or "vae"; must match what was saved.
      config: if given, must equal the saved config (else `CheckpointError` listing the fields
        that differ); if None the saved config is used.

    Returns:
      (params pytree, config, meta dict).
    """
    path = Path(path).expanduser().resolve()
    meta = read_meta(path)
    if meta.get("kind") != kind:
        raise CheckpointError(f"{path} holds a {meta.get('kind')!r} checkpoint, not {kind!r}.")
    saved = _config_from_dict(kind, meta["config"])
    if config is not None and config != saved:
        diffs = [
            f"{f.name}: saved {getattr(saved, f.name)!r} vs requested {getattr(config, f.name)!r}"
            for f in dataclasses.fields(saved)
            if getattr(saved, f.name) != getattr(config, f.name)
        ]
        raise CheckpointError(
            f"{path} was trained with a different {kind} config: " + "; ".join(diffs)
        )
    init = KINDS[kind][1]
    target = jax.eval_shape(lambda: init(jax.random.PRNGKey(0), saved))
    params_dir = path / "params"
    if not params_dir.is_dir():
        raise CheckpointError(f"{path}: the params/ folder is missing.")
    try:
        checkpointer = ocp.StandardCheckpointer()
        params = checkpointer.restore(params_dir, target)
        checkpointer.close()
    except Exception as e:
        raise CheckpointError(
            f"{params_dir} is corrupt or incomplete ({type(e).__name__}: {str(e)[:300]})."
        ) from e
    _check_like(params, target, path)
    return params, saved, meta


def _check_like(params, target, path: Path) -> None:
    got = jax.tree_util.tree_structure(params)
    want = jax.tree_util.tree_structure(target)
    if got != want:
        raise CheckpointError(f"{path}: parameter tree does not match the config's model.")
    for (kp, a), b in zip(
        jax.tree_util.tree_leaves_with_path(params), jax.tree_util.tree_leaves(target), strict=True
    ):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise CheckpointError(
                f"{path}: {jax.tree_util.keystr(kp)} is {a.dtype}{list(a.shape)}, "
                f"expected {b.dtype}{list(b.shape)}."
            )
        if not np.all(np.isfinite(np.asarray(a))):
            raise CheckpointError(f"{path}: {jax.tree_util.keystr(kp)} holds NaN or inf.")
