"""The dataset runner: store contents, kill-and-resume, several processes, clear errors."""

import dataclasses
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import zarr
from conftest import RUN_CONFIG, RUN_EXPLAINERS, RUN_SPLIT, cpu_env
from forkserver import ForkServer

from deepvid_jax.data import sources as data
from deepvid_jax.explainers import registry as E
from deepvid_jax.runner import run as run_lib

SPLIT, EXPLAINERS, CONFIG = RUN_SPLIT, RUN_EXPLAINERS, RUN_CONFIG
CLI = ["run", "--dataset", "digits", "--split", SPLIT, "--explainers", ",".join(EXPLAINERS),
       "--chunk-size", "8", "--quiet"]


@pytest.fixture(scope="module")
def checkpoints(run_checkpoints) -> Path:
    return run_checkpoints


@pytest.fixture(scope="module")
def models(checkpoints) -> E.Models:
    return E.Models.load(checkpoints)


@pytest.fixture(scope="module")
def source() -> data.Source:
    return data.open_source("digits", SPLIT)


@pytest.fixture(scope="module")
def clean(run_store) -> Path:
    return run_store


def _arrays(path: Path) -> dict[str, np.ndarray]:
    root = zarr.open_group(str(path), mode="r")
    out = {}
    for name, arr in root.arrays():
        out[name] = arr[:]
    for name, group in root.groups():
        for sub, arr in group.arrays():
            out[f"{name}/{sub}"] = arr[:]
    return out


def test_store_equals_in_memory_explanations(clean, source, models):
    got = _arrays(clean)
    x, labels = source.read(0, len(source))
    pred = np.asarray(models.teacher_apply(models.teacher_params, x)).argmax(-1)
    np.testing.assert_array_equal(got["indices"], np.arange(20))
    np.testing.assert_array_equal(got["labels"], labels)
    np.testing.assert_array_equal(got["classes"], pred)
    np.testing.assert_allclose(got["teacher_probs"].sum(-1), 1, atol=1e-5)
    for name in EXPLAINERS:
        want = E.explain(name, x, pred, jax.random.PRNGKey(CONFIG.seed), models=models,
                         chunk_size=CONFIG.chunk_size)
        np.testing.assert_array_equal(got[f"{name}/attributions"], want.attributions)
        for k, v in want.extras.items():
            if k != "weights":  # stored only with save_weights
                np.testing.assert_array_equal(got[f"{name}/{k}"], v)
        assert f"{name}/weights" not in got
        assert run_lib._done(zarr.open_array(str(clean / "done" / name), mode="r")).all()
    attrs = dict(zarr.open_group(str(clean), mode="r").attrs)["deepvid_jax"]
    assert attrs["identity"]["dataset"]["fingerprint"] == source.fingerprint()
    assert attrs["version"] and attrs["device"]["platform"] == "cpu"
    assert attrs["identity"]["run"]["explainers"] == list(EXPLAINERS)


def test_fast_runs_deepvids_former_default(tmp_path, checkpoints, source, models):
    """`deepvid run --fast` explains with `deepvid.FAST`, records it, and equals the API."""
    from deepvid_jax.cli import main
    from deepvid_jax.explainers.deepvid import core as ex
    out = tmp_path / "fast.zarr"
    # one chunk of the 4 images (the default, 64, pads them to 64 instances)
    assert main(["run", "--dataset", "digits", "--split", "test[:4]", "--explainers",
                     "deepvid", "--checkpoints", str(checkpoints), "--fast", "--quiet",
                     "--chunk-size", "4", "--out", str(out)]) == 0
    attrs = dict(zarr.open_group(str(out), mode="r").attrs)["deepvid_jax"]
    stored = attrs["identity"]["configs"]["deepvid"]
    assert stored["student"]["method"] == ex.FAST.student.method == "ridge"
    assert stored["neighbors"]["num"] == ex.FAST.neighbors.num
    x, _ = source.read(0, 4)
    pred = np.asarray(models.teacher_apply(models.teacher_params, x)).argmax(-1)
    fast = E.explain("deepvid", x, pred, jax.random.PRNGKey(0), models=models,
                     config=ex.FAST).attributions
    # the CLI restores its own models: equal up to the ridge solve's float rounding
    np.testing.assert_allclose(_arrays(out)["deepvid/attributions"], fast,
                               atol=1e-3 * np.abs(fast).max())


def test_rerun_finds_everything_done(clean, source, models):
    before = _arrays(clean)
    summary = run_lib.explain_dataset(source, models, clean, CONFIG, progress=False)
    assert summary["chunks_computed"] == 0 and summary["chunks_found_done"] == 3
    after = _arrays(clean)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])


