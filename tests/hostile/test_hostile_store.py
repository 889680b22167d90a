"""Dataset stores against hostile use: a resumed store continued by another teacher, damaged
chunk files, a report written into the store, damaged metadata and two writers at once. Every
case must end in a clear error naming the file (whose advice then works), or in a store that
verifies clean: never a silent wrong answer, an undetected damage or a deep traceback."""

from __future__ import annotations

import copy
import functools
import shutil
import threading
from pathlib import Path

import jax
import numpy as np
import pytest
import zarr
from conftest import RUN_SPLIT, SMALL, TINY_TEACHER

from deepvid_jax.cli import verify as verify_cli
from deepvid_jax.data import sources as data
from deepvid_jax.explainers import registry as E
from deepvid_jax.models import adapters
from deepvid_jax.models.networks import Teacher, teacher_logits
from deepvid_jax.runner import integrity, report
from deepvid_jax.runner import run as run_lib
from deepvid_jax.runner import store as store_lib

GRADIENT = run_lib.RunConfig(explainers=("gradient",), chunk_size=8)


@pytest.fixture(scope="module")
def source() -> data.Source:
    return data.open_source("digits", RUN_SPLIT)


@pytest.fixture(scope="module")
def models(run_checkpoints) -> E.Models:
    return E.Models.load(run_checkpoints)


@pytest.fixture(scope="module")
def gradient_store(tmp_path_factory, source, models) -> Path:
    """A finished run of the gradient (copied before each damage)."""
    path = tmp_path_factory.mktemp("gradient") / "g.zarr"
    assert run_lib.explain_dataset(source, models, path, GRADIENT, progress=False)["complete"]
    return path


def _copy(store: Path, tmp_path: Path) -> Path:
    out = tmp_path / store.name
    shutil.copytree(store, out)
    return out


def _arrays(path: Path) -> dict[str, np.ndarray]:
    root = zarr.open_group(str(path), mode="r")
    return {name: np.asarray(arr[:]) for name, arr in root.arrays()} | {
        f"{g}/{name}": np.asarray(arr[:]) for g, group in root.groups()
        for name, arr in group.arrays()}


def _chunk_files(path: Path) -> dict[str, int]:
    """Every chunk file of the store -> its modification time (ns)."""
    return {str(f.relative_to(path)): f.stat().st_mtime_ns for f in path.rglob("*")
            if f.is_file() and "/c/" in f"/{f.relative_to(path)}"}


# --------------------------------------------------------------------------------------------
# 1. the identity of what was run: a black box teacher, a changed preprocess
# --------------------------------------------------------------------------------------------


class _Interrupted(Exception):
    pass


class _Stopping(data.Source):
    """The same data, but reading past the first chunk interrupts the run (a kill, a ^C)."""

    def read(self, start: int, stop: int):
        if start >= 8:
            raise _Interrupted
        return super().read(start, stop)


def _callback(tiny_teacher, scale: np.ndarray) -> adapters.Teacher:
    """A black box (numpy in, logits out) of the tiny teacher, logits times ``scale``: every
    such teacher has the same name and no parameters; only its outputs tell them apart."""
    apply = jax.jit(functools.partial(teacher_logits, config=TINY_TEACHER))

    def fn(x):
        return np.asarray(apply(tiny_teacher, x)) * scale

    return adapters.from_callback(fn, 10)


def test_a_resumed_store_refuses_another_black_box_teacher(tmp_path, source, tiny_teacher):
    config = run_lib.RunConfig(explainers=("rise",), chunk_size=8)
    configs = {"rise": SMALL["rise"]}
    a = E.Models(*_callback(tiny_teacher, np.float32(1.0)))
    b = E.Models(*_callback(tiny_teacher, np.float32(3.0)))
    store = tmp_path / "box.zarr"
    stopping = copy.copy(source)
    stopping.__class__ = _Stopping
    with pytest.raises(_Interrupted):
        run_lib.explain_dataset(stopping, a, store, config, configs=configs, progress=False)
    assert run_lib._done(zarr.open_array(str(store / "done" / "rise"), mode="r")).sum() == 1
    with pytest.raises(run_lib.RunError, match="another teacher.*logits on the first 8 images"):
        run_lib.explain_dataset(source, b, store, config, configs=configs, progress=False)
    summary = run_lib.explain_dataset(source, a, store, config, configs=configs, progress=False)
    assert summary["complete"] and summary["chunks_found_done"] == 1
    assert integrity.verify(store) == []


