"""Model adapters: each gives the model's own logits, and gradient methods through it equal the
model's own gradients; black boxes run the sampling methods and refuse the gradient ones."""

from __future__ import annotations

import os
import re
import sys
import textwrap

os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is first imported

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import deepvid_jax as dv  # noqa: E402
from deepvid_jax.models import adapters  # noqa: E402

SHAPE, K = (8, 8, 3), 4
X = np.random.default_rng(0).uniform(0, 1, (5, *SHAPE)).astype(np.float32)
CLASSES = np.array([0, 1, 2, 3, 1])


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(6, (3, 3))(x))
        return nn.Dense(K)(x.reshape(len(x), -1))


def _gradients_equal(teacher: adapters.Teacher, own_logits) -> None:
    """`gradient` through the adapter == d own_logits(x)[class] / dx, summed over channels as
    the library reports a map."""
    models = dv.Models(*teacher)
    got = dv.explain("gradient", X, CLASSES, models=models).attributions
    own = jax.vmap(jax.grad(lambda x, c: own_logits(x[None])[0, c]))(jnp.asarray(X), CLASSES)
    np.testing.assert_allclose(got, np.asarray(own).reshape(got.shape), rtol=1e-4, atol=1e-6)


def test_flax_linen():
    net = LinenNet()
    variables = net.init(jax.random.PRNGKey(0), X[:1])
    teacher = adapters.from_flax(net, variables, image_shape=SHAPE)
    assert teacher.num_classes == K and teacher.differentiable
    np.testing.assert_allclose(teacher.apply(teacher.params, X), net.apply(variables, X),
                               rtol=1e-6)
    _gradients_equal(teacher, lambda x: net.apply(variables, x))


def test_flax_nnx():
    from flax import nnx

    class NnxNet(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(3, 6, (3, 3), rngs=rngs)
            self.out = nnx.Linear(8 * 8 * 6, K, rngs=rngs)

        def __call__(self, x):
            return self.out(nnx.relu(self.conv(x)).reshape(len(x), -1))

    model = NnxNet(nnx.Rngs(0))
    teacher = adapters.from_nnx(model, image_shape=SHAPE)
    assert teacher.num_classes == K
    np.testing.assert_allclose(teacher.apply(teacher.params, X), model(jnp.asarray(X)),
                               rtol=1e-6)
    _gradients_equal(teacher, model)


def test_keras_on_the_jax_backend():
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(SHAPE), keras.layers.Conv2D(6, 3, activation="relu"),
                              keras.layers.BatchNormalization(), keras.layers.Flatten(),
                              keras.layers.Dense(K)])
    teacher = adapters.from_keras(model, image_shape=SHAPE)
    assert teacher.num_classes == K
    own = lambda x: model(x, training=False)  # noqa: E731
    np.testing.assert_allclose(teacher.apply(teacher.params, X), own(X), rtol=1e-5, atol=1e-6)
    _gradients_equal(teacher, own)


def test_keras_softmax_outputs_need_saying_so():
    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(),
                              keras.layers.Dense(K, activation="softmax")])
    with pytest.raises(ValueError, match="outputs='probabilities'"):
        adapters.from_keras(model, image_shape=SHAPE)
    teacher = adapters.from_keras(model, image_shape=SHAPE, outputs="probabilities")
    logits = teacher.apply(teacher.params, X)
    np.testing.assert_allclose(jax.nn.softmax(logits), model(X), rtol=1e-5, atol=1e-7)


def test_equinox_channels_first_per_example():
    eqx = pytest.importorskip("equinox")

    class EqxNet(eqx.Module):
        conv: eqx.nn.Conv2d
        out: eqx.nn.Linear

        def __init__(self, key):
            k1, k2 = jax.random.split(key)
            self.conv = eqx.nn.Conv2d(3, 6, 3, padding=1, key=k1)
            self.out = eqx.nn.Linear(6 * 8 * 8, K, key=k2)

        def __call__(self, x):  # one image [C, H, W]
            return self.out(jax.nn.relu(self.conv(x)).reshape(-1))

    model = EqxNet(jax.random.PRNGKey(0))
    mean, std = 0.5, 0.25
    teacher = adapters.from_equinox(model, image_shape=SHAPE,
                                    preprocess=lambda x: (x - mean) / std)

    def own(x):  # the model's own call: normalised, channels first, one image at a time
        return jax.vmap(model)(jnp.transpose((x - mean) / std, (0, 3, 1, 2)))

    np.testing.assert_allclose(teacher.apply(teacher.params, X), own(X), rtol=1e-5, atol=1e-6)
    _gradients_equal(teacher, own)


