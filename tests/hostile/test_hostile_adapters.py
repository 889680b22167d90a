"""Model adapters against hostile input: the kind of a model's outputs (logits or
probabilities) is read from the outputs whatever is declared, so neither a softmax model taken
as logits nor a log of logits taken as probabilities can pass silently; bad declarations are
clear errors."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepvid_jax.models import adapters

SHAPE, K = (4, 4, 1), 3
X = np.random.default_rng(0).uniform(0, 1, (2, *SHAPE)).astype(np.float32)


class Dense(nn.Module):
    softmax: bool = False

    @nn.compact
    def __call__(self, x):
        out = nn.Dense(K)(x.reshape(len(x), -1))
        return nn.softmax(out) if self.softmax else out


def _variables(net):
    return net.init(jax.random.PRNGKey(0), X[:1])


@pytest.mark.parametrize("outputs", ["softmax", "logit", None, 1, ""])
def test_an_unknown_kind_is_a_clear_error(outputs):
    for make in (lambda: adapters.from_flax(Dense(), _variables(Dense()), num_classes=K,
                                            outputs=outputs),
                 lambda: adapters.from_callback(lambda x: np.zeros((len(x), K)), K,
                                                outputs=outputs)):
        with pytest.raises(ValueError, match="outputs"):
            make()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(0.01, 100), rows=st.integers(1, 6),
       k=st.integers(2, 12))
def test_logits_and_probabilities_are_told_apart(seed, scale, rows, k):
    logits = np.random.default_rng(seed).normal(0, scale, (rows, k)).astype(np.float32)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    probs = e / e.sum(-1, keepdims=True)
    assert adapters.check_outputs(logits, "logits", "m")
    assert adapters.check_outputs(probs, "probabilities", "m")
    with pytest.raises(ValueError, match=r"m: outputs='probabilities' was declared.*row sums"):
        adapters.check_outputs(logits, "probabilities", "m")
    with pytest.raises(ValueError, match=r"m: the model's outputs are probabilities"):
        adapters.check_outputs(probs, "logits", "m")


@pytest.mark.parametrize("out", [np.zeros((2,)), np.zeros((2, 3), np.int32),
                                 np.full((2, 3), np.nan, np.float32), np.zeros((2, 3, 1))])
def test_outputs_that_are_not_logits_are_left_to_the_probe(out):
    """Not judged (False): the teacher probe's own errors name what is wrong."""
    assert adapters.check_outputs(out, "probabilities", "m") is False


def test_one_hot_and_rounded_probabilities_are_probabilities():
    one_hot = np.eye(K, dtype=np.float32)
    assert adapters.check_outputs(one_hot, "probabilities", "m")
    rounded = np.asarray([[0.5, 0.5 + 4e-4, -1e-8]], np.float32)  # a float32 softmax's noise
    assert adapters.check_outputs(rounded, "probabilities", "m")


def test_the_lazy_check_uses_the_adapters_own_parameters():
    """A first call with other parameters (e.g. a randomised copy) still judges the model the
    adapter was given."""
    net = Dense(softmax=True)
    variables = _variables(net)
    teacher = adapters.from_flax(net, variables, num_classes=K, outputs="probabilities")
    zeros = jax.tree.map(np.zeros_like, variables)  # uniform probabilities, still valid
    np.testing.assert_allclose(teacher.apply(zeros, X), np.log(1 / K), rtol=1e-6)
    wrong = adapters.from_flax(net, variables, num_classes=K)
    with pytest.raises(ValueError, match="are probabilities"):
        wrong.apply(jax.tree.map(lambda a: a + 1.0, variables), X)


def test_a_black_box_returning_bad_outputs_is_named_by_the_probe():
    with pytest.raises(ValueError, match="expected logits"):
        adapters.from_callback(lambda x: np.zeros((len(x), K + 1), np.float32), K,
                               image_shape=SHAPE, outputs="probabilities")
    with pytest.raises(ValueError, match="expected floats"):
        adapters.from_callback(lambda x: np.ones((len(x), K), np.int32), K,
                               image_shape=SHAPE, outputs="probabilities")
