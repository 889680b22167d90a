"""The command line, the data loaders and file writes against hostile input and interruptions
(issue 11). Every bad invocation must end with exit code 2 and one clear line naming the problem
*before* any training or explaining starts (the work functions are replaced by tripwires), and
nothing the user had may be lost."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import cpu_env

from deepvid_jax import cli, files
from deepvid_jax.data import sources as data
from deepvid_jax.explainers import registry, surrogate
from deepvid_jax.explainers.deepvid import core as explain_lib
from deepvid_jax.models import checkpoint, train
from deepvid_jax.models.networks import TeacherConfig, VAEConfig, init_teacher, init_vae


def _save_models(folder: Path, image_shape=(8, 8, 1), num_classes=10) -> Path:
    tcfg = TeacherConfig(num_classes=num_classes, features=(4,), hidden=8,
                         image_shape=image_shape)
    vcfg = VAEConfig(latent_dim=2, features=(4,), hidden=8, image_shape=image_shape)
    checkpoint.save(folder / "teacher", init_teacher(jax.random.PRNGKey(0), tcfg),
                    kind="teacher", config=tcfg)
    checkpoint.save(folder / "vae", init_vae(jax.random.PRNGKey(1), vcfg), kind="vae",
                    config=vcfg)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    return {"digits": _save_models(root / "digits"),
            "16x16": _save_models(root / "big", image_shape=(16, 16, 1)),
            "5 classes": _save_models(root / "five", num_classes=5)}


@pytest.fixture()
def tripwires(monkeypatch):
    """Any long work started by a bad invocation fails the test."""
    def tripped(*args, **kwargs):
        raise AssertionError("work started before the bad input was reported")

    for module, name in [(train, "train_teacher"), (train, "train_vae"),
                         (surrogate, "train_surrogate"), (surrogate, "teacher_logits_of"),
                         (explain_lib, "explain_images"), (registry, "explain")]:
        monkeypatch.setattr(module, name, tripped)


def run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    return code, capsys.readouterr().err


def _tmp(tmp_path: Path, what: str) -> str:
    """Paths the cases refer to, made fresh in each test's tmp_path."""
    if what == "file":
        (tmp_path / "a_file").write_text("x")
        return str(tmp_path / "a_file")
    if what == "foreign":
        (tmp_path / "out" / "teacher").mkdir(parents=True)
        (tmp_path / "out" / "teacher" / "thesis.tex").write_text("precious")
        return str(tmp_path / "out")
    if what == "legacy explain":
        (tmp_path / "ex").mkdir()
        (tmp_path / "ex" / "explanation_000.png").write_bytes(b"old")
        return str(tmp_path / "ex")
    if what == "legacy demo":
        (tmp_path / "demo").mkdir()
        (tmp_path / "demo" / "summary.json").write_text("{}")
        return str(tmp_path / "demo")
    return str(tmp_path / what)


