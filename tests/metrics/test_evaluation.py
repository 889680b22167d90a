"""Baseline explainers and evaluation metrics, on cases with known answers."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_TEACHER
from sklearn.linear_model import Ridge

from deepvid_jax import ops
from deepvid_jax.data import sources as data_lib
from deepvid_jax.explainers import gradients as attribution
from deepvid_jax.explainers import lime as superpixel
from deepvid_jax.explainers.deepvid import neighbors
from deepvid_jax.metrics import fidelity as metrics
from deepvid_jax.metrics import randomisation, stability
from deepvid_jax.models.networks import init_teacher, teacher_apply_for

H = W = 8
TCFG = TINY_TEACHER
APPLY = teacher_apply_for(TCFG)


def linear_apply(w_true, b_true=None):
    """A linear teacher over pixels: logits = flatten(x) @ W (+ b)."""

    def apply(params, images):
        del params
        out = images.reshape(images.shape[0], -1) @ w_true
        return out if b_true is None else out + b_true

    return apply


@pytest.fixture(scope="module")
def cnn(tiny_teacher):
    te, tp = data_lib.load("digits", "test[:16]"), tiny_teacher
    cls = jnp.argmax(APPLY(tp, te.images), -1)
    return jnp.asarray(te.images), tp, cls


# ------------------------------------------------------------------ fidelity


def test_perfect_surrogate_has_fidelity_one_and_kl_zero():
    logits = jax.random.normal(jax.random.PRNGKey(0), (3, 50, 10)) * 3
    f = metrics.fidelity(logits, logits)
    np.testing.assert_allclose(f.top1, 1.0)
    np.testing.assert_allclose(f.kl, 0.0, atol=1e-6)
    np.testing.assert_allclose(f.r2, 1.0, atol=1e-6)
    worse = metrics.fidelity(logits, logits[:, ::-1])  # another instance's answers
    assert np.all(worse.kl > 0.1) and np.all(worse.r2 < 0.5) and np.all(worse.top1 < 0.5)


# ------------------------------------------------------------------ gradient methods


def test_gradient_methods_on_a_linear_teacher_have_known_answers():
    key = jax.random.PRNGKey(1)
    w_true = jax.random.normal(key, (H * W, 4))
    apply = linear_apply(w_true)
    x = jax.random.uniform(jax.random.PRNGKey(2), (5, H, W, 1))
    cls = jnp.array([0, 1, 2, 3, 0])
    expected = w_true.T[cls].reshape(5, H, W, 1)
    g = attribution.gradient(apply, None, x, cls)
    np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(attribution.grad_x_input(apply, None, x, cls), expected * x,
                               rtol=1e-5, atol=1e-6)
    # For a linear model IG from 0 is exactly gradient x input, and SmoothGrad the gradient.
    ig = attribution.integrated_gradients(apply, None, x, cls, steps=4)
    np.testing.assert_allclose(ig, expected * x, rtol=1e-4, atol=1e-5)
    sg = attribution.smoothgrad(apply, None, x, cls, jax.random.PRNGKey(3), samples=3)
    np.testing.assert_allclose(sg, expected, rtol=1e-4, atol=1e-5)


def test_integrated_gradients_completeness_on_the_cnn(cnn):
    images, tp, cls = cnn
    ig = attribution.integrated_gradients(APPLY, tp, images, cls, steps=256)
    gap = attribution.class_score(APPLY, tp, images, cls) - attribution.class_score(
        APPLY, tp, jnp.zeros_like(images), cls)
    total = ig.reshape(len(images), -1).sum(1)
    np.testing.assert_allclose(total, gap, rtol=0.02, atol=0.02 * float(jnp.abs(gap).max()))
    coarse = attribution.integrated_gradients(APPLY, tp, images, cls, steps=2)
    assert float(jnp.abs(coarse.reshape(len(images), -1).sum(1) - gap).mean()) > float(
        jnp.abs(total - gap).mean())  # the tolerance is the quadrature's, and it shrinks


def test_grad_cam_shape_sign_and_batch_equals_loop(cnn):
    images, tp, cls = cnn
    cam = attribution.grad_cam(tp, images, cls, config=TCFG)
    assert cam.shape == images.shape and float(cam.min()) >= 0 and float(cam.max()) > 0
    for i in range(3):
        one = attribution.grad_cam(tp, images[i : i + 1], cls[i : i + 1], config=TCFG)
        np.testing.assert_allclose(one[0], cam[i], rtol=1e-4, atol=1e-6)
    first = attribution.grad_cam(tp, images, cls, config=TCFG, layer="conv0")
    assert not np.allclose(first, cam)
    with pytest.raises(ValueError, match="conv layers"):
        attribution.grad_cam(tp, images, cls, config=TCFG, layer="dense")


def test_attribute_dispatch_and_unknown_method(cnn):
    images, tp, cls = cnn
    key = jax.random.PRNGKey(0)
    for method in attribution.GRADIENT_METHODS:
        a = attribution.attribute(method, images, cls, key, teacher_apply=APPLY,
                                  teacher_params=tp, teacher_config=TCFG)
        assert a.shape == images.shape and bool(jnp.all(jnp.isfinite(a))), method
    with pytest.raises(ValueError, match="method must be one of"):
        attribution.attribute("occlusion", images, cls, key, teacher_apply=APPLY,
                              teacher_params=tp)


# ------------------------------------------------------------------ LIME in JAX


def test_weighted_ridge_matches_scikit_learn():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, (200, 12)).astype(np.float32)
    y = rng.normal(size=(200, 3)).astype(np.float32)
    sw = rng.uniform(0.1, 1.0, 200).astype(np.float32)
    coef, intercept = superpixel.weighted_ridge(jnp.asarray(x), jnp.asarray(y), jnp.asarray(sw),
                                                1.0)
    ref = Ridge(alpha=1.0).fit(x, y, sample_weight=sw)
    np.testing.assert_allclose(coef, ref.coef_.T, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(intercept, ref.intercept_, rtol=1e-4, atol=1e-5)


def test_lime_kernel_matches_cosine_distance():
    z = jnp.array([[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]], jnp.float32)
    d = np.array([0.0, 1 - np.sqrt(1 / 4), 1.0])
    np.testing.assert_allclose(superpixel.cosine_kernel_weights(z, 0.25),
                               np.sqrt(np.exp(-d**2 / 0.25**2)), rtol=1e-6)


def test_lime_recovers_a_teacher_linear_in_segments():
    seg = superpixel.grid_segments(H, W, 4)  # 4 segments
    assert seg.max() == 3 and seg.shape == (H, W)
    true = jnp.array([0.05, 0.3, 0.0, 0.4])  # P(class 1) = 0.1 + sum of "on" segments' values
    onehot = jax.nn.one_hot(jnp.asarray(seg).reshape(-1), 4)  # [HW, 4]
    mean_per_seg = onehot / onehot.sum(0)

    def apply(params, images):  # images are all-ones images with segments hidden (-> 0)
        on = images.reshape(images.shape[0], -1) @ mean_per_seg
        p = 0.1 + on @ true
        return jnp.log(jnp.stack([1 - p, p], -1))

    images = np.ones((3, H, W, 1), np.float32)
    cfg = superpixel.LimeConfig(num_samples=256, holdout=64, patch=4, ridge=0.0)
    e = superpixel.explain_lime(images, jax.random.PRNGKey(0), teacher_apply=apply,
                                teacher_params=None, config=cfg, chunk_size=2)
    assert e.coef.shape == (3, 4, 2)
    np.testing.assert_allclose(e.coef[:, :, 1], np.broadcast_to(true, (3, 4)), atol=1e-4)
    np.testing.assert_allclose(e.coef[:, :, 0], -np.broadcast_to(true, (3, 4)), atol=1e-4)
    np.testing.assert_allclose(e.r2, 1.0, atol=1e-4)
    att = e.attribution(np.ones(3, int))
    np.testing.assert_allclose(att[0, :4, :4, 0], true[0], atol=1e-4)
    np.testing.assert_allclose(att[0, 4:, 4:, 0], true[3], atol=1e-4)


def test_lime_rejects_bad_segments():
    images = np.ones((2, H, W, 1), np.float32)
    with pytest.raises(ValueError, match="shape"):
        superpixel.explain_lime(images, jax.random.PRNGKey(0), teacher_apply=APPLY,
                                teacher_params=None, segments=np.zeros((3, 3), int))
    with pytest.raises(ValueError, match="integer"):
        superpixel.explain_lime(images, jax.random.PRNGKey(0), teacher_apply=APPLY,
                                teacher_params=None, segments=np.zeros((H, W)))


def test_mask_neighbors_keep_or_blank_each_pixel():
    img = jax.random.uniform(jax.random.PRNGKey(0), (H, W, 1), minval=0.5)
    nb = neighbors.mask_neighbors(img, jax.random.PRNGKey(1), num=400, keep=0.3)
    kept = nb > 0
    np.testing.assert_allclose(jnp.where(kept, nb, img[None]), jnp.broadcast_to(img, nb.shape))
    assert abs(float(kept.mean()) - 0.3) < 0.02


# ------------------------------------------------------------------ deletion / insertion


def test_deletion_by_true_weights_beats_random_order():
    key = jax.random.PRNGKey(4)
    w_true = jax.random.normal(key, (H * W, 3)) * 2
    apply = linear_apply(w_true)
    x = jax.random.uniform(jax.random.PRNGKey(5), (16, H, W, 1))
    cls = jnp.argmax(apply(None, x), -1)
    truth = attribution.grad_x_input(apply, None, x, cls)  # each pixel's exact contribution
    rand = jax.random.normal(jax.random.PRNGKey(6), x.shape)
    good = metrics.deletion_insertion(x, truth, cls, teacher_apply=apply, teacher_params=None,
                                      steps=16)
    bad = metrics.deletion_insertion(x, rand, cls, teacher_apply=apply, teacher_params=None,
                                     steps=16)
    assert float(good.deletion.mean()) < float(bad.deletion.mean()) - 0.05
    assert float(good.insertion.mean()) > float(bad.insertion.mean()) + 0.05
    # Curve ends: all kept -> p(x); all removed -> p(baseline) (= uniform for a bias-free
    # linear teacher at 0).
    p = jnp.take_along_axis(jax.nn.softmax(apply(None, x)), cls[:, None], 1)[:, 0]
    np.testing.assert_allclose(good.deletion_curve[:, 0], p, rtol=1e-5)
    np.testing.assert_allclose(good.insertion_curve[:, -1], p, rtol=1e-5)
    np.testing.assert_allclose(good.deletion_curve[:, -1], 1 / 3, rtol=1e-5)


def test_tied_pixels_go_in_random_orders_averaged():
    w_true = jax.random.normal(jax.random.PRNGKey(4), (H * W, 3)) * 2
    apply = linear_apply(w_true)
    x = jax.random.uniform(jax.random.PRNGKey(5), (4, H, W, 1))
    cls = jnp.argmax(apply(None, x), -1)
    keys = jax.random.split(jax.random.PRNGKey(7), 4)
    kw = dict(teacher_apply=apply, teacher_params=None, steps=8)
    # Without ties the keys change nothing: the one order there is, spread 0.
    distinct = jax.random.normal(jax.random.PRNGKey(6), x.shape)
    plain = metrics.deletion_insertion(x, distinct, cls, **kw)
    keyed = metrics.deletion_insertion(x, distinct, cls, keys=keys, tie_orders=3, **kw)
    np.testing.assert_allclose(keyed.deletion, plain.deletion, rtol=1e-6)
    np.testing.assert_allclose(keyed.deletion_spread, 0.0, atol=1e-7)
    # An all-tied map: raster order without keys; with keys, order o of image i is the random
    # permutation from fold_in(keys[i], o), and the curves are their mean.
    flat = jnp.zeros_like(x)
    raster = metrics.deletion_insertion(x, flat, cls, **kw)
    ramp = -jnp.arange(H * W, dtype=jnp.float32).reshape(1, H, W, 1)  # raster order, no ties
    np.testing.assert_allclose(raster.deletion,
                               metrics.deletion_insertion(x, ramp + flat, cls, **kw).deletion,
                               rtol=1e-6)
    orders = 3
    got = metrics.deletion_insertion(x, flat, cls, keys=keys, tie_orders=orders, **kw)
    runs = []
    for o in range(orders):  # the same orders, each as an explicit untied map
        perm = jnp.stack([jax.random.permutation(jax.random.fold_in(k, o), H * W) for k in keys])
        explicit = -perm.astype(jnp.float32).reshape(x.shape)  # pixel j goes perm[j]-th
        runs.append(metrics.deletion_insertion(x, explicit, cls, **kw).deletion)
    np.testing.assert_allclose(got.deletion, np.mean(runs, 0), rtol=1e-5)
    np.testing.assert_allclose(got.deletion_spread, np.std(runs, 0), rtol=1e-4, atol=1e-7)
    assert float(got.deletion_spread.min()) > 0
    assert not np.allclose(got.deletion, raster.deletion)
    with pytest.raises(ValueError, match="tie_orders > 1 needs keys"):
        metrics.deletion_insertion(x, flat, cls, tie_orders=2, **kw)
    with pytest.raises(ValueError, match=r"keys must be \[B\] = \[4\]"):
        metrics.deletion_insertion(x, flat, cls, keys=keys[:2], **kw)


def test_auc_and_baselines():
    np.testing.assert_allclose(metrics.trapezoid_auc(jnp.array([1.0, 0.0])), 0.5)
    np.testing.assert_allclose(metrics.trapezoid_auc(jnp.ones((2, 5))), [1.0, 1.0])
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, H, W, 1))
    np.testing.assert_allclose(ops.gaussian_blur(jnp.full((1, H, W, 1), 0.3), 1.5), 0.3,
                               rtol=1e-5)
    assert metrics.baseline_images(x, "blur").shape == x.shape
    np.testing.assert_allclose(metrics.baseline_images(x, "mean")[:, 0, 0, 0], x.mean((1, 2, 3)),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="baseline"):
        metrics.baseline_images(x, "noise")
    with pytest.raises(ValueError, match="shape"):
        metrics.deletion_insertion(x, x[..., :0], jnp.zeros(2, int), teacher_apply=APPLY,
                                   teacher_params=None)


# ------------------------------------------------------------------ stability and sanity


def test_correlations_and_stability_have_known_values():
    a = jnp.arange(10.0).reshape(1, 10)
    np.testing.assert_allclose(stability.pearson(a, 2 * a + 1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(stability.spearman(a, a**3), 1.0, rtol=1e-6)
    np.testing.assert_allclose(stability.spearman(a, -a), -1.0, rtol=1e-6)
    np.testing.assert_allclose(stability.seed_agreement(jnp.stack([a, a, a])), 1.0, rtol=1e-6)
    np.testing.assert_allclose(stability.relative_change(a, 1.5 * a), 0.5, rtol=1e-6)
    assert np.isnan(stability.relative_change(0 * a, a)[0])  # undefined, not 1e12
    x = jax.random.uniform(jax.random.PRNGKey(0), (4, H, W, 1), minval=0.2, maxval=0.8)
    const = stability.max_sensitivity(lambda v: jnp.ones_like(v), x, jax.random.PRNGKey(1))
    np.testing.assert_allclose(const, 0.0)
    ident = stability.max_sensitivity(lambda v: v, x, jax.random.PRNGKey(1), radius=0.05)
    assert np.all(ident > 0) and np.all(ident <= 0.05 * 1.0 / 0.2 + 1e-6)  # ||d|| <= r sqrt(D)


def test_cascading_randomisation_moves_gradients_but_not_an_edge_detector(cnn):
    images, tp, cls = cnn
    names = ["conv0", "conv1", "dense", "logits"]
    stages = randomisation.cascading_layers(names)
    assert stages[0] == ["logits"] and stages[-1] == names
    fresh = init_teacher(jax.random.PRNGKey(99), TCFG)
    rand = randomisation.randomize_layers(tp, fresh, stages[-1])
    grad = functools.partial(attribution.gradient, APPLY)
    before, after = grad(tp, images, cls), grad(rand, images, cls)
    assert float(stability.spearman(jnp.abs(before), jnp.abs(after)).mean()) < 0.5
    # A "method" that ignores the model passes through randomisation unchanged: the check
    # would flag it.
    np.testing.assert_allclose(stability.spearman(images, images), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="not in the parameters"):
        randomisation.randomize_layers(tp, fresh, ["conv9"])
