"""The generated colour dataset: deterministic by index, exact masks, the split syntax."""

from __future__ import annotations

import numpy as np
import pytest

from deepvid_jax.data import sources as data
from deepvid_jax.data import synthetic


def test_any_index_range_is_generated_alone_and_identically():
    x, y, m = synthetic.generate(range(12), "train")
    x2, y2, m2 = synthetic.generate([7, 3], "train")
    np.testing.assert_array_equal(x2, x[[7, 3]])
    np.testing.assert_array_equal(y2, y[[7, 3]])
    np.testing.assert_array_equal(m2, m[[7, 3]])
    xt, _, _ = synthetic.generate(range(12), "test")
    assert not np.array_equal(xt, x)  # the splits are different images
    xs, ys, _ = synthetic.generate(range(12), "train", seed=1)
    assert not np.array_equal(xs, x)


@pytest.mark.parametrize("size", [32, 64])
def test_masks_cover_the_drawn_shapes_exactly(size):
    for i in range(40):
        sc = synthetic.scene(i, "test")
        image, mask = synthetic.render(sc, size)
        background, none = synthetic.render(sc, size, with_shape=False)
        assert not none.any() and mask.sum() >= 0.02 * size * size
        np.testing.assert_array_equal(mask, synthetic.shape_mask(sc.label, sc.centre, sc.radius,
                                                                 size))
        # Off the mask: exactly the background; on it: exactly the shape's colour.
        np.testing.assert_array_equal(image[~mask], background[~mask])
        colour = np.round(sc.colour * 255).astype(np.uint8)
        assert (image[mask] == colour).all()
        # The shape stands out: its colour is far from the background's mean under the mask.
        gap = np.abs(background[mask].astype(float).mean(0) - colour.astype(float)).max()
        assert gap > 20, (i, gap)


def test_the_same_scenes_at_both_sizes():
    _, y32, m32 = synthetic.generate(range(30), "test", 32)
    _, y64, m64 = synthetic.generate(range(30), "test", 64)
    np.testing.assert_array_equal(y32, y64)
    area32, area64 = m32.mean((1, 2)), m64.mean((1, 2))
    np.testing.assert_allclose(area64, area32, atol=0.03)


def test_every_class_is_drawn_about_equally():
    _, y, _ = synthetic.generate(range(1200), "train")
    counts = np.bincount(y, minlength=len(synthetic.CLASSES))
    assert counts.min() > 0.7 * 1200 / len(synthetic.CLASSES), counts


def test_loading_follows_the_split_syntax_and_keeps_masks_aligned():
    ds = data.load("synthetic", "train[:6]+test[-3:]")
    assert ds.images.shape == (9, 32, 32, 3) and ds.images.dtype == np.float32
    assert ds.info.class_names == synthetic.CLASSES and ds.info.image_shape == (32, 32, 3)
    x, y, m = synthetic.generate(range(6), "train")
    xt, yt, mt = synthetic.generate(range(synthetic.SPLITS["test"] - 3,
                                          synthetic.SPLITS["test"]), "test")
    np.testing.assert_array_equal(ds.images, np.concatenate([x, xt]) / np.float32(255))
    np.testing.assert_array_equal(ds.labels, np.concatenate([y, yt]))
    source = data.open_source("synthetic", "train[:6]+test[-3:]")
    np.testing.assert_array_equal(source.masks(), np.concatenate([m, mt]))
    np.testing.assert_array_equal(source.masks(4, 8), np.concatenate([m, mt])[4:8])
    assert len(data.open_source("synthetic_64", "test[50%:]")) == synthetic.SPLITS["test"] // 2
    assert data.load("synthetic_64", "test[:2]").images.shape == (2, 64, 64, 3)


@pytest.mark.parametrize("split, message", [
    ("validation", "synthetic has splits"),
    ("test[5:5]", "selects no images"),
])
def test_bad_synthetic_splits_are_clear(split, message):
    with pytest.raises(ValueError, match=message):
        data.load("synthetic", split)


def test_bad_sizes_are_clear():
    with pytest.raises(ValueError, match="size"):
        synthetic.generate([0], "train", size=4)


def test_a_split_named_twice_keeps_the_order_of_the_syntax():
    ds = data.load("synthetic", "test[:2]+train[:2]+test[2:4]")
    x, y, _ = synthetic.generate(range(4), "test")
    xt, yt, _ = synthetic.generate(range(2), "train")
    np.testing.assert_array_equal(ds.labels, np.concatenate([y[:2], yt, y[2:]]))
    np.testing.assert_array_equal(ds.images, np.concatenate([x[:2], xt, x[2:]]) / np.float32(255))