TRAIN = ["--quiet", "--out", "{out}"]
CLI_CASES = {
    "explain: unknown method": (
        ["explain", "--checkpoints", "{ckpt:digits}", "--method", "shap", *TRAIN],
        "--method: invalid choice: 'shap'"),
    "explain: a DeepVID option for another method": (
        ["explain", "--checkpoints", "{ckpt:digits}", "--method", "rise", "--smooth", "0",
         *TRAIN], "--smooth is DeepVID's option; --method rise"),
    "explain: surrogate without its checkpoints": (
        ["explain", "--checkpoints", "{ckpt:digits}", "--method", "surrogate", *TRAIN],
        "needs the attentive surrogate"),
    # name: (argv with {out}/{ckpt:...}/{tmp:...} placeholders, stderr regex)
    "epochs 0": (["train-teacher", "--epochs", "0", *TRAIN], "--epochs: must be >= 1"),
    "epochs -1": (["train-teacher", "--epochs", "-1", *TRAIN], "--epochs: must be >= 1"),
    "epochs abc": (["train-vae", "--epochs", "abc", *TRAIN], "--epochs: expected an integer"),
    "epochs 1.5": (["train-vae", "--epochs", "1.5", *TRAIN], "--epochs: expected an integer"),
    "attack-steps 0": (["train-teacher", "--adversarial", "pgd", "--attack-steps", "0", *TRAIN],
                       "--attack-steps: must be >= 1"),
    "epsilon nan": (["train-teacher", "--adversarial", "pgd", "--epsilon", "nan", *TRAIN],
                    "--epsilon: must be finite"),
    "epsilon 2": (["train-teacher", "--adversarial", "fgsm", "--epsilon", "2", *TRAIN],
                  "--epsilon: must be <= 1"),
    "epsilon -0.1": (["train-teacher", "--epsilon", "-0.1", *TRAIN], "--epsilon: must be >= 0"),
    "consistency -1": (["train-teacher", "--consistency-weight", "-1", *TRAIN],
                       "--consistency-weight: must be >= 0"),
    "consistency inf": (["train-teacher", "--consistency-weight", "inf", *TRAIN],
                        "must be finite"),
    "consistency without attack": (["train-teacher", "--consistency-weight", "1", *TRAIN],
                                   "needs --adversarial"),
    "unknown layer": (["train-teacher", "--adversarial", "pgd", "--layer", "conv9", *TRAIN],
                      "--layer 'conv9' is not one of"),
    "seed -1": (["train-vae", "--seed", "-1", *TRAIN], "--seed: must be >= 0"),
    "latent-dim 0": (["train-vae", "--latent-dim", "0", *TRAIN], "--latent-dim: must be >= 1"),
    "decoder-blocks -1": (["train-vae", "--decoder-blocks", "-1", *TRAIN],
                          "--decoder-blocks: must be >= 0"),
    "lr-schedule linear": (["train-vae", "--lr-schedule", "linear", *TRAIN],
                           "--lr-schedule: invalid choice: 'linear'"),
    "teacher-weight -1": (["train-vae", "--teacher-weight", "-1", *TRAIN],
                          "--teacher-weight: must be >= 0"),
    "teacher-weight, no teacher": (["train-vae", "--teacher-weight", "10", *TRAIN],
                                   "--teacher-weight needs a teacher: .*teacher does not exist"),
    "a teacher without teacher-weight": (["train-vae", "--checkpoints", "{ckpt:digits}", *TRAIN],
                                         "only for --teacher-weight, which is 0"),
    "misspelt dataset": (["train-teacher", "--dataset", "mnsit", *TRAIN],
                         "Unknown dataset 'mnsit'. Did you mean 'mnist'"),
    "unknown dataset": (["train-vae", "--dataset", "qwertyuiop", *TRAIN],
                        "Unknown dataset 'qwertyuiop'"),
    "TFDS dataset offline": (["train-vae", "--dataset", "cifar10", *TRAIN],
                             "'cifar10' is not prepared .* downloads are off"),
    "misspelt split": (["train-teacher", "--train-split", "tset", *TRAIN],
                       "did you mean 'test'"),
    "empty eval split": (["train-teacher", "--train-split", "train",
                          "--eval-split", "test[5000:100]", *TRAIN], "selects no images"),
    "empty percent split": (["train-vae", "--train-split", "train[50%:50%]", *TRAIN],
                            "selects no images"),
    "bad split syntax": (["train-teacher", "--train-split", "test[", *TRAIN], "Invalid split"),
    "split smaller than a batch": (["train-teacher", "--train-split", "train[:10]", *TRAIN],
                                   "fewer than one batch of 128"),
    "out is a file": (["train-teacher", "--quiet", "--out", "{tmp:file}"],
                      "exists and is not a folder"),
    "out unwritable": (["train-vae", "--quiet", "--out", "/proc/deepvid-out"],
                       "cannot write to --out"),
    "out below a file": (["train-vae", "--quiet", "--out", "{tmp:file}/sub"],
                         "cannot write to --out|not a folder"),
    "out holds foreign files": (["train-teacher", "--quiet", "--out", "{tmp:foreign}"],
                                "Refusing .*thesis.tex"),
    "surrogate: no checkpoints": (["train-surrogate", "--checkpoints", "{tmp:none}", *TRAIN],
                                  "No checkpoint folder"),
    "surrogate: checkpoint of other images": (
        ["train-surrogate", "--checkpoints", "{ckpt:16x16}", *TRAIN],
        r"takes images \(16, 16, 1\), but digits"),
    "surrogate: checkpoint of other classes": (
        ["train-surrogate", "--checkpoints", "{ckpt:5 classes}", *TRAIN],
        "predicts 5 classes, but digits has 10"),
    "surrogate: explainer-epochs 0": (
        ["train-surrogate", "--checkpoints", "{ckpt:digits}", "--explainer-epochs", "0",
         *TRAIN], "--explainer-epochs: must be >= 1"),
    "demo: count 0": (["demo", "--count", "0", *TRAIN], "--count: must be >= 1"),
    "demo: neighbors 1": (["demo", "--neighbors", "1", *TRAIN], "--neighbors: must be >= 2"),
    "demo: chunk-size 0": (["demo", "--chunk-size", "0", *TRAIN], "--chunk-size: must be >= 1"),
    "demo: figures -1": (["demo", "--figures", "-1", *TRAIN], "--figures: must be >= 0"),
    "demo: latent-scale nan": (["demo", "--latent-scale", "nan", *TRAIN],
                               "--latent-scale: must be finite"),
    "demo: latent-scale -1": (["demo", "--latent-scale", "-1", *TRAIN],
                              "--latent-scale: must be >= 0"),
    "demo: unknown sampler": (["demo", "--sampler", "gan", *TRAIN], "invalid choice: 'gan'"),
    "demo: unknown student": (["demo", "--student", "sgd", *TRAIN], "invalid choice: 'sgd'"),
    "demo: lasso 1": (["demo", "--student", "lasso", "--lasso", "1", *TRAIN],
                      "--lasso: must be < 1, got 1"),
    "demo: smooth -1": (["demo", "--smooth", "-1", *TRAIN], "--smooth: must be >= 0"),
    "demo: smooth with ridge": (["demo", "--fast", "--smooth", "0.2", *TRAIN],
                                "--smooth is the lasso student's smoothness penalty; the ridge"),
    "demo: sparse with its own settings": (
        ["demo", "--sparse", "--neighbors", "256", "--student", "lasso", *TRAIN],
        "--sparse sets --neighbors, --student itself: leave them out"),
    "demo: reuse other images": (["demo", "--reuse", "--quiet", "--out", "{ckpt:16x16}"],
                                 r"takes images \(16, 16, 1\)"),
    "demo: old results in out": (["demo", "--quiet", "--out", "{tmp:legacy demo}"],
                                 "holds results of an earlier run .*summary.json"),
    "explain: no checkpoints": (["explain", "--checkpoints", "{tmp:none}", *TRAIN],
                                "No checkpoint folder"),
    "explain: checkpoint of other images": (
        ["explain", "--checkpoints", "{ckpt:16x16}", *TRAIN], r"takes images \(16, 16, 1\)"),
    "explain: checkpoint of other classes": (
        ["explain", "--checkpoints", "{ckpt:5 classes}", *TRAIN], "predicts 5 classes"),
    "explain: indices past the end": (
        ["explain", "--checkpoints", "{ckpt:digits}", "--indices", "5000:6000", *TRAIN],
        "selects nothing valid in 359 images"),
    "explain: index past the end": (
        ["explain", "--checkpoints", "{ckpt:digits}", "--indices", "1,400", *TRAIN],
        "selects nothing valid"),
    "explain: indices not numbers": (
        ["explain", "--checkpoints", "{ckpt:digits}", "--indices", "a:b", *TRAIN],
        "expected 'start:stop' or 'i,j,k'"),
    "explain: three-part slice": (
        ["explain", "--checkpoints", "{ckpt:digits}", "--indices", "1:2:3", *TRAIN],
        "expected 'start:stop' or 'i,j,k'"),
    "explain: empty indices": (
        ["explain", "--checkpoints", "{ckpt:digits}", "--indices", "", *TRAIN],
        "expected 'start:stop' or 'i,j,k'"),
    "explain: empty split": (
        ["explain", "--checkpoints", "{ckpt:digits}", "--split", "test[300:100]", *TRAIN],
        "selects no images"),
    "explain: misspelt dataset": (
        ["explain", "--checkpoints", "{ckpt:digits}", "--dataset", "digit", *TRAIN],
        "Did you mean 'digits'"),
    "explain: neighbors 0": (
        ["explain", "--checkpoints", "{ckpt:digits}", "--neighbors", "0", *TRAIN],
        "--neighbors: must be >= 2"),
    "explain: latent-scale inf": (
        ["explain", "--checkpoints", "{ckpt:digits}", "--latent-scale", "inf", *TRAIN],
        "--latent-scale: must be finite"),
    "explain: old results in out": (
        ["explain", "--checkpoints", "{ckpt:digits}", "--quiet", "--out", "{tmp:legacy explain}"],
        "holds results of an earlier run .*explanation_000.png"),
    "explain: out is a file": (
        ["explain", "--checkpoints", "{ckpt:digits}", "--quiet", "--out", "{tmp:file}"],
        "exists and is not a folder"),
}


