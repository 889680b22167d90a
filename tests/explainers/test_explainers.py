"""The explainer registry: every method through one interface, and the same invariances for all
(batch equals loop, chunk size does not matter, same key same result), from one table."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SMALL, TINY_TEACHER

import deepvid_jax as dv
from deepvid_jax import driver
from deepvid_jax.data import sources as data
from deepvid_jax.explainers import gradients as attribution
from deepvid_jax.explainers import lime as superpixel
from deepvid_jax.explainers import registry as E
from deepvid_jax.explainers import rise, surrogate
from deepvid_jax.explainers.deepvid import core as ex
from deepvid_jax.metrics import fidelity as metrics
from deepvid_jax.metrics import registry as evaluation
from deepvid_jax.models.networks import (
    ExplainerConfig,
    SurrogateConfig,
    VAEConfig,
    init_explainer,
    init_surrogate,
    init_vae,
    teacher_logits,
)

VCFG = VAEConfig(latent_dim=4, features=(8, 16), hidden=32, image_shape=(8, 8, 1))
SCFG = SurrogateConfig(features=(4,), hidden=8, image_shape=(8, 8, 1))
ECFG = ExplainerConfig(num_stages=1, features=(4,), image_shape=(8, 8, 1))
B = 5


@pytest.fixture(scope="module")
def models(tiny_teacher) -> E.Models:
    return E.Models.ours(tiny_teacher, TINY_TEACHER,
                         vae_params=init_vae(jax.random.PRNGKey(1), VCFG), vae_config=VCFG,
                         surrogate_params=init_surrogate(jax.random.PRNGKey(2), SCFG),
                         surrogate_config=SCFG,
                         explainer_params=init_explainer(jax.random.PRNGKey(3), ECFG),
                         explainer_config=ECFG)


IMAGES = data.load("digits", "test[:5]").images
CLASSES = np.array([3, 1, 4, 1, 5], np.int32)
KEY = jax.random.PRNGKey(7)


@pytest.fixture(scope="module")
def explained(models):
    """run(name, chunk, seed) -> Attribution of the 5 images, each computed once."""

    @functools.cache
    def run(name: str, chunk: int, seed: int = 7) -> E.Attribution:
        return E.explain(name, IMAGES, CLASSES, jax.random.PRNGKey(seed), models=models,
                         config=SMALL[name], chunk_size=chunk)

    return run


def test_every_method_is_in_the_table():
    assert set(SMALL) == set(E.METHODS)


def _close(a, b, tol=2e-4, floor=1e-9):
    """Equal up to float rounding of differently batched programs: ``tol`` of the largest
    value, and at least ``floor`` (values near 0, such as a KL of 1e-6)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=0, atol=max(tol * np.abs(b).max(), floor))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_shapes_and_extras_have_a_leading_batch_axis(name, explained):
    out = explained(name, 2)
    assert out.attributions.shape == (B, 8, 8, 1)
    assert np.isfinite(out.attributions).all()
    for k, v in out.extras.items():
        assert v.shape[0] == B, k


@pytest.mark.parametrize("name", sorted(SMALL))
def test_chunk_size_does_not_matter(name, explained):
    # chunk 1 is a loop over instances; 5 is one batch; 2 pads the last chunk.
    ref = explained(name, B)
    for chunk in (1, 2):
        got = explained(name, chunk)
        _close(got.attributions, ref.attributions)
        for k in ref.extras:
            _close(got.extras[k], ref.extras[k], tol=1e-3, floor=1e-6)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_batch_function_equals_loop(name, models):
    m = E.get(name)
    keys = jax.vmap(lambda i: jax.random.fold_in(KEY, i))(jnp.arange(B))
    args = dict(models=models.static(), config=SMALL[name])
    whole = m.batch(models.params(), jnp.asarray(IMAGES), jnp.asarray(CLASSES), keys, **args)
    for i in range(B):
        one = m.batch(models.params(), jnp.asarray(IMAGES[i : i + 1]),
                      jnp.asarray(CLASSES[i : i + 1]), keys[i : i + 1], **args)
        _close(one.attributions[0], whole.attributions[i])


