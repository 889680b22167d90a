"""Steadier DeepVID (issue 31): antithetic and lattice latent draws, key-free calibration
probes, the ridge-started adaptive lasso and the smoothness chosen per image by held-out fit."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_TEACHER

from deepvid_jax.data import sources as data
from deepvid_jax.explainers.deepvid import core as ex
from deepvid_jax.explainers.deepvid import lasso, neighbors, radius, student
from deepvid_jax.explainers.deepvid.neighbors import NeighborConfig
from deepvid_jax.explainers.deepvid.student import StudentConfig
from deepvid_jax.models import vae
from deepvid_jax.models.networks import VAEConfig, init_teacher, init_vae, teacher_apply_for

VCFG = VAEConfig(latent_dim=3, features=(4,), hidden=8, image_shape=(8, 8, 1))
VP = init_vae(jax.random.PRNGKey(0), VCFG)
IMAGES = data.load("digits", "test[:4]").images


def _moments_match(offsets, mean, var, tol_mean, tol_var):
    """Whether the empirical mean and covariance of offsets [N, Z] are ``mean`` and ``var`` I
    ([Z] or scalars) to the tolerances (off-diagonal covariances within ``tol_var`` of 0)."""
    o = np.asarray(offsets, np.float64)
    cov = np.cov(o.T)
    want = np.diag(np.broadcast_to(var, (o.shape[1],)))
    return (np.abs(o.mean(0) - mean).max() < tol_mean
            and np.abs(cov - want).max() < tol_var * np.max(var))


@pytest.mark.parametrize("draw", ["antithetic", "lattice"])
def test_draws_are_pure_functions_of_the_key(draw):
    kw = dict(scale=0.7, draw=draw, split=48)
    a = neighbors.latent_offsets(jax.random.PRNGKey(3), 64, 5, **kw)
    b = neighbors.latent_offsets(jax.random.PRNGKey(3), 64, 5, **kw)
    c = neighbors.latent_offsets(jax.random.fold_in(jax.random.PRNGKey(3), 1), 64, 5, **kw)
    np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(a) - np.asarray(c)).min(axis=0).max() > 0  # another instance
    assert not np.allclose(a, c)


@pytest.mark.parametrize("draw", ["antithetic", "lattice"])
def test_gaussian_draws_have_the_configured_mean_and_covariance(draw):
    """Mean 0 and covariance scale^2 I (the lattice's closer than a pseudo-random draw of
    that size gets); the same check fails a plain draw of the wrong scale."""
    n, z, scale = 2048, 6, 0.7
    tol_var = {"antithetic": 0.15, "lattice": 0.06}[draw]  # antithetic: 1024 free draws
    o = neighbors.latent_offsets(jax.random.PRNGKey(0), n, z, scale=scale, draw=draw)
    assert _moments_match(o, 0.0, scale**2, 0.01, tol_var)
    if draw == "antithetic":  # pairs mirror each other: the mean is exact
        np.testing.assert_allclose(np.asarray(o).mean(0), 0.0, atol=1e-6)
        np.testing.assert_allclose(o[0::2], -o[1::2], atol=1e-5)
    wrong = neighbors.latent_offsets(jax.random.PRNGKey(0), n, z, scale=0.8, draw="random")
    assert not _moments_match(wrong, 0.0, scale**2, 0.01, tol_var)


@pytest.mark.parametrize("draw", ["random", "antithetic", "lattice"])
def test_band_draws_are_uniform_in_the_band(draw):
    band = ((-0.5, 0.25), (0.0, 0.0), (1.0, 3.0))
    low, high = np.array(band).T
    o = np.asarray(neighbors.latent_offsets(jax.random.PRNGKey(1), 3000, 3, band=band,
                                            draw=draw))
    assert np.all(o >= low - 1e-5) and np.all(o <= high + 1e-5)
    np.testing.assert_allclose(o.mean(0), (low + high) / 2, atol=0.02)
    np.testing.assert_allclose(o.var(0), (high - low) ** 2 / 12, atol=0.02)


def test_each_lattice_part_spreads_every_dimension_evenly():
    """Fitted rows and held-out rows are each a shifted lattice: in every dimension the values
    of a part are its ``n`` evenly spaced points (one per cell of width 1/n); a pseudo-random
    draw leaves cells empty."""
    n_fit, n_held, z = 96, 32, 4
    o = neighbors.latent_offsets(jax.random.PRNGKey(2), n_fit + n_held, z, draw="lattice",
                                 split=n_fit)
    u = jax.scipy.stats.norm.cdf(np.asarray(o, np.float64))
    for part, n in ((u[:n_fit], n_fit), (u[n_fit:], n_held)):
        cells = np.sort(np.floor(np.asarray(part) * n), axis=0)
        np.testing.assert_array_equal(cells, np.broadcast_to(np.arange(n)[:, None], (n, z)))
    r = np.asarray(jax.scipy.stats.norm.cdf(neighbors.latent_offsets(
        jax.random.PRNGKey(2), n_fit, z)))
    assert len(np.unique(np.floor(r[:, 0] * n_fit))) < n_fit


def test_lattice_generator_is_coprime_and_cached():
    g = neighbors.lattice_generator(896, 16)
    assert g[0] == 1 and all(np.gcd(int(v), 896) == 1 for v in g)
    assert neighbors.lattice_generator(896, 16) is g


def _teacher():
    return init_teacher(jax.random.PRNGKey(4), TINY_TEACHER)


def test_fixed_probes_make_the_radius_a_function_of_the_image_alone():
    """With probe_draw="fixed" the probes, so the calibrated scale, are the same for every key;
    with "random" they are the key's. (A label that flips with the distance from the
    reconstruction: about half the neighbours at scale 1.)"""
    image = IMAGES[0]
    recon = vae.reconstruct(VP, image[None], config=VCFG)

    def logits_of(x):  # class 1 beyond a distance of 0.05
        far = jnp.sqrt(jnp.mean((x - recon) ** 2, axis=(1, 2, 3))) - 0.05
        return jnp.stack([-100 * far, 100 * far], -1)

    def scales(probe_draw):
        nc = NeighborConfig(num=32, probe_draw=probe_draw, calibration_probes=16,
                            calibration_steps=8)
        return [float(radius.calibrate_scale(VP, image, jax.random.PRNGKey(k), logits_of,
                                                jnp.int32(0), nc, VCFG)) for k in range(4)]

    fixed, keyed = scales("fixed"), scales("random")
    assert len(set(fixed)) == 1 and 0 < fixed[0] < 3.9
    assert len(set(keyed)) > 1
    np.testing.assert_array_equal(
        radius.probe_noise(jax.random.PRNGKey(0), NeighborConfig(probe_draw="fixed"), 3),
        radius.probe_noise(jax.random.PRNGKey(1), NeighborConfig(probe_draw="fixed"), 3))


@pytest.mark.parametrize("probes, latent_dim", [(16, 16), (8, 16), (20, 8)])
def test_fixed_probes_are_orthonormal_directions_at_the_typical_radius(probes, latent_dim):
    """The default's 16 fixed probes on a 16-d latent are a whole basis (scaled to sqrt(Z), a
    standard normal draw's typical length); fewer are orthogonal but span only part of it;
    more come in blocks of Z, each block a basis. A key's random probes are none of these."""
    cfg = NeighborConfig(probe_draw="fixed", calibration_probes=probes)
    p = np.asarray(radius.probe_noise(jax.random.PRNGKey(0), cfg, latent_dim), np.float64)
    assert p.shape == (probes, latent_dim)
    np.testing.assert_allclose(np.linalg.norm(p, axis=1), np.sqrt(latent_dim), rtol=1e-5)
    for start in range(0, probes, latent_dim):
        block = p[start:start + latent_dim] / np.sqrt(latent_dim)
        np.testing.assert_allclose(block @ block.T, np.eye(len(block)), atol=1e-5)
    assert np.linalg.matrix_rank(p, tol=1e-3) == min(probes, latent_dim)
    r = np.asarray(radius.probe_noise(
        jax.random.PRNGKey(0), dataclasses.replace(cfg, probe_draw="random"), latent_dim))
    assert np.abs(r @ r.T / latent_dim - np.eye(probes)).max() > 0.1


