"""The Python API against hostile input (issue 11): every public entry point that takes images,
class indices, labels, a teacher or a config, with each kind of bad value. Every case must get a
ValueError naming the problem, raised before any long work; no traceback from inside JAX, no
silent wrong answer. Cases that are valid must give a finite result."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import deepvid_jax as dv
from deepvid_jax import driver, ops
from deepvid_jax.data import sources as data
from deepvid_jax.explainers import gradients as attribution
from deepvid_jax.explainers import lime as superpixel
from deepvid_jax.explainers import rise, surrogate
from deepvid_jax.explainers.deepvid import core as ex
from deepvid_jax.explainers.deepvid.neighbors import NeighborConfig
from deepvid_jax.explainers.deepvid.student import StudentConfig
from deepvid_jax.metrics import fidelity as metrics
from deepvid_jax.metrics import stability
from deepvid_jax.models import adversarial, consistency, networks, train, vae
from deepvid_jax.models.networks import (
    ExplainerConfig,
    SurrogateConfig,
    TeacherConfig,
    VAEConfig,
    teacher_apply_for,
    teacher_logits,
)

K = 10
KEY = jax.random.PRNGKey(0)
GOOD = data.load("digits", "test[:4]").images  # [4, 8, 8, 1] in [0, 1]
CLS = np.array([0, 1, 2, 3], np.int32)
A = jnp.asarray(np.random.default_rng(0).normal(size=(64, K)).astype(np.float32))
TCFG = TeacherConfig(features=(4,), hidden=8, image_shape=(8, 8, 1))
VCFG = VAEConfig(latent_dim=2, features=(4,), hidden=8, image_shape=(8, 8, 1))
SCFG = SurrogateConfig(features=(4,), hidden=8, image_shape=(8, 8, 1))
ECFG = ExplainerConfig(num_stages=1, features=(4,), image_shape=(8, 8, 1))
# The networks' parameters (TP, VP, SP, EP) and VAE_MODELS: made by `_networks` before this
# module's first test, not on import (both xdist workers import every test module, and these
# inits compile for seconds). The tables below use them inside lambdas, called by the tests.
TP = VP = SP = EP = VAE_MODELS = None
PIXEL = ex.ExplainConfig(vae=VCFG, neighbors=NeighborConfig(sampler="pixel", num=16),
                         holdout=4, student=StudentConfig(steps=2))
VAE_SAMPLER = ex.ExplainConfig(vae=VCFG, neighbors=NeighborConfig(num=16), holdout=4,
                               student=StudentConfig(steps=2))
LIME = superpixel.LimeConfig(num_samples=16, holdout=4)
TINY_TRAIN = train.TrainConfig(epochs=1, batch_size=2)
EXPLANATION = ex.Explanation(
    weights=np.zeros((4, 8, 8, 1, K), np.float32), bias=np.zeros((4, K), np.float32),
    teacher_probs=np.full((4, K), 0.1, np.float32), student_probs=np.full((4, K), 0.1, np.float32),
    fidelity=metrics.Fidelity(np.ones(4), np.zeros(4), np.ones(4)))
LIME_RESULT = superpixel.LimeExplanation(
    coef=np.zeros((4, 4, K), np.float32), intercept=np.zeros((4, K), np.float32),
    segments=np.zeros((4, 8, 8), np.int32), top1=np.ones(4), r2=np.ones(4), score=np.ones(4))


def linear(params, x):
    return x.reshape(x.shape[0], -1) @ params


TEACHER_APPLY = teacher_apply_for(TCFG)
LINEAR_MODELS = dv.Models(linear, A, K)


@pytest.fixture(scope="module", autouse=True)
def _networks():
    global TP, VP, SP, EP, VAE_MODELS
    TP = networks.init_teacher(jax.random.PRNGKey(1), TCFG)
    VP = networks.init_vae(jax.random.PRNGKey(2), VCFG)
    SP = networks.init_surrogate(jax.random.PRNGKey(3), SCFG)
    EP = networks.init_explainer(jax.random.PRNGKey(4), ECFG)
    VAE_MODELS = dv.Models(TEACHER_APPLY, TP, K, teacher_config=TCFG, vae_params=VP,
                           vae_config=VCFG)


def _zeros_like(x):
    return np.zeros(np.shape(x), np.float32)


# ------------------------------------------------------------------------------------------
# Images: every entry point x every kind of bad image
# ------------------------------------------------------------------------------------------

IMAGE_ENTRY_POINTS = {
    "explain(pixel)": lambda x: ex.explain_images(x, KEY, teacher_apply=linear, teacher_params=A,
                                           vae_params=None, config=PIXEL),
    "explain(vae)": lambda x: ex.explain_images(x, KEY, teacher_apply=TEACHER_APPLY,
                                                teacher_params=TP, vae_params=VP,
                                                config=VAE_SAMPLER),
    "explain_lime": lambda x: superpixel.explain_lime(x, KEY, teacher_apply=linear,
                                                      teacher_params=A, config=LIME),
    "attribute(gradient)": lambda x: attribution.attribute(
        "gradient", x, CLS, KEY, teacher_apply=linear, teacher_params=A),
    "attribute(grad_cam)": lambda x: attribution.attribute(
        "grad_cam", x, CLS, KEY, teacher_apply=TEACHER_APPLY, teacher_params=TP,
        teacher_config=TCFG),
    "rise": lambda x: rise.rise(x, CLS, KEY, teacher_apply=linear, teacher_params=A),
    "attack": lambda x: adversarial.attack(x, CLS, KEY, teacher_apply=linear, teacher_params=A),
    "attack_dataset": lambda x: adversarial.attack_dataset(x, CLS, KEY, teacher_apply=linear,
                                                           teacher_params=A),
    "deletion_insertion": lambda x: metrics.deletion_insertion(
        x, _zeros_like(x), CLS, teacher_apply=linear, teacher_params=A),
    "average_drop_increase": lambda x: metrics.average_drop_increase(
        x, _zeros_like(x)[..., 0], CLS, teacher_apply=linear, teacher_params=A),
    "max_sensitivity": lambda x: stability.max_sensitivity(lambda v: v, x, KEY),
    "saliency": lambda x: surrogate.saliency(x, surrogate_params=SP, explainer_params=EP,
                                             surrogate_config=SCFG, explainer_config=ECFG),
    "teacher_logits_of": lambda x: surrogate.teacher_logits_of(linear, A, x),
    "train_teacher": lambda x: train.train_teacher((x, CLS), (GOOD, CLS), TCFG, TINY_TRAIN,
                                                   progress=False),
    "train_vae": lambda x: train.train_vae(x, GOOD, VCFG, TINY_TRAIN, progress=False),
    "pool_activations": lambda x: consistency.pool_activations(TP, x, config=TCFG,
                                                               layer="dense"),
    "Explanation.evidence": lambda x: EXPLANATION.evidence(x, CLS),
    "dv.explain(gradient)": lambda x: dv.explain("gradient", x, CLS, KEY, models=LINEAR_MODELS),
    "dv.explain(deepvid)": lambda x: dv.explain("deepvid", x, CLS, KEY, models=VAE_MODELS,
                                                config=VAE_SAMPLER),
    "dv.score(auc_zero)": lambda x: dv.score("auc_zero", x, _zeros_like(x), CLS,
                                             models=LINEAR_MODELS),
}

NAN = GOOD.copy()
NAN[1, 3, 3, 0] = np.nan
INF = GOOD.copy()
INF[2, 0, 0, 0] = np.inf
BAD_IMAGES = {
    "uint8": ((GOOD * 255).astype(np.uint8), "floating point.*/ 255"),
    "0-255 floats": (GOOD * 255, r"in \[0, 1\].*divide by 255"),
    "slightly above 1": (GOOD + 1e-3, r"in \[0, 1\]"),
    "negative": (GOOD - 0.5, r"in \[0, 1\]"),
    "NaN": (NAN, "NaN or inf.*images \\[1\\]"),
    "inf": (INF, "NaN or inf.*images \\[2\\]"),
    "rank 3 (one image)": (GOOD[0], r"\[B, H, W, C\].*images\[None\]"),
    "rank 5": (GOOD[None], r"\[B, H, W, C\]"),
    "rank 2": (GOOD[0, :, :, 0], r"\[B, H, W, C\]"),
    "empty batch": (GOOD[:0], "empty"),
    "int64": (np.zeros((4, 8, 8, 1), np.int64), "floating point"),
    "bool": (GOOD > 0.5, "floating point"),
    "strings": (np.full((4, 8, 8, 1), "a"), "floating point"),
    "complex": (GOOD.astype(np.complex64), "floating point"),
}


@pytest.mark.parametrize("bad", sorted(BAD_IMAGES))
@pytest.mark.parametrize("entry", sorted(IMAGE_ENTRY_POINTS))
def test_bad_images_are_clear_errors(entry, bad):
    images, message = BAD_IMAGES[bad]
    with pytest.raises(ValueError, match=message):
        IMAGE_ENTRY_POINTS[entry](images)


# Entry points with a configured image shape name the mismatch; with a shape-agnostic JAX
# teacher the probe reports the teacher's own failure on that shape.
SHAPED = {"explain(vae)", "attribute(grad_cam)", "saliency", "train_teacher", "train_vae",
          "pool_activations", "Explanation.evidence", "dv.explain(deepvid)"}
WRONG_SHAPES = {"3 channels": np.repeat(GOOD, 3, axis=-1), "9x9": np.full((4, 9, 9, 1), 0.5,
                                                                           np.float32)}


@pytest.mark.parametrize("shape", sorted(WRONG_SHAPES))
@pytest.mark.parametrize("entry", sorted(IMAGE_ENTRY_POINTS))
def test_wrong_image_shapes(entry, shape):
    images = WRONG_SHAPES[shape]
    if entry == "max_sensitivity":  # shape-agnostic explainer: a valid, finite result
        assert np.all(np.isfinite(IMAGE_ENTRY_POINTS[entry](images)))
        return
    message = "mismatch" if entry in SHAPED else "failed on a probe batch of shape"
    with pytest.raises(ValueError, match=message):
        IMAGE_ENTRY_POINTS[entry](images)


# ------------------------------------------------------------------------------------------
# Class indices and labels
# ------------------------------------------------------------------------------------------

INDEX_ENTRY_POINTS = {
    "attribute(gradient)": lambda c: attribution.attribute(
        "gradient", GOOD, c, KEY, teacher_apply=linear, teacher_params=A),
    "attribute(smoothgrad)": lambda c: attribution.attribute(
        "smoothgrad", GOOD, c, KEY, teacher_apply=linear, teacher_params=A),
    "attribute(grad_cam)": lambda c: attribution.attribute(
        "grad_cam", GOOD, c, KEY, teacher_apply=TEACHER_APPLY, teacher_params=TP,
        teacher_config=TCFG),
    "rise": lambda c: rise.rise(GOOD, c, KEY, teacher_apply=linear, teacher_params=A),
    "deletion_insertion": lambda c: metrics.deletion_insertion(
        GOOD, GOOD, c, teacher_apply=linear, teacher_params=A),
    "average_drop_increase": lambda c: metrics.average_drop_increase(
        GOOD, GOOD[..., 0], c, teacher_apply=linear, teacher_params=A),
    "attack(labels)": lambda c: adversarial.attack(GOOD, c, KEY, teacher_apply=linear,
                                                   teacher_params=A),
    "attack_dataset(labels)": lambda c: adversarial.attack_dataset(
        GOOD, c, KEY, teacher_apply=linear, teacher_params=A),
    "saliency": lambda c: surrogate.saliency(GOOD, surrogate_params=SP, explainer_params=EP,
                                             class_idx=c, surrogate_config=SCFG,
                                             explainer_config=ECFG),
    "Explanation.class_weights": lambda c: EXPLANATION.class_weights(c),
    "dv.explain(gradient)": lambda c: dv.explain("gradient", GOOD, c, KEY,
                                                 models=LINEAR_MODELS),
    "dv.score(auc_zero)": lambda c: dv.score("auc_zero", GOOD, GOOD, c, models=LINEAR_MODELS),
    "Explanation.evidence": lambda c: EXPLANATION.evidence(GOOD, c),
    "LimeExplanation.attribution": lambda c: LIME_RESULT.attribution(c),
    "train_teacher(labels)": lambda c: train.train_teacher(
        (GOOD, c), (GOOD, CLS), TCFG, TINY_TRAIN, progress=False),
    "neuron_consistency(concepts)": lambda c: consistency.neuron_consistency(
        GOOD.reshape(4, -1), c, GOOD.reshape(4, -1), CLS, k=2, num_concepts=K),
}

BAD_INDICES = {
    "K (one past the end)": (np.array([0, 1, 2, 10]), r"\[0, 10\).*\[10\] at positions \[3\]"),
    "-1 (not 'the last')": (np.array([0, -1, 2, 3]), "negative indices are not allowed"),
    "huge": (np.array([0, 1, 2, 10 ** 6]), r"\[0, 10\)"),
    "floats": (np.array([0.0, 1.0, 2.0, 3.0]), "must be integers"),
    "float NaN": (np.array([0.0, np.nan, 2.0, 3.0]), "must be integers"),
    "bools": (np.array([True, False, True, False]), "must be integers"),
    "strings": (np.array(["0", "1", "2", "3"]), "must be integers"),
    "one scalar for a batch": (np.int64(3), r"shape \[B\] = \[4\].*got shape \[\]"),
    "too short": (np.array([0, 1, 2]), r"shape \[B\] = \[4\].*\[3\]"),
    "too long": (np.array([0, 1, 2, 3, 4]), r"shape \[B\] = \[4\].*\[5\]"),
    "2-D column": (np.array([[0], [1], [2], [3]]), r"shape \[B\] = \[4\].*\[4, 1\]"),
}


@pytest.mark.parametrize("bad", sorted(BAD_INDICES))
@pytest.mark.parametrize("entry", sorted(INDEX_ENTRY_POINTS))
def test_bad_class_indices_are_clear_errors(entry, bad):
    idx, message = BAD_INDICES[bad]
    with pytest.raises(ValueError, match=message):
        INDEX_ENTRY_POINTS[entry](idx)


# ------------------------------------------------------------------------------------------
# Teachers: checked once, on a probe batch
# ------------------------------------------------------------------------------------------

TEACHER_ENTRY_POINTS = {
    "explain": lambda t: ex.explain_images(GOOD, KEY, teacher_apply=t, teacher_params=A,
                                    vae_params=None, config=PIXEL),
    "explain_lime": lambda t: superpixel.explain_lime(GOOD, KEY, teacher_apply=t,
                                                      teacher_params=A, config=LIME),
    "attribute": lambda t: attribution.attribute("gradient", GOOD, CLS, KEY, teacher_apply=t,
                                                 teacher_params=A),
    "rise": lambda t: rise.rise(GOOD, CLS, KEY, teacher_apply=t, teacher_params=A),
    "attack": lambda t: adversarial.attack(GOOD, CLS, KEY, teacher_apply=t, teacher_params=A),
    "attack_dataset": lambda t: adversarial.attack_dataset(GOOD, CLS, KEY, teacher_apply=t,
                                                           teacher_params=A),
    "deletion_insertion": lambda t: metrics.deletion_insertion(GOOD, GOOD, CLS, teacher_apply=t,
                                                               teacher_params=A),
    "average_drop_increase": lambda t: metrics.average_drop_increase(
        GOOD, GOOD[..., 0], CLS, teacher_apply=t, teacher_params=A),
    "teacher_logits_of": lambda t: surrogate.teacher_logits_of(t, A, GOOD),
}


def _raises(p, x):
    raise RuntimeError("model server unreachable")


BAD_TEACHERS = {
    "NaN logits": (lambda p, x: linear(p, x) * jnp.nan, "NaN or inf logits"),
    "inf logits": (lambda p, x: linear(p, x).at[:, 0].set(jnp.inf), "NaN or inf logits"),
    "int logits": (lambda p, x: linear(p, x).astype(jnp.int32), "int32 logits.*floating"),
    "1-D output": (lambda p, x: linear(p, x)[:, 0], r"returned shape \[4\]"),
    "one logit": (lambda p, x: linear(p, x)[:, :1], "a classifier needs K >= 2|returned 1 "
                  "logits per image; expected 10"),
    "wrong batch": (lambda p, x: jnp.concatenate([linear(p, x), linear(p, x)]),
                    r"returned shape \[8, 10\] for 4 images"),
    "raises": (_raises, "failed on a probe batch.*model server unreachable"),
    "returns a tuple": (lambda p, x: (linear(p, x),), "must return an array"),
    "not callable": ("resnet50", "must be a callable"),
}


@pytest.mark.parametrize("bad", sorted(BAD_TEACHERS))
@pytest.mark.parametrize("entry", sorted(TEACHER_ENTRY_POINTS))
def test_bad_teachers_are_clear_errors(entry, bad):
    teacher, message = BAD_TEACHERS[bad]
    with pytest.raises(ValueError, match=message):
        TEACHER_ENTRY_POINTS[entry](teacher)


def test_teacher_with_the_wrong_class_count_for_explain():
    cfg = ex.ExplainConfig(**{**PIXEL.__dict__, "num_classes": 7})
    with pytest.raises(ValueError, match="returned 10 logits per image; expected 7"):
        ex.explain_images(GOOD, KEY, teacher_apply=linear, teacher_params=A, vae_params=None,
                   config=cfg)


def test_teacher_nan_only_on_neighbours_is_an_error_not_a_perfect_fidelity():
    """The probe (real images) passes, the neighbours do not: the old code returned NaN weights
    with fidelity top-1 1.0."""
    def nan_off_grid(p, x):  # digits pixels are multiples of 1/255; noisy neighbours are not
        off = jnp.any(jnp.abs(x * 255 - jnp.round(x * 255)) > 1e-3, axis=(1, 2, 3))
        return jnp.where(off[:, None], jnp.nan, linear(p, x))

    with pytest.raises(ValueError, match=r"explanations of images \[0, 1, 2, 3\] are not finite"):
        ex.explain_images(GOOD, KEY, teacher_apply=nan_off_grid, teacher_params=A, vae_params=None,
                   config=PIXEL)
    darkest = float(GOOD.sum((1, 2, 3)).min())

    def nan_when_hidden(p, x):  # LIME's samples hide patches: darker than any real image
        dark = jnp.sum(x, axis=(1, 2, 3)) < darkest - 1e-3
        return jnp.where(dark[:, None], jnp.nan, linear(p, x))

    with pytest.raises(ValueError, match="LIME explanations of images .* not finite"):
        superpixel.explain_lime(GOOD, KEY, teacher_apply=nan_when_hidden, teacher_params=A,
                                config=LIME)


def test_nan_logits_never_count_as_agreement():
    t = jnp.full((2, 5, K), jnp.nan)
    assert np.all(np.isnan(metrics.top1_agreement(t, t)))
    assert np.all(metrics.top1_agreement(jnp.ones((2, 5, K)), jnp.ones((2, 5, K))) == 1.0)


def test_callback_teacher_with_a_wrong_output_shape():
    wrapped = dv.callback_teacher(lambda x: np.zeros((len(x), 3), np.float32), num_classes=K)
    with pytest.raises(ValueError, match=r"returned shape \[4, 3\].*expected logits \[4, 10\]"):
        ex.explain_images(GOOD, KEY, teacher_apply=wrapped, teacher_params=None, vae_params=None,
                   config=PIXEL)
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        dv.callback_teacher(lambda x: x, num_classes=1)


# ------------------------------------------------------------------------------------------
# Configs: every field checks itself
# ------------------------------------------------------------------------------------------

NAN_, INF_ = float("nan"), float("inf")
CONFIG_CASES = {
    NeighborConfig: {"sampler": ["gan"], "num": [0, 1, 2.5, True, "512"],
                     "latent_scale": [-1.0, NAN_, INF_, "1"], "pixel_noise": [-0.1, NAN_],
                     "mask_keep": [1.5, -0.1, NAN_], "mask_value": [2.0],
                     "use_posterior_std": ["yes"], "latent_band": [((1.0, 0.0),), "wide"]},
    StudentConfig: {"temperature": [0.0, -1.0, NAN_, INF_], "steps": [0, -1, 1.5],
                    "learning_rate": [0.0, NAN_], "l1": [-1.0], "l2": [NAN_],
                    "hard_label_weight": [-1.0], "method": ["sgd"], "penalties": [(), (-1.0,)]},
    ex.ExplainConfig: {"chunk_size": [0, -1, 1.5],
                       "holdout": [0, ex.ExplainConfig().neighbors.num, -1],
                       "num_classes": [1, 0], "vae": ["x"], "neighbors": [None],
                       "student": [3]},
    superpixel.LimeConfig: {"keep_prob": [1.5, 0.0, 1.0, NAN_], "num_samples": [0],
                            "holdout": [0], "patch": [0], "hide_value": [2.0, NAN_],
                            "kernel_width": [0.0, -1.0, INF_], "ridge": [-1.0, NAN_]},
    rise.RiseConfig: {"num_masks": [0], "grid": [0], "keep": [0.0, 1.0, 1.5], "batch": [0]},
    adversarial.AttackConfig: {"method": ["cw"], "epsilon": [-0.1, 1.5, NAN_],
                               "steps": [0, -1], "step_size": [-0.1, 0.0, NAN_],
                               "random_start": ["no"]},
    attribution.AttributionConfig: {"ig_steps": [0], "smoothgrad_samples": [0],
                                    "smoothgrad_sigma": [-1.0, NAN_],
                                    "ig_baseline": [2.0, NAN_], "gradcam_layer": [3]},
    train.TrainConfig: {"epochs": [0, -1], "batch_size": [0], "learning_rate": [0.0, -1.0, NAN_],
                        "eval_batch_size": [0], "seed": [-1]},
    train.AdversarialTraining: {"consistency_weight": [-1.0, NAN_], "layer": [3],
                                "attack": ["pgd"]},
    TeacherConfig: {"num_classes": [1, 0], "features": [(), (0,), (-1,)], "hidden": [0],
                    "image_shape": [(8, 8), (0, 8, 1), (8, 8, 1.5)]},
    VAEConfig: {"latent_dim": [0], "features": [()], "hidden": [0],
                "image_shape": [(9, 9, 1), (8, 8)]},
    SurrogateConfig: {"num_classes": [1], "hidden": [0]},
    ExplainerConfig: {"num_stages": [0], "num_classes": [1]},
    surrogate.SurrogateLoss: {"temperature": [0.0], "area": [-1.0], "smooth": [NAN_]},
}
CONFIG_PARAMS = [pytest.param(cls, field, value, id=f"{cls.__name__}.{field}={value!r}")
                 for cls, fields in CONFIG_CASES.items()
                 for field, values in fields.items() for value in values]


@pytest.mark.parametrize(("cls", "field", "value"), CONFIG_PARAMS)
def test_config_fields_check_themselves(cls, field, value):
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.({field}|\w+)|{field}"):
        cls(**{field: value})


FLOAT_FIELDS = [  # (config, field, valid interval (low, high, low_open, high_open))
    (NeighborConfig, "latent_scale", (0, math.inf, False, True)),
    (StudentConfig, "temperature", (0, math.inf, True, True)),
    (superpixel.LimeConfig, "keep_prob", (0, 1, True, True)),
    (superpixel.LimeConfig, "kernel_width", (0, math.inf, True, True)),
    (rise.RiseConfig, "keep", (0, 1, True, True)),
    (adversarial.AttackConfig, "epsilon", (0, 1, False, False)),
    (attribution.AttributionConfig, "smoothgrad_sigma", (0, math.inf, False, True)),
    (train.TrainConfig, "learning_rate", (0, math.inf, True, True)),
]


@settings(max_examples=60, deadline=None)
@given(case=st.sampled_from(FLOAT_FIELDS), value=st.floats(allow_nan=True, allow_infinity=True))
def test_any_float_is_accepted_only_inside_its_interval(case, value):
    cls, field, (lo, hi, lo_open, hi_open) = case
    inside = (math.isfinite(value) and (value > lo if lo_open else value >= lo)
              and (value < hi if hi_open else value <= hi))
    if inside:
        assert getattr(cls(**{field: value}), field) == value
    else:
        with pytest.raises(ValueError, match=field):
            cls(**{field: value})


@settings(max_examples=40, deadline=None)
@given(idx=st.lists(st.integers(-2 ** 40, 2 ** 40), min_size=4, max_size=4))
def test_any_class_indices_are_checked_against_the_range(idx):
    arr = np.array(idx)
    if np.all((arr >= 0) & (arr < K)):
        assert EXPLANATION.class_weights(arr).shape == (4, 8, 8, 1)
    else:
        with pytest.raises(ValueError, match=r"\[0, 10\)"):
            EXPLANATION.class_weights(arr)


# ------------------------------------------------------------------------------------------
# The remaining cases, one by one
# ------------------------------------------------------------------------------------------


def test_lime_keep_prob_above_one_is_refused():
    with pytest.raises(ValueError, match=r"LimeConfig.keep_prob must be in \(0, 1\)"):
        superpixel.LimeConfig(keep_prob=1.5)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"step_size": -0.05}, "step_size must be in"),
    ({"steps": -1}, "steps must be >= 1"),
    ({"steps": 0}, "steps must be >= 1"),
    ({"epsilon": 255.0}, r"epsilon must be in \[0, 1\]"),
])
def test_pgd_refuses_settings_that_do_no_attack_or_the_wrong_one(kwargs, message):
    args = {"epsilon": 0.1, **kwargs}
    with pytest.raises(ValueError, match=message):
        adversarial.pgd(linear, A, jnp.asarray(GOOD), jnp.asarray(CLS), KEY, **args)


def test_pgd_on_0_255_images_is_refused_and_valid_attacks_stay_in_the_ball():
    with pytest.raises(ValueError, match="divide by 255"):
        adversarial.attack(GOOD * 255, CLS, KEY, teacher_apply=linear, teacher_params=A)
    adv = adversarial.attack(GOOD, CLS, KEY, teacher_apply=linear, teacher_params=A)
    assert float(jnp.max(jnp.abs(adv - GOOD))) <= 0.1 + 1e-6


@pytest.mark.parametrize(("real", "adv", "message"), [
    (np.array([0, 1, 2]), CLS, r"real_concepts must have shape \[B\] = \[4\]"),
    (CLS, np.array([0, 1, 2, 10]), r"adversarial_concepts must be in \[0, 10\)"),
    (np.array([0, 1, -1, 3]), CLS, "negative indices"),
])
def test_neuron_consistency_concept_labels(real, adv, message):
    acts = GOOD.reshape(4, -1)
    with pytest.raises(ValueError, match=message):
        consistency.neuron_consistency(acts, real, acts, adv, k=2, num_concepts=K)


def test_neuron_consistency_other_arguments():
    acts = GOOD.reshape(4, -1)
    with pytest.raises(ValueError, match="real_activations contains NaN"):
        consistency.neuron_consistency(acts * np.nan, CLS, acts, CLS, k=2)
    with pytest.raises(ValueError, match="k must be"):
        consistency.neuron_consistency(acts, CLS, acts, CLS, k=0)
    with pytest.raises(ValueError, match="affinity must have shape"):
        consistency.neuron_consistency(acts, CLS, acts, CLS, k=2, affinity=np.eye(3))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"steps": 0}, "steps must be >= 1"),
    ({"baseline": "white"}, "baseline must be one of"),
    ({"blur_sigma": 0.0}, "blur_sigma must be in"),
    ({"attributions": GOOD[..., 0]}, r"attributions must have shape \[4, 8, 8, 1\]"),
    ({"attributions": GOOD * np.nan}, "attributions contains NaN"),
])
def test_deletion_insertion_settings(kwargs, message):
    args = {"attributions": GOOD, **kwargs}
    attributions = args.pop("attributions")
    with pytest.raises(ValueError, match=message):
        metrics.deletion_insertion(GOOD, attributions, CLS, teacher_apply=linear,
                                   teacher_params=A, **args)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: stability.pearson(GOOD, GOOD[:2]), "same shape"),
    (lambda: stability.spearman(GOOD, GOOD[..., 0]), "same shape"),
    (lambda: stability.relative_change(GOOD, GOOD[:3]), "same shape"),
    (lambda: stability.seed_agreement(GOOD[:1]), ">= 2 runs"),
    (lambda: stability.seed_agreement(np.zeros(3)), r"\[R, B, ...\]"),
    (lambda: metrics.fidelity(jnp.zeros((2, 5, K)), jnp.zeros((2, 5, 3))), "one shape"),
    (lambda: stability.max_sensitivity(lambda v: v, GOOD, KEY, radius=-0.1), "radius"),
    (lambda: stability.max_sensitivity(lambda v: v, GOOD, KEY, samples=0), "samples"),
    (lambda: stability.max_sensitivity("saliency", GOOD, KEY), "callable"),
    (lambda: ops.gaussian_blur(GOOD, 0.0), "blur sigma"),
    (lambda: metrics.baseline_images(GOOD, "noise"), "Unknown baseline"),
    (lambda: ex.student_fidelity(np.zeros((4, 8, 8, 1, K)), np.zeros((4, K)),
                                 np.zeros((4, 5, 8, 8, 1)), np.zeros((4, 6, K))),
     r"teacher_logits must have shape \[4, 5, 10\]"),
    (lambda: superpixel.explain_lime(GOOD, KEY, teacher_apply=linear, teacher_params=A,
                                     config=LIME, segments=np.full((8, 8), 0.5)), "integer ids"),
    (lambda: superpixel.explain_lime(GOOD, KEY, teacher_apply=linear, teacher_params=A,
                                     config=LIME, segments=-np.ones((8, 8), int)),
     "non-negative"),
    (lambda: superpixel.explain_lime(GOOD, KEY, teacher_apply=linear, teacher_params=A,
                                     config=LIME, segments=np.zeros((5, 5), int)),
     "segments must have shape"),
    (lambda: superpixel.explain_lime(GOOD, KEY, teacher_apply=linear, teacher_params=A,
                                     config=LIME, chunk_size=0), "chunk_size must be >= 1"),
    (lambda: attribution.attribute("occlusion", GOOD, CLS, KEY, teacher_apply=linear,
                                   teacher_params=A), "method must be one of"),
    (lambda: attribution.attribute("grad_cam", GOOD, CLS, KEY, teacher_apply=linear,
                                   teacher_params=A), "needs teacher_config"),
    (lambda: adversarial.attack_dataset(GOOD, CLS, KEY, teacher_apply=linear,
                                        teacher_params=A, batch_size=0), "batch_size"),
    (lambda: train.train_teacher((GOOD, CLS), (GOOD[:0], CLS[:0]), TCFG, TINY_TRAIN,
                                 progress=False), "eval images is empty"),
    (lambda: train.train_teacher((GOOD, CLS), (GOOD, CLS), TCFG, train.TrainConfig(
        batch_size=64), progress=False), "batch_size 64 exceeds the 4 training examples"),
    (lambda: train.train_teacher((GOOD, CLS), (GOOD, CLS), TCFG, TINY_TRAIN,
                                 adversarial_training=train.AdversarialTraining(layer="conv9"),
                                 progress=False), "not one of the teacher's layers"),
    (lambda: train.train_vae(GOOD, GOOD[:0], VCFG, TINY_TRAIN, progress=False),
     "eval images is empty"),
    (lambda: surrogate.train_surrogate(GOOD, np.zeros((4, 3)), GOOD, np.zeros((4, K)), SCFG,
                                       TINY_TRAIN, progress=False),
     r"train_teacher_logits must have shape \[4, 10\]"),
    (lambda: surrogate.train_surrogate(GOOD, np.full((4, K), np.nan), GOOD, np.zeros((4, K)),
                                       SCFG, TINY_TRAIN, progress=False), "contains NaN"),
    (lambda: surrogate.train_explainer(SP, SCFG, GOOD, np.array([0, 1, 2, 99]), GOOD, CLS,
                                       TINY_TRAIN, progress=False), "train_classes must be in"),
    (lambda: driver.map_batches(lambda p, x: x, None, GOOD, batch_size=0), "batch_size"),
    (lambda: vae.encode(VP, GOOD[..., :0], config=VCFG), "the VAE expects images"),
    (lambda: vae.decode(VP, jnp.zeros((3, 5)), config=VCFG), r"the VAE expects z \[B, Z\]"),
    (lambda: teacher_logits(TP, jnp.zeros((2, 9, 9, 1)), TCFG), "the teacher expects images"),
    (lambda: consistency.layer_features(TP, GOOD, config=TCFG, layer="conv7"), "conv7"),
    (lambda: consistency.consistency_loss(jnp.zeros((2, 3)), jnp.zeros((2, 4))), "one shape"),
    (lambda: consistency.top_k_concepts(GOOD.reshape(4, -1), CLS[:2], 2, K), "concepts"),
    (lambda: driver.map_instances(lambda p, x, k: x, None, GOOD, KEY, chunk_size=0),
     "chunk_size must be >= 1"),
])
def test_other_arguments_are_checked(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_valid_inputs_still_give_finite_results():
    """The other side of every table above: the same entry points with good input."""
    for name, call in IMAGE_ENTRY_POINTS.items():
        out = call(GOOD)
        leaves = [np.asarray(v) for v in jax.tree.leaves(out)
                  if np.issubdtype(np.asarray(v).dtype, np.floating)]
        assert leaves and all(np.all(np.isfinite(v)) for v in leaves
                              if v.ndim and name != "max_sensitivity"), name
