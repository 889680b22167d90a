"""Teachers that provably ignore a region, and the hidden-region masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_TEACHER

from deepvid_jax.metrics import groundtruth as G
from deepvid_jax.models.adapters import Teacher
from deepvid_jax.models.networks import teacher_logits


@pytest.fixture(scope="module")
def teacher(tiny_teacher) -> Teacher:
    return Teacher(lambda p, x: teacher_logits(p, x, TINY_TEACHER), tiny_teacher,
                   TINY_TEACHER.num_classes)


@pytest.mark.parametrize("name", G.MASKS)
def test_masked_teacher_ignores_every_change_to_hidden_pixels(teacher, name):
    h, w, c = TINY_TEACHER.image_shape
    hidden = G.region_mask(name, h, w)
    assert 0 < hidden.mean() < 1
    masked = G.masked_teacher(teacher, hidden)
    x = jax.random.uniform(jax.random.PRNGKey(0), (4, h, w, c))
    other = jnp.where(hidden[None, :, :, None], jax.random.uniform(jax.random.PRNGKey(1),
                                                                   x.shape), x)
    np.testing.assert_array_equal(masked.apply(masked.params, x),
                                  masked.apply(masked.params, other))
    grads = jax.grad(lambda im: masked.apply(masked.params, im)[:, 0].sum())(x)
    assert np.all(np.asarray(grads)[:, hidden] == 0)
    assert np.abs(np.asarray(grads)[:, ~hidden]).sum() > 0  # it does read the rest
    # and it is the teacher itself on images already filled where hidden
    filled = jnp.where(hidden[None, :, :, None], 0.0, x)
    np.testing.assert_allclose(masked.apply(masked.params, x),
                               teacher.apply(teacher.params, filled), atol=1e-6)


def test_masks_are_what_they_say():
    np.testing.assert_array_equal(G.region_mask("left", 4, 6)[0], [1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(G.region_mask("bottom", 4, 2)[:, 0], [0, 0, 1, 1])
    assert G.region_mask("quadrant", 8, 8).sum() == 48
    border = G.region_mask("border", 8, 8)
    assert border.sum() == 64 - 16 and not border[2:6, 2:6].any()
    patches = G.region_mask("patches", 16, 16, seed=3)
    assert np.array_equal(patches, G.region_mask("patches", 16, 16, seed=3))
    assert all(len(np.unique(patches[i:i + 4, j:j + 4])) == 1
               for i in range(0, 16, 4) for j in range(0, 16, 4))


def test_clear_errors(teacher):
    with pytest.raises(ValueError, match="mask"):
        G.region_mask("diagonal", 8, 8)
    with pytest.raises(ValueError, match=r"\[H, W\] bool"):
        G.masked_teacher(teacher, np.zeros((8, 8)))
    with pytest.raises(ValueError, match="Teacher"):
        G.masked_teacher(teacher.apply, np.zeros((8, 8), bool))
    masked = G.masked_teacher(teacher, np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match=r"mask is \[4, 4\], the images are \[8, 8\]"):
        masked.apply(masked.params, jnp.zeros((1, 8, 8, 1)))
