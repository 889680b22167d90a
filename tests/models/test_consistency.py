"""Adversarial examples, the neuron-consistency metric and adversarial consistent training."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_TEACHER, TINY_TRAIN

from deepvid_jax.data import sources as data_lib
from deepvid_jax.models import adversarial, consistency, train
from deepvid_jax.models.adversarial import AttackConfig
from deepvid_jax.models.networks import teacher_apply_for

TCFG = TINY_TEACHER
APPLY = teacher_apply_for(TCFG)
EPS = 0.15


@pytest.fixture(scope="module")
def trained(tiny_teacher):
    te, tp = data_lib.load("digits", "test[:200]"), tiny_teacher
    return jnp.asarray(te.images), jnp.asarray(te.labels), tp


def _accuracy(tp, x, y):
    return float(jnp.mean(jnp.argmax(APPLY(tp, x), -1) == y))


@pytest.mark.parametrize("config", [AttackConfig(method="fgsm", epsilon=EPS),
                                    AttackConfig(method="pgd", epsilon=EPS, steps=10)])
def test_attacks_stay_in_the_ball_and_in_range_and_lower_accuracy(trained, config):
    x, y, tp = trained
    adv = adversarial.attack(x, y, jax.random.PRNGKey(0), teacher_apply=APPLY,
                             teacher_params=tp, config=config)
    assert adv.shape == x.shape
    assert float(jnp.max(jnp.abs(adv - x))) <= EPS + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    clean, attacked = _accuracy(tp, x, y), _accuracy(tp, adv, y)
    assert clean > 0.8 and attacked < clean - 0.3, (clean, attacked)


def test_pgd_is_stronger_than_fgsm_and_targeted_reaches_targets(trained):
    x, y, tp = trained
    key = jax.random.PRNGKey(1)
    f = adversarial.attack(x, y, key, teacher_apply=APPLY, teacher_params=tp,
                           config=AttackConfig(method="fgsm", epsilon=EPS))
    p = adversarial.attack(x, y, key, teacher_apply=APPLY, teacher_params=tp,
                           config=AttackConfig(method="pgd", epsilon=EPS, steps=20))
    assert _accuracy(tp, p, y) <= _accuracy(tp, f, y)
    target = (y + 1) % 10
    t = adversarial.attack(x, target, key, teacher_apply=APPLY, teacher_params=tp,
                           config=AttackConfig(epsilon=0.3, steps=20, targeted=True))
    hit = float(jnp.mean(jnp.argmax(APPLY(tp, t), -1) == target))
    assert hit > 0.5, hit


def test_attack_batch_equals_loop(trained):
    x, y, tp = trained
    key = jax.random.PRNGKey(2)
    cfg = AttackConfig(epsilon=EPS, steps=5, random_start=True)
    batched = adversarial.pgd(APPLY, tp, x[:6], y[:6], key, epsilon=EPS, steps=5)
    for i in range(6):
        # Instance i's random start is fold_in(key, i): row i among five other images (one
        # shape, so one compiled program) is attacked as in the batch.
        others = adversarial.pgd(APPLY, tp, x[6:12].at[i].set(x[i]), y[6:12].at[i].set(y[i]),
                                 key, epsilon=EPS, steps=5)
        np.testing.assert_allclose(others[i], batched[i], atol=1e-6)
        assert not np.allclose(others[i - 1], batched[i - 1])  # the other rows did differ
    f = adversarial.attack(x[:6], y[:6], key, teacher_apply=APPLY, teacher_params=tp,
                           config=dataclasses.replace(cfg, method="fgsm"))
    for i in range(6):
        g = adversarial.fgsm(APPLY, tp, x[i : i + 1], y[i : i + 1], epsilon=EPS)
        np.testing.assert_allclose(g[0], f[i], atol=1e-6)


@pytest.mark.parametrize("batch_size", [7])  # 17 images: two full batches and a padded one
def test_attack_dataset_does_not_depend_on_its_batches(trained, batch_size):
    """Image i's random start is fold_in(key, i) in any batch: the batched run equals one call
    of `attack` on all the images (it was fold_in(key, batch number) before the driver)."""
    x, y, tp = trained
    key, cfg = jax.random.PRNGKey(3), AttackConfig(epsilon=EPS, steps=3, random_start=True)
    whole = adversarial.attack(x[:17], y[:17], key, teacher_apply=APPLY, teacher_params=tp,
                               config=cfg)
    batched = adversarial.attack_dataset(x[:17], y[:17], key, teacher_apply=APPLY,
                                         teacher_params=tp, config=cfg, batch_size=batch_size)
    assert isinstance(batched, np.ndarray) and batched.shape == (17, *x.shape[1:])
    np.testing.assert_allclose(batched, whole, atol=1e-6)


def test_bad_attack_config_is_clear():
    with pytest.raises(ValueError, match="method"):
        AttackConfig(method="cw")
    with pytest.raises(ValueError, match="epsilon"):
        AttackConfig(epsilon=2.0)


def test_metric_is_one_for_a_class_neuron_and_low_for_a_random_one():
    rng = np.random.default_rng(0)
    concepts = np.repeat(np.arange(10), 50)  # 500 images, 50 per class
    pure = (concepts == 3).astype(np.float32) + 0.01 * rng.random(500)  # fires only for 3
    noise = rng.random(500).astype(np.float32)  # fires at random
    acts = jnp.asarray(np.stack([pure, noise], 1))
    c = consistency.neuron_consistency(acts, concepts, acts, concepts, k=20)
    np.testing.assert_allclose(c.joint[0], 1.0)
    np.testing.assert_allclose(c.agreement[0], 1.0)
    assert float(c.joint[1]) < 0.25  # ~ 1/K = 0.1 for a neuron without a concept
    # A neuron pure on both pools but for different concepts: each pool 1, agreement 0, joint 1/2.
    other = (concepts == 7).astype(np.float32)[:, None]
    d = consistency.neuron_consistency(jnp.asarray(pure[:, None]), concepts, jnp.asarray(other),
                                       concepts, k=20)
    np.testing.assert_allclose([d.real[0], d.adversarial[0], d.agreement[0], d.joint[0]],
                               [1.0, 1.0, 0.0, 0.5], atol=1e-6)
    # A dead neuron (never fires) has no top images: NaN, flagged, not a tie-break score.
    dead = jnp.asarray(np.stack([pure, np.zeros(500, np.float32)], 1))
    e = consistency.neuron_consistency(dead, concepts, dead, concepts, k=20)
    assert bool(e.alive[0]) and not bool(e.alive[1]) and np.isnan(e.joint[1])
    with pytest.raises(ValueError, match="k must be"):
        consistency.neuron_consistency(acts, concepts, acts, concepts, k=501)


def test_consistency_loss_is_zero_iff_features_coincide():
    f = jax.random.normal(jax.random.PRNGKey(0), (4, 32))
    assert float(consistency.consistency_loss(f, f)) == 0.0
    want = np.mean(0.01 * 32 / np.sum(np.asarray(f) ** 2, axis=1))
    assert float(consistency.consistency_loss(f, f + 0.1)) == pytest.approx(want, rel=1e-4)
    # Relative: shrinking both sides together does not shrink the loss.
    assert float(consistency.consistency_loss(0.1 * f, 0.1 * f + 0.01)) == pytest.approx(
        want, rel=1e-3)
    # Only the adversarial side receives a gradient.
    g_clean = jax.grad(lambda a: consistency.consistency_loss(a, f + 1))(f)
    g_adv = jax.grad(lambda b: consistency.consistency_loss(f, b))(f + 1)
    assert float(jnp.abs(g_clean).max()) == 0.0 and float(jnp.abs(g_adv).max()) > 0


def test_layer_features_shapes_and_errors(trained):
    x, _, tp = trained
    assert consistency.layer_features(tp, x[:3], config=TCFG, layer="dense").shape == (3, 32)
    assert consistency.layer_features(tp, x[:3], config=TCFG, layer="conv1").shape == (3, 16)
    assert consistency.layer_features(tp, x[:3], config=TCFG, layer="conv0",
                                      pool=False).shape == (3, 8, 8, 8)
    with pytest.raises(ValueError, match="not one of"):
        consistency.layer_features(tp, x[:3], config=TCFG, layer="logits")


def test_adversarial_consistent_training_runs_and_weight_zero_is_plain(trained):
    x, y, _ = trained
    tr = data_lib.load("digits", "train")
    fast = dataclasses.replace(TINY_TRAIN, epochs=2)
    adv = train.AdversarialTraining(attack=AttackConfig(epsilon=0.1, steps=2),
                                    consistency_weight=1.0)
    params, hist = train.train_teacher((tr.images, tr.labels), (np.asarray(x), np.asarray(y)),
                                       TCFG, fast, adversarial_training=adv, progress=False)
    last = hist[-1]
    assert np.isfinite(last["train_consistency"]) and last["train_consistency"] > 0
    assert last["eval_accuracy"] > 0.5 and "train_adv_accuracy" in last
    # The objective is the documented sum of its parts.
    xa = x[:8] + 0.05
    loss, (aux, _, _) = train.adversarial_teacher_loss(params, x[:8], jnp.clip(xa, 0, 1), y[:8],
                                                       TCFG, adv)
    np.testing.assert_allclose(loss, aux["clean_ce"] + aux["adv_ce"] + aux["consistency"],
                               rtol=1e-5)
    plain = dataclasses.replace(adv, consistency_weight=0.0)
    loss0, (aux0, _, _) = train.adversarial_teacher_loss(params, x[:8], jnp.clip(xa, 0, 1),
                                                         y[:8], TCFG, plain)
    np.testing.assert_allclose(loss0, aux0["clean_ce"] + aux0["adv_ce"], rtol=1e-6)
    with pytest.raises(ValueError, match="consistency_weight"):
        train.AdversarialTraining(consistency_weight=-1.0)