def _fill(argv: list[str], tmp_path: Path, models: dict[str, Path]) -> list[str]:
    out = []
    for a in argv:
        if a == "{out}":
            a = str(tmp_path / "out")
        elif a.startswith("{ckpt:"):
            a = str(models[a[6:-1]])
        elif a.startswith("{tmp:"):
            inner, _, rest = a[5:].partition("}")
            a = _tmp(tmp_path, inner) + rest
        out.append(a)
    return out


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_bad_invocations_fail_fast_and_clearly(case, tmp_path, models, tripwires, capsys):
    argv, message = CLI_CASES[case]
    code, err = run(_fill(argv, tmp_path, models), capsys)
    assert code == 2, err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1, err
    import re
    assert re.search(message, err), err
    thesis = tmp_path / "out" / "teacher" / "thesis.tex"
    if thesis.exists():
        assert thesis.read_text() == "precious"
    for legacy in (tmp_path / "ex" / "explanation_000.png", tmp_path / "demo" / "summary.json"):
        assert not legacy.parent.exists() or legacy.exists()


def test_train_vae_with_a_teacher_weight_records_it(tmp_path, models, capsys):
    out = tmp_path / "guided"
    code, err = run(["train-vae", "--quiet", "--epochs", "1", "--teacher-weight", "10",
                     "--checkpoints", str(models["digits"]), "--out", str(out)], capsys)
    assert code == 0, err
    metrics = checkpoint.read_meta(out / "vae")["metrics"]
    assert metrics["teacher_weight"] == 10.0 and metrics["train_teacher_kl"] >= 0.0