def test_a_resumed_store_refuses_another_preprocess(tmp_path, source, tiny_teacher):
    def teacher(preprocess):
        t = adapters.from_flax(Teacher(TINY_TEACHER), {"params": tiny_teacher},
                               preprocess=preprocess, num_classes=10)
        return E.Models(*t)

    store = tmp_path / "pre.zarr"
    run_lib.explain_dataset(source, teacher(lambda x: x), store, GRADIENT, progress=False)
    with pytest.raises(run_lib.RunError, match="another teacher.*preprocess"):
        run_lib.explain_dataset(source, teacher(lambda x: 1 - x), store, GRADIENT,
                                progress=False)
    # the same teacher again (a new function object, the same outputs) is the same run
    again = run_lib.explain_dataset(source, teacher(lambda x: x), store, GRADIENT,
                                    progress=False)
    assert again["chunks_computed"] == 0 and again["complete"]


# --------------------------------------------------------------------------------------------
# 2. checksums: every kind of damage found, refused, left out of the report, repaired
# --------------------------------------------------------------------------------------------


def test_damaged_chunks_are_found_refused_and_repaired_exactly(tmp_path, gradient_store,
                                                               source, models, capsys):
    store = _copy(gradient_store, tmp_path)
    root = zarr.open_group(str(store), mode="r+")
    attr = root["gradient/attributions"]
    flipped = integrity.chunk_file(attr, store, "gradient/attributions", 0)
    raw = bytearray(flipped.read_bytes())
    raw[100:116] = bytes(b ^ 0xFF for b in raw[100:116])
    flipped.write_bytes(bytes(raw))
    integrity.chunk_file(root["classes"], store, "classes", 1).unlink()
    cut = integrity.chunk_file(root["teacher_probs"], store, "teacher_probs", 1)
    cut.write_bytes(cut.read_bytes()[:40])
    attr[8:9] = np.full((1, 8, 8, 1), np.nan, np.float32)  # NaN written into chunk 1

    found = {(d.array, d.chunk): d.reason for d in integrity.verify(store)}
    assert found == {("gradient/attributions", 0): "checksum mismatch",
                     ("classes", 1): "missing", ("teacher_probs", 1): "truncated",
                     ("gradient/attributions", 1): "non-finite"}
    assert verify_cli.run(verify_cli.argparse.Namespace(store=str(store))) == 1
    assert "--repair" in capsys.readouterr().out

    with pytest.raises(run_lib.RunError, match="(?s)4 damaged chunk.*classes chunk 1.*missing"
                                               ".*repair=True"):
        run_lib.explain_dataset(source, models, store, GRADIENT, progress=False)

    page = report.build(store)
    assert "4 damaged chunk(s)" in page and "gradient/attributions chunk 1" in page
    assert "4 of 20 images" in page  # chunks 0 and 1 are left out: only rows 16-19 drawn

    before = _chunk_files(store)
    summary = run_lib.explain_dataset(source, models, store, GRADIENT, repair=True,
                                      progress=False)
    assert summary["chunks_repaired"] == 2 and summary["complete"]
    changed = {f for f, t in _chunk_files(store).items() if before.get(f) != t}
    stage_files = {"inputs": ("indices", "labels", "classes", "teacher_probs", "done/inputs"),
                   "gradient": ("gradient/attributions", "done/gradient")}
    allowed = {f for stage, j in [("gradient", 0), ("inputs", 1), ("gradient", 1)]
               for f in _chunk_files(store) | before
               if f.split("/c/")[0] in stage_files[stage] and f.split("/c/")[1].split("/")[0]
               == str(j)}
    assert changed <= allowed and changed  # nothing but the damaged stages' chunks rewritten
    assert integrity.verify(store) == []
    assert verify_cli.run(verify_cli.argparse.Namespace(store=str(store))) == 0
    got, want = _arrays(store), _arrays(gradient_store)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


# --------------------------------------------------------------------------------------------
# 4. the report never lands inside a store nor over a user's file
# --------------------------------------------------------------------------------------------


def test_a_report_never_replaces_store_files_or_a_users_file(tmp_path, gradient_store):
    store = _copy(gradient_store, tmp_path)
    for out in (store / "zarr.json", store / "page.html", store, store / "classes" / "c" / "0"):
        with pytest.raises(run_lib.RunError, match="inside the store"):
            report.write(store, out)
    assert integrity.verify(store) == [] and not (store / "page.html").exists()
    page = report.write(store)  # beside it, then replaced by the next report
    assert page == tmp_path / "g.html" and report.write(store, page) == page
    theirs = tmp_path / "theirs.html"
    theirs.write_text("<html>mine</html>")
    with pytest.raises(ValueError, match="theirs.html exists and was not written by"):
        report.write(store, theirs)
    assert theirs.read_text() == "<html>mine</html>"


