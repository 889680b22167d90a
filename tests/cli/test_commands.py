"""The thin command line: one module per command in one pattern, `deepvid explain` through
the registry for any method, and the training commands' history and quiet output."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from deepvid_jax import cli
from deepvid_jax.cli.main import COMMANDS
from deepvid_jax.data import sources as data
from deepvid_jax.explainers import registry
from deepvid_jax.models import checkpoint
from deepvid_jax.models.bundle import Models
from deepvid_jax.models.networks import TeacherConfig, VAEConfig, init_teacher, init_vae


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ckpts")
    tcfg = TeacherConfig(num_classes=10, features=(4,), hidden=8, image_shape=(8, 8, 1))
    vcfg = VAEConfig(latent_dim=2, features=(4,), hidden=8, image_shape=(8, 8, 1))
    checkpoint.save(folder / "teacher", init_teacher(jax.random.PRNGKey(0), tcfg),
                    kind="teacher", config=tcfg)
    checkpoint.save(folder / "vae", init_vae(jax.random.PRNGKey(1), vcfg), kind="vae",
                    config=vcfg)
    return folder


@pytest.mark.parametrize("module", COMMANDS, ids=lambda m: m.__name__)
def test_every_command_module_registers_itself_with_its_run(module):
    subparsers = argparse.ArgumentParser().add_subparsers()
    parser = module.add_parser(subparsers)
    assert isinstance(parser, argparse.ArgumentParser)
    assert parser.get_default("func") is module.run
    assert list(subparsers.choices.values()) == [parser]


def test_the_parser_has_every_command_in_order():
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert list(sub.choices) == ["train-teacher", "train-vae", "train-surrogate", "demo",
                                 "explain", "bench", "run", "verify", "report", "explore"]


def test_explain_reaches_any_registered_method(tmp_path, checkpoints, capsys):
    out = tmp_path / "grad"
    code = cli.main(["explain", "--method", "gradient", "--checkpoints", str(checkpoints),
                     "--indices", "0:3", "--figures", "2", "--quiet", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "explanations.json").read_text())
    assert summary["method"] == "gradient" and summary["instances"] == 3
    assert summary["config"] == json.loads(json.dumps(
        dataclasses.asdict(registry.get("gradient").config)))
    images = data.load("digits", "test").images[:3]
    models = Models.load(checkpoints)
    want = registry.predicted_classes(images, models)
    assert [r["teacher"] for r in summary["per_instance"]] == want.tolist()
    assert sorted(p.name for p in out.glob("*.png")) == ["explanation_000.png",
                                                         "explanation_001.png"]
    assert "by gradient" in capsys.readouterr().out


def test_explain_lime_reports_its_fit(tmp_path, checkpoints, capsys):
    out = tmp_path / "lime"
    code = cli.main(["explain", "--method", "lime", "--checkpoints", str(checkpoints),
                     "--indices", "5,6", "--figures", "0", "--quiet", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "explanations.json").read_text())
    assert summary["instances"] == 2 and set(summary["fidelity_mean"]) >= {"top1", "r2"}
    assert all(0.0 <= r["top1"] <= 1.0 for r in summary["per_instance"])


@pytest.mark.parametrize(("flags", "message"), [
    (["--fast"], "--fast is DeepVID's option; --method gradient"),
    (["--neighbors", "16", "--student", "ridge"],
     "--neighbors, --student are DeepVID's options"),
    (["--sampler", "pixel"], "--sampler is DeepVID's option"),
])
def test_deepvid_options_are_refused_for_other_methods(tmp_path, checkpoints, capsys, flags,
                                                       message, monkeypatch):
    def tripped(*args, **kwargs):
        raise AssertionError("explained before the bad flag was reported")

    monkeypatch.setattr(registry, "explain", tripped)
    code = cli.main(["explain", "--method", "gradient", "--checkpoints", str(checkpoints),
                     *flags, "--quiet", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err


def test_a_method_whose_models_are_missing_fails_before_work(tmp_path, checkpoints, capsys,
                                                            monkeypatch):
    monkeypatch.setattr(registry, "explain", lambda *a, **k: pytest.fail("explained"))
    code = cli.main(["explain", "--method", "surrogate", "--checkpoints", str(checkpoints),
                     "--quiet", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "needs the attentive surrogate" in err, err
    assert not (tmp_path / "x").exists()


def test_training_prints_one_line_and_keeps_the_history(tmp_path, capsys):
    out = tmp_path / "models"
    code = cli.main(["train-teacher", "--epochs", "2", "--train-split", "train[:128]",
                     "--eval-split", "test[:32]", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "epoch 1:" not in captured.out + captured.err  # no line per epoch beside the bar
    lines = captured.out.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("teacher: eval accuracy"), lines
    history = checkpoint.read_meta(out / "teacher")["metrics"]["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    meta = checkpoint.read_meta(out / "teacher")["metrics"]
    assert meta["eval_accuracy"] == history[-1]["eval_accuracy"]
    assert np.isfinite([h["train_loss"] for h in history]).all()
    assert (out / "teacher" / "curves.png").is_file()