@pytest.mark.parametrize(("calibration", "reuse"), [("bisect", False), ("interpolate", False),
                                                    ("secant", False), ("secant", True)])
def test_block_and_vmap_paths_agree_on_the_new_draws(calibration, reuse):
    """Blocked and per-instance programs give the same explanations with every new option:
    antithetic draws, fixed probes, both radius calibrations, patch mixing on a shifted grid
    (its cells carried with the codes in the blocked program), a smoothness grid and a
    screen."""
    tp = _teacher()
    cfg = ex.ExplainConfig(vae=VCFG, neighbors=NeighborConfig(
        num=32, draw="antithetic", probe_draw="fixed", calibration=calibration, patch_mix=3,
        patch_mix_share=0.4, patch_mix_shift=True, reuse_probes=reuse),
                           holdout=8, student=StudentConfig(
                               method="lasso", steps=10, lasso_smooth_grid=(0.0, 0.5),
                               lasso_screen=0.5))
    keys = jax.random.split(jax.random.PRNGKey(1), len(IMAGES))
    kw = dict(teacher_apply=teacher_apply_for(TINY_TEACHER), teacher_params=tp, vae_params=VP)
    blocked = ex.explain_batch(IMAGES, keys, config=cfg, **kw)
    plain = ex.explain_batch(IMAGES, keys, config=ex.ExplainConfig(
        **{**cfg.__dict__, "block_size": None}), **kw)
    np.testing.assert_allclose(blocked.scale, plain.scale, rtol=1e-5)
    np.testing.assert_allclose(blocked.weights, plain.weights, atol=1e-4)
    np.testing.assert_array_equal(blocked.smooth, plain.smooth)
    assert set(np.asarray(blocked.smooth).tolist()) <= {0.0, 0.5}