KILLER = textwrap.dedent("""
    import os, signal, sys
    import zarr.storage._local as local
    kill_at, half = int(sys.argv[1]), sys.argv[2] == "half"
    put, calls = local._put, [0]

    def dying_put(path, value, exclusive=False):
        calls[0] += 1
        if calls[0] == kill_at:
            if half and "/done/" not in str(path) and not str(path).endswith("zarr.json"):
                # what a non-atomic writer would leave: half a chunk file in place
                raw = bytes(value.as_buffer_like())
                with open(path, "wb") as f:
                    f.write(raw[: len(raw) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return put(path, value, exclusive)

    local._put = dying_put
    from deepvid_jax.cli import main
    sys.exit(main(sys.argv[3:]))
""")


def _cli(args: list[str], *prefix: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = cpu_env()
    return subprocess.run([sys.executable, "-c", KILLER, *prefix, *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_killed_runs_resume_to_the_uninterrupted_arrays(tmp_path, checkpoints, clean):
    store = tmp_path / "store.zarr"
    args = [*CLI, "--checkpoints", str(checkpoints), "--out", str(store)]
    env = cpu_env()
    logs = tmp_path / "logs"
    logs.mkdir()
    with ForkServer(["zarr.storage._local", "deepvid_jax.cli.main"], env) as server:
        # SIGKILL while creating the store, in the middle of a chunk's arrays, and halfway
        # through writing a chunk file; each later run resumes the same store.
        for kill_at, mode in [(6, "whole"), (25, "whole"), (9, "half")]:
            proc = server.start(KILLER, [kill_at, mode, *args], logs / f"{kill_at}.txt")
            assert proc.wait() == -signal.SIGKILL, (kill_at, proc.output()[-2000:])
        done = server.start(KILLER, [0, "whole", *args], logs / "done.txt")
        assert done.wait() == 0, done.output()[-2000:]
    assert "found done" in done.output() and "complete store" in done.output()
    got, want = _arrays(store), _arrays(clean)
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("store.zarr", "logs")]
    assert all(n.startswith(".store.zarr.tmp-") for n in leftovers), leftovers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_write_the_one_process_store(tmp_path, checkpoints, clean):
    store = tmp_path / "two.zarr"
    port = _free_port()
    args = [*CLI, "--checkpoints", str(checkpoints), "--out", str(store),
            "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
    env = cpu_env()
    procs = [subprocess.Popen([sys.executable, "-c", KILLER, "0", "whole", *args,
                               "--process-id", str(i)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    assert "complete store" in outs[0][0] and outs[1][0] == ""  # only process 0 reports
    got, want = _arrays(store), _arrays(clean)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    attrs = dict(zarr.open_group(str(store), mode="r").attrs)
    assert attrs["summary"]["processes"] == 2 and attrs["summary"]["complete"]


def test_weights_are_stored_only_when_asked(tmp_path, source, models):
    config = run_lib.RunConfig(explainers=("deepvid",), chunk_size=8, save_weights=True)
    run_lib.explain_dataset(source, models, tmp_path / "w.zarr", config, progress=False)
    w = zarr.open_group(str(tmp_path / "w.zarr"), mode="r")["deepvid/weights"]
    assert w.shape == (20, 8, 8, 1, 10)


def test_clear_errors(tmp_path, clean, source, models):
    other = dataclasses.replace(CONFIG, chunk_size=4)
    with pytest.raises(run_lib.RunError, match="another configuration.*chunk_size"):
        run_lib.explain_dataset(source, models, clean, other, progress=False)
    with pytest.raises(run_lib.RunError, match="fingerprint"):
        run_lib.explain_dataset(data.open_source("digits", "test[20:40]"), models, clean,
                                CONFIG, progress=False)
    # a damaged store: its root metadata cut short
    broken = tmp_path / "broken.zarr"
    run_lib.explain_dataset(source, models, broken, run_lib.RunConfig(
        explainers=("gradient",), chunk_size=8), progress=False)
    meta = (broken / "zarr.json").read_text()
    (broken / "zarr.json").write_text(meta[: len(meta) // 2])
    with pytest.raises(run_lib.RunError, match=f"{broken}/zarr.json is damaged.*overwrite"):
        run_lib.explain_dataset(source, models, broken, CONFIG, progress=False)
    # a folder that is not ours is never removed, even with overwrite
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(run_lib.RunError, match="mine"):
            run_lib.explain_dataset(source, models, foreign, CONFIG, overwrite=overwrite,
                                    progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"
    # an output that cannot be a folder
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="file"):
        run_lib.explain_dataset(source, models, blocker / "store.zarr", CONFIG,
                                progress=False)
    with pytest.raises(ValueError, match="not a class"):
        run_lib.explain_dataset(source, models, tmp_path / "c.zarr",
                                run_lib.RunConfig(explainers=("gradient",), classes=10),
                                progress=False)
    with pytest.raises(ValueError, match="explainer must be one of"):
        run_lib.RunConfig(explainers=("shap",))
    bare = E.Models(models.teacher_apply, models.teacher_params, 10)
    with pytest.raises(ValueError, match="needs a VAE"):
        run_lib.explain_dataset(source, bare, tmp_path / "v.zarr", CONFIG, progress=False)
    assert not (tmp_path / "v.zarr").exists() and not (tmp_path / "c.zarr").exists()


def test_overwrite_replaces_a_store_of_another_run(tmp_path, source, models):
    path = tmp_path / "s.zarr"
    run_lib.explain_dataset(source, models, path, run_lib.RunConfig(
        explainers=("gradient",), chunk_size=8), progress=False)
    config = run_lib.RunConfig(explainers=("grad_x_input",), chunk_size=8)
    run_lib.explain_dataset(source, models, path, config, overwrite=True, progress=False)
    root = zarr.open_group(str(path), mode="r")
    assert "grad_x_input" in root and "gradient" not in root


def test_cli_reports_a_config_mismatch_in_one_line(clean, checkpoints, tmp_path):
    proc = _cli([*CLI[:-3], "--chunk-size", "4", "--quiet", "--checkpoints", str(checkpoints),
                 "--out", str(clean)], "0", "whole")
    assert proc.returncode == 2
    assert "another configuration" in proc.stderr and "Traceback" not in proc.stderr


class _Rows:
    """A stand-in for a Zarr array: records writes (name, first row, rows); fails with OSError
    when told; the first write waits for ``gate`` when given (after setting ``entered``)."""

    def __init__(self, log: list, name: str, fail: bool = False, gate=None, entered=None):
        self.log, self.name, self.fail, self.gate, self.entered = log, name, fail, gate, entered

    def __setitem__(self, rows, values):
        if self.gate is not None:
            self.entered.set()
            assert self.gate.wait(30)
            self.gate = None
        if self.fail:
            raise OSError(28, "No space left on device")
        self.log.append((self.name, rows.start, len(values)))


def _stage(name, chunk, rows=2):
    return [(name, chunk * rows, np.zeros(rows)), (f"done/{name}", chunk, None)]


def _row(arrays, writes, chunk):
    """A marker row that says which writes it covers (the real one holds checksums)."""
    return np.array([[w[1] for w in writes]], np.uint64)


def test_writer_batches_queued_stages_and_writes_markers_last(tmp_path):
    log: list = []
    gate, entered = threading.Event(), threading.Event()
    root = {"a": _Rows(log, "a", gate=gate, entered=entered), "done/a": _Rows(log, "done/a")}
    writer = run_lib._Writer(root, tmp_path, linger=0, row=_row)
    writer.submit(_stage("a", 0))
    assert entered.wait(30)  # the thread is inside the first write: the next stages queue
    writer.submit(_stage("a", 1))
    writer.submit(_stage("a", 2))
    gate.set()
    writer.close()
    # the two queued stages went out together, each array in one call, markers after arrays
    assert log == [("a", 0, 2), ("done/a", 0, 1), ("a", 2, 4), ("done/a", 1, 2)]


def test_writer_bounds_the_memory_of_queued_stages(tmp_path):
    log: list = []
    gate, entered = threading.Event(), threading.Event()
    root = {"a": _Rows(log, "a", gate=gate, entered=entered), "done/a": _Rows(log, "done/a")}
    writer = run_lib._Writer(root, tmp_path, max_bytes=1, linger=0, row=_row)
    writer.submit(_stage("a", 0))
    assert entered.wait(30)
    waiting = threading.Thread(target=writer.submit, args=(_stage("a", 1),))
    waiting.start()
    waiting.join(0.3)
    assert waiting.is_alive()  # over max_bytes while the first stage is being written
    gate.set()
    waiting.join(30)
    writer.close()
    assert [r[:2] for r in log] == [("a", 0), ("done/a", 0), ("a", 2), ("done/a", 1)]


def test_writer_stops_at_the_first_failed_write(tmp_path):
    log: list = []
    root = {n: _Rows(log, n, fail=n == "bad") for n in ("bad", "done/bad", "c", "done/c")}
    writer = run_lib._Writer(root, tmp_path, linger=0, row=_row)
    writer.submit(_stage("bad", 0))
    writer.submit(_stage("c", 0))
    with pytest.raises(run_lib.RunError, match=f"cannot write bad to {tmp_path}.*No space"):
        writer.close()
    assert not [r for r in log if r[0].startswith("done/")]  # no marker after the failure
    writer = run_lib._Writer(root, tmp_path, linger=0, row=_row)
    writer.submit(_stage("bad", 0))
    deadline = time.monotonic() + 30
    while writer._error is None and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(run_lib.RunError, match="cannot write bad"):
        writer.submit(_stage("c", 1))  # the next submit reports it
    with pytest.raises(run_lib.RunError):
        writer.close()
