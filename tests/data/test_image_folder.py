"""Image folders (one sub-folder per class) and resizing: round trips of files written here."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from deepvid_jax.data import sources as data

CLASSES = ("cat", "dog", "emu")


def _write(folder, n_per_class=4, size=(10, 12), seed=0, classes=CLASSES):
    """Random RGB PNGs; returns {image bytes: label}."""
    rng = np.random.default_rng(seed)
    written = {}
    for label, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            im = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(im).save(folder / name / f"{seed}_{i}.png")
            written[im.tobytes()] = label
    return written


def _check_round_trip(ds, written):
    assert len(ds.images) == len(written)
    for image, label in zip(ds.images, ds.labels, strict=True):
        key = np.round(image * 255).astype(np.uint8).tobytes()
        assert written[key] == label  # every file once, with its folder's class


def test_a_folder_of_class_folders_round_trips(tmp_path):
    written = _write(tmp_path)
    ds = data.load(str(tmp_path), "all")
    assert ds.images.shape == (12, 10, 12, 3) and ds.images.dtype == np.float32
    assert ds.info.class_names == CLASSES and ds.info.source == f"folder:{tmp_path}"
    _check_round_trip(ds, written)
    assert len(set(ds.labels[:6].tolist())) > 1  # slices mix the classes (hash order)
    source = data.open_source(str(tmp_path), "all[2:5]")
    x, y = source.read(1, 3)
    np.testing.assert_array_equal(x, ds.images[3:5])
    np.testing.assert_array_equal(y, ds.labels[3:5])


def test_split_folders_and_the_split_syntax(tmp_path):
    train = _write(tmp_path / "train", seed=1)
    test = _write(tmp_path / "test", n_per_class=2, seed=2, classes=CLASSES[:2])
    assert data.load(str(tmp_path), "test").info.class_names == CLASSES  # union of classes
    _check_round_trip(data.load(str(tmp_path), "train"), train)
    both = data.load(str(tmp_path), "train[:50%]+test")
    assert len(both.images) == 6 + 4
    _check_round_trip(data.load(str(tmp_path), "test"), test)
    with pytest.raises(ValueError, match="has splits"):
        data.load(str(tmp_path), "all")


def test_mixed_sizes_need_image_size(tmp_path):
    _write(tmp_path, size=(10, 12))
    _write(tmp_path, size=(8, 8), seed=3)
    with pytest.raises(data.CorruptDataError, match="different sizes.*image_size"):
        data.load(str(tmp_path), "all")
    ds = data.load(str(tmp_path), "all", image_size=(16, 16))
    assert ds.images.shape == (24, 16, 16, 3)


def test_a_text_file_named_png_is_named_or_skipped(tmp_path):
    _write(tmp_path)
    bad = tmp_path / "dog" / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(data.CorruptDataError, match="notes.png"):
        data.load(str(tmp_path), "all")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image files: .*notes\.png"):
        source = data.open_source(str(tmp_path), "all", skip_bad=True)
    assert len(source) == 12 and source.skipped == 1
    assert "1 unreadable files skipped" in source.info.source


def test_grayscale_jpeg_and_colour_modes(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    gray = np.tile(np.arange(16, dtype=np.uint8)[None] * 16, (16, 1))
    Image.fromarray(gray, "L").save(tmp_path / "a" / "x.png")
    Image.fromarray(np.stack([gray] * 3, -1)).save(tmp_path / "b" / "y.jpg", quality=95)
    rgb = data.load(str(tmp_path), "all")
    assert rgb.images.shape == (2, 16, 16, 3)
    a = rgb.images[rgb.labels == 0][0]
    np.testing.assert_array_equal(a[..., 0], a[..., 2])  # grey copied to three channels
    np.testing.assert_array_equal(np.round(a[..., 0] * 255), gray)
    g = data.load(str(tmp_path), "all", color_mode="grayscale")
    assert g.images.shape == (2, 16, 16, 1)
    with pytest.raises(ValueError, match="color_mode"):
        data.load(str(tmp_path), "all", color_mode="cmyk")


@pytest.mark.parametrize("make, error, message", [
    (lambda p: None, data.DataNotFoundError, "no class sub-folders"),
    (lambda p: (p / "cat").mkdir(), ValueError, "selects no images"),
])
def test_empty_folders_are_clear(tmp_path, make, error, message):
    make(tmp_path)
    with pytest.raises(error, match=message):
        data.load(str(tmp_path), "all")


def test_a_missing_folder_is_clear(tmp_path):
    with pytest.raises(data.DataNotFoundError, match="no such image folder"):
        data.load(str(tmp_path / "nowhere"), "all")


def test_any_named_dataset_can_be_resized():
    small = data.load("digits", "test[:4]")
    big = data.load("digits", "test[:4]", image_size=(16, 16))
    assert big.images.shape == (4, 16, 16, 1) and big.info.image_shape == (16, 16, 1)
    np.testing.assert_array_equal(big.labels, small.labels)
    # Bilinear upsampling keeps the mean brightness.
    np.testing.assert_allclose(big.images.mean((1, 2, 3)), small.images.mean((1, 2, 3)),
                               atol=0.03)
    with pytest.raises(ValueError, match="image_size"):
        data.load("digits", "test[:4]", image_size=(16,))


def test_the_command_line_trains_runs_and_reports_on_a_folder(tmp_path, capsys):
    """A folder of mixed sizes through train-teacher, run and report: the store records the
    resize, so the report reopens the same images."""
    from deepvid_jax import cli
    from deepvid_jax.runner import report

    images = tmp_path / "images"
    _write(images, n_per_class=45, size=(10, 12))  # 135 + 6: one batch of 128 to train
    _write(images, n_per_class=2, size=(7, 9), seed=5)
    data_args = ["--dataset", str(images), "--image-size", "8,8"]
    assert cli.main(["train-teacher", *data_args, "--train-split", "all[:130]",
                     "--eval-split", "all[130:]", "--epochs", "1", "--out",
                     str(tmp_path / "models"), "--quiet"]) == 0
    store = tmp_path / "out.zarr"
    assert cli.main(["run", *data_args, "--split", "all", "--checkpoints",
                     str(tmp_path / "models"), "--explainers", "gradient", "--out", str(store),
                     "--quiet"]) == 0
    html = report.build(store)
    assert "input images are not shown" not in html
    capsys.readouterr()
    assert cli.main(["run", "--dataset", str(images), "--split", "all", "--checkpoints",
                     str(tmp_path / "models"), "--out", str(tmp_path / "x.zarr")]) != 0
    assert "--image-size" in capsys.readouterr().err


def test_a_bare_name_is_a_dataset_and_a_path_is_a_folder(tmp_path, monkeypatch):
    _write(tmp_path / "images")
    (tmp_path / "digits").mkdir()  # a folder named like a dataset never hides it
    monkeypatch.chdir(tmp_path)
    assert data.load("digits", "test[:2]").info.source.startswith("embedded")
    assert data.load("./images", "all").info.class_names == CLASSES
    with pytest.raises(data.DataNotFoundError, match=r"write it as a path: './images'"):
        data.load("images", "all")