def _linear_case(w_true, rng, n=300, m=200, noise=0.5):
    d = w_true.size
    x = rng.random((n + m, d)).astype(np.float32)
    f = x @ w_true + noise * rng.standard_normal(n + m)
    t = np.stack([f, -f], 1).astype(np.float32)
    return x[:n], t[:n], x[n:], t[n:]


@pytest.mark.parametrize(("tolerance", "relative"), [(1.0, 0.0), (0.0, 0.5), (1.0, 0.2)])
def test_smoothness_chosen_by_held_out_fit(tolerance, relative):
    """A linear teacher of 6 single pixels gets no smoothness; one whose weights are a smooth
    blob gets the largest; each choice is the smoothest grid value whose first-round fit's
    held-out error is within ``lasso_smooth_tolerance`` standard errors plus
    ``lasso_smooth_relative`` times the least error of the least (recomputed here from
    separate unreweighted fits), and the weights are the whole reweighted fit at the chosen
    smoothness (its Laplacian folded into the Gram matrix changes only the rounding)."""
    side = 12
    cfg = StudentConfig(method="lasso", lasso=0.02, lasso_group=True, lasso_reweight=3,
                        steps=30, lasso_rescale=True, lasso_smooth_grid=(0.0, 0.2, 1.0),
                        lasso_smooth_tolerance=tolerance, lasso_smooth_relative=relative,
                        lasso_screen=0.5)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:side, :side]
    for _ in range(2):
        pixels = np.zeros(side * side)
        pixels[rng.choice(side * side, 6, replace=False)] = rng.choice([-3.0, 3.0], 6)
        cy, cx = rng.uniform(3, 9, 2)
        blob = 0.6 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 2.5**2)).ravel()
        for w_true, want in ((pixels, 0.0), (blob, 1.0)):
            x, t, xh, th = _linear_case(w_true, rng)
            w, b, _, chosen = student.fit_student_selected(x, t, xh, th, cfg, (side, side, 1))
            assert float(chosen) == want
            def fit(value, reweight, x=x, t=t):
                return student.fit_student(x, t, StudentConfig(
                    **{**cfg.__dict__, "lasso_smooth_grid": (), "lasso_smooth": value,
                       "lasso_reweight": reweight}), (side, side, 1))
            firsts = [fit(value, 0) for value in cfg.lasso_smooth_grid]
            err = np.stack([np.mean((xh @ np.asarray(wg) + np.asarray(bg)
                                     - (th - th.mean(1, keepdims=True))) ** 2, axis=1)
                            for wg, bg, _ in firsts])  # [G, M]
            diff = err - err[np.argmin(err.mean(1))]
            ok = diff.mean(1) <= (diff.std(1) / np.sqrt(len(xh) - 1) * tolerance
                                  + relative * err.mean(1).min())
            assert cfg.lasso_smooth_grid[int(np.flatnonzero(ok).max())] == want
            np.testing.assert_allclose(w, fit(want, cfg.lasso_reweight)[0], atol=1e-5)