@pytest.mark.parametrize("name", sorted(SMALL))
def test_same_key_same_result_and_stochastic_methods_use_it(name, explained):
    a, b = explained(name, 2), explained(name, 2)
    np.testing.assert_array_equal(a.attributions, b.attributions)
    other = explained(name, 2, seed=8)
    moved = not np.array_equal(a.attributions, other.attributions)
    assert moved == E.get(name).stochastic, name


@pytest.mark.parametrize("name", sorted(SMALL))
def test_registry_equals_the_methods_own_function(name, models, explained):
    got = explained(name, 2).attributions
    x, c, tp = IMAGES, CLASSES, models.teacher_params
    apply = models.teacher_apply
    cfg = SMALL[name]
    if isinstance(cfg, ex.ExplainConfig):  # DeepVID and its variants
        e = ex.explain_images(x, KEY, teacher_apply=apply, teacher_params=tp,
                       vae_params=models.vae_params,
                       config=dataclasses.replace(cfg, vae=VCFG, chunk_size=2))
        want = e.class_weights(c)
    elif name == "lime":
        want = superpixel.explain_lime(x, KEY, teacher_apply=apply, teacher_params=tp,
                                       config=cfg, chunk_size=2).attribution(c)
    elif name in attribution.GRADIENT_METHODS:  # SmoothGrad: instance i's noise from fold_in
        want = attribution.attribute(name, x, c, KEY, teacher_apply=apply, teacher_params=tp,
                                     teacher_config=TINY_TEACHER, config=cfg)
    elif name == "rise":  # instance i's masks from fold_in(key, i)
        want = rise.rise(x, c, KEY, teacher_apply=apply, teacher_params=tp, config=cfg)[..., None]
    else:
        want = surrogate.saliency(x, surrogate_params=models.surrogate_params,
                                  explainer_params=models.explainer_params, class_idx=c,
                                  surrogate_config=SCFG, explainer_config=ECFG)[..., None]
    _close(got, want)


# --------------------------------------------------------------------------------------------
# One face per method: the registered functions are the modules' public, validated ones
# --------------------------------------------------------------------------------------------

MODULE_FUNCTIONS = {"deepvid": ex.deepvid_attribution, "lime": superpixel.lime_attribution,
                    **attribution.ATTRIBUTIONS, "rise": rise.rise_attribution,
                    "surrogate": surrogate.surrogate_attribution}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_registered_function_is_its_modules_public_one(name):
    fn = E.get(name).fn
    assert not fn.__name__.startswith("_")
    assert fn is MODULE_FUNCTIONS.get(name, ex.deepvid_attribution)


BAD_INPUTS = {  # what -> (images, classes, keys, config or None for the method's), message
    "class K": (IMAGES, np.array([10, 1, 4, 1, 5]), None, None, r"\[0, 10\)"),
    "negative class": (IMAGES, np.array([3, -1, 4, 1, 5]), None, None, "negative"),
    "one class for all": (IMAGES, np.int32(3), None, None, r"shape \[B\] = \[5\]"),
    "a single image": (IMAGES[0], CLASSES, None, None, r"\[B, H, W, C\]"),
    "0-255 pixels": (IMAGES * 255, CLASSES, None, None, r"\[0, 1\]"),
    "NaN pixels": (np.full_like(IMAGES, np.nan), CLASSES, None, None, "NaN"),
    "wrong image shape": (np.zeros((B, 6, 6, 1), np.float32), CLASSES, None, None, "mismatch"),
    "one key": (IMAGES, CLASSES, KEY, None, "one PRNG key per image"),
    "a config of another method": (IMAGES, CLASSES, None, "other", "must be a"),
}
# Pixel-sampling, LIME, RISE and gradient methods take any image shape (the teacher then
# fails); the others check theirs.
SHAPE_AGNOSTIC = {"noise", "mask", "lime", "rise", "gradient", "grad_x_input",
                  "integrated_gradients", "smoothgrad"}


