"""Local neighbourhoods (issue 12, part 2): per-dimension latent bands, and the label-flip
fraction every explanation reports."""

import functools

import jax
import numpy as np
import pytest
from conftest import TINY_TEACHER

from deepvid_jax import data, neighbors, vae
from deepvid_jax import explain as ex
from deepvid_jax.models import VAEConfig, teacher_logits
from deepvid_jax.neighbors import NeighborConfig
from deepvid_jax.student import StudentConfig

VCFG = VAEConfig(latent_dim=3, features=(4,), hidden=8, image_shape=(8, 8, 1))
VP = vae.init_vae(jax.random.PRNGKey(0), VCFG)
IMAGES = data.load("digits", "test[:5]").images
BAND = ((-0.5, 0.25), (0.0, 0.0), (1.0, 3.0))


@pytest.mark.parametrize("posterior_std", [False, True])
def test_every_sample_stays_inside_its_band(posterior_std):
    _, z = neighbors.latent_neighbors(VP, IMAGES[0], jax.random.PRNGKey(1), num=2000,
                                      scale=1.0, band=BAND, use_posterior_std=posterior_std,
                                      vae_config=VCFG)
    mean, logvar = vae.encode(VP, IMAGES[:1], config=VCFG)
    std = np.exp(0.5 * np.asarray(logvar[0])) if posterior_std else np.ones(3)
    offset = (np.asarray(z) - np.asarray(mean[0])) / std
    low, high = np.array(BAND).T
    assert np.all(offset >= low - 1e-5) and np.all(offset <= high + 1e-5)
    assert np.allclose(offset[:, 1], 0.0, atol=1e-6)  # a (0, 0) band holds the dimension
    # and the band is used, not only respected: samples spread over it
    assert offset[:, 2].min() < 1.1 and offset[:, 2].max() > 2.9


@pytest.mark.parametrize(("band", "message"), [
    (((0.5, -0.5), (0, 0), (0, 1)), r"latent_band\[0\] = \(0.5, -0.5\) is empty"),
    (((0, float("nan")), (0, 0), (0, 1)), "finite"),
    (((0, 1, 2), (0, 0), (0, 1)), r"latent_band\[0\] must be a \(low, high\) pair"),
    ([(0, 1)] * 3, "non-empty tuple"),
    ((), "non-empty tuple"),
])
def test_bad_bands_are_clear(band, message):
    with pytest.raises(ValueError, match=message):
        NeighborConfig(latent_band=band)


def test_band_count_must_match_the_latent_size():
    with pytest.raises(ValueError, match="2 bands; the VAE has latent_dim 3"):
        ex.ExplainConfig(vae=VCFG, neighbors=NeighborConfig(num=16, latent_band=((0, 1),) * 2),
                         holdout=4)


def test_flip_fraction_is_reported_and_correct(tiny_teacher):
    apply = functools.partial(teacher_logits, config=TINY_TEACHER)
    cfg = ex.ExplainConfig(vae=VCFG, neighbors=NeighborConfig(num=64, latent_scale=2.0),
                           holdout=16, student=StudentConfig(method="ridge"),
                           return_neighbors=True)
    e = ex.explain(IMAGES, jax.random.PRNGKey(0), teacher_apply=apply,
                   teacher_params=tiny_teacher, vae_params=VP, config=cfg)
    want = np.mean(e.neighbor_probs.argmax(-1) != e.teacher_probs.argmax(-1)[:, None], axis=1)
    np.testing.assert_allclose(e.flip_fraction, want)
    # the teacher on the instance, from the shared call, equals a separate call
    np.testing.assert_allclose(e.teacher_probs, jax.nn.softmax(apply(tiny_teacher, IMAGES)),
                               atol=1e-6)