@pytest.mark.parametrize(("n", "d"), [(80, 30), (30, 80)])
def test_ridge_solve_equals_the_closed_form_ridge(n, d):
    rng = np.random.default_rng(1)
    x = rng.random((n, d)).astype(np.float32)
    t = (x @ rng.normal(size=(d, 3)) + 0.1 * rng.normal(size=(n, 3))).astype(np.float32)
    _, _, xc, yc = lasso._centred(jnp.asarray(x), jnp.asarray(t))
    want = student.fit_ridge(jnp.asarray(x), jnp.asarray(t), (0.3,)).w
    got = lasso.ridge_solve(xc, yc, 0.3)
    np.testing.assert_allclose(got - got.mean(1, keepdims=True), want, atol=2e-4, rtol=2e-3)


def test_the_ridge_start_is_the_lasso_weighted_by_the_ridge_fit():
    """lasso_start="ridge": the first round's penalty on each row is s / (|w_ridge| + 0.1 s),
    the same fit as an explicit weighted lasso (columns divided by the factors, sklearn)."""
    from sklearn.linear_model import MultiTaskLasso

    rng = np.random.default_rng(2)
    n, d, k = 200, 20, 4
    x = rng.random((n, d)).astype(np.float32)
    w_true = np.zeros((d, k))
    w_true[:4] = rng.normal(size=(4, k)) * 3
    t = (x @ w_true + 0.1 * rng.normal(size=(n, k))).astype(np.float32)
    w, _, lam = lasso.fit_lasso(jnp.asarray(x), jnp.asarray(t), 0.1, 3000, group=True,
                                  ridge_start=0.3)
    _, _, xc, yc = lasso._centred(jnp.asarray(x), jnp.asarray(t))
    m = np.linalg.norm(np.asarray(lasso.ridge_solve(xc, yc, 0.3)), axis=1)
    factor = (m.mean()) / (m + 0.1 * m.mean())
    y = np.asarray(yc)
    want = MultiTaskLasso(alpha=float(lam), tol=1e-12, max_iter=200_000).fit(
        x / factor, y).coef_.T / factor[:, None]
    np.testing.assert_allclose(w, want - want.mean(1, keepdims=True), atol=5e-4)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"draw": "sobol"}, "NeighborConfig.draw must be one of"),
    ({"probe_draw": "grid"}, "NeighborConfig.probe_draw must be one of"),
    ({"draw": "lattice", "sampler": "pixel"}, "draw='lattice' shapes the VAE sampler"),
    ({"calibration": "newton"}, "NeighborConfig.calibration must be one of"),
])
def test_bad_draw_configs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NeighborConfig(**kwargs)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"method": "lasso", "lasso_start": "ols"}, "StudentConfig.lasso_start must be one of"),
    ({"method": "lasso", "lasso_smooth_grid": [0.0, 0.2]}, "must be a tuple"),
    ({"method": "lasso", "lasso_smooth_grid": (0.0, -0.1)}, r"lasso_smooth_grid\[1\]"),
    ({"method": "lasso", "lasso_smooth_grid": (float("nan"),)}, "finite"),
    ({"method": "ridge", "lasso_smooth_grid": (0.0, 0.2)}, "method is 'ridge'"),
    ({"method": "lasso", "lasso_smooth_tolerance": -1.0}, "lasso_smooth_tolerance"),
    ({"method": "lasso", "lasso_smooth_relative": -0.5}, "lasso_smooth_relative"),
    ({"method": "lasso", "lasso_screen": 0.0}, r"lasso_screen must be in \(0, 1\]"),
    ({"method": "lasso", "lasso_screen": 1.5}, r"lasso_screen must be in \(0, 1\]"),
    ({"method": "lasso", "lasso_screen": "half"}, "lasso_screen must be a number"),
    ({"method": "ridge", "lasso_screen": 0.5}, "screens the lasso's pixels; method is 'ridge'"),
])
def test_bad_student_stability_configs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StudentConfig(**kwargs)