# --------------------------------------------------------------------------------------------
# 8. damaged metadata and markers: clear errors naming the file, advice that works
# --------------------------------------------------------------------------------------------


def test_a_garbled_marker_metadata_is_named_and_overwrite_works(tmp_path, gradient_store,
                                                                source, models):
    store = _copy(gradient_store, tmp_path)
    meta = store / "done" / "gradient" / "zarr.json"
    meta.write_text(meta.read_text().replace('"', "", 3))
    with pytest.raises(run_lib.RunError, match=f"{meta} is damaged.*overwrite"):
        run_lib.explain_dataset(source, models, store, GRADIENT, progress=False)
    with pytest.raises(run_lib.RunError, match=f"{meta} is damaged"):
        integrity.verify(store)
    summary = run_lib.explain_dataset(source, models, store, GRADIENT, overwrite=True,
                                      progress=False)
    assert summary["complete"] and integrity.verify(store) == []


def test_a_garbled_root_metadata_is_named_and_overwrite_works(tmp_path, gradient_store,
                                                              source, models):
    store = _copy(gradient_store, tmp_path)
    (store / "zarr.json").write_text("{deepvid")
    with pytest.raises(run_lib.RunError, match=f"{store / 'zarr.json'} is damaged.*overwrite"):
        run_lib.explain_dataset(source, models, store, GRADIENT, progress=False)
    assert run_lib.explain_dataset(source, models, store, GRADIENT, overwrite=True,
                                   progress=False)["complete"]


def test_an_empty_marker_is_named_and_repaired(tmp_path, gradient_store, source, models):
    store = _copy(gradient_store, tmp_path)
    marker = integrity.chunk_file(zarr.open_array(str(store / "done" / "gradient")), store,
                                  "done/gradient", 1)
    marker.write_bytes(b"")
    with pytest.raises(run_lib.RunError, match=f"done/gradient chunk 1 \\({marker}\\): "
                                               "truncated"):
        run_lib.explain_dataset(source, models, store, GRADIENT, progress=False)
    summary = run_lib.explain_dataset(source, models, store, GRADIENT, repair=True,
                                      progress=False)
    assert summary["chunks_computed"] == 1 and integrity.verify(store) == []


def test_a_stored_class_out_of_range_is_damage_not_an_index_error(tmp_path, gradient_store,
                                                                  source, models):
    store = _copy(gradient_store, tmp_path)
    zarr.open_group(str(store), mode="r+")["classes"][3] = 77
    with pytest.raises(run_lib.RunError, match="classes chunk 0 .*checksum mismatch"):
        run_lib.explain_dataset(source, models, store, GRADIENT, progress=False)
    page = report.build(store)  # the chunk is left out, its class never indexed
    assert "1 damaged chunk(s)" in page and "12 of 20 images" in page


def test_a_store_of_the_earlier_format_is_refused_and_overwrite_works(tmp_path,
                                                                      gradient_store, source,
                                                                      models):
    store = _copy(gradient_store, tmp_path)
    root = zarr.open_group(str(store), mode="r+")
    attrs = dict(root.attrs)["deepvid_jax"]
    del attrs["format"]
    root.attrs["deepvid_jax"] = attrs
    with pytest.raises(run_lib.RunError, match="earlier version.*store format 1.*overwrite"):
        run_lib.explain_dataset(source, models, store, GRADIENT, progress=False)
    with pytest.raises(run_lib.RunError, match="earlier version"):
        report.build(store)
    assert run_lib.explain_dataset(source, models, store, GRADIENT, overwrite=True,
                                   progress=False)["complete"]


# --------------------------------------------------------------------------------------------
# 9. two writers
# --------------------------------------------------------------------------------------------


def test_a_second_writer_fails_at_once_with_a_clear_message(tmp_path, source, models):
    store = tmp_path / "busy.zarr"
    with store_lib.writer_lock(store), pytest.raises(
            run_lib.RunError, match="being written by another deepvid run"):
        run_lib.explain_dataset(source, models, store, GRADIENT, progress=False)
    assert not store.exists()
    # two at once on a fresh store: one writes it, the other fails clearly or finds it done
    results: list = []

    def go():
        try:
            results.append(run_lib.explain_dataset(source, models, store, GRADIENT,
                                                   progress=False))
        except run_lib.RunError as e:
            results.append(e)

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(results) == 2
    for r in results:
        assert isinstance(r, dict) or "being written by another deepvid run" in str(r), r
    assert any(isinstance(r, dict) and r["complete"] for r in results)
    assert integrity.verify(store) == []
    assert [p.name for p in tmp_path.iterdir()] == ["busy.zarr"]  # no lock or temporary left
