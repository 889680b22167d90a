"""The metric registry: every metric of every kind through one interface, and the same
invariances for all (batch equals loop, chunk size does not matter, same key same result, the
registry equals the public function a user calls), from one table."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SMALL, TINY_TEACHER

import deepvid_jax as dv
from deepvid_jax.data import sources as data
from deepvid_jax.metrics import fidelity, localisation, randomisation, stability
from deepvid_jax.metrics import registry as R
from deepvid_jax.models.networks import init_teacher, teacher_apply_for

B = 5
IMAGES = data.load("digits", "test[:5]").images
CLASSES = np.array([3, 1, 4, 1, 5], np.int32)
KEY = jax.random.PRNGKey(7)
ATTR = np.asarray(jax.random.normal(jax.random.PRNGKey(3), IMAGES.shape))
REGIONS = np.random.default_rng(0).random(IMAGES.shape[:3]) < 0.4
METHOD = "smoothgrad"  # stochastic and cheap: every explainer metric has something to measure

# Small settings of every registered metric, so the table runs in seconds.
TABLE = {
    **{f"auc_{b}": R.DeletionConfig(steps=4, baseline=b) for b in fidelity.BASELINES},
    "average_drop": None,
    **{n: R.LocalisationConfig() for n in ("relevance_mass", "relevance_rank",
                                           "pointing_game")},
    "max_sensitivity": R.SensitivityConfig(samples=2),
    "seed_agreement": R.SeedConfig(runs=2),
    "randomisation": R.RandomisationConfig(),
}


@pytest.fixture(scope="module")
def models(tiny_teacher) -> dv.Models:
    return dv.Models(teacher_apply_for(TINY_TEACHER), tiny_teacher, 10,
                     teacher_config=TINY_TEACHER)


def _run(name, models, chunk, key=KEY, images=IMAGES, classes=CLASSES, reference=None):
    m = R.get(name)
    if m.kind == "explainer":
        return R.score_explainer(name, dv.get(METHOD), images, classes, key, models=models,
                                 config=TABLE[name], method_config=SMALL[METHOD],
                                 reference=reference, chunk_size=chunk)
    if m.kind == "localisation":
        return R.score(name, images, ATTR[: len(images)], config=TABLE[name],
                       regions=REGIONS[: len(images)], key=key, chunk_size=chunk)
    return R.score(name, images, ATTR[: len(images)], classes, models=models, config=TABLE[name],
                   key=key, chunk_size=chunk)


@pytest.fixture(scope="module")
def scored(models):
    """run(name, chunk, seed) -> the metric's outputs on the 5 images, each computed once."""

    @functools.cache
    def run(name: str, chunk: int, seed: int = 7) -> dict:
        return _run(name, models, chunk, key=jax.random.PRNGKey(seed))

    return run


def _close(a, b, tol=2e-4, floor=1e-6):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=0, atol=max(tol * np.nanmax(np.abs(b)), floor))


def test_every_metric_is_in_the_table_with_a_known_kind():
    assert set(TABLE) == set(R.METRICS)
    assert {m.kind for m in R.METRICS.values()} == set(R.KINDS)
    assert dv.METRICS is R.METRICS


@pytest.mark.parametrize("name", sorted(TABLE))
def test_outputs_have_a_leading_batch_axis_and_tabulated_ones_are_finite(name, scored):
    out = scored(name, 2)
    assert set(R.get(name).better) <= set(out)
    for k, v in out.items():
        assert v.shape[0] == B, k
    for k in R.get(name).better:
        assert out[k].shape == (B,) and np.isfinite(out[k]).all(), k


@pytest.mark.parametrize("name", sorted(TABLE))
def test_chunk_size_does_not_matter(name, scored):
    # chunk 1 is a loop over instances; 5 is one batch; 2 pads the last chunk.
    ref = scored(name, B)
    for chunk in (1, 2):
        got = scored(name, chunk)
        assert set(got) == set(ref)
        for k in ref:
            _close(got[k], ref[k])