def test_interpolated_calibration_is_not_quantised():
    """On a flip fraction linear in the scale (s / 4), "interpolate" finds the exact scale of
    the target; "bisect" the middle of a bracket of width max / 2**steps."""
    for target in (0.2, 0.37):
        exact = radius.search_scale(lambda s: s / 4, NeighborConfig(
            calibration="interpolate", target_flip=target))
        np.testing.assert_allclose(exact, 4 * target, rtol=1e-5)
        mid = float(radius.search_scale(lambda s: s / 4, NeighborConfig(target_flip=target)))
        assert (mid - 0.125) % 0.25 == pytest.approx(0.0, abs=1e-6)
        assert abs(mid - 4 * target) <= 0.125 + 1e-6
    logits = jnp.array([[2.0, 0.0], [0.0, 3.0]])
    np.testing.assert_allclose(radius.probe_flips(logits, jnp.array([0, 0]), NeighborConfig(
        calibration="interpolate")), 1 - jax.nn.softmax(logits)[:, 0], rtol=1e-6)
    np.testing.assert_array_equal(radius.probe_flips(logits, jnp.array([0, 0]),
                                                        NeighborConfig()), [0.0, 1.0])


@pytest.mark.parametrize(("true_radius", "slope"), [(0.3, 1.5), (0.7, 3.0), (1.2, 4.5), (2.0, 6.0)])
def test_secant_calibration_hits_a_log_logistic_flip_curve_in_two_steps(true_radius, slope):
    """On soft flips logistic in the log scale, sigmoid(slope * log(s / radius) + logit(target)),
    whatever the slope (within the clip) and the radius, "secant" finds the radius after two
    evaluations (the first at calibration_start, the second off it unless the prior slope is
    right); each evaluation is one call of ``flips``, batched over the shape."""
    target = 0.16
    logit_t = np.log(target / (1 - target))
    radii = jnp.asarray([true_radius, true_radius * 1.1])
    calls = []

    def flips(s):
        calls.append(s.shape)
        return jax.nn.sigmoid(slope * jnp.log(s / radii) + logit_t)

    cfg = NeighborConfig(calibration="secant", calibration_steps=2, target_flip=target)
    found = radius.search_scale(flips, cfg, shape=(2,))
    np.testing.assert_allclose(found, radii, rtol=1e-3)
    assert calls == [(2,), (2,)]
    one = radius.search_scale(flips, dataclasses.replace(cfg, calibration_steps=1), (2,))
    if slope != radius.SECANT_SLOPE:  # one step trusts the prior slope: off the radius
        assert np.min(np.abs(np.log(np.asarray(one) / np.asarray(radii)))) > 0.01