@pytest.mark.parametrize("bad", sorted(BAD_INPUTS))
@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_explainer_function_validates_its_inputs(name, bad, models):
    images, classes, keys, config, message = BAD_INPUTS[bad]
    if bad == "wrong image shape" and name in SHAPE_AGNOSTIC:
        pytest.skip("no configured image shape")
    if config == "other":
        if SMALL[name] is None:
            config, message = SMALL["lime"], "takes no config"
        else:
            config = SMALL["lime" if not isinstance(SMALL[name], superpixel.LimeConfig)
                           else "rise"]
    config = SMALL[name] if config is None else config
    keys = driver.instance_keys(KEY, 0, B) if keys is None else keys
    with pytest.raises(ValueError, match=message):
        E.get(name).fn(models.params(), images, classes, keys, models=models, config=config)


def test_the_gradient_functions_of_a_bare_teacher_check_class_indices(models):
    apply, tp = models.teacher_apply, models.teacher_params
    x = IMAGES[:2]
    calls = {
        "gradient": lambda c: attribution.gradient(apply, tp, x, c),
        "grad_x_input": lambda c: attribution.grad_x_input(apply, tp, x, c),
        "integrated_gradients": lambda c: attribution.integrated_gradients(apply, tp, x, c),
        "smoothgrad": lambda c: attribution.smoothgrad(apply, tp, x, c, KEY),
        "grad_cam": lambda c: attribution.grad_cam(tp, x, c, config=TINY_TEACHER),
        "class_score": lambda c: attribution.class_score(apply, tp, x, c),
    }
    for what, call in calls.items():
        with pytest.raises(ValueError, match=r"\[0, 10\)"):  # the teacher's 10 classes
            call(np.array([10, 10]))
        assert np.shape(call(np.array([3, 1])))[0] == 2, what
    with pytest.raises(ValueError, match="ig_steps"):
        attribution.integrated_gradients(apply, tp, x, np.array([3, 1]), steps=0)
    with pytest.raises(ValueError, match="smoothgrad_sigma"):
        attribution.smoothgrad(apply, tp, x, np.array([3, 1]), KEY, sigma=-1.0)


def test_one_rise_batch_equals_loop_and_the_registered(models):
    apply, tp, cfg = models.teacher_apply, models.teacher_params, SMALL["rise"]
    whole = np.asarray(rise.rise(IMAGES, CLASSES, KEY, teacher_apply=apply, teacher_params=tp,
                                 config=cfg))
    registered = E.explain("rise", IMAGES, CLASSES, KEY, models=models, config=cfg, chunk_size=2)
    _close(registered.attributions[..., 0], whole)
    keys = driver.instance_keys(KEY, 0, B)
    for i in range(B):  # image i's masks from its own key, whatever the batch
        one = rise.rise_attribution(models.params(), IMAGES[i : i + 1], CLASSES[i : i + 1],
                                    keys[i : i + 1], models=models, config=cfg)
        _close(one.attributions[0, ..., 0], whole[i])
    _close(rise.rise(IMAGES[:2], CLASSES[:2], KEY, teacher_apply=apply, teacher_params=tp,
                     config=cfg), whole[:2])


def test_smoothgrad_of_a_bare_teacher_equals_the_registered(models):
    cfg = SMALL["smoothgrad"]
    got = attribution.smoothgrad(models.teacher_apply, models.teacher_params, IMAGES, CLASSES,
                                 KEY, samples=cfg.smoothgrad_samples,
                                 sigma=cfg.smoothgrad_sigma)
    want = E.explain("smoothgrad", IMAGES, CLASSES, KEY, models=models, config=cfg)
    _close(got, want.attributions)