@pytest.mark.parametrize("name", sorted(TABLE))
def test_batch_function_equals_loop(name, models):
    m = R.get(name)
    keys = jax.vmap(lambda i: jax.random.fold_in(KEY, i))(jnp.arange(B))
    static, params = models.static(), models.params()
    if m.kind == "explainer":
        meth = dv.get(METHOD)

        def explain(p, x, c, k):
            return meth.batch(p, x, c, k, models=static, config=SMALL[METHOD]).attributions

        def call(sl):
            return m.fn(explain, params, jnp.asarray(IMAGES[sl]), jnp.asarray(CLASSES[sl]),
                        keys[sl], None, models=static, config=TABLE[name])
    else:
        third = REGIONS if m.kind == "localisation" else CLASSES

        def call(sl):
            return m.batch(params, jnp.asarray(IMAGES[sl]), jnp.asarray(ATTR[sl]),
                           jnp.asarray(third[sl]), keys[sl], models=static, config=TABLE[name])

    whole = call(slice(None))
    for i in range(B):
        one = call(slice(i, i + 1))
        for k in whole:
            _close(one[k][0], whole[k][i])


@pytest.mark.parametrize("name", sorted(TABLE))
def test_same_key_same_result_and_explainer_metrics_use_it(name, scored):
    a, b = scored(name, 2), scored(name, 2)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    if R.get(name).kind == "explainer":  # smoothgrad's noise (and the metric's) is the key's
        other = scored(name, 2, seed=8)
        assert any(not np.array_equal(a[k], other[k]) for k in a), name


# --------------------------------------------------------------------------------------------
# One face: the registry is the public function a user calls
# --------------------------------------------------------------------------------------------


def _instance_keys(key=KEY, n=B):
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))


@pytest.mark.parametrize("name", ["auc_zero", "auc_blur", "average_drop", "relevance_mass",
                                  "relevance_rank", "pointing_game"])
def test_registry_equals_the_public_function(name, models, scored):
    got = scored(name, 2)
    cfg = TABLE[name]
    kw = dict(teacher_apply=models.teacher_apply, teacher_params=models.teacher_params)
    if name.startswith("auc_"):
        want = fidelity.deletion_insertion(IMAGES, ATTR, CLASSES, steps=cfg.steps,
                                           baseline=cfg.baseline, keys=_instance_keys(),
                                           **kw)._asdict()
    elif name == "average_drop":
        drop, inc = fidelity.average_drop_increase(IMAGES, ATTR.sum(-1), CLASSES, **kw)
        want = {"average_drop": drop, "increase": inc}
    else:
        fn = {"relevance_mass": localisation.relevance_mass,
              "relevance_rank": localisation.relevance_rank_accuracy,
              "pointing_game": localisation.pointing_game}[name]
        want = {name: fn(ATTR, REGIONS, cfg.pooling)}
    assert set(got) == set(want)
    for k in want:
        _close(got[k], want[k], tol=1e-5)