def test_secant_calibration_stays_in_range_and_goes_the_right_way():
    """A flip fraction that never reaches the target (0) ends at max_latent_scale; one that is
    past it everywhere (1, e.g. a reconstruction the teacher already relabels) at the bottom of
    the range, max / 1024; a flat one (no slope to measure) moves by the prior slope, not NaN."""
    cfg = NeighborConfig(calibration="secant", calibration_steps=3)
    none = radius.search_scale(lambda s: jnp.zeros_like(s), cfg)
    np.testing.assert_allclose(none, cfg.max_latent_scale, rtol=1e-5)
    past = radius.search_scale(lambda s: jnp.ones_like(s), cfg)
    np.testing.assert_allclose(past, cfg.max_latent_scale / 1024, rtol=1e-4)
    flat = radius.search_scale(lambda s: jnp.full_like(s, 0.05), cfg)
    assert np.isfinite(flat) and cfg.calibration_start < float(flat) <= cfg.max_latent_scale


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"calibration": "newton"}, "calibration"),
    ({"calibration_start": 0.0}, "calibration_start"),
    ({"calibration_start": -1.0}, "calibration_start"),
    ({"calibration_start": 5.0}, "must not exceed max_latent_scale"),
    ({"calibration_start": "0.7"}, "calibration_start"),
])
def test_bad_calibration_configs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NeighborConfig(**kwargs)


@pytest.mark.parametrize(("share", "reused"), [(0.5, 6), (0.85, 4)])
def test_reused_probes_are_the_first_neighbours_and_the_rest_unchanged(share, reused):
    """reuse_probes: the first calibration_probes neighbours (and their teacher logits) are the
    last calibration step's probes, decoded at that step's scale in the fixed directions, or as
    many as there are plain fitted rows (24 fitted, 85 % mixed: 4); the other neighbours are
    those the same key gives without it, row for row."""
    tp = _teacher()
    nc = NeighborConfig(num=32, probe_draw="fixed", calibration="secant", calibration_steps=2,
                        calibration_probes=6, patch_mix=3, patch_mix_share=share)
    kw = dict(teacher_apply=teacher_apply_for(TINY_TEACHER), teacher_params=tp, vae_params=VP)
    keys = jax.random.split(jax.random.PRNGKey(3), len(IMAGES))

    def run(reuse):
        cfg = ex.ExplainConfig(vae=VCFG, holdout=8, return_neighbors=True,
                               neighbors=dataclasses.replace(nc, reuse_probes=reuse))
        return ex.explain_batch(IMAGES, keys, config=cfg, **kw)

    plain, out = run(False), run(True)
    assert ex.reused_probes(dataclasses.replace(
        ex.ExplainConfig(vae=VCFG, holdout=8), neighbors=dataclasses.replace(
            nc, reuse_probes=True))) == reused
    np.testing.assert_array_equal(plain.scale, out.scale)
    np.testing.assert_allclose(out.neighbors[:, reused:], plain.neighbors[:, reused:], atol=1e-6)
    assert np.abs(np.asarray(out.neighbors[:, :reused] - plain.neighbors[:, :reused])).max() > 0.01
    # the probes of the last step: decode mean + s_last * eps at the scale the search stepped to
    mean, _ = vae.encode(VP, IMAGES, config=VCFG)
    eps = radius.probe_noise(None, nc, VCFG.latent_dim)
    teacher = teacher_apply_for(TINY_TEACHER)
    for i in range(len(IMAGES)):
        label = jnp.argmax(teacher(tp, IMAGES[i:i + 1])[0])

        def flips(s, i=i, label=label):
            x = vae.decode(VP, mean[i] + s * eps, config=VCFG)
            return jnp.mean(radius.probe_flips(teacher(tp, x), label, nc)), x

        _, last = radius.search_scale(flips, nc, with_last=True)
        np.testing.assert_allclose(out.neighbors[i, :reused], last[:reused], atol=1e-5)
        np.testing.assert_allclose(
            np.asarray(out.neighbor_probs[i, :reused]),
            np.asarray(jax.nn.softmax(teacher(tp, last[:reused]))), atol=1e-5)


