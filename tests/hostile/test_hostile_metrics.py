"""The metric entry points against hostile input: every kind of metric (`dv.score` of
explanations and of localisation, `metrics.score_explainer`) and the public functions they call,
with each kind of bad value. Every case must be a ValueError naming the problem, raised before
any long work."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import deepvid_jax as dv
from deepvid_jax import metrics
from deepvid_jax.data import sources as data
from deepvid_jax.metrics import localisation, randomisation, stability

K = 10
KEY = jax.random.PRNGKey(0)
GOOD = data.load("digits", "test[:4]").images  # [4, 8, 8, 1] in [0, 1]
CLS = np.array([0, 1, 2, 3], np.int32)
A = jnp.asarray(np.random.default_rng(0).normal(size=(64, K)).astype(np.float32))
REGIONS = np.zeros((4, 8, 8), bool)
REGIONS[:, :4] = True


def linear(p, x):
    return x.reshape(x.shape[0], -1) @ p


MODELS = dv.Models(linear, A, K)

IMAGE_ENTRY_POINTS = {
    "score(auc_zero)": lambda x: dv.score("auc_zero", x, np.zeros(np.shape(x), np.float32), CLS,
                                          models=MODELS),
    "score(relevance_mass)": lambda x: dv.score("relevance_mass", x,
                                                np.zeros(np.shape(x), np.float32),
                                                regions=REGIONS),
    "score_explainer(max_sensitivity)": lambda x: metrics.score_explainer(
        "max_sensitivity", dv.get("gradient"), x, CLS, models=MODELS),
    "score_explainer(seed_agreement)": lambda x: metrics.score_explainer(
        "seed_agreement", dv.get("smoothgrad"), x, CLS, models=MODELS),
    "max_sensitivity(keys)": lambda x: stability.max_sensitivity(
        lambda v: v, x, keys=jax.random.split(KEY, 4)),
    "cascading_randomisation": lambda x: randomisation.cascading_randomisation(
        lambda p, v: v, x, {"logits": A}, {"logits": A}, ["logits"]),
}

NAN = GOOD.copy()
NAN[1, 3, 3, 0] = np.nan
BAD_IMAGES = {
    "uint8": ((GOOD * 255).astype(np.uint8), "floating point.*/ 255"),
    "0-255 floats": (GOOD * 255, r"in \[0, 1\].*divide by 255"),
    "negative": (GOOD - 0.5, r"in \[0, 1\]"),
    "NaN": (NAN, r"NaN or inf.*images \[1\]"),
    "one image without a batch axis": (GOOD[0], r"\[B, H, W, C\].*images\[None\]"),
    "empty batch": (GOOD[:0], "empty"),
}


@pytest.mark.parametrize("bad", sorted(BAD_IMAGES))
@pytest.mark.parametrize("entry", sorted(IMAGE_ENTRY_POINTS))
def test_bad_images_are_clear_errors(entry, bad):
    images, message = BAD_IMAGES[bad]
    with pytest.raises(ValueError, match=message):
        IMAGE_ENTRY_POINTS[entry](images)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: localisation.relevance_mass(GOOD, REGIONS.astype(np.int32)), "bool mask"),
    (lambda: localisation.pointing_game(GOOD * np.nan, REGIONS), "attributions contains NaN"),
    (lambda: localisation.relevance_rank_accuracy(GOOD[..., 0], REGIONS), "4 dimensions"),
    (lambda: stability.max_sensitivity(lambda v: v, GOOD), "exactly one of key"),
    (lambda: stability.max_sensitivity(lambda v: v, GOOD, KEY, keys=jax.random.split(KEY, 4)),
     "exactly one of key"),
    (lambda: stability.max_sensitivity(lambda v: v, GOOD, keys=jax.random.split(KEY, 3)),
     r"keys must be \[B\] = \[4\]"),
    (lambda: stability.max_sensitivity(lambda v: v, GOOD, KEY, reference=GOOD[:2]),
     "reference must have shape"),
    (lambda: stability.seed_agreement(np.stack([GOOD, GOOD * np.nan])), "contains NaN"),
    (lambda: randomisation.cascading_randomisation(lambda p, v: v, GOOD, {"logits": A}, {},
                                                   ["logits"]), "fresh parameters"),
    (lambda: randomisation.cascading_randomisation(lambda p, v: v, GOOD, {"logits": A},
                                                   {"logits": A}, ["conv9"]),
     "not in the parameters"),
    (lambda: randomisation.cascading_randomisation("grad", GOOD, {}, {}, ["x"]), "callable"),
    (lambda: randomisation.cascading_layers([]), "at least one layer"),
    (lambda: randomisation.teacher_layers(None), "TeacherConfig"),
    (lambda: metrics.score_explainer("randomisation", dv.get("gradient"), GOOD, CLS,
                                     models=MODELS), "teacher_config"),
    (lambda: metrics.score_explainer("max_sensitivity", dv.get("gradient"), GOOD, CLS[:3],
                                     models=MODELS), r"shape \[B\] = \[4\]"),
    (lambda: metrics.score_explainer("max_sensitivity", dv.get("gradient"), GOOD, CLS,
                                     models=MODELS, method_config=dv.RiseConfig()),
     "AttributionConfig"),
    (lambda: metrics.score_explainer("max_sensitivity", dv.get("gradient"), GOOD, CLS,
                                     models=MODELS, config=metrics.SeedConfig()),
     "SensitivityConfig"),
    (lambda: dv.score("auc_zero", GOOD, GOOD, CLS, models="runs/mnist"), "models must be"),
])
def test_other_arguments_are_checked(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_a_black_box_teacher_gets_the_metrics_of_sampling_explainers():
    """A teacher without gradients: the explanation metrics work, and an explainer metric of a
    gradient method is refused by name before any work."""
    box = dv.Models(dv.callback_teacher(lambda x: np.asarray(linear(A, x)), K), None, K)
    out = dv.score("auc_zero", GOOD, GOOD, CLS, models=box)
    assert np.isfinite(out["deletion"]).all()
    with pytest.raises(ValueError, match="black box has none"):
        metrics.score_explainer("max_sensitivity", dv.get("gradient"), GOOD, CLS, models=box)