def test_with_samples_sets_the_count_and_keeps_the_held_out_share():
    sampled = [n for n, m in E.METHODS.items() if m.sampled]
    assert set(sampled) == {"deepvid", "noise", "mask", "deepvid_fast",
                            "deepvid_fixed_radius", "lime", "rise"}
    for name in sampled:
        config = E.get(name).config
        count = {ex.ExplainConfig: lambda c: c.neighbors.num,
                 superpixel.LimeConfig: lambda c: c.num_samples,
                 rise.RiseConfig: lambda c: c.num_masks}[type(config)]
        assert E.with_samples(config, count(config)) == config, name
        assert count(E.with_samples(config, 64)) == 64, name
    assert E.with_samples(ex.ExplainConfig(), 512).holdout == 64  # 1 in 8, as at 1,024
    assert E.with_samples(superpixel.LimeConfig(), 16).holdout == 4
    assert E.with_samples(rise.RiseConfig(), 16) == rise.RiseConfig(num_masks=16, batch=16)
    with pytest.raises(ValueError, match="no sample count"):
        E.with_samples(attribution.AttributionConfig(), 16)


def test_the_default_config_is_deepvids_and_the_presets_sit_beside_it():
    assert E.get("deepvid").config == ex.ExplainConfig()
    assert E.get("deepvid_fast").config == ex.FAST
    assert E.get("deepvid_fixed_radius").config == ex.FIXED_RADIUS
    default = ex.ExplainConfig()
    assert default.neighbors.num == 512 and default.holdout == 64
    assert default.neighbors.patch_mix == 2 and default.student.method == "lasso"
    assert default.student.lasso_smooth_grid and default.student.lasso_screen < 1
    assert default.neighbors.probe_draw == "fixed"
    assert ex.FAST.student.method == "ridge" and ex.FAST.neighbors.calibrated
    assert ex.FIXED_RADIUS.neighbors.latent_scale == 1.0
    # the former default, kept as a preset
    assert ex.FIXED_SMOOTH.neighbors.num == 1024 and ex.FIXED_SMOOTH.holdout == 128
    former = ex.FIXED_SMOOTH.student
    assert former.lasso_smooth == 0.2 and not former.lasso_smooth_grid
    # the baselines and presets keep their held-out share of a quarter
    for name in ("noise", "mask", "deepvid_fast", "deepvid_fixed_radius"):
        assert E.get(name).config.holdout == 128, name


def test_our_teacher_is_one_function_per_config(tiny_teacher):
    a = E.Models.ours(tiny_teacher, TINY_TEACHER)
    b = E.Models.ours(tiny_teacher, TINY_TEACHER)
    assert a.teacher_apply is b.teacher_apply and a.static() == b.static()
    assert a.num_classes == 10 and a.teacher_config == TINY_TEACHER
    np.testing.assert_array_equal(a.teacher_apply(tiny_teacher, IMAGES),
                                  teacher_logits(tiny_teacher, IMAGES, TINY_TEACHER))


def test_default_class_is_the_teachers(models):
    out = E.explain("gradient", IMAGES, None, KEY, models=models, config=SMALL["gradient"])
    pred = np.asarray(jnp.argmax(models.teacher_apply(models.teacher_params, IMAGES), -1))
    want = E.explain("gradient", IMAGES, pred, KEY, models=models, config=SMALL["gradient"])
    np.testing.assert_array_equal(out.attributions, want.attributions)