def test_interrupt_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch):
    folder = _save_models(tmp_path / "run")
    before = checkpoint.restore(folder / "teacher", kind="teacher")[0]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "train_teacher", interrupted)
    code, err = run(["train-teacher", "--quiet", "--out", str(folder)], capsys)
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    after = checkpoint.restore(folder / "teacher", kind="teacher")[0]
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before),
                                                     jax.tree.leaves(after), strict=True))


def test_disk_full_while_saving_is_one_clear_line(tmp_path, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "out" / "teacher"))

    monkeypatch.setattr(train, "train_teacher", lambda *a, **k: (
        init_teacher(jax.random.PRNGKey(0), a[2]), [{"epoch": 1, "eval_accuracy": 0.1}]))
    monkeypatch.setattr(checkpoint, "save", full)
    code, err = run(["train-teacher", "--quiet", "--epochs", "1", "--out",
                     str(tmp_path / "out")], capsys)
    assert code == 2 and "No space left on device" in err and "Traceback" not in err


def test_explain_runs_and_a_second_run_never_mixes_with_the_first(tmp_path, models, capsys):
    out = tmp_path / "ex"
    out.mkdir()
    (out / "my_notes.txt").write_text("mine")
    base = ["explain", "--checkpoints", str(models["digits"]), "--quiet", "--neighbors", "16",
            "--out", str(out)]
    code, err = run([*base, "--indices", "0:3", "--figures", "2"], capsys)
    assert code == 0, err
    assert (out / "explanation_001.png").is_file()
    summary = json.loads((out / "explanations.json").read_text())  # strict JSON
    assert summary["instances"] == 3
    code, err = run([*base, "--indices", "4,5", "--figures", "0", "--student", "ridge"], capsys)
    assert code == 0, err
    names = sorted(p.name for p in out.iterdir())
    assert names == [files.MANIFEST, "explanations.json", "my_notes.txt", "traversal.png"]
    summary = json.loads((out / "explanations.json").read_text())
    assert summary["instances"] == 2 and summary["config"]["student"]["method"] == "ridge"
    assert all(r["penalty"] > 0 and 0 <= r["flip_fraction"] <= 1
               for r in summary["per_instance"])
    assert files.read_manifest(out)["status"] == "complete"