def test_bad_reuse_probes_configs():
    with pytest.raises(ValueError, match="reuse_probes"):
        NeighborConfig(reuse_probes="yes")


def test_reuse_probes_has_no_effect_without_a_calibrated_radius():
    """As the other calibration fields: the default with a fixed scale, bit for bit."""
    kw = dict(teacher_apply=teacher_apply_for(TINY_TEACHER), teacher_params=_teacher(),
              vae_params=VP)
    keys = jax.random.split(jax.random.PRNGKey(4), len(IMAGES))

    def run(reuse):
        nc = NeighborConfig(num=32, latent_scale=1.0, reuse_probes=reuse)
        cfg = ex.ExplainConfig(vae=VCFG, holdout=8, neighbors=nc)
        assert ex.reused_probes(cfg) == 0
        return ex.explain_batch(IMAGES, keys, config=cfg, **kw).weights

    np.testing.assert_array_equal(run(True), run(False))


def _sparse_case(seed, n=240, d=144, k=3, read=6):
    rng = np.random.default_rng(seed)
    x = rng.random((n, d)).astype(np.float32)
    w_true = np.zeros((d, k))
    w_true[rng.choice(d, read, replace=False)] = rng.normal(size=(read, k)) * 3
    t = (x @ w_true + 0.1 * rng.normal(size=(n, k))).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(t)


@pytest.mark.parametrize("group", [False, True])
def test_the_screened_lasso_is_the_lasso_of_the_screened_pixels(group):
    """lasso_screen: the fit on the ceil(share * D) pixels of the largest marginal correlation
    (row norms of x_c^T y_c) is the lasso of those columns alone at the whole image's
    lambda_max, scattered back; every other pixel's weight is exactly zero."""
    x, t = _sparse_case(3)
    d, keep_n = x.shape[1], int(np.ceil(0.3 * x.shape[1]))
    _, _, xc, yc = lasso._centred(x, t)
    score = np.linalg.norm(np.asarray(xc.T @ yc), axis=1)
    keep = np.argsort(-score, kind="stable")[:keep_n]
    w, b, lam = lasso.fit_lasso(x, t, 0.05, 40, group=group, reweight=2, rescale=True,
                                  screen=0.3)
    w_sub, _, lam_sub = lasso.fit_lasso(x[:, keep], t, 0.05, 40, group=group, reweight=2,
                                          rescale=True)
    full = np.zeros((d, t.shape[1]), np.float32)
    full[keep] = np.asarray(w_sub)
    assert float(lam) == pytest.approx(float(lam_sub), rel=1e-6)
    np.testing.assert_allclose(w, full, atol=1e-5)
    assert np.all(np.asarray(w)[np.setdiff1d(np.arange(d), keep)] == 0)
    np.testing.assert_allclose(b, np.asarray(jnp.mean(t - jnp.mean(t, 1, keepdims=True), 0)
                                             - jnp.mean(x, 0) @ w), atol=1e-5)


