import dataclasses

import jax
import numpy as np
import pytest

from deepvid_jax import checkpoint, vae
from deepvid_jax.models import TeacherConfig, VAEConfig, init_teacher

TEACHER = TeacherConfig(features=(8, 16), hidden=32, image_shape=(8, 8, 1))


@pytest.fixture()
def saved(tmp_path):
    params = init_teacher(jax.random.PRNGKey(7), TEACHER)
    path = checkpoint.save(tmp_path / "t", params, kind="teacher", config=TEACHER,
                           metrics={"eval_accuracy": 0.5})
    return path, params


def test_round_trip_is_bit_exact(saved):
    path, params = saved
    restored, config, meta = checkpoint.restore(path, kind="teacher")
    assert config == TEACHER and meta["metrics"]["eval_accuracy"] == 0.5
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(restored),
                    strict=True):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))


def test_vae_round_trip(tmp_path):
    cfg = VAEConfig(latent_dim=3, features=(4, 8), hidden=16, image_shape=(8, 8, 1))
    params = vae.init_vae(jax.random.PRNGKey(1), cfg)
    checkpoint.save(tmp_path / "v", params, kind="vae", config=cfg)
    restored, cfg2, _ = checkpoint.restore(tmp_path / "v", kind="vae", config=cfg)
    assert cfg2 == cfg
    assert all(np.array_equal(a, b) for a, b in zip(
        jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(restored), strict=True))


def test_different_config_is_clear(saved):
    path, _ = saved
    with pytest.raises(checkpoint.CheckpointError, match="hidden: saved 32 vs requested 64"):
        checkpoint.restore(path, kind="teacher", config=dataclasses.replace(TEACHER, hidden=64))


def test_wrong_kind_is_clear(saved):
    with pytest.raises(checkpoint.CheckpointError, match="not 'vae'"):
        checkpoint.restore(saved[0], kind="vae")


def test_missing_is_clear(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="No checkpoint"):
        checkpoint.restore(tmp_path / "absent", kind="teacher")


def test_corrupt_meta_is_clear(saved):
    (saved[0] / "meta.json").write_text("{not json")
    with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
        checkpoint.restore(saved[0], kind="teacher")


def test_corrupt_arrays_are_clear(saved):
    path = saved[0]
    files = [p for p in (path / "params").rglob("*") if p.is_file() and p.stat().st_size > 0]
    assert files
    for f in files:  # garble every data file of the orbax tree
        f.write_bytes(b"\x00garbage" * 3)
    with pytest.raises(checkpoint.CheckpointError, match="corrupt or incomplete"):
        checkpoint.restore(path, kind="teacher")


def test_edited_config_with_wrong_shapes_is_clear(saved):
    # meta says a wider model than the arrays hold: caught before use.
    import json
    meta_file = saved[0] / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["config"]["hidden"] = 40
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.restore(saved[0], kind="teacher")
