import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepvid_jax.data import sources as data
from deepvid_jax.models import networks, train, vae
from deepvid_jax.models.networks import TeacherConfig, VAEConfig, teacher_apply_for, teacher_logits

TEACHER = TeacherConfig(features=(8, 16), hidden=32, image_shape=(8, 8, 1))
VAE_CFG = VAEConfig(latent_dim=4, features=(8, 16), hidden=32, image_shape=(8, 8, 1))
FAST = train.TrainConfig(epochs=1, batch_size=64, learning_rate=3e-3)


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", "train"), data.load("digits", "test")


def _repeat_steps(step, state, batch, n=40):
    losses = []
    for i in range(n):
        state, m = step(state, batch, jax.random.PRNGKey(i))
        losses.append(float(m["loss"]))
    return losses


def test_teacher_steps_reduce_loss(digits):
    tr, _ = digits
    state = train.create_state(networks.init_teacher(jax.random.PRNGKey(0), TEACHER), TEACHER, FAST)
    losses = _repeat_steps(train.teacher_train_step, state, (tr.images[:128], tr.labels[:128]))
    assert losses[-1] < 0.5 * losses[0]


def test_random_blur_is_a_gaussian_of_each_images_own_width():
    images = jax.random.uniform(jax.random.PRNGKey(0), (5, 9, 7, 2))
    key, top = jax.random.PRNGKey(3), 1.3
    got = np.asarray(train.random_blur(images, key, top))
    sigma = np.asarray(jax.random.uniform(key, (5, 1), maxval=top))[:, 0]
    radius = 4  # ceil(3 * 1.3)
    t = np.arange(-radius, radius + 1)
    for b in range(5):  # numpy reference: separable, edge-padded, its own sigma
        k = np.exp(-0.5 * t**2 / sigma[b] ** 2)
        k /= k.sum()
        x = np.pad(np.asarray(images[b], np.float64), ((radius,) * 2, (radius,) * 2, (0, 0)),
                   mode="edge")
        x = sum(k[i] * x[i : i + 9] for i in range(2 * radius + 1))
        x = sum(k[i] * x[:, i : i + 7] for i in range(2 * radius + 1))
        np.testing.assert_allclose(got[b], x, atol=1e-5)
    assert len(set(np.round(sigma, 6))) == 5  # each image its own width
    unchanged = train.random_blur(images, key, 1e-4)  # widths near 0: the images themselves
    np.testing.assert_allclose(unchanged, images, atol=1e-6)


def test_blur_augmented_teacher_steps_differ_and_reduce_loss(digits):
    tr, _ = digits
    state = train.create_state(networks.init_teacher(jax.random.PRNGKey(0), TEACHER), TEACHER, FAST)
    batch = (tr.images[:128], tr.labels[:128])
    plain = _repeat_steps(train.teacher_train_step, state, batch, n=40)
    blurred = _repeat_steps(functools.partial(train.teacher_train_step, blur_augment=1.0),
                            state, batch, n=40)
    assert blurred[-1] < 0.5 * blurred[0] and blurred != plain
    with pytest.raises(ValueError, match="blur_augment"):
        train.TrainConfig(blur_augment=-1.0)


def test_vae_steps_reduce_loss(digits):
    tr, _ = digits
    state = train.create_state(networks.init_vae(jax.random.PRNGKey(0), VAE_CFG), VAE_CFG, FAST)
    losses = _repeat_steps(train.vae_train_step, state, (tr.images[:128],))
    assert losses[-1] < 0.8 * losses[0]


