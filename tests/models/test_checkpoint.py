import dataclasses
import errno
import json
import shutil
import signal
import textwrap
import time
import warnings
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import cpu_env
from forkserver import ForkServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepvid_jax import files
from deepvid_jax.models import checkpoint
from deepvid_jax.models.networks import TeacherConfig, VAEConfig, init_teacher, init_vae

TEACHER = TeacherConfig(features=(8, 16), hidden=32, image_shape=(8, 8, 1))
SMALL = TeacherConfig(features=(4,), hidden=8, image_shape=(8, 8, 1))


def _equal(a, b) -> bool:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(
        x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(la, lb, strict=True))


@pytest.fixture()
def saved(tmp_path):
    params = init_teacher(jax.random.PRNGKey(7), TEACHER)
    path = checkpoint.save(tmp_path / "t", params, kind="teacher", config=TEACHER,
                           metrics={"eval_accuracy": 0.5})
    return path, params


def _params_dir(path: Path) -> Path:
    return path / checkpoint.read_meta(path)["params"]


def test_round_trip_is_bit_exact(saved):
    path, params = saved
    restored, config, meta = checkpoint.restore(path, kind="teacher")
    assert config == TEACHER and meta["metrics"]["eval_accuracy"] == 0.5
    assert _equal(params, restored)


def test_vae_round_trip(tmp_path):
    cfg = VAEConfig(latent_dim=3, features=(4, 8), hidden=16, image_shape=(8, 8, 1))
    params = init_vae(jax.random.PRNGKey(1), cfg)
    checkpoint.save(tmp_path / "v", params, kind="vae", config=cfg)
    restored, cfg2, _ = checkpoint.restore(tmp_path / "v", kind="vae", config=cfg)
    assert cfg2 == cfg and _equal(params, restored)


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


def test_corrupt_arrays_are_clear(saved):
    path = saved[0]
    files_ = [p for p in _params_dir(path).rglob("*") if p.is_file() and p.stat().st_size > 0]
    assert files_
    for f in files_:  # garble every data file of the orbax tree
        f.write_bytes(b"\x00garbage" * 3)
    with pytest.raises(checkpoint.CheckpointError, match="is corrupt"):
        checkpoint.restore(path, kind="teacher")


def test_every_params_file_is_checksummed_and_named(saved):
    """64 flipped bytes in any one params file: a CheckpointError naming that file, for every
    file of the tree (the issue's case: weights off by 1e32 used to restore silently)."""
    path = saved[0]
    pdir = _params_dir(path)
    names = checkpoint.read_meta(path)["files"]
    on_disk = {p.relative_to(pdir).as_posix() for p in pdir.rglob("*") if p.is_file()}
    assert set(names) == on_disk and len(names) >= 5
    for name in names:
        f = pdir / name
        original = f.read_bytes()
        data = bytearray(original)
        for i in range(min(64, len(data))):
            data[len(data) // 2 - 32 + i if len(data) > 64 else i] ^= 0xFF
        f.write_bytes(bytes(data))
        with pytest.raises(checkpoint.CheckpointError, match=f"{name}.*corrupt"):
            checkpoint.restore(path, kind="teacher")
        f.write_bytes(original)
    checkpoint.restore(path, kind="teacher")  # intact again


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 10 ** 6), offset=st.floats(0, 1), flip=st.integers(1, 255),
       count=st.integers(1, 64))
def test_any_flipped_bytes_give_checkpoint_error(saved, which, offset, flip, count):
    path = saved[0]
    pdir = _params_dir(path)
    names = sorted(checkpoint.read_meta(path)["files"])
    f = pdir / names[which % len(names)]
    original = f.read_bytes()
    data = bytearray(original)
    start = int(offset * max(len(data) - 1, 0))
    for i in range(start, min(start + count, len(data))):
        data[i] ^= flip
    f.write_bytes(bytes(data))
    try:
        with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
            checkpoint.restore(path, kind="teacher")
    finally:
        f.write_bytes(original)


