"""Localisation metrics: known answers, ties as their expectation, against brute force."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepvid_jax.metrics import localisation as L

METRICS = (L.relevance_mass, L.relevance_rank_accuracy, L.pointing_game)


def _regions(seed=0, b=6, h=5, w=4):
    rng = np.random.default_rng(seed)
    region = rng.random((b, h, w)) < rng.uniform(0.1, 0.6, (b, 1, 1))
    region[:, 0, 0] = True  # never empty
    return jnp.asarray(region)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("pooling", L.POOLINGS)
def test_a_map_equal_to_the_region_scores_one(metric, pooling):
    region = _regions()
    attributions = jnp.repeat(region[..., None].astype(jnp.float32), 3, -1) * 0.7
    np.testing.assert_allclose(metric(attributions, region, pooling), 1.0, atol=1e-6)


@pytest.mark.parametrize("metric", METRICS)
def test_a_constant_map_scores_the_area_fraction(metric):
    region = _regions(1)
    area = np.asarray(region).mean((1, 2))
    for value in (0.0, 2.5, -1.0):  # no relevance at all; positive; negative (abs pooling)
        attributions = jnp.full((*region.shape, 2), value)
        np.testing.assert_allclose(metric(attributions, region), area, atol=1e-6)


def test_the_complement_scores_zero_and_mass_is_a_share():
    region = _regions(2)
    attributions = (~region)[..., None].astype(jnp.float32)
    for metric in (L.relevance_mass, L.pointing_game):
        np.testing.assert_allclose(metric(attributions, region), 0.0, atol=1e-6)
    k, p = np.asarray(region).sum((1, 2)), region[0].size  # top k: the p - k others, then region
    np.testing.assert_allclose(L.relevance_rank_accuracy(attributions, region),
                               np.maximum(k - (p - k), 0) / k, atol=1e-6)
    a = jax.random.normal(jax.random.PRNGKey(0), (*region.shape, 3))
    r = np.abs(np.asarray(a)).sum(-1)
    want = (r * np.asarray(region)).sum((1, 2)) / r.sum((1, 2))
    np.testing.assert_allclose(L.relevance_mass(a, region), want, rtol=1e-5)
    pos = np.maximum(np.asarray(a).sum(-1), 0)
    np.testing.assert_allclose(L.relevance_mass(a, region, "positive"),
                               (pos * np.asarray(region)).sum((1, 2)) / pos.sum((1, 2)),
                               rtol=1e-5)


def _brute(values: np.ndarray, region: np.ndarray, k: int) -> float:
    """Mean share of the region among the top k over every order of the tied pixels."""
    hits = []
    for perm in itertools.permutations(range(len(values))):
        order = sorted(range(len(values)), key=lambda i: (-values[i], perm.index(i)))
        hits.append(region[order[:k]].sum() / k)
    return float(np.mean(hits))


def test_ties_count_as_their_expectation_over_random_orders():
    rng = np.random.default_rng(0)
    for _ in range(8):
        values = rng.integers(0, 3, 6).astype(np.float32)  # many ties
        region = rng.random(6) < 0.5
        region[0] = True
        a, m = jnp.asarray(values).reshape(1, 2, 3, 1), jnp.asarray(region).reshape(1, 2, 3)
        k = int(region.sum())
        np.testing.assert_allclose(L.relevance_rank_accuracy(a, m)[0],
                                   _brute(values, region, k), atol=1e-6)
        np.testing.assert_allclose(L.pointing_game(a, m)[0], _brute(values, region, 1),
                                   atol=1e-6)


def test_batch_equals_loop_and_jit():
    region = _regions(3)
    a = jax.random.normal(jax.random.PRNGKey(1), (*region.shape, 2))
    for metric in METRICS:
        whole = jax.jit(metric)(a, region)
        loop = np.concatenate([metric(a[i : i + 1], region[i : i + 1]) for i in range(len(a))])
        np.testing.assert_allclose(whole, loop, atol=1e-6)


def test_clear_errors():
    a = jnp.zeros((2, 4, 4, 1))
    with pytest.raises(ValueError, match=r"region must be \[B, H, W\] = \[2, 4, 4\]"):
        L.relevance_mass(a, jnp.zeros((2, 4, 3), bool))
    with pytest.raises(ValueError, match="pooling"):
        L.pointing_game(a, jnp.zeros((2, 4, 4), bool), "max")