def _subcommands() -> list[str]:
    parser = cli.build_parser()
    return sorted(next(a for a in parser._actions if a.choices and a.dest == "command").choices)


@pytest.mark.parametrize("command", _subcommands())
def test_every_commands_help_prints(command, capsys):
    """argparse formats help with %: a literal % in a help string made --help a traceback."""
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0 and f"usage: deepvid {command}" in capsys.readouterr().out


@pytest.mark.parametrize(("flags", "preset"), [
    ([], explain_lib.ExplainConfig()),  # the default
    (["--sparse"], explain_lib.ExplainConfig()),  # an alias of the default, kept for scripts
    (["--fast"], explain_lib.FAST),  # ridge over plain neighbours
    (["--smooth", "0"], dataclasses.replace(  # the default, no smoothness for any image
        explain_lib.ExplainConfig(), student=dataclasses.replace(
            explain_lib.ExplainConfig().student, lasso_smooth=0.0, lasso_smooth_grid=()))),
    (["--smooth", "0.7"], dataclasses.replace(  # the default, one smoothness for every image
        explain_lib.ExplainConfig(), student=dataclasses.replace(
            explain_lib.ExplainConfig().student, lasso_smooth=0.7, lasso_smooth_grid=()))),
])
def test_explain_presets(tmp_path, models, capsys, flags, preset):
    out = tmp_path / "preset"
    code, err = run(["explain", "--checkpoints", str(models["digits"]), "--quiet", *flags,
                     "--indices", "0", "--figures", "0", "--out", str(out)], capsys)
    assert code == 0, err
    config = json.loads((out / "explanations.json").read_text())["config"]
    want = json.loads(json.dumps(dataclasses.asdict(preset)))  # tuples: lists
    assert config["student"] == want["student"]
    assert config["neighbors"] == want["neighbors"]


# ------------------------------------------------------------------------------------------
# Data loaders
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "split", "error", "message"), [
    ("mnsit", "test", data.DataNotFoundError, "Did you mean 'mnist'"),
    ("kmnst", "test", data.DataNotFoundError, "Did you mean 'kmnist'"),
    ("fashion-mnist", "test", data.DataNotFoundError, "Did you mean 'fashion_mnist'"),
    ("", "test", data.DataNotFoundError, "non-empty"),
    (None, "test", data.DataNotFoundError, "non-empty"),
    ("mnist", "tset", ValueError, "did you mean 'test'"),
    ("mnist", "validation", ValueError, "mnist has splits"),
    ("kmnist", "train+tst", ValueError, "did you mean 'test'"),
    ("digits", "valid", ValueError, "digits has splits"),
    ("digits", "test[300:100]", ValueError, "selects no images"),
    ("digits", "test[:0]", ValueError, "selects no images"),
    ("digits", "train[100%:]", ValueError, "selects no images"),
    ("digits", "test[-0:0]", ValueError, "selects no images"),
    ("digits", None, ValueError, "split must be a string"),
    ("digits", "test[::2]", ValueError, "Invalid split"),
    ("digits", "test[1.5:]", ValueError, "Invalid split"),
    ("cifar10", "test", data.DataNotFoundError, "downloads are off"),
])
def test_data_requests_that_cannot_be_served(name, split, error, message, monkeypatch):
    monkeypatch.setenv(data.OFFLINE_ENV, "1")
    with pytest.raises(error, match=message):
        data.load(name, split)


