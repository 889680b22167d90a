"""Image files and folders against hostile input: every file that cannot be decoded by
`decode_image`'s rules is an error naming it (or, with skip_bad, a skipped file named in a
warning); bad options are clear errors; decoding is exact for every value an integer or float
image can hold."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from deepvid_jax.data import sources as data
from deepvid_jax.data.folder import decode_image


def _hostile_files(folder):
    """{file name: what is wrong with it}, written in folder/bad/."""
    bad = folder / "bad"
    bad.mkdir(parents=True)
    (bad / "empty.png").write_bytes(b"")
    (bad / "text.jpg").write_text("GIF89a but not really")
    whole = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(whole).save(bad / "whole.png")
    (bad / "cut.png").write_bytes((bad / "whole.png").read_bytes()[:300])
    (bad / "whole.png").unlink()
    Image.fromarray(np.full((4, 4), 3.5, np.float32)).save(bad / "wide.tif")
    Image.fromarray(np.full((4, 4), np.inf, np.float32)).save(bad / "inf.tif")
    Image.fromarray(np.full((4, 4), -1, np.int32)).save(bad / "negative.tif")
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 3] = np.arange(16).reshape(4, 4) * 16  # black ink, only in alpha, over black
    Image.fromarray(rgba, "RGBA").save(bad / "ink.png")
    return {"empty.png": "empty", "text.jpg": "not an image", "cut.png": "truncated",
            "wide.tif": r"\[3\.5, 3\.5\]", "inf.tif": "non-finite", "negative.tif": "negative",
            "ink.png": "alpha channel"}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    reasons = _hostile_files(folder)
    good = folder / "good"
    good.mkdir()
    Image.fromarray(np.full((4, 4), 128, np.uint8)).save(good / "ok.png")
    return folder, reasons


def test_each_hostile_file_is_an_error_naming_it(hostile):
    folder, reasons = hostile
    for name, reason in reasons.items():
        if name in ("empty.png", "text.jpg", "cut.png"):
            reason = "cannot decode"
        with pytest.raises(data.CorruptDataError, match=rf"{name}.*{reason}"):
            decode_image(folder / "bad" / name)


def test_skip_bad_skips_and_names_every_hostile_file(hostile):
    folder, reasons = hostile
    with pytest.warns(UserWarning, match=f"skipped {len(reasons)} unreadable") as caught:
        source = data.open_source(str(folder), "all", skip_bad=True)
    message = str(caught[0].message)
    assert all(name in message for name in reasons)
    assert sorted(p.rsplit("/", 1)[1] for p in source.skipped_files) == sorted(reasons)
    assert len(source) == 1 and source.info.class_names == ("bad", "good")
    np.testing.assert_allclose(source.read(0, 1)[0], 128 / 255, rtol=1e-6)
    # Without skip_bad a file that is not an image fails on opening, one that breaks a rule
    # on reading; each names its file.
    with pytest.raises(data.CorruptDataError, match="(empty|text)"):
        data.open_source(str(folder), "all")


def test_a_folder_of_only_hostile_files_selects_no_images(hostile, tmp_path):
    folder, _ = hostile
    (tmp_path / "bad").symlink_to(folder / "bad", target_is_directory=True)
    with pytest.warns(UserWarning, match="skipped"), \
            pytest.raises(ValueError, match="selects no images"):
        data.open_source(str(tmp_path), "all", skip_bad=True)


@pytest.mark.parametrize("kwargs, message", [
    ({"background": -0.1}, "background"),
    ({"background": 1.5}, "background"),
    ({"background": float("nan")}, "background"),
    ({"background": True}, "background"),
    ({"background": "white"}, "background"),
    ({"color_mode": None}, "color_mode"),
    ({"color_mode": "RGB"}, "color_mode"),
    ({"size": (0, 4)}, "image_size"),
    ({"size": (4.0, 4)}, "image_size"),
    ({"size": 4}, "image_size"),
])
def test_bad_options_are_clear_errors(hostile, kwargs, message):
    folder, _ = hostile
    with pytest.raises(ValueError, match=message):
        decode_image(folder / "good" / "ok.png", **kwargs)


@pytest.mark.parametrize("image", [42, None, np.zeros((4, 4)), b"\x89PNG"])
def test_only_paths_and_pil_images_decode(image):
    with pytest.raises(ValueError, match="a path or a PIL image"):
        decode_image(image)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(data.CorruptDataError, match="nowhere.png"):
        decode_image(tmp_path / "nowhere.png")


_SHAPES = hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=6)


@settings(max_examples=25, deadline=None)
@given(hnp.arrays(np.uint16, _SHAPES))
def test_every_16_bit_value_decodes_to_its_fraction(x):
    out = decode_image(Image.fromarray(x), "grayscale")
    np.testing.assert_allclose(out[..., 0], x / 65535, rtol=1e-6, atol=1e-7)


@settings(max_examples=25, deadline=None)
@given(hnp.arrays(np.float32, _SHAPES, elements=st.floats(0, 1, width=32)))
def test_every_float_in_0_1_decodes_to_itself(x):
    np.testing.assert_array_equal(decode_image(Image.fromarray(x), "grayscale")[..., 0], x)


@settings(max_examples=25, deadline=None)
@given(hnp.arrays(np.uint8, st.tuples(st.integers(1, 6), st.integers(1, 6), st.just(3))))
def test_every_8_bit_colour_decodes_exactly(x):
    out = decode_image(Image.fromarray(x))
    np.testing.assert_array_equal(np.round(out * 255).astype(np.uint8), x)