def test_explainer_metrics_equal_the_public_functions_on_dv_explain(models, scored):
    """The reference run is dv.explain's with the same key; noise and extra runs come from
    keys derived from each instance's key; randomisation explains with the same keys."""
    def explain(images, key=KEY, teacher_params=None):
        m = models if teacher_params is None else dataclasses.replace(
            models, teacher_params=teacher_params)
        return np.asarray(dv.explain(METHOD, np.asarray(images), CLASSES, key, models=m,
                                     config=SMALL[METHOD]).attributions)

    ref = explain(IMAGES)
    keys = _instance_keys()
    noise_keys = R._tagged(keys, R._NOISE, 1)[0]
    want = stability.max_sensitivity(explain, IMAGES, keys=noise_keys, samples=2,
                                     reference=ref)
    _close(scored("max_sensitivity", 2)["max_sensitivity"], want)

    # run 1's keys are derived from each instance's own key: the batch function takes them
    meth, static = dv.get(METHOD), models.static()
    second = meth.batch(models.params(), jnp.asarray(IMAGES), jnp.asarray(CLASSES),
                        R._tagged(keys, R._RUNS, 1)[0], models=static,
                        config=SMALL[METHOD]).attributions
    _close(scored("seed_agreement", 2)["seed_agreement"],
           stability.seed_agreement(np.stack([ref, np.asarray(second)])))

    fresh = init_teacher(jax.random.PRNGKey(1), TINY_TEACHER)
    rho = randomisation.cascading_randomisation(
        lambda tp, x: explain(x, teacher_params=tp), IMAGES, models.teacher_params, fresh,
        randomisation.teacher_layers(TINY_TEACHER))
    got = scored("randomisation", 2)
    assert got["spearman"].shape == (B, len(randomisation.teacher_layers(TINY_TEACHER)))
    _close(got["spearman"], rho)
    np.testing.assert_array_equal(got["spearman_all_layers"], got["spearman"][:, -1])

    with_ref = _run("max_sensitivity", models, 2, reference=ref)
    _close(with_ref["max_sensitivity"], want)


def test_max_sensitivity_per_image_keys_do_not_depend_on_the_other_images():
    x = np.asarray(IMAGES)
    keys = _instance_keys()
    whole = stability.max_sensitivity(lambda v: v ** 2, x, keys=keys, samples=3)
    for i in range(B):
        one = stability.max_sensitivity(lambda v: v ** 2, x[i : i + 1], keys=keys[i : i + 1],
                                        samples=3)
        _close(one[0], whole[i])


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def _nan_when_dark(darkest: float):
    """A teacher that is NaN on any image darker than ``darkest`` (the real images are not)."""
    apply = teacher_apply_for(TINY_TEACHER)

    def fn(params, x):  # log of a negative number: NaN computed, as a broken model would
        return apply(params, x) + jnp.log(jnp.sum(x, axis=(1, 2, 3)) - darkest)[:, None]

    return fn


def test_a_teacher_nan_on_perturbed_images_is_an_error_naming_them(models):
    darkest = 0.999 * float(IMAGES.sum((1, 2, 3)).min())
    nan = dataclasses.replace(models, teacher_apply=_nan_when_dark(darkest))
    images = r"images \[0, 1, 2, 3, 4\]"
    with pytest.raises(ValueError, match=f"auc_zero.*{images}.*perturbed"):
        R.score("auc_zero", IMAGES, ATTR, CLASSES, models=nan, config=TABLE["auc_zero"])
    with pytest.raises(ValueError, match=f"average_drop.*{images}.*perturbed"):
        R.score("average_drop", IMAGES, ATTR, CLASSES, models=nan)
    with pytest.raises(ValueError, match=f"{images}.*perturbed"):
        fidelity.deletion_insertion(IMAGES, ATTR, CLASSES, teacher_apply=nan.teacher_apply,
                                    teacher_params=nan.teacher_params, steps=4)
    with pytest.raises(ValueError, match=f"{images}.*perturbed"):
        fidelity.average_drop_increase(IMAGES, ATTR.sum(-1), CLASSES,
                                       teacher_apply=nan.teacher_apply,
                                       teacher_params=nan.teacher_params)
    # the chunk offset is counted: only image 4's perturbed copies (marked) are NaN
    x = IMAGES.copy()
    x[4, 7, 7, 0] = 0.123  # not a multiple of 1/255, unlike every digits pixel
    bright = 0.999 * float(x[4].sum())
    apply = teacher_apply_for(TINY_TEACHER)

    def marked(params, v):
        bad = (jnp.abs(v[:, 7, 7, 0] - 0.123) < 1e-6) & (jnp.sum(v, axis=(1, 2, 3)) < bright)
        return apply(params, v) + jnp.log(1.0 - 2.0 * bad)[:, None]

    with pytest.raises(ValueError, match=r"images \[4\] is not finite"):
        R.score("auc_zero", x, ATTR, CLASSES, models=dataclasses.replace(
            models, teacher_apply=marked), config=TABLE["auc_zero"], chunk_size=2)


