"""`decode_image`'s rules, one Pillow mode at a time: files written here with known pixel values
decode to the known answer, through the function and through an image folder."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from deepvid_jax.data import sources as data
from deepvid_jax.data.folder import decode_image

H, W = 6, 5


def _save(path, im: Image.Image):
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def _ramp(low: int, high: int, dtype) -> np.ndarray:
    """[H, W] values from low to high (a non-uniform image)."""
    return np.linspace(low, high, H * W).round().astype(dtype).reshape(H, W)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_images_are_scaled_by_65535(tmp_path, suffix):
    f = _save(tmp_path / f"x{suffix}", Image.fromarray(np.full((H, W), 19661, np.uint16)))
    assert Image.open(f).mode == "I;16"
    out = decode_image(f)
    assert out.shape == (H, W, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, 19661 / 65535, rtol=1e-6)  # 0.30, not clipped to 1
    ramp = _ramp(0, 65535, np.uint16)
    g = decode_image(_save(tmp_path / f"r{suffix}", Image.fromarray(ramp)), "grayscale")
    np.testing.assert_allclose(g[..., 0], ramp / 65535, rtol=1e-6)


def test_32_bit_integer_images_are_scaled_by_their_range(tmp_path):
    x = np.full((H, W), 2**30, np.int32)
    out = decode_image(_save(tmp_path / "i.tif", Image.fromarray(x)), "grayscale")
    np.testing.assert_allclose(out, 2**30 / (2**31 - 1), rtol=1e-6)
    neg = _save(tmp_path / "neg.tif", Image.fromarray(np.full((H, W), -5, np.int32)))
    with pytest.raises(data.CorruptDataError, match=r"neg\.tif.*negative"):
        decode_image(neg)


def test_float_images_in_0_1_are_kept_and_others_refused(tmp_path):
    x = np.full((H, W), 0.3, np.float32)
    x[0, 0] = 1.0
    f = _save(tmp_path / "f.tif", Image.fromarray(x))
    assert Image.open(f).mode == "F"
    np.testing.assert_allclose(decode_image(f)[..., 1], x, rtol=1e-6)  # not black
    big = _save(tmp_path / "big.tif", Image.fromarray(x * 200))
    with pytest.raises(data.CorruptDataError, match=r"big\.tif.*\[60, 200\].*rescale"):
        decode_image(big)
    x[1, 1] = np.nan
    with pytest.raises(data.CorruptDataError, match=r"nan\.tif.*non-finite"):
        decode_image(_save(tmp_path / "nan.tif", Image.fromarray(x)))


def test_palette_images_are_expanded_through_the_palette(tmp_path):
    im = Image.fromarray(_ramp(0, 2, np.uint8), "P")
    palette = [10, 200, 30, 255, 0, 128, 7, 7, 7]
    im.putpalette(palette + [0] * (768 - len(palette)))
    out = decode_image(_save(tmp_path / "p.png", im))
    want = np.asarray(palette, np.float32).reshape(3, 3)[_ramp(0, 2, np.uint8)] / 255
    np.testing.assert_allclose(out, want, rtol=1e-6)


def test_cmyk_is_converted_to_rgb(tmp_path):
    f = _save(tmp_path / "c.jpg", Image.new("CMYK", (W, H), (51, 0, 102, 128)))
    out = decode_image(f)
    k = 1 - 128 / 255
    want = [(1 - 0.2) * k, k, (1 - 0.4) * k]  # (1 - C)(1 - K), (1 - M)(1 - K), (1 - Y)(1 - K)
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), want, atol=3 / 255)  # JPEG is lossy
    tif = decode_image(_save(tmp_path / "c.tif", Image.new("CMYK", (W, H), (51, 0, 102, 128))))
    np.testing.assert_allclose(tif[0, 0], want, atol=0.5 / 255)  # lossless: Pillow's rounding


def test_alpha_is_composited_over_the_background(tmp_path):
    alpha = _ramp(0, 255, np.uint8)
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 255, alpha  # white ink, its shape only in alpha
    f = _save(tmp_path / "a.png", Image.fromarray(rgba, "RGBA"))
    out = decode_image(f)  # over black: the alpha itself, not uniform white
    np.testing.assert_allclose(out, np.repeat(alpha[..., None] / 255, 3, -1), rtol=1e-6)
    with pytest.raises(data.CorruptDataError, match=r"a\.png.*alpha channel.*background"):
        decode_image(f, background=1.0)  # white over white would lose the content
    la = np.stack([np.full((H, W), 200, np.uint8), alpha], -1)
    g = decode_image(_save(tmp_path / "la.png", Image.fromarray(la, "LA")), "grayscale",
                     background=0.5)
    a = alpha / 255
    np.testing.assert_allclose(g[..., 0], a * 200 / 255 + (1 - a) * 0.5, rtol=1e-6)


def test_colour_modes_and_resizing_of_float_images(tmp_path):
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 255  # opaque red
    red = _save(tmp_path / "red.png", Image.fromarray(rgba, "RGBA"))
    np.testing.assert_allclose(decode_image(red, "grayscale"), 0.299, rtol=1e-6)
    f = _save(tmp_path / "x.png", Image.fromarray(np.full((H, W), 19661, np.uint16)))
    big = decode_image(f, size=(12, 7))
    assert big.shape == (12, 7, 3)
    np.testing.assert_allclose(big, 19661 / 65535, rtol=1e-5)  # a constant stays constant
    with pytest.raises(ValueError, match="background"):
        decode_image(f, background=2)
    with pytest.raises(ValueError, match="color_mode"):
        decode_image(f, "cmyk")


def test_a_folder_of_16_bit_images_reads_their_values(tmp_path):
    for label in ("a", "b"):
        for i in range(2):
            _save(tmp_path / label / f"{i}.png",
                  Image.fromarray(np.full((H, W), 19661 * (i + 1), np.uint16)))
    source = data.open_source(str(tmp_path), "all")
    images, _ = source.read(0, len(source))
    np.testing.assert_allclose(np.sort(images.mean((1, 2, 3))),
                               [0.3, 0.3, 0.6, 0.6], atol=1e-4)
    assert source._stored(0, 1)[0].dtype == np.float32  # 16 bits are kept, not rounded to 8


def test_a_folder_of_8_bit_images_is_stored_as_bytes(tmp_path):
    rng = np.random.default_rng(0)
    written = []
    for label in ("a", "b"):
        im = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        _save(tmp_path / label / "x.png", Image.fromarray(im))
        written.append(im)
    source = data.open_source(str(tmp_path), "all")
    stored, labels = source._stored(0, 2)
    assert stored.dtype == np.uint8
    np.testing.assert_array_equal(stored, np.stack(written)[labels])
    assert source.fingerprint() == data.array_digest([stored, labels])


def _truncated_png(path):
    good = _save(path.with_name("whole.png"), Image.fromarray(
        np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)))
    path.write_bytes(good.read_bytes()[:600])
    good.unlink()
    return path


def test_a_truncated_png_is_skipped_or_named(tmp_path):
    for label in ("a", "b"):
        _save(tmp_path / label / "ok.png", Image.fromarray(np.zeros((40, 40, 3), np.uint8)))
    cut = _truncated_png(tmp_path / "a" / "cut.png")
    (tmp_path / "b" / "text.png").write_text("not an image")
    with pytest.warns(UserWarning, match=r"skipped 2 .*cut\.png.*text\.png|text\.png.*cut\.png"):
        source = data.open_source(str(tmp_path), "all", skip_bad=True)
    assert len(source) == 2 and source.skipped == 2
    assert sorted(source.skipped_files) == sorted([str(cut), str(tmp_path / "b" / "text.png")])
    assert source.read(0, 2)[0].shape == (2, 40, 40, 3)
    (tmp_path / "b" / "text.png").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        source = data.open_source(str(tmp_path), "all")  # headers only: the cut is unseen
    with pytest.raises(data.CorruptDataError, match=r"cut\.png.*--skip-bad-images"):
        source.read(0, len(source))
