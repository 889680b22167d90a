"""Attentive surrogate saliency, RISE, and the confidence metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepvid_jax.data import sources as data_lib
from deepvid_jax.explainers import rise, surrogate
from deepvid_jax.metrics import fidelity as metrics
from deepvid_jax.models import checkpoint, train
from deepvid_jax.models.networks import SurrogateConfig, init_surrogate, surrogate_forward

SCFG = SurrogateConfig(features=(8, 16), hidden=32, image_shape=(8, 8, 1))
FAST = train.TrainConfig(epochs=12, batch_size=64, learning_rate=3e-3)


def region_teacher():
    """A teacher that only looks at the top-left 4 x 4 quadrant of 8 x 8 images."""
    w = jax.random.normal(jax.random.PRNGKey(0), (16, 10)) * 3.0

    def apply(params, images):
        del params
        return images[:, :4, :4, 0].reshape(images.shape[0], -1) @ w

    return apply


@pytest.fixture(scope="module")
def trained():
    tr, te = data_lib.load("digits", "train"), data_lib.load("digits", "test")
    apply = region_teacher()
    t_tr = surrogate.teacher_logits_of(apply, None, tr.images)
    t_te = surrogate.teacher_logits_of(apply, None, te.images)
    sp, hist = surrogate.train_surrogate(tr.images, t_tr, te.images, t_te, SCFG, FAST,
                                         progress=False)
    ep, ecfg, ehist = surrogate.train_explainer(sp, SCFG, tr.images, t_tr.argmax(-1), te.images,
                                                t_te.argmax(-1), FAST, progress=False)
    return dict(images=te.images, t_te=t_te, sp=sp, hist=hist, ep=ep, ecfg=ecfg, ehist=ehist,
                apply=apply)


def test_attention_maps_are_in_unit_interval_with_stage_shapes():
    p = init_surrogate(jax.random.PRNGKey(0), SCFG)
    x = jax.random.uniform(jax.random.PRNGKey(1), (3, 8, 8, 1))
    logits, maps = surrogate_forward(p, x, SCFG)
    assert logits.shape == (3, 10)
    assert [m.shape for m in maps] == [(3, 8, 8), (3, 4, 4)]
    for m in maps:
        assert float(m.min()) >= 0.0 and float(m.max()) <= 1.0


def test_agreement_with_the_teacher_rises_with_training(trained):
    untrained = surrogate.surrogate_agreement(init_surrogate(jax.random.PRNGKey(0), SCFG),
                                              trained["images"], trained["t_te"], SCFG)
    agreement = [h["eval_agreement"] for h in trained["hist"]]
    assert agreement[-1] > agreement[0] > untrained - 0.05
    assert agreement[-1] > 0.7, agreement


def test_saliency_concentrates_where_the_teacher_looks(trained):
    maps = np.asarray(surrogate.saliency(
        trained["images"], surrogate_params=trained["sp"], explainer_params=trained["ep"],
        class_idx=trained["t_te"].argmax(-1), surrogate_config=SCFG,
        explainer_config=trained["ecfg"]))
    assert maps.shape == (len(trained["images"]), 8, 8)
    assert maps.min() >= 0 and maps.max() <= 1
    # Mean saliency per pixel inside the quadrant vs outside: 1 for a map blind to the teacher.
    inside = maps[:, :4, :4].mean((1, 2))
    outside = (maps.sum((1, 2)) - maps[:, :4, :4].sum((1, 2))) / 48
    ratio = inside.mean() / outside.mean()
    assert ratio > 2.0, ratio


def test_saliency_batch_equals_loop_and_default_class(trained):
    x = trained["images"][:5]
    kw = dict(surrogate_params=trained["sp"], explainer_params=trained["ep"],
              surrogate_config=SCFG, explainer_config=trained["ecfg"])
    batched = np.asarray(surrogate.saliency(x, class_idx=np.arange(5), **kw))
    for i in range(5):
        one = np.asarray(surrogate.saliency(x[i : i + 1], class_idx=np.array([i]), **kw))
        np.testing.assert_allclose(one[0], batched[i], rtol=1e-5, atol=1e-6)
    pred = np.asarray(surrogate_forward(trained["sp"], x, SCFG)[0]).argmax(-1)
    np.testing.assert_allclose(surrogate.saliency(x, **kw),
                               surrogate.saliency(x, class_idx=pred, **kw), atol=1e-6)


def test_saliency_bad_input_is_clear(trained):
    kw = dict(surrogate_params=trained["sp"], explainer_params=trained["ep"],
              surrogate_config=SCFG, explainer_config=trained["ecfg"])
    x = trained["images"][:2]
    with pytest.raises(ValueError, match="shape"):
        surrogate.saliency(x[0], **kw)
    with pytest.raises(ValueError, match="image shape"):
        surrogate.saliency(np.zeros((2, 28, 28, 1), np.float32), **kw)
    with pytest.raises(ValueError, match="class_idx"):
        surrogate.saliency(x, class_idx=np.array([0, 10]), **kw)
    with pytest.raises(ValueError, match="NaN"):
        surrogate.saliency(np.full_like(x, np.nan), **kw)


def test_surrogate_checkpoint_round_trip(trained, tmp_path):
    checkpoint.save(tmp_path / "s", trained["sp"], kind="surrogate", config=SCFG)
    params, cfg, _ = checkpoint.restore(tmp_path / "s", kind="surrogate")
    assert cfg == SCFG
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(trained["sp"]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_rise_finds_the_region_and_masks_are_valid():
    m = rise.rise_masks(jax.random.PRNGKey(0), 50, 8, 8, 4, 0.5)
    assert m.shape == (50, 8, 8) and float(m.min()) >= 0 and float(m.max()) <= 1
    apply = region_teacher()
    x = jnp.asarray(data_lib.load("digits", "test[:8]").images)
    cls = jnp.argmax(apply(None, x), -1)
    s = np.asarray(rise.rise(x, cls, jax.random.PRNGKey(1), teacher_apply=apply,
                             teacher_params=None,
                             config=rise.RiseConfig(num_masks=400, grid=4, batch=100)))
    assert s.shape == (8, 8, 8)
    # Pixels outside the quadrant do not change the teacher, so within each image their
    # saliency is flat (up to Monte Carlo noise) while the quadrant's varies.
    inside, outside = s[:, :4, :4].std((1, 2)), s[:, 4:, 4:].std((1, 2))
    assert inside.mean() > 2 * outside.mean(), (inside.mean(), outside.mean())
    with pytest.raises(ValueError, match="keep"):
        rise.RiseConfig(keep=0.0)


def test_average_drop_and_increase_known_values():
    apply = region_teacher()
    x = jnp.asarray(data_lib.load("digits", "test[:8]").images)
    cls = jnp.argmax(apply(None, x), -1)
    constant = jnp.full(x.shape[:3], 0.3)
    drop, inc = metrics.average_drop_increase(x, constant, cls, teacher_apply=apply,
                                              teacher_params=None)
    np.testing.assert_allclose(drop, 0.0, atol=1e-6)  # a constant map: image unchanged
    np.testing.assert_allclose(inc, 0.0)
    quadrant_only = jnp.zeros(x.shape[:3]).at[:, :4, :4].set(1.0)
    drop, _ = metrics.average_drop_increase(x, quadrant_only, cls, teacher_apply=apply,
                                            teacher_params=None)
    np.testing.assert_allclose(drop, 0.0, atol=1e-5)  # the teacher sees all it uses
    other = jnp.zeros(x.shape[:3]).at[:, 4:, 4:].set(1.0)
    drop, _ = metrics.average_drop_increase(x, other, cls, teacher_apply=apply,
                                            teacher_params=None)
    assert float(drop.mean()) > 0.3  # hiding what the teacher uses drops its confidence