BAD = {
    "unknown metric": (lambda m: R.score("accuracy", IMAGES, ATTR, CLASSES, models=m),
                       "metric must be one of"),
    "explainer metric by score": (lambda m: R.score("max_sensitivity", IMAGES, ATTR, CLASSES,
                                                    models=m), "score_explainer"),
    "explanation metric by score_explainer": (
        lambda m: R.score_explainer("auc_zero", dv.get(METHOD), IMAGES, models=m),
        "not of an explainer"),
    "method by name": (lambda m: R.score_explainer("max_sensitivity", "smoothgrad", IMAGES,
                                                   models=m), r"dv.get\('smoothgrad'\)"),
    "wrong config type": (lambda m: R.score("auc_zero", IMAGES, ATTR, CLASSES, models=m,
                                            config=R.LocalisationConfig()), "DeletionConfig"),
    "config for a metric without one": (
        lambda m: R.score("average_drop", IMAGES, ATTR, CLASSES, models=m,
                          config=R.DeletionConfig()), "takes no config"),
    "attributions of another shape": (
        lambda m: R.score("auc_zero", IMAGES, ATTR[:, :4], CLASSES, models=m),
        r"attributions must have shape \[5, 8, 8, 1\]"),
    "NaN attributions": (lambda m: R.score("relevance_mass", IMAGES, ATTR * np.nan,
                                           regions=REGIONS), "attributions contains NaN"),
    "no models": (lambda m: R.score("auc_zero", IMAGES, ATTR, CLASSES), "needs models"),
    "class out of range": (lambda m: R.score("auc_zero", IMAGES, ATTR, CLASSES + 6, models=m),
                           r"in \[0, 10\)"),
    "images out of range": (lambda m: R.score("auc_zero", IMAGES * 255, ATTR, CLASSES,
                                              models=m), "divide by 255"),
    "no regions": (lambda m: R.score("pointing_game", IMAGES, ATTR), "needs regions"),
    "float regions": (lambda m: R.score("pointing_game", IMAGES, ATTR,
                                        regions=REGIONS.astype(np.float32)), "bool"),
    "regions of another shape": (lambda m: R.score("relevance_mass", IMAGES, ATTR,
                                                   regions=REGIONS[:, :4]),
                                 r"regions must have shape \[5, 8, 8\]"),
    "regions for an explanation metric": (
        lambda m: R.score("auc_zero", IMAGES, ATTR, CLASSES, models=m, regions=REGIONS),
        "takes no regions"),
    "randomisation without a teacher config": (
        lambda m: R.score_explainer("randomisation", dv.get(METHOD), IMAGES, models=(
            dataclasses.replace(m, teacher_config=None))), "teacher_config"),
    "method lacking its needs": (
        lambda m: R.score_explainer("max_sensitivity", dv.get("deepvid"), IMAGES, models=m),
        "needs a VAE"),
    "reference of another shape": (
        lambda m: R.score_explainer("seed_agreement", dv.get(METHOD), IMAGES, models=m,
                                    reference=ATTR[:2]), r"reference must have shape"),
    "bad chunk size": (lambda m: R.score("auc_zero", IMAGES, ATTR, CLASSES, models=m,
                                         chunk_size=0), "chunk_size"),
    "bad configs": (lambda m: R.SensitivityConfig(radius=-1.0), "radius"),
    "one seed": (lambda m: R.SeedConfig(runs=1), "runs must be >= 2"),
    "pooling": (lambda m: R.LocalisationConfig(pooling="max"), "pooling"),
    "registered twice": (lambda m: R.register(R.get("auc_zero")), "already registered"),
    "unknown kind": (lambda m: R.Metric("x", lambda: None, None, {}, kind="global"), "kind"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_a_clear_error(case, models):
    call, message = BAD[case]
    with pytest.raises(ValueError, match=message):
        call(models)
