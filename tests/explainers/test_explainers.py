"""The explainer registry: every method through one interface, and the same invariances for all
(batch equals loop, chunk size does not matter, same key same result), from one table."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SMALL, TINY_TEACHER

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
    teacher_logits,
)
from deepvid_jax.models.vae import init_vae

VCFG = VAEConfig(latent_dim=4, features=(8, 16), hidden=32, image_shape=(8, 8, 1))
SCFG = SurrogateConfig(features=(4,), hidden=8, image_shape=(8, 8, 1))
ECFG = ExplainerConfig(num_stages=1, features=(4,), image_shape=(8, 8, 1))
B = 5


@pytest.fixture(scope="module")
def models(tiny_teacher) -> E.Models:
    return E.Models(functools.partial(teacher_logits, config=TINY_TEACHER), tiny_teacher, 10,
                    teacher_config=TINY_TEACHER,
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
    if name in ("deepvid", "noise", "mask"):
        e = ex.explain(x, KEY, teacher_apply=apply, teacher_params=tp,
                       vae_params=models.vae_params,
                       config=dataclasses.replace(cfg, vae=VCFG, chunk_size=2))
        want = e.class_weights(c)
    elif name == "lime":
        want = superpixel.explain_lime(x, KEY, teacher_apply=apply, teacher_params=tp,
                                       config=cfg, chunk_size=2).attribution(c)
    elif name == "smoothgrad":  # instance i's noise from fold_in(key, i)
        want = np.concatenate([attribution.attribute(
            name, x[i : i + 1], c[i : i + 1], jax.random.fold_in(KEY, i), teacher_apply=apply,
            teacher_params=tp, config=cfg) for i in range(B)])
    elif name in attribution.GRADIENT_METHODS:
        want = attribution.attribute(name, x, c, KEY, teacher_apply=apply, teacher_params=tp,
                                     teacher_config=TINY_TEACHER, config=cfg)
    elif name == "rise":  # instance i's masks from fold_in(key, i)
        want = np.concatenate([rise.rise(x[i : i + 1], c[i : i + 1], jax.random.fold_in(KEY, i),
                                         teacher_apply=apply, teacher_params=tp, config=cfg)
                               for i in range(B)])[..., None]
    else:
        want = surrogate.saliency(x, surrogate_params=models.surrogate_params,
                                  explainer_params=models.explainer_params, class_idx=c,
                                  surrogate_config=SCFG, explainer_config=ECFG)[..., None]
    _close(got, want)


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
    box = E.Models(ex.callback_teacher(
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
    box = E.Models(ex.callback_teacher(
        lambda x: np.asarray(models.teacher_apply(models.teacher_params, x)), 10), None, 10)
    got = E.explain("lime", IMAGES[:2], CLASSES[:2], KEY, models=box, config=SMALL["lime"])
    want = E.explain("lime", IMAGES[:2], CLASSES[:2], KEY, models=models, config=SMALL["lime"])
    _close(got.attributions, want.attributions)


# --------------------------------------------------------------------------------------------
# Metrics on the same contract
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(evaluation.METRICS))
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