def test_a_black_box_runs_sampling_methods_and_refuses_gradients():
    w = np.random.default_rng(1).normal(size=(int(np.prod(SHAPE)), K)).astype(np.float32)
    teacher = adapters.from_callback(lambda x: x.reshape(len(x), -1) @ w, K, image_shape=SHAPE)
    assert not teacher.differentiable
    models = dv.Models(*teacher)
    out = dv.explain("rise", X[:2], CLASSES[:2], models=models,
                     config=dv.RiseConfig(num_masks=64, grid=2, batch=32))
    assert out.attributions.shape == (2, *SHAPE) and np.isfinite(out.attributions).all()
    with pytest.raises(ValueError, match="gradients"):
        dv.explain("gradient", X[:2], CLASSES[:2], models=models)


def _linen_teacher(seed: int) -> adapters.Teacher:
    net = LinenNet()
    return adapters.from_flax(net, net.init(jax.random.PRNGKey(seed), X[:1]), image_shape=SHAPE)


def test_an_ensemble_averages_probabilities_and_keeps_gradients():
    members = [_linen_teacher(0), _linen_teacher(1)]
    teacher = dv.ensemble(members)
    assert teacher.num_classes == K and teacher.differentiable

    def own(x):  # the log of the members' mean probabilities, written out
        probs = [jax.nn.softmax(t.apply(t.params, x), axis=-1) for t in members]
        return jnp.log((probs[0] + probs[1]) / 2)

    np.testing.assert_allclose(teacher.apply(teacher.params, X), own(X), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.nn.softmax(teacher.apply(teacher.params, X)).sum(-1), 1.0,
                               rtol=1e-6)
    _gradients_equal(teacher, own)
    one = dv.ensemble(members[:1])  # one member: its own log-probabilities
    np.testing.assert_allclose(one.apply(one.params, X),
                               jax.nn.log_softmax(members[0].apply(members[0].params, X)),
                               rtol=1e-5, atol=1e-6)


def test_an_ensemble_with_a_black_box_is_one():
    w = np.random.default_rng(2).normal(size=(int(np.prod(SHAPE)), K)).astype(np.float32)
    box = adapters.from_callback(lambda x: x.reshape(len(x), -1) @ w, K, image_shape=SHAPE)
    teacher = dv.ensemble([_linen_teacher(0), box])
    assert not teacher.differentiable
    models = dv.Models(*teacher)
    out = dv.explain("rise", X[:2], CLASSES[:2], models=models,
                     config=dv.RiseConfig(num_masks=64, grid=2, batch=32))
    assert np.isfinite(out.attributions).all()
    with pytest.raises(ValueError, match="gradients"):
        dv.explain("gradient", X[:2], CLASSES[:2], models=models)


@pytest.mark.parametrize("members, message", [
    ([], "at least one"),
    ([adapters.Teacher(lambda p, x: jnp.zeros((len(x), K)), None, K),
      adapters.Teacher(lambda p, x: jnp.zeros((len(x), K + 1)), None, K + 1)], "same classes"),
])
def test_an_ensemble_of_nothing_or_of_other_classes_is_a_clear_error(members, message):
    with pytest.raises(ValueError, match=message):
        dv.ensemble(members)