def test_cosine_schedule_warms_up_for_an_epoch_then_decays_to_zero():
    config = train.TrainConfig(epochs=4, batch_size=10, learning_rate=2e-3, lr_schedule="cosine")
    lr = train.learning_rate(config, examples=105)  # 10 steps an epoch, 40 in all
    steps = np.arange(41)
    got = np.array([float(lr(s)) for s in steps])
    want = np.where(steps < 10, 2e-3 * steps / 10,
                    1e-3 * (1 + np.cos(np.pi * np.minimum(steps - 10, 30) / 30)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
    assert train.learning_rate(dataclasses.replace(config, lr_schedule="constant"), 105) == 2e-3
    with pytest.raises(ValueError, match="lr_schedule"):
        train.TrainConfig(lr_schedule="linear")
    with pytest.raises(ValueError, match="'cosine' schedule needs the training set's size"):
        train.learning_rate(config, examples=0)


def test_a_cosine_state_takes_scheduled_steps(digits):
    # The first step of a warm-up is of size zero: the parameters do not move.
    tr, _ = digits
    config = dataclasses.replace(FAST, lr_schedule="cosine")
    params = networks.init_teacher(jax.random.PRNGKey(0), TEACHER)
    state = train.create_state(params, TEACHER, config, examples=len(tr.images))
    state, _ = train.teacher_train_step(state, (tr.images[:64], tr.labels[:64]),
                                        jax.random.PRNGKey(1))
    same = jax.tree_util.tree_map(np.array_equal, params, state.params)
    assert all(jax.tree_util.tree_leaves(same))
    state, _ = train.teacher_train_step(state, (tr.images[:64], tr.labels[:64]),
                                        jax.random.PRNGKey(2))
    moved = jax.tree_util.tree_map(np.array_equal, params, state.params)
    assert not all(jax.tree_util.tree_leaves(moved))


def test_a_teacher_guided_vae_keeps_the_teachers_view_of_its_decodings(digits):
    tr, _ = digits
    x, y = tr.images[:128], tr.labels[:128]
    t_params = networks.init_teacher(jax.random.PRNGKey(0), TEACHER)
    t_state = train.create_state(t_params, TEACHER, FAST)
    for i in range(40):
        t_state, _ = train.teacher_train_step(t_state, (x, y), jax.random.PRNGKey(i))
    apply = teacher_apply_for(TEACHER)

    def teacher_kl(params):
        _, aux = vae.negative_elbo(params, x, jax.random.PRNGKey(99), config=VAE_CFG,
                                   return_decoded=True)
        p = jax.nn.log_softmax(apply(t_state.params, x))
        q = jax.nn.log_softmax(apply(t_state.params, aux["decoded"]))
        return float(jnp.mean(jnp.sum(jnp.exp(p) * (p - q), -1)))

    finals = {}
    for weight in (0.0, 100.0):
        state = train.create_state(networks.init_vae(jax.random.PRNGKey(0), VAE_CFG), VAE_CFG, FAST)
        step = functools.partial(train.guided_vae_train_step, teacher_params=t_state.params,
                                 teacher_apply=apply, weight=weight)
        for i in range(40):
            state, metrics = step(state, (x,), jax.random.PRNGKey(i))
        finals[weight] = teacher_kl(state.params)
        if weight == 0.0:  # weight 0 is the plain ELBO step, bit for bit
            plain = train.create_state(networks.init_vae(jax.random.PRNGKey(0), VAE_CFG), VAE_CFG,
                                       FAST)
            for i in range(40):
                plain, _ = train.vae_train_step(plain, (x,), jax.random.PRNGKey(i))
            for a, b in zip(jax.tree_util.tree_leaves(plain.params),
                            jax.tree_util.tree_leaves(state.params), strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert finals[100.0] < 0.5 * finals[0.0], finals
    assert "teacher_kl" in metrics
    guided = dataclasses.replace(FAST, teacher_weight=1.0)
    with pytest.raises(ValueError, match="teacher_weight=1.0 needs the teacher"):
        train.train_vae(tr.images, tr.images, VAE_CFG, guided, progress=False)
    with pytest.raises(ValueError, match="teacher_weight"):
        train.TrainConfig(teacher_weight=-1.0)


def test_same_seed_same_params_bitwise(digits):
    tr, te = digits
    runs = [
        train.train_teacher((tr.images, tr.labels), (te.images, te.labels), TEACHER, FAST,
                            progress=False)[0]
        for _ in range(2)
    ]
    other = train.train_teacher((tr.images, tr.labels), (te.images, te.labels), TEACHER,
                                dataclasses.replace(FAST, seed=1), progress=False)[0]
    leaves = [jax.tree_util.tree_leaves(r) for r in (*runs, other)]
    assert all(np.array_equal(a, b) for a, b in zip(leaves[0], leaves[1], strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(leaves[0], leaves[2], strict=True))


def test_training_history_has_eval_metrics(digits):
    tr, te = digits
    _, hist = train.train_vae(tr.images, te.images, VAE_CFG,
                              dataclasses.replace(FAST, epochs=2), progress=False)
    assert [h["epoch"] for h in hist] == [1, 2]
    assert {"eval_neg_elbo", "eval_recon_mse", "train_loss"} <= set(hist[0])
    assert hist[1]["eval_neg_elbo"] < hist[0]["eval_neg_elbo"]


def test_shape_mismatch_is_clear(digits):
    tr, te = digits
    with pytest.raises(ValueError, match="image_shape"):
        train.train_teacher((tr.images, tr.labels), (te.images, te.labels),
                            TeacherConfig(), FAST, progress=False)


def test_encode_decode_jit_and_vmap_equal_loop(digits):
    images = jnp.asarray(digits[1].images[:6])
    params = networks.init_vae(jax.random.PRNGKey(3), VAE_CFG)
    enc = jax.jit(lambda x: vae.encode(params, x, config=VAE_CFG))
    dec = jax.jit(lambda z: vae.decode(params, z, config=VAE_CFG))
    mean, logvar = enc(images)
    assert mean.shape == logvar.shape == (6, 4)
    out = dec(mean)
    assert out.shape == images.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    # vmap over an extra axis (instances x 1) equals a Python loop of single calls.
    vm = jax.vmap(lambda x: vae.encode(params, x[None], config=VAE_CFG)[0][0])(images)
    loop = jnp.stack([vae.encode(params, images[i : i + 1], config=VAE_CFG)[0][0]
                      for i in range(6)])
    np.testing.assert_allclose(vm, loop, rtol=1e-5, atol=1e-6)
    vd = jax.vmap(lambda z: vae.decode(params, z[None], config=VAE_CFG)[0])(mean)
    ld = jnp.stack([vae.decode(params, mean[i : i + 1], config=VAE_CFG)[0] for i in range(6)])
    np.testing.assert_allclose(vd, ld, rtol=1e-5, atol=1e-6)


def test_teacher_logits_shape(digits):
    params = networks.init_teacher(jax.random.PRNGKey(0), TEACHER)
    assert jax.jit(teacher_logits, static_argnums=2)(
        params, digits[1].images[:5], TEACHER).shape == (5, 10)


def test_vae_config_validates_shape():
    with pytest.raises(ValueError, match="divisible"):
        VAEConfig(image_shape=(30, 30, 1))


def test_evaluation_does_not_depend_on_the_batch_size(digits):
    """Held-out metrics go through the driver: image i's VAE sample is fold_in(key, i), so the
    numbers are those of one batch of everything (before, each batch had its own key)."""
    _, te = digits
    vp = networks.init_vae(jax.random.PRNGKey(0), VAE_CFG)
    tp = networks.init_teacher(jax.random.PRNGKey(1), TEACHER)
    key = jax.random.PRNGKey(2)
    whole = train.evaluate_vae(vp, te.images, key, VAE_CFG, batch_size=len(te.images))
    assert train.evaluate_vae(vp, te.images, key, VAE_CFG, batch_size=37) == pytest.approx(
        whole, rel=1e-6)
    t_whole = train.evaluate_teacher(tp, te.images, te.labels, TEACHER, len(te.images))
    t_batched = train.evaluate_teacher(tp, te.images, te.labels, TEACHER, 37)
    assert t_batched == pytest.approx(t_whole, rel=1e-6)
    logits = teacher_logits(tp, jnp.asarray(te.images), TEACHER)
    assert t_whole["accuracy"] == pytest.approx(float(np.mean(np.argmax(logits, -1) == te.labels)))


def test_gaussian_likelihood_is_the_scaled_squared_error():
    """negative_elbo with likelihood="gaussian": 0.5 / sigma^2 * sum (sigmoid(logits) - x)^2
    (normalisation left out) + KL, checked against numpy on the same sample."""
    from deepvid_jax.models.networks import VAE

    cfg = dataclasses.replace(VAE_CFG, image_shape=(8, 8, 3), likelihood="gaussian", sigma=0.2)
    params = networks.init_vae(jax.random.PRNGKey(0), cfg)
    x = jax.random.uniform(jax.random.PRNGKey(1), (3, 8, 8, 3))
    key = jax.random.PRNGKey(2)
    loss, aux = vae.negative_elbo(params, x, key, config=cfg)
    eps = jax.random.normal(key, (3, cfg.latent_dim))
    logits, mean, logvar = VAE(cfg).apply({"params": params}, x, eps)
    mu = 1 / (1 + np.exp(-np.asarray(logits, np.float64)))
    recon = 0.5 / 0.2**2 * ((mu - np.asarray(x)) ** 2).sum((1, 2, 3))
    kl = 0.5 * (np.exp(logvar) + np.asarray(mean) ** 2 - 1 - logvar).sum(-1)
    np.testing.assert_allclose(float(aux["recon"]), recon.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(loss), (recon + kl).mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="likelihood"):
        dataclasses.replace(cfg, likelihood="poisson")


# ------------------------------------------------------------------------------------------
# Recipes: per-dataset settings and a plan checked before any training
# ------------------------------------------------------------------------------------------


def test_a_recipe_sits_between_the_default_and_the_users_flags():
    from deepvid_jax.models import recipes

    assert recipes.train_config("mnist", "teacher") == train.TEACHER_TRAIN  # no recipe
    digits = recipes.train_config("digits", "vae")
    assert digits == dataclasses.replace(train.VAE_TRAIN, epochs=150)
    synthetic = recipes.train_config("synthetic", "teacher", recipes.Overrides(seed=3))
    assert (synthetic.epochs, synthetic.learning_rate, synthetic.blur_augment, synthetic.seed) \
        == (12, 2e-3, 1.0, 3)
    mine = recipes.train_config("synthetic", "teacher", recipes.Overrides(
        epochs=2, learning_rate=1e-4, lr_schedule="cosine"))
    assert (mine.epochs, mine.learning_rate, mine.lr_schedule, mine.blur_augment) == \
        (2, 1e-4, "cosine", 1.0)
    for weight in (0.0, 2.5):  # an explicit 0 stays 0
        assert recipes.train_config("x", "vae", recipes.Overrides(teacher_weight=weight)) \
            .teacher_weight == weight
    with pytest.raises(ValueError, match="kind"):
        recipes.train_config("digits", "surrogate")
    with pytest.raises(ValueError, match="epochs"):
        recipes.Overrides(epochs=0)


def test_a_plan_fails_before_any_training(tmp_path):
    from deepvid_jax.models import checkpoint, recipes

    small = data.load("digits", "train[:10]")
    with pytest.raises(ValueError, match="10 images, fewer than one batch of 128"):
        recipes.plan(("teacher",), small, tmp_path, dataset="digits")
    tr = data.load("digits", "train[:200]")
    with pytest.raises(ValueError, match="--layer 'conv9' is not one of"):
        recipes.plan(("teacher",), tr, tmp_path, dataset="digits",
                     adversarial=train.AdversarialTraining(layer="conv9"))
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "notes.txt").write_text("mine")
    with pytest.raises(checkpoint.CheckpointError, match="notes.txt"):
        recipes.plan(("teacher", "vae"), tr, tmp_path, dataset="digits")
    plan = recipes.plan(("vae",), tr, tmp_path / "new", dataset="digits", latent_dim=3,
                        decoder_blocks=0, overrides=recipes.Overrides(epochs=1))
    assert plan.teacher_config is None and plan.vae_config.latent_dim == 3
    assert plan.vae_train.epochs == 1 and plan.kinds == ("vae",)


def test_a_trained_teacher_is_saved_with_its_history(tmp_path):
    from deepvid_jax.models import checkpoint, recipes

    tr, ev = data.load("digits", "train[:128]"), data.load("digits", "test[:32]")
    plan = recipes.plan(("teacher",), tr, tmp_path, dataset="digits",
                        overrides=recipes.Overrides(epochs=2))
    trained = recipes.train_teacher(plan, tr, ev, meta=recipes.dataset_meta("digits", tr, ev),
                                    progress=False)
    params, config, meta = checkpoint.restore(trained.path, kind="teacher")
    assert config == plan.teacher_config
    assert [h["epoch"] for h in meta["metrics"]["history"]] == [1, 2]
    assert meta["metrics"]["eval_accuracy"] == trained.metrics["history"][-1]["eval_accuracy"]
    assert meta["dataset"]["train_split"] == "train[:128]"
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params),
                                                     jax.tree.leaves(trained.params),
                                                     strict=True))
    assert [p.name for p in trained.figures] == ["curves.png"] and trained.figures[0].is_file()