@pytest.mark.parametrize("shape", [(5, 7, 1), (4, 6, 3)])
def test_the_screened_laplacian_is_the_grid_laplacian_of_the_kept_pixels(shape):
    """The screened smooth lasso's Laplacian, from neighbours looked up once, is the whole
    grid's (`grid_laplacian`, screened-out pixels at 0) read at the kept pixels; corners,
    edges and channels included."""
    d = int(np.prod(shape))
    rng = np.random.default_rng(5)
    keep = np.sort(rng.choice(d, d // 2, replace=False))
    z = rng.normal(size=(len(keep), 3)).astype(np.float32)
    full = np.zeros((d, 3), np.float32)
    full[keep] = z
    want = np.asarray(lasso.grid_laplacian(jnp.asarray(full), shape))[keep]
    got = lasso._screened_laplacian(jnp.asarray(keep), shape)(jnp.asarray(z.T)).T  # [K, M]
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("group", [False, True])
def test_screening_keeps_a_sparse_teachers_converged_lasso(group):
    """On independent pixels the 6 a linear teacher reads have the largest marginal
    correlations, so the lasso on a quarter of the pixels converges to the lasso on all of
    them (a screen that dropped a read pixel would not)."""
    x, t = _sparse_case(4)
    full = lasso.fit_lasso(x, t, 0.05, 3000, group=group)[0]
    screened = lasso.fit_lasso(x, t, 0.05, 3000, group=group, screen=0.25)[0]
    assert np.sum(np.any(np.asarray(full) != 0, axis=1)) >= 6
    np.testing.assert_allclose(screened, full, atol=2e-4)
    # and the screen is not vacuous: a tenth of the pixels misses some of the read ones
    few = lasso.fit_lasso(x, t, 0.05, 3000, group=group, screen=0.03)[0]
    assert np.max(np.abs(np.asarray(few) - np.asarray(full))) > 0.1


def test_screening_with_smoothness_counts_screened_out_pixels_as_zero():
    """With smoothness, the screened fit minimises the whole grid's penalty with the
    screened-out pixels held at zero: 1/(2N) |x_k W - y|^2 + mu/2 W^T L_kk W + lambda sum_i
    |W_i| over the kept pixels k (L_kk: the kept rows and columns of the grid Laplacian), the
    same minimum as a plain proximal-gradient solver reaches here."""
    side, share = 8, 0.5
    x, t = _sparse_case(5, d=side * side)
    n, d = x.shape
    _, _, xc, yc = (np.asarray(a) for a in lasso._centred(x, t))
    keep = np.argsort(-np.linalg.norm(xc.T @ yc, axis=1), kind="stable")[:int(share * d)]
    w = lasso.fit_lasso(x, t, 0.05, 4000, group=True, smooth=0.5, shape=(side, side, 1),
                          screen=share)[0]
    lap = np.stack([np.asarray(lasso.grid_laplacian(jnp.asarray(e[:, None]), (side, side, 1)))
                    [:, 0] for e in np.eye(d, dtype=np.float32)], 1)  # [D, D]
    c = xc.T @ yc / n
    lam = 0.05 * np.linalg.norm(c, axis=1).max()
    mu = 0.5 * np.sum(xc**2) / (n * d)
    hess = xc[:, keep].T @ xc[:, keep] / n + mu * lap[np.ix_(keep, keep)]
    step = 1.0 / np.linalg.eigvalsh(hess).max()
    v = np.zeros((len(keep), t.shape[1]))
    for _ in range(20000):
        u = v - step * (hess @ v - c[keep])
        norm = np.linalg.norm(u, axis=1, keepdims=True)
        v = u * np.maximum(1.0 - step * lam / np.maximum(norm, 1e-30), 0.0)
    want = np.zeros((d, t.shape[1]))
    want[keep] = v
    np.testing.assert_allclose(np.asarray(w), want - want.mean(1, keepdims=True), atol=2e-4)


def test_fit_student_refuses_a_smoothness_grid_it_cannot_choose_from():
    """The default student chooses its smoothness by held-out fit: `fit_student`, which has no
    held-out neighbours, says so instead of silently using ``lasso_smooth``."""
    x, t = _sparse_case(6, d=16)
    with pytest.raises(ValueError, match="fit_student_selected"):
        student.fit_student(x, t, ex.ExplainConfig().student, (4, 4, 1))
    w, _, _, chosen = student.fit_student_selected(x[:200], t[:200], x[200:], t[200:],
                                                   ex.ExplainConfig().student, (4, 4, 1))
    assert float(chosen) in ex.ExplainConfig().student.lasso_smooth_grid and w.shape == (16, 3)