def test_truncated_and_missing_params_files(saved):
    path = saved[0]
    pdir = _params_dir(path)
    biggest = max((p for p in pdir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[:-10])
    with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
        checkpoint.restore(path, kind="teacher")
    biggest.unlink()
    with pytest.raises(checkpoint.CheckpointError, match="missing"):
        checkpoint.restore(path, kind="teacher")
    shutil.rmtree(pdir)
    with pytest.raises(checkpoint.CheckpointError, match="parameter folder .* missing"):
        checkpoint.restore(path, kind="teacher")


def _rewrite_meta(path: Path, edit, *, resign: bool) -> None:
    meta = json.loads((path / "meta.json").read_text())
    edit(meta)
    if resign and isinstance(meta, dict):
        meta["meta_sha256"] = checkpoint._meta_digest(meta)
    (path / "meta.json").write_text(json.dumps(meta))


def _drop(key):
    return lambda m: m.pop(key)


def _set(key, value):
    return lambda m: m.__setitem__(key, value)


MALFORMED_META = {
    # name: (edit, re-sign the checksum so the check behind it is reached, expected message)
    **{f"missing_{k}": (_drop(k), k != "meta_sha256", f"'{k}' is missing")
       for k in ("kind", "config", "metrics", "dataset", "params", "files", "meta_sha256")},
    **{f"wrong_type_{k}": (_set(k, 3), True, f"'{k}' must be a")
       for k in ("kind", "config", "metrics", "dataset", "params", "files")},
    "unknown_format": (_set("format", "other/9"), True, "unknown format"),
    "unknown_kind": (_set("kind", "gan"), True, "unknown kind"),
    "params_escapes": (_set("params", "../elsewhere"), True, "bad params folder"),
    "file_escapes": (lambda m: m["files"].__setitem__("../../etc/passwd", "0" * 64), True,
                     "bad file list"),
    "empty_file_list": (_set("files", {}), True, "bad file list"),
    "edited_without_checksum": (lambda m: m["config"].__setitem__("hidden", 40), False,
                                "checksum"),
    "edited_invalid_config": (lambda m: m["config"].__setitem__("hidden", -1), True,
                              "invalid teacher config"),
    "edited_unknown_field": (lambda m: m["config"].__setitem__("depth", 3), True,
                             "unknown fields"),
    "edited_wrong_shapes": (lambda m: m["config"].__setitem__("hidden", 40), True,
                            "is float32\\[.*, expected float32"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_META))
def test_malformed_metadata_is_a_checkpoint_error(saved, case):
    edit, resign, message = MALFORMED_META[case]
    _rewrite_meta(saved[0], edit, resign=resign)
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.restore(saved[0], kind="teacher")


@pytest.mark.parametrize("text", ["", "{not json", "[1, 2]", "null", "\x00\xff\xfe"])
def test_unparseable_metadata(saved, text):
    (saved[0] / "meta.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
        checkpoint.restore(saved[0], kind="teacher")


# ------------------------------------------------------------------------------------------
# Saving never destroys what is not ours, and never loses the previous checkpoint
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("foreign", ["notes.txt", "data/", "params.npz", "meta.json.bak",
                                     ".git/"])
def test_save_refuses_folder_with_unrelated_files_and_they_survive(tmp_path, foreign):
    target = tmp_path / "work"
    target.mkdir()
    item = target / foreign.rstrip("/")
    if foreign.endswith("/"):
        item.mkdir()
        (item / "inside.txt").write_text("precious")
    else:
        item.write_text("precious")
    params = init_teacher(jax.random.PRNGKey(0), SMALL)
    with pytest.raises(checkpoint.CheckpointError, match="Refusing .*not part of"):
        checkpoint.save(target, params, kind="teacher", config=SMALL)
    assert sorted(p.name for p in target.iterdir()) == [item.name]
    kept = item / "inside.txt" if foreign.endswith("/") else item
    assert kept.read_text() == "precious"


def test_save_into_working_directory_refuses(tmp_path, monkeypatch):
    (tmp_path / "my_code.py").write_text("print(1)")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(checkpoint.CheckpointError, match="my_code.py"):
        checkpoint.save(".", init_teacher(jax.random.PRNGKey(0), SMALL), kind="teacher",
                        config=SMALL)
    assert (tmp_path / "my_code.py").read_text() == "print(1)"


def test_save_refuses_a_file_another_kind_and_no_overwrite(saved, tmp_path):
    params = init_teacher(jax.random.PRNGKey(0), TEACHER)
    (tmp_path / "file").write_text("x")
    with pytest.raises(checkpoint.CheckpointError, match="is a file"):
        checkpoint.save(tmp_path / "file", params, kind="teacher", config=TEACHER)
    cfg = VAEConfig(latent_dim=3, features=(4, 8), hidden=16, image_shape=(8, 8, 1))
    with pytest.raises(checkpoint.CheckpointError, match="teacher checkpoint .* with a vae"):
        checkpoint.save(saved[0], init_vae(jax.random.PRNGKey(0), cfg), kind="vae",
                        config=cfg)
    with pytest.raises(checkpoint.CheckpointError, match="overwrite=False"):
        checkpoint.save(saved[0], params, kind="teacher", config=TEACHER, overwrite=False)
    assert _equal(checkpoint.restore(saved[0], kind="teacher")[0], saved[1])


def test_save_checks_params_and_metrics_before_touching_disk(saved):
    path, params = saved
    before = sorted(p.name for p in path.iterdir())
    wrong = init_teacher(jax.random.PRNGKey(0), SMALL)
    with pytest.raises(checkpoint.CheckpointError, match="missing .*conv1"):
        checkpoint.save(path, wrong, kind="teacher", config=TEACHER)
    nan = jax.tree.map(lambda a: a * np.nan, params)
    with pytest.raises(checkpoint.CheckpointError, match="NaN"):
        checkpoint.save(path, nan, kind="teacher", config=TEACHER)
    with pytest.raises(checkpoint.CheckpointError, match="JSON"):
        checkpoint.save(path, params, kind="teacher", config=TEACHER, metrics={"f": object()})
    assert sorted(p.name for p in path.iterdir()) == before
    assert _equal(checkpoint.restore(path, kind="teacher")[0], params)


def test_numpy_metrics_are_saved_as_json(tmp_path):
    params = init_teacher(jax.random.PRNGKey(0), SMALL)
    path = checkpoint.save(tmp_path / "t", params, kind="teacher", config=SMALL,
                           metrics={"curve": np.arange(3.0), "acc": np.float32(0.5),
                                    "undefined": float("nan")})
    meta = checkpoint.restore(path, kind="teacher")[2]
    assert meta["metrics"] == {"curve": [0.0, 1.0, 2.0], "acc": 0.5, "undefined": None}


@pytest.mark.parametrize("where", ["orbax", "meta"])
def test_failure_mid_save_keeps_the_previous_checkpoint(saved, monkeypatch, where):
    path, params = saved
    new = init_teacher(jax.random.PRNGKey(99), TEACHER)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "orbax":
        monkeypatch.setattr(ocp.StandardCheckpointer, "save", disk_full)
    else:
        monkeypatch.setattr(files, "write_json", disk_full)
    with pytest.raises(OSError, match="No space"):
        checkpoint.save(path, new, kind="teacher", config=TEACHER)
    assert _equal(checkpoint.restore(path, kind="teacher")[0], params)
    monkeypatch.undo()
    checkpoint.save(path, new, kind="teacher", config=TEACHER)  # leftovers are cleaned
    assert _equal(checkpoint.restore(path, kind="teacher")[0], new)
    assert len([p for p in path.iterdir() if p.name.startswith("params")]) == 1


def test_legacy_checkpoint_restores_with_a_warning(saved):
    path, params = saved
    meta = json.loads((path / "meta.json").read_text())
    (path / meta["params"]).rename(path / "params")
    legacy = {k: meta[k] for k in ("kind", "config", "metrics", "dataset")}
    (path / "meta.json").write_text(json.dumps({"format": "deepvid_jax/1", **legacy}))
    with pytest.warns(UserWarning, match="without checksums"):
        restored = checkpoint.restore(path, kind="teacher")[0]
    assert _equal(restored, params)
    checkpoint.save(path, params, kind="teacher", config=TEACHER)  # upgraded in place
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _equal(checkpoint.restore(path, kind="teacher")[0], params)
    assert not (path / "params").exists()


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import jax
    from deepvid_jax import files
    from deepvid_jax.models import checkpoint
    from deepvid_jax.models.networks import TeacherConfig, init_teacher
    cfg = TeacherConfig(features=(4,), hidden=8, image_shape=(8, 8, 1))
    path, kill_at, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    params = init_teacher(jax.random.PRNGKey(seed), cfg)
    watched = {checkpoint.__file__, files.__file__}
    # Loops over orbax's files are left out: orbax writes a varying number of data files, and
    # the points must mean the same lines in every child.
    per_file = {"_sha256", "_tree_checksums", "jsonable", "<lambda>", "<genexpr>", "<dictcomp>",
                "<listcomp>"}
    count = 0

    def local(frame, event, arg):
        global count
        if event == "line":
            count += 1
            if count == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        return local

    def calls(frame, event, arg):
        code = frame.f_code
        return local if code.co_filename in watched and code.co_name not in per_file else None

    print("SAVING", flush=True)
    sys.settrace(calls)
    checkpoint.save(path, params, kind="teacher", config=cfg)
    sys.settrace(None)
    print("LINES", count, flush=True)
""")


def test_sigkill_at_any_point_of_a_save_keeps_a_complete_checkpoint(tmp_path):
    """A save killed with SIGKILL (traced to fire at lines spread over the whole of `save`, and
    at timed moments inside orbax's write): the folder restores bit-exactly to the previous
    checkpoint or to the new one, and the next save cleans up after it."""
    old = init_teacher(jax.random.PRNGKey(1), SMALL)
    new = init_teacher(jax.random.PRNGKey(2), SMALL)
    template = checkpoint.save(tmp_path / "template", old, kind="teacher", config=SMALL)
    env = cpu_env(PYTHONUNBUFFERED="1")
    preload = ["jax", "deepvid_jax.files", "deepvid_jax.models.checkpoint",
               "deepvid_jax.models.networks"]
    with ForkServer(preload, env) as server:

        def child(name, kill_at):
            target = tmp_path / name
            shutil.copytree(template, target)
            return target, server.start(KILL_SCRIPT, [target, kill_at, 2],
                                        tmp_path / f"{name}.out")

        target, dry = child("dry", 10 ** 9)
        assert dry.wait(timeout=240) == 0, dry.output()
        lines = int(dry.output().split("LINES")[1])
        assert _equal(checkpoint.restore(target, kind="teacher")[0], new)

        points = sorted({int(p) for p in np.linspace(1, lines, 7)} | {lines - 3, lines - 1})
        procs = [(n, *child(f"kill{n}", n)) for n in points]
        for delay in (0.05, 0.3):  # timed kills: inside orbax's own threads and files
            target, proc = child(f"timed{delay}", 10 ** 9)
            procs.append((delay, target, proc))
            proc.wait_for("SAVING")
            time.sleep(delay)
            proc.kill(signal.SIGKILL)
        for _, _, proc in procs:
            proc.wait(timeout=240)
    outcomes = {}
    for n, target, proc in procs:
        if isinstance(n, int):
            assert proc.returncode == -signal.SIGKILL, (n, lines, proc.output()[-2000:])
        restored = checkpoint.restore(target, kind="teacher")[0]
        outcomes[n] = "old" if _equal(restored, old) else "new" if _equal(restored, new) else "?"
        assert outcomes[n] != "?", n
        # the next save succeeds and leaves exactly one parameter folder, no temporary files
        checkpoint.save(target, new, kind="teacher", config=SMALL)
        assert _equal(checkpoint.restore(target, kind="teacher")[0], new)
        entries = sorted(p.name for p in target.iterdir())
        assert len(entries) == 2 and entries[0] == "meta.json", entries
        assert entries[1].startswith("params-"), entries
    traced = [outcomes[n] for n in points]
    assert traced[0] == "old" and "new" in traced, outcomes  # kills before and after commit
    assert traced == sorted(traced, key=["old", "new"].index), outcomes  # one commit point
