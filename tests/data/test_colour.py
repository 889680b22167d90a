"""Colour images through every explainer and metric: the generated shapes at 16x16x3, with the
grayscale table's chunk-independence check (chunk 1 is a loop over instances) for DeepVID, LIME
and the gradient family."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import SMALL as ALL_SMALL

import deepvid_jax as dv
from deepvid_jax.data import synthetic
from deepvid_jax.explainers import gradients as attribution
from deepvid_jax.models import train
from deepvid_jax.models.networks import (
    TeacherConfig,
    VAEConfig,
    init_vae,
    teacher_apply_for,
    teacher_logits,
)

SIZE = 16
SHAPE = (SIZE, SIZE, 3)
TCFG = TeacherConfig(num_classes=len(synthetic.CLASSES), features=(8, 16), hidden=32,
                     image_shape=SHAPE)
VCFG = VAEConfig(latent_dim=4, features=(8, 16), hidden=32, image_shape=SHAPE)
SMALL = {k: v for k, v in ALL_SMALL.items() if k != "surrogate"}
# Maps with one value per location, by design: LIME's segments and RISE's masks hide every
# channel of a pixel at once; Grad-CAM upsamples a map of locations.
SPATIAL = ("lime", "rise", "grad_cam")
X, Y, _ = synthetic.generate(range(3), "test", SIZE)
X = X.astype(np.float32) / 255


@pytest.fixture(scope="module")
def models() -> dv.Models:
    """A tiny colour teacher trained for a few steps on the shapes, and an untrained VAE."""
    x, y, _ = synthetic.generate(range(128), "train", SIZE)
    params, _ = train.train_teacher(
        (x.astype(np.float32) / 255, y), (X, Y), TCFG,
        train.TrainConfig(epochs=2, batch_size=64, learning_rate=3e-3), progress=False)
    return dv.Models(teacher_apply_for(TCFG), params, TCFG.num_classes,
                     teacher_config=TCFG, vae_params=init_vae(jax.random.PRNGKey(1), VCFG),
                     vae_config=VCFG)


# The chunk check (two compiled programs each) for DeepVID, LIME and the gradient family; the
# other methods run once on colour (their chunk independence is the grayscale table's).
CHUNK_CHECKED = ("deepvid", "lime", *attribution.GRADIENT_METHODS)


def test_every_colour_capable_method_is_checked():
    assert set(SMALL) == set(dv.METHODS) - {"surrogate"}  # its own test trains one


@pytest.mark.parametrize("name", sorted(SMALL))
def test_colour_images_run_and_do_not_depend_on_the_chunk(name, models):
    key = jax.random.PRNGKey(0)
    whole = dv.explain(name, X, Y, key, models=models, config=SMALL[name], chunk_size=3)
    assert whole.attributions.shape == (3, *SHAPE) and np.isfinite(whole.attributions).all()
    if name in CHUNK_CHECKED:
        loop = dv.explain(name, X, Y, key, models=models, config=SMALL[name], chunk_size=1)
        scale = np.abs(whole.attributions).max()
        np.testing.assert_allclose(loop.attributions, whole.attributions, rtol=0,
                                   atol=max(2e-4 * scale, 1e-9))
    if name not in SPATIAL:
        per_channel = whole.attributions.reshape(3, -1, 3)
        assert not np.allclose(per_channel[..., 0], per_channel[..., 1])  # colour is seen


@pytest.mark.parametrize("metric", sorted(dv.METRICS))
def test_metrics_score_colour_attributions(metric, models):
    kind = dv.get_metric(metric).kind
    maps = dv.explain("gradient", X, Y, models=models).attributions
    if kind == "explainer":  # of the explainer itself: it is run again on the colour images
        out = dv.score_explainer(metric, "gradient", X, Y, models=models, reference=maps)
    else:  # localisation metrics read a region per image: the left half
        left = np.broadcast_to(np.arange(SHAPE[1]) < SHAPE[1] // 2, (3, *SHAPE[:2]))
        extra = {"regions": left} if kind == "localisation" else {}
        out = dv.score(metric, X, maps, Y, models=models, **extra)
    for name, values in out.items():
        assert values.shape[0] == 3 and np.isfinite(values).all(), name


@pytest.mark.parametrize("shape, stages", [((28, 28, 1), 2), ((8, 8, 1), 2), ((32, 32, 3), 2),
                                           ((64, 64, 3), 3), ((32, 48, 3), 2), ((30, 30, 3), 1)])
def test_models_follow_the_image_size(shape, stages):
    from deepvid_jax.models import vae
    from deepvid_jax.models.networks import (
        SPATIAL_CHANNELS,
        init_teacher,
        teacher_config_for,
        vae_config_for,
    )

    vcfg = vae_config_for(shape)
    assert len(vcfg.features) == stages
    if shape[2] == 1:  # a dense code
        assert vcfg.latent_dim == 16 and not vcfg.spatial_latent
    else:  # a grid of codes at the last stage's resolution
        cells = (shape[0] >> stages) * (shape[1] >> stages)
        assert vcfg.spatial_latent == SPATIAL_CHANNELS
        assert vcfg.latent_dim == cells * SPATIAL_CHANNELS
    x = jax.ShapeDtypeStruct((2, *shape), np.float32)
    params = jax.eval_shape(lambda: init_vae(jax.random.PRNGKey(0), vcfg))
    recon = jax.eval_shape(lambda p, x: vae.reconstruct(p, x, config=vcfg), params, x)
    assert recon.shape == (2, *shape)
    tcfg = teacher_config_for(shape, 6)
    tparams = jax.eval_shape(lambda: init_teacher(jax.random.PRNGKey(0), tcfg))
    assert jax.eval_shape(lambda p, x: teacher_logits(p, x, tcfg), tparams, x).shape == (2, 6)
    if shape[:2] == (28, 28):  # MNIST keeps the models of every table in this README
        assert (tcfg.features, vcfg.features) == (TeacherConfig().features, VAEConfig().features)


def test_odd_sizes_are_a_clear_error_for_the_vae():
    from deepvid_jax.models.networks import vae_config_for

    with pytest.raises(ValueError, match="even H and W.*--image-size"):
        vae_config_for((31, 32, 3))
    assert vae_config_for((32, 32, 3), latent_dim=128).spatial_latent == 2  # 64 cells x 2
    with pytest.raises(ValueError, match="grid of 64 cells at 32x32: latent_dim must be a "
                                         "multiple of 64, got 100"):
        vae_config_for((32, 32, 3), latent_dim=100)


def test_decoder_blocks_and_lr_schedule_reach_the_trained_configs(tmp_path):
    from deepvid_jax.cli import build_parser, options
    from deepvid_jax.data import sources as data
    from deepvid_jax.models import recipes, train
    from deepvid_jax.models.networks import DECODER_BLOCKS, vae_config_for

    assert vae_config_for((32, 32, 3)).decoder_blocks == DECODER_BLOCKS["colour"]
    assert vae_config_for((28, 28, 1)).decoder_blocks == DECODER_BLOCKS["grayscale"]
    assert vae_config_for((32, 32, 3), decoder_blocks=2).decoder_blocks == 2
    tr = data.load("synthetic", "train[:256]")
    for flags, blocks, schedule in (
            ([], DECODER_BLOCKS["colour"], recipes.RECIPES["synthetic"]["vae"].get(
                "lr_schedule", train.VAE_TRAIN.lr_schedule)),
            (["--decoder-blocks", "2", "--lr-schedule", "constant"], 2, "constant"),
            (["--decoder-blocks", "0", "--lr-schedule", "cosine"], 0, "cosine")):
        args = build_parser().parse_args(["train-vae", "--dataset", "synthetic", "--out",
                                                 str(tmp_path), *flags])
        plan = options.plan(args, ("vae",), tr)
        assert plan.vae_config.decoder_blocks == blocks
        assert plan.vae_train.lr_schedule == schedule


def test_a_spatial_latent_is_a_grid_of_local_codes():
    from deepvid_jax.models import vae

    cfg = VAEConfig(latent_dim=4 * 4 * 2, features=(8, 16), image_shape=(16, 16, 3),
                    likelihood="gaussian", spatial_latent=2)
    assert cfg.grid_size == 16
    params = init_vae(jax.random.PRNGKey(0), cfg)
    assert not any("Dense" in k for k in params["encoder"]) | any("Dense" in k for k in
                                                                  params["decoder"])
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 16, 16, 3))
    mean, logvar = vae.encode(params, x, config=cfg)
    assert mean.shape == logvar.shape == (2, 32)
    # A code describes its neighbourhood: changing the top-left cell's code leaves the far
    # corner of the decoding untouched (receptive field: three 3x3 convs and two upsamplings).
    z = jax.random.normal(jax.random.PRNGKey(2), (1, 32))
    moved = z.at[0, :2].add(3.0)  # cell (0, 0): its two channels
    a, b = vae.decode(params, z, config=cfg), vae.decode(params, moved, config=cfg)
    changed = np.abs(np.asarray(a - b)).max(-1)[0]
    assert changed[:4, :4].max() > 0 and changed[14:, 14:].max() == 0
    with pytest.raises(ValueError, match=r"spatial latent of 2 channels on the 4x4 grid has "
                                         r"latent_dim 32, not 16"):
        VAEConfig(latent_dim=16, features=(8, 16), image_shape=(16, 16, 3), spatial_latent=2)


def test_decoder_blocks_add_residual_blocks_at_each_resolution():
    from deepvid_jax.models import vae

    base = dict(latent_dim=4 * 4 * 2, features=(8, 16), image_shape=(16, 16, 3),
                likelihood="gaussian", spatial_latent=2)
    z = jax.random.normal(jax.random.PRNGKey(2), (3, 32))
    for blocks in (0, 2):
        cfg = VAEConfig(**base, decoder_blocks=blocks)
        params = init_vae(jax.random.PRNGKey(0), cfg)
        names = [k for k in params["decoder"] if k.startswith("ResidualBlock")]
        assert len(names) == blocks * len(cfg.features)  # before each of the two upsamplings
        assert vae.decode(params, z, config=cfg).shape == (3, 16, 16, 3)
    with pytest.raises(ValueError, match="decoder_blocks"):
        VAEConfig(**base, decoder_blocks=-1)