def test_clear_errors(models):
    with pytest.raises(ValueError, match="explainer must be one of"):
        E.explain("shap", IMAGES, models=models)
    bare = E.Models(models.teacher_apply, models.teacher_params, 10)
    with pytest.raises(ValueError, match="needs a VAE"):
        E.explain("deepvid", IMAGES, models=bare)
    with pytest.raises(ValueError, match="conv maps"):
        E.explain("grad_cam", IMAGES, models=bare)
    with pytest.raises(ValueError, match="surrogate"):
        E.explain("surrogate", IMAGES, models=bare)
    box = E.Models(dv.callback_teacher(
        lambda x: np.asarray(models.teacher_apply(models.teacher_params, x)), 10), None, 10)
    with pytest.raises(ValueError, match="black box has none"):
        E.explain("integrated_gradients", IMAGES, models=box)
    with pytest.raises(ValueError, match="config of 'lime' must be a LimeConfig"):
        E.explain("lime", IMAGES, models=models, config=SMALL["rise"])
    with pytest.raises(ValueError, match="class_idx"):
        E.explain("gradient", IMAGES, np.array([0, 1]), models=models)
    with pytest.raises(ValueError, match="already registered"):
        E.register(E.get("lime"))


def test_black_box_teacher_runs_the_sampling_methods(models):
    box = E.Models(dv.callback_teacher(
        lambda x: np.asarray(models.teacher_apply(models.teacher_params, x)), 10), None, 10)
    got = E.explain("lime", IMAGES[:2], CLASSES[:2], KEY, models=box, config=SMALL["lime"])
    want = E.explain("lime", IMAGES[:2], CLASSES[:2], KEY, models=models, config=SMALL["lime"])
    _close(got.attributions, want.attributions)


# --------------------------------------------------------------------------------------------
# Metrics on the same contract
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["auc_blur", "auc_mean", "auc_zero", "average_drop"])
def test_metric_registry_equals_the_metric_function_and_ignores_chunking(name, models):
    attr = np.asarray(jax.random.normal(KEY, IMAGES.shape))
    m = evaluation.get(name)
    got = {c: evaluation.score(name, IMAGES, attr, CLASSES, models=models, chunk_size=c)
           for c in (2, B)}
    kw = dict(teacher_apply=models.teacher_apply, teacher_params=models.teacher_params)
    if name.startswith("auc_"):
        want = metrics.deletion_insertion(IMAGES, attr, CLASSES, steps=m.config.steps,
                                          baseline=m.config.baseline, **kw)._asdict()
    else:
        drop, inc = metrics.average_drop_increase(IMAGES, attr.sum(-1), CLASSES, **kw)
        want = {"average_drop": drop, "increase": inc}
    assert set(m.better) <= set(want)
    for c, out in got.items():
        assert set(out) == set(want), c
        for k in want:
            _close(out[k], want[k], tol=1e-5, floor=1e-6)


def test_metric_errors(models):
    attr = np.zeros(IMAGES.shape, np.float32)
    with pytest.raises(ValueError, match="metric must be one of"):
        evaluation.score("accuracy", IMAGES, attr, CLASSES, models=models)
    with pytest.raises(ValueError, match="attributions"):
        evaluation.score("auc_zero", IMAGES, attr[:, :4], CLASSES, models=models)
    with pytest.raises(ValueError, match="NaN or inf"):
        evaluation.score("auc_zero", IMAGES, np.full(IMAGES.shape, np.nan), CLASSES,
                         models=models)
    with pytest.raises(ValueError, match="DeletionConfig"):
        evaluation.score("auc_zero", IMAGES, attr, CLASSES, models=models,
                         config=SMALL["lime"])
    with pytest.raises(ValueError, match="baseline"):
        evaluation.DeletionConfig(baseline="noise")


def test_public_api_top_level(models):
    import importlib.metadata

    import deepvid_jax as dv

    assert all(hasattr(dv, name) for name in dv.__all__)
    assert dv.__version__ == importlib.metadata.version("deepvid_jax")
    assert dv.METHODS is E.METHODS and dv.METRICS is evaluation.METRICS
    out = dv.explain("grad_x_input", IMAGES, CLASSES, KEY, models=models)
    auc = dv.score("auc_zero", IMAGES, out.attributions, CLASSES, models=models)
    assert auc["deletion"].shape == (B,)