def test_a_misspelt_split_never_reaches_tfds(monkeypatch):
    def download(*args, **kwargs):
        raise AssertionError("TFDS was asked")

    monkeypatch.setattr(data, "_load_tfds", download)
    with pytest.raises(ValueError, match="did you mean 'test'"):
        data.load("fashion_mnist", "tset", download=True)


# ------------------------------------------------------------------------------------------
# Files are written atomically
# ------------------------------------------------------------------------------------------


def test_unserialisable_json_leaves_the_old_file(tmp_path):
    target = tmp_path / "r.json"
    files.write_json(target, {"a": 1})
    with pytest.raises(TypeError):
        files.write_json(target, {"a": object()})
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_strict_json_has_no_nan_token(tmp_path):
    target = files.write_json(tmp_path / "r.json", {"x": float("nan"), "y": np.float32(2),
                                                    "z": np.array([1.0, np.inf])})
    text = target.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"x": None, "y": 2.0, "z": [1.0, None]}


@pytest.mark.parametrize("fail", ["inside the write", "at the rename"])
def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch, fail):
    target = tmp_path / "fig.png"
    target.write_bytes(b"old picture")
    if fail == "at the rename":
        monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "full")))
        with pytest.raises(OSError):
            files.write_bytes(target, b"new picture")
    else:
        with pytest.raises(RuntimeError), files.atomic_path(target) as tmp:
            tmp.write_bytes(b"half a pic")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old picture"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png"]


WRITER = textwrap.dedent("""
    import sys
    from deepvid_jax import files
    i = 0
    print("READY", flush=True)
    while True:
        i += 1
        files.write_json(sys.argv[1], {"i": i, "payload": list(range(20000 + i % 7))})
""")


def test_sigkill_during_writes_leaves_a_whole_json_file(tmp_path):
    target = tmp_path / "results.json"
    files.write_json(target, {"i": 0, "payload": []})
    for delay in (0.05, 0.13, 0.31):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "READY"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        value = json.loads(target.read_text())  # never a half-written file
        assert len(value["payload"]) in (0, *(20000 + value["i"] % 7,))


def test_a_tfds_dataset_offline_is_one_line_without_dependency_logs(tmp_path):
    """As a user runs it: TFDS warns through absl about a cache folder without metadata; that
    warning must not come before (or instead of) our one-line error."""
    (tmp_path / "tfds" / "cifar10" / "3.0.2").mkdir(parents=True)
    env = {**os.environ, "TFDS_DATA_DIR": str(tmp_path / "tfds"), "DEEPVID_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "deepvid_jax.cli", "train-vae", "--dataset",
                           "cifar10", "--quiet", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.startswith("deepvid train-vae: error: Could not load 'cifar10'"), \
        proc.stderr
    assert "WARNING" not in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------
# --teacher module:function never lets the current folder shadow installed packages
# ------------------------------------------------------------------------------------------


def test_a_teacher_module_named_like_an_installed_package_is_refused(tmp_path, models, capsys,
                                                                     monkeypatch):
    import zarr

    (tmp_path / "zarr.py").write_text("def teacher():\n    raise RuntimeError('wrong zarr')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    code, err = run(["run", "--dataset", "digits", "--split", "test[:4]", "--teacher",
                     "zarr:teacher", "--checkpoints", str(models["digits"]), "--quiet",
                     "--out", str(tmp_path / "s.zarr")], capsys)
    assert code == 2 and "Traceback" not in err, err
    assert f"{tmp_path / 'zarr.py'} in the current folder has the name of an installed " \
           "module 'zarr'" in err, err
    assert sys.modules["zarr"] is zarr and str(tmp_path) not in (zarr.__file__ or "")
    assert not (tmp_path / "s.zarr").exists()