class _Vector(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(x.reshape(len(x), -1))[:, 0]  # [N], not [N, K]


@pytest.mark.parametrize("make, message", [
    (lambda: adapters.from_flax(_Vector(), _Vector().init(jax.random.PRNGKey(0), X[:1]),
                                image_shape=SHAPE), "expected logits"),
    (lambda: adapters.from_flax(LinenNet(), {"params": {}}, image_shape=SHAPE), "probe"),
    (lambda: adapters.from_flax(object(), {}, image_shape=SHAPE), "flax.linen Module"),
    (lambda: adapters.from_flax(LinenNet(), LinenNet().init(jax.random.PRNGKey(0), X[:1])),
     "image_shape"),
    (lambda: adapters.from_flax(LinenNet(), LinenNet().init(jax.random.PRNGKey(0), X[:1]),
                                image_shape=SHAPE, layout="HWC"), "layout"),
    (lambda: adapters.from_nnx(LinenNet(), image_shape=SHAPE), "nnx.Module"),
    (lambda: adapters.from_callback(lambda x: np.zeros((len(x), 3)), K, image_shape=SHAPE),
     "expected logits"),
])
def test_models_that_do_not_give_logits_are_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


class SoftmaxNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.softmax(nn.Dense(K)(x.reshape(len(x), -1)))


@pytest.fixture(scope="module")
def nets():
    """(module, variables) of a logits model and of one ending in softmax."""
    key = jax.random.PRNGKey(0)
    return {"logits": (LinenNet(), LinenNet().init(key, X[:1])),
            "probabilities": (SoftmaxNet(), SoftmaxNet().init(key, X[:1]))}


@pytest.mark.parametrize("kind, declared", [("probabilities", "logits"),
                                            ("logits", "probabilities")])
def test_a_declared_kind_the_outputs_contradict_is_refused(nets, kind, declared):
    """With image_shape when the teacher is made; without it on the first call, eager or
    traced, before any output: never a log of logits nor logits that are probabilities."""
    net, variables = nets[kind]
    seen = "are probabilities" if kind == "probabilities" else "are not probabilities"
    with pytest.raises(ValueError, match=f"from_flax: .*{seen}.*row sums"):
        adapters.from_flax(net, variables, image_shape=SHAPE, outputs=declared)
    for run in (lambda t: t.apply(t.params, X), lambda t: jax.jit(t.apply)(t.params, X),
                lambda t: jax.grad(lambda x: t.apply(t.params, x).sum())(X)):
        teacher = adapters.from_flax(net, variables, num_classes=K, outputs=declared)
        with pytest.raises(ValueError, match=seen):
            run(teacher)


@pytest.mark.parametrize("with_shape", [True, False])
def test_a_correct_declaration_keeps_the_models_outputs(nets, with_shape):
    shape = {"image_shape": SHAPE} if with_shape else {"num_classes": K}
    for kind in ("logits", "probabilities"):
        net, variables = nets[kind]
        teacher = adapters.from_flax(net, variables, outputs=kind, **shape)
        assert teacher.num_classes == K
        got = jax.jit(teacher.apply)(teacher.params, X)  # the lazy check runs inside the trace
        own = net.apply(variables, X)
        if kind == "probabilities":  # log-probabilities: softmax gives the model's own back
            np.testing.assert_allclose(got, jnp.log(own), rtol=1e-5)
            np.testing.assert_allclose(jax.nn.softmax(got), own, rtol=1e-5, atol=1e-7)
        else:
            np.testing.assert_allclose(got, own, rtol=1e-6)
        np.testing.assert_allclose(teacher.apply(teacher.params, X), got, rtol=1e-5, atol=1e-7)


def test_a_black_box_reads_the_kind_of_its_outputs():
    w = np.random.default_rng(3).normal(size=(int(np.prod(SHAPE)), K)).astype(np.float32)

    def logits(x):
        return x.reshape(len(x), -1) @ w

    def probs(x):
        return np.asarray(jax.nn.softmax(logits(x)))

    with pytest.raises(ValueError, match="from_callback: the model's outputs are probabilities"):
        adapters.from_callback(probs, K, image_shape=SHAPE)
    with pytest.raises(ValueError, match="from_callback: outputs='probabilities'.*not"):
        adapters.from_callback(logits, K, image_shape=SHAPE, outputs="probabilities")
    lazy = adapters.from_callback(probs, K)  # no image_shape: judged on the first call
    with pytest.raises(ValueError, match="are probabilities"):
        dv.explain("rise", X[:2], CLASSES[:2], models=dv.Models(*lazy),
                   config=dv.RiseConfig(num_masks=64, grid=2, batch=32))
    for shape in ({"image_shape": SHAPE}, {}):
        teacher = adapters.from_callback(probs, K, outputs="probabilities", **shape)
        np.testing.assert_allclose(teacher.apply(None, X), np.log(probs(X)), rtol=1e-5)
        teacher = adapters.from_callback(logits, K, **shape)
        np.testing.assert_allclose(teacher.apply(None, X), logits(X), rtol=1e-6)


def test_load_teacher_from_module_function(tmp_path, monkeypatch):
    (tmp_path / "my_model.py").write_text(textwrap.dedent("""
        import numpy as np
        from deepvid_jax.models import adapters

        def make():
            w = np.ones((8 * 8 * 3, 4), np.float32)
            return adapters.from_callback(lambda x: x.reshape(len(x), -1) @ w, 4)

        def plain():
            return (lambda p, x: x.reshape(len(x), -1) @ p), np.ones((192, 4), np.float32), 4

        def wrong():
            return 42
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    teacher = adapters.load_teacher("my_model:make")
    assert teacher.num_classes == 4 and not teacher.differentiable
    apply, params, k = adapters.load_teacher("my_model:plain")
    assert k == 4 and apply(params, X).shape == (5, 4)
    for spec, message in [("my_model", "package.module:function"),
                          ("no_such_module:make", "cannot import"),
                          ("my_model:missing", "no function"),
                          ("my_model:wrong", "must return")]:
        with pytest.raises(ValueError, match=message):
            adapters.load_teacher(spec)
    sys.modules.pop("my_model", None)


TEACHER_MODULE = textwrap.dedent("""
    import flax.linen as nn
    import jax
    import numpy as np
    from deepvid_jax.models import adapters

    class Linear(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(10)(x.reshape(len(x), -1))

    def classifier():
        variables = Linear().init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 1), np.float32))
        return adapters.from_flax(Linear(), variables, image_shape=(8, 8, 1))

    def three_classes():
        return adapters.from_callback(lambda x: np.zeros((len(x), 3), np.float32), 3)
""")


def test_the_command_line_runs_a_users_teacher(tmp_path, monkeypatch, capsys,
                                               run_checkpoints):
    """`deepvid run --teacher module:function` (the module found in the current folder) gives
    the store the library's own call gives."""
    import zarr

    from deepvid_jax import cli

    (tmp_path / "user_model.py").write_text(TEACHER_MODULE)
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "out.zarr"
    assert cli.main(["run", "--dataset", "digits", "--split", "test[:6]", "--teacher",
                     "user_model:classifier", "--explainers", "gradient",
                     "--checkpoints", str(run_checkpoints), "--chunk-size", "4",
                     "--out", str(store), "--quiet"]) == 0
    import user_model

    teacher = user_model.classifier()
    ds = dv.load_dataset("digits", "test[:6]")
    root = zarr.open_group(str(store), mode="r")
    identity = root.attrs["deepvid_jax"]["identity"]
    assert identity["models"]["teacher_name"] == "user_model:classifier"
    want = dv.explain("gradient", ds.images, models=dv.Models(*teacher), chunk_size=4)
    np.testing.assert_allclose(root["gradient/attributions"][:], want.attributions, rtol=1e-6)
    # --checkpoints still gives the VAE (deepvid's) beside a user's teacher.
    both = dv.Models.load(run_checkpoints, teacher, teacher_name="user_model:classifier")
    assert both.vae_params is not None and both.teacher_apply is teacher.apply

    base = ["run", "--dataset", "digits", "--split", "test[:6]", "--explainers"]
    for args, message in [
        (["gradient", "--teacher", "user_model:three_classes"], "predicts 3 classes"),
        (["gradient", "--teacher", "user_model:nothing"], "no function"),
        (["deepvid", "--teacher", "user_model:classifier"], "needs a VAE"),
        (["gradient"], "--checkpoints .* or --teacher"),
    ]:
        capsys.readouterr()
        assert cli.main([*base, *args, "--out", str(tmp_path / "x.zarr")]) != 0
        assert re.search(message, capsys.readouterr().err), message
        assert not (tmp_path / "x.zarr").exists()
    sys.modules.pop("user_model", None)
