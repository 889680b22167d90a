"""`deepvid bench`: the FLOP count against closed forms, a tiny run of every method, merging
runs by device, bad settings."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import deepvid_jax as dv
from deepvid_jax.cli import main as deepvid_main
from deepvid_jax.data import sources as data
from deepvid_jax.models.networks import teacher_config_for, vae_config_for
from deepvid_jax.runner import bench


def test_flops_of_a_matmul_and_a_conv_are_the_closed_forms():
    a, b = jnp.ones((3, 5)), jnp.ones((5, 7))
    assert bench.jaxpr_flops(jax.make_jaxpr(lambda x, y: x @ y)(a, b)) == 2 * 3 * 5 * 7
    x, w = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))  # NHWC, HWIO, SAME

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    assert bench.jaxpr_flops(jax.make_jaxpr(conv)(x, w)) == 2 * (2 * 8 * 8 * 4) * (3 * 3 * 3)


def test_loops_count_their_trip_count_and_jit_vmap_are_seen_through():
    a = jnp.ones((4, 4))
    one = 2 * 4**3

    def scanned(x):
        return jax.lax.scan(lambda c, _: (c @ x, None), x, None, length=10)[0]

    def fori(x):
        return jax.lax.fori_loop(0, 6, lambda i, c: c @ x, x)

    assert bench.jaxpr_flops(jax.make_jaxpr(scanned)(a)) == 10 * one
    assert bench.jaxpr_flops(jax.make_jaxpr(fori)(a)) == 6 * one
    batched = jax.jit(jax.vmap(lambda x: x @ x))
    assert bench.jaxpr_flops(jax.make_jaxpr(batched)(jnp.ones((3, 4, 4)))) == 3 * one
    # lax.map over blocks, as DeepVID's blocked decoding uses
    mapped = jax.make_jaxpr(lambda x: jax.lax.map(lambda r: r @ a, x))(jnp.ones((5, 2, 4)))
    assert bench.jaxpr_flops(mapped) == 5 * 2 * 2 * 4 * 4


@pytest.fixture(scope="module")
def tiny_models():
    return dv.Models.untrained((8, 8, 1), 10)


# The tiny run's batch and sample count: the other runs of these models use them too, so
# their programs are the tiny run's, loaded from the run's compilation cache (tests/conftest.py).
BATCH, SAMPLES = 8, 16


@pytest.fixture(scope="module")
def tiny_run(tiny_models):
    images = data.load("digits", "test[:6]").images
    config = bench.BenchConfig(methods=tuple(m for m in bench.ROWS if m != "lime_image"),
                               batch_sizes=(BATCH,), samples=(SAMPLES,), repeats=1,
                               min_seconds=0.0)
    return bench.run(tiny_models, images, config, trained=False, log=lambda _: None)


def test_untrained_models_are_ours_of_the_shape_and_reproducible(tiny_models):
    shape, m = (8, 8, 1), tiny_models  # key PRNGKey(0), the default
    assert m.teacher_config == teacher_config_for(shape, 10) and m.num_classes == 10
    assert m.vae_config == vae_config_for(shape)
    assert m.surrogate_config.image_shape == shape == m.explainer_config.image_shape
    assert m.explainer_config.num_stages == len(m.surrogate_config.features)
    assert m.teacher_apply(m.teacher_params, jnp.zeros((2, *shape))).shape == (2, 10)
    again = dv.Models.untrained(shape, 10, key=jax.random.PRNGKey(0))
    for part in ("teacher", "vae", "surrogate", "explainer"):
        a, b = (jax.tree.leaves(v.params()[part]) for v in (m, again))
        assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True)), part
    assert m.static() == again.static()  # one compiled program for both
    with pytest.raises(ValueError, match="num_classes"):
        dv.Models.untrained(shape, 1)
    with pytest.raises(ValueError, match="image_shape"):
        dv.Models.untrained((8, 8), 10)


def test_the_rows_are_the_registry_and_two_references():
    assert bench.ROWS == (*dv.METHODS, "decode_classify", "lime_image")
    assert set(bench.SAMPLED) == {n for n, m in dv.METHODS.items() if m.sampled} | {
        "decode_classify", "lime_image"}
    rise = bench.bench_config(dv.get("rise"), 16, 8)
    assert (rise.num_masks, rise.batch) == (16, 16)
    deepvid = bench.bench_config(dv.get("deepvid"), 16, 8)
    assert (deepvid.neighbors.num, deepvid.holdout, deepvid.block_size) == (16, 2, 8)
    assert deepvid.student_block == dv.ExplainConfig().student_block
    assert bench.bench_config(dv.get("deepvid"), 16, 8, None).student_block is None
    assert bench.bench_config(dv.get("deepvid"), 16, 8, 3).student_block == 3
    assert bench.bench_config(dv.get("gradient"), 16, 8) == dv.get("gradient").config


def test_every_method_gets_a_row_per_batch_size_with_positive_rates(tiny_run):
    rows = tiny_run["rows"]
    methods = [m for m in bench.ROWS if m != "lime_image"]
    assert sorted({r["method"] for r in rows}) == sorted(methods)
    assert tiny_run["models_trained"] is False
    for r in rows:
        assert r["explanations_per_s"] > 0 and r["compile_s"] > 0 and r["memory_mib"] >= 0
        assert r["batch"] == 8
        assert (r["samples"] == 16) == (r["method"] in bench.SAMPLED)
    # the sampling methods' FLOPs grow with the samples, and DeepVID does at least the work of
    # decoding and classifying its neighbours
    per = {(r["method"], r["batch"]): r["flops_per_explanation"] for r in rows}
    assert per[("deepvid_fixed_radius", 8)] >= per[("decode_classify", 8)]
    assert per[("deepvid_fast", 8)] > per[("deepvid_fixed_radius", 8)]  # + calibration probes
    # + the lasso's scanned FISTA steps, counted per step (XLA's own count sees one)
    deepvid = next(r for r in rows if r["method"] == "deepvid")
    fast = next(r for r in rows if r["method"] == "deepvid_fast")
    assert deepvid["flops_per_explanation"] > fast["flops_per_explanation"]
    assert deepvid["flops_per_explanation"] > deepvid["xla_flops_per_explanation"]


def test_methods_the_models_cannot_run_are_skipped_with_a_reason(tiny_models):
    teacher_only = dv.Models.ours(tiny_models.teacher_params, tiny_models.teacher_config)
    logged = []
    config = bench.BenchConfig(methods=("deepvid", "decode_classify", "gradient"),
                               batch_sizes=(BATCH,), samples=(SAMPLES,), min_seconds=0.0)
    result = bench.run(teacher_only, data.load("digits", "test[:6]").images, config,
                       trained=True, log=logged.append)
    assert [r["method"] for r in result["rows"]] == ["gradient"]
    assert result["models_trained"] is True
    assert any(line.startswith("deepvid: skipped") and "VAE" in line for line in logged)
    assert any(line.startswith("decode_classify: skipped") for line in logged)


def test_runs_merge_by_device_and_the_table_names_each(tiny_run, tmp_path):
    other = json.loads(json.dumps(tiny_run))
    other["device"]["name"] = "gpu: Imaginary X1"
    bench.write(tiny_run, tmp_path)
    bench.write(other, tmp_path)
    bench.write(tiny_run, tmp_path)  # the same device again replaces its run
    runs = json.loads((tmp_path / "bench.json").read_text())["runs"]
    assert sorted(runs) == sorted([tiny_run["device"]["name"], "gpu: Imaginary X1"])
    text = (tmp_path / "bench.md").read_text()
    assert f"### {tiny_run['device']['name']}" in text and "### gpu: Imaginary X1" in text
    assert "decoding and classifying its neighbours alone" in text
    assert (tmp_path / f"bench_{bench.slug(tiny_run['device']['name'])}.png").stat().st_size > 0


def test_a_foreign_json_in_out_is_refused_not_overwritten(tiny_run, tmp_path):
    (tmp_path / "bench.json").write_text('{"something": 1}')
    with pytest.raises(ValueError, match="not a bench result file"):
        bench.write(tiny_run, tmp_path)
    assert json.loads((tmp_path / "bench.json").read_text()) == {"something": 1}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"methods": ("deepvid", "shap")}, "BenchConfig.methods"),
    ({"methods": ()}, "empty"),
    ({"batch_sizes": (0,)}, "batch_sizes"),
    ({"samples": (1,)}, "samples must be >= 2"),
    ({"repeats": 0}, "repeats"),
    ({"pairs": -1}, "pairs"),
    ({"pairs": 1.5}, "pairs"),
    ({"student_block": 0}, "student_block"),
])
def test_bad_bench_settings_are_clear(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bench.BenchConfig(**kwargs)


@pytest.mark.parametrize(("argv", "message"), [
    (["--methods", "deepvid,shap"], "unknown method"),
    (["--batch-sizes", "16,x"], "comma-separated integers"),
    (["--samples", "0"], "positive integers"),
])
def test_bad_bench_arguments_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        deepvid_main(["bench", *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_bench_command_end_to_end(tmp_path, capsys):
    rc = deepvid_main(["bench", "--dataset", "digits", "--methods", "deepvid,decode_classify",
                       "--batch-sizes", str(BATCH), "--samples", str(SAMPLES),
                       "--student-block", "0", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "untrained models" in out and "decoding and classifying" in out
    result = next(iter(json.loads((tmp_path / "bench.json").read_text())["runs"].values()))
    assert [r["method"] for r in result["rows"]] == ["deepvid", "decode_classify"]
    assert np.isfinite(result["matmul_flops_per_s"])
    assert result["config"]["student_block"] is None  # 0: the whole batch at once


def test_deepvid_rows_get_the_median_ratio_of_alternating_pairs(tiny_run):
    rows = {(r["method"], r["batch"]): r for r in tiny_run["rows"]}
    for (method, _), r in rows.items():
        assert ("decode_classify_ratio" in r) == bench.paired(method)
    r = rows["deepvid", BATCH]
    runs = r["decode_classify_ratios"]
    assert len(runs) == bench.BenchConfig().pairs and all(v > 0 for v in runs)
    assert r["decode_classify_ratio"] == pytest.approx(np.median(runs))
    assert f"{r['decode_classify_ratio']:.2f}x the time of decoding" in "\n".join(
        bench.ratios(tiny_run))


def test_the_ratios_compare_the_fastest_deepvid_with_both_limes_and_its_floor():
    def row(method, batch, rate, **extra):
        return {"method": method, "batch": batch, "samples": 512, "explanations_per_s": rate,
                **extra}

    result = {"rows": [row("deepvid", 16, 6.0), row("deepvid", 64, 8.0),
                       row("lime", 16, 4.0), row("lime", 64, 5.0), row("lime_image", 1, 10.0),
                       row("decode_classify", 16, 7.5),
                       row("decode_classify", 64, 10.0, decode_classify_ratio=9.9),
                       row("deepvid_fast", 64, 9.0, decode_classify_ratio=1.1,
                           decode_classify_ratios=[1.0, 1.1, 1.2])]}
    lines = bench.ratios(result)
    assert "S=512: DeepVID (batch 64) is 0.8x lime_image's explanations/s" in lines
    assert ("S=512: DeepVID (batch 64) is 1.6x our batched LIME's explanations/s (batch 64)"
            in lines)
    # unpaired rows: the ratio of the rates; paired ones: their median, and how many pairs
    assert ("S=512 B=16: deepvid takes 1.25x the time of decoding and classifying its "
            "neighbours alone") in lines
    assert ("S=512 B=64: deepvid_fast takes 1.10x the time of decoding and classifying its "
            "neighbours alone (median of 3 alternating pairs)") in lines
    assert "S=512: DeepVID at batch 64 runs 1.33x its explanations/s at batch 16" in lines


def test_a_paired_ratio_alternates_the_calls_and_divides_the_right_way():
    order = []

    def timer(name, seconds):
        return lambda: order.append(name) or seconds

    runs = bench.paired_ratio(timer("a", 3.0), timer("ref", 2.0), 4)
    assert runs == [1.5] * 4
    assert order == ["a", "ref", "ref", "a", "a", "ref", "ref", "a"]
    with pytest.raises(ValueError, match="pairs"):
        bench.paired_ratio(timer("a", 1.0), timer("ref", 1.0), 0)


def test_measure_timer_gives_the_row_and_a_timer_of_the_same_compiled_program():
    """What a benchmark pairs with `paired_ratio`: `measure`'s row, and a timer that runs the
    program compiled for it (no new trace: a traced Python side effect happens once)."""
    traces = []

    def fn(x, c, keys):
        traces.append(1)
        return jnp.sum(x, axis=(1, 2, 3)) + c

    images, classes = np.ones((4, 8, 8, 1), np.float32), np.arange(4)
    row, call = bench.measure_timer(fn, images, classes, 2)
    assert set(row) == set(bench.measure(fn, images, classes, 2))
    assert row["seconds"] > 0 and row["explanations_per_s"] == pytest.approx(4 / row["seconds"])
    count = len(traces)
    seconds = [call() for _ in range(3)]
    assert all(isinstance(t, float) and t > 0 for t in seconds) and len(traces) == count


def test_a_program_too_big_for_the_device_is_a_row_that_says_so(tiny_models, monkeypatch):
    monkeypatch.setattr(bench, "device_memory_bytes", lambda: 1024)
    images = data.load("digits", "test[:6]").images
    config = bench.BenchConfig(methods=("gradient", "lime"), batch_sizes=(BATCH,),
                               samples=(SAMPLES,), min_seconds=0.0)
    result = bench.run(tiny_models, images, config, trained=False, log=lambda _: None)
    assert [r["method"] for r in result["rows"]] == ["gradient", "lime"]
    assert all("needs" in r["error"] and "the device has" in r["error"] for r in result["rows"])
    assert "not run: needs" in bench.markdown({"x": result})