def test_a_teacher_module_of_the_current_folder_is_searched_after_installed_ones(
        tmp_path, models, capsys, monkeypatch):
    (tmp_path / "my_local_teacher.py").write_text(textwrap.dedent("""
        import jax.numpy as jnp

        def teacher():
            apply = lambda p, x: jnp.reshape(x, (x.shape[0], -1))[:, :10] * p
            return apply, jnp.float32(3.0), 10
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "my_local_teacher", raising=False)
    out = tmp_path / "ex"
    code, err = run(["explain", "--method", "gradient", "--teacher", "my_local_teacher:teacher",
                     "--checkpoints", str(models["digits"]), "--indices", "0:2", "--figures",
                     "0", "--quiet", "--out", str(out)], capsys)
    assert code == 0, err
    assert sys.path[-1] == str(tmp_path) and str(tmp_path) not in sys.path[:-1]
    summary = json.loads((out / "explanations.json").read_text())
    images = data.load("digits", "test").images[:2]
    assert [r["teacher"] for r in summary["per_instance"]] == \
        np.argmax(images.reshape(2, -1)[:, :10], -1).tolist()


# ------------------------------------------------------------------------------------------
# Ctrl-C during `deepvid explain`: the message, exit code 130, never a crash
# ------------------------------------------------------------------------------------------


# The CLI as a terminal starts it: Python's own SIGINT handler, even where the test run
# ignores SIGINT (a shell without job control starts background commands so, and a child
# inherits it; the CLI then rightly leaves Ctrl-C alone, as under nohup).
AS_IN_A_TERMINAL = ("import runpy, signal, sys; "
                    "signal.signal(signal.SIGINT, signal.default_int_handler); "
                    "sys.argv[0] = 'deepvid'; "
                    "runpy.run_module('deepvid_jax.cli', run_name='__main__')")


def test_sigint_during_explain_exits_130_without_a_crash(tmp_path, models):
    out = tmp_path / "ex"
    env = cpu_env(PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", AS_IN_A_TERMINAL, "explain", "--checkpoints",
         str(models["digits"]), "--indices", "0:300", "--neighbors", "64", "--chunk-size", "8",
         "--figures", "0", "--out", str(out)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env)
    seen = b""
    deadline = time.monotonic() + 240
    while b"deepvid:" not in seen and time.monotonic() < deadline:  # its progress bar
        chunk = os.read(proc.stderr.fileno(), 4096)
        if not chunk:
            break
        seen += chunk
    assert b"deepvid:" in seen, seen.decode(errors="replace")[-2000:]
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=240)[1]
    err = (seen + rest).decode(errors="replace")
    assert proc.returncode == 130, err[-2000:]
    assert "deepvid explain: interrupted" in err
    assert "Traceback" not in err and "Segmentation" not in err and "Fatal" not in err
    assert files.read_manifest(out)["status"] == "running"  # never marked complete


def test_an_interrupt_that_a_bare_except_swallows_is_raised_again():
    """JAX swallows a KeyboardInterrupt raised just after an XLA compilation (bare ``except:``):
    the CLI's handler raises it again until the command sees one."""
    cli_main = importlib.import_module("deepvid_jax.cli.main")  # (cli.main is the function)
    handler = cli_main._RepeatedInterrupt(every=0.05)
    previous = signal.signal(signal.SIGINT, handler)
    try:
        try:  # as in JAX: the first raise lands inside a bare except
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
        except:  # noqa: E722
            pass
        with pytest.raises(KeyboardInterrupt):
            for _ in range(200):
                time.sleep(0.01)
        handler.seen = True
        time.sleep(0.2)  # the repeats stop once the command has seen one
    finally:
        signal.signal(signal.SIGINT, previous)

