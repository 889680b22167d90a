import gzip
import shutil

import numpy as np
import pytest

from deepvid_jax.data import sources as data

MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def mnist_test(data_dir):
    return data.load("mnist", "test", data_dir=data_dir)


def test_mnist_shapes_dtype_range_counts(mnist_test):
    x, y, info = mnist_test
    assert x.shape == (10000, 28, 28, 1) and x.dtype == np.float32
    assert y.shape == (10000,) and y.dtype == np.int32
    assert x.min() == 0.0 and x.max() == 1.0
    assert np.bincount(y).tolist() == MNIST_TEST_COUNTS
    assert info.image_shape == (28, 28, 1) and info.num_classes == 10
    assert info.source.startswith("raw:")


def test_kmnist(data_dir):
    x, y, info = data.load("kmnist", "test[:5000]", data_dir=data_dir)
    assert x.shape == (5000, 28, 28, 1) and 0.0 <= x.min() and x.max() <= 1.0
    full = data.load("kmnist", "test", data_dir=data_dir)
    assert np.bincount(full.labels).tolist() == [1000] * 10
    assert info.class_names[0] == "o"


def test_split_slicing(mnist_test, data_dir):
    head = data.load("mnist", "test[:8000]", data_dir=data_dir)
    tail = data.load("mnist", "test[8000:]", data_dir=data_dir)
    pct = data.load("mnist", "test[80%:]", data_dir=data_dir)
    assert len(head.images) == 8000 and len(tail.images) == 2000
    np.testing.assert_array_equal(tail.images, mnist_test.images[8000:])
    np.testing.assert_array_equal(pct.labels, tail.labels)
    both = data.load("mnist", "test[:10]+test[-10:]", data_dir=data_dir)
    np.testing.assert_array_equal(
        both.labels, np.concatenate([mnist_test.labels[:10], mnist_test.labels[-10:]])
    )


def test_env_var_is_used(monkeypatch, data_dir):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(data_dir))
    assert len(data.load("mnist", "test[:3]").images) == 3


@pytest.mark.parametrize("bad", ["test[", "test[1:2:3]", "te st[a:]", "test[:150%]"])
def test_bad_split_is_clear(bad):
    with pytest.raises(ValueError, match="split|Split"):
        data.load("digits", bad)


def test_slice_bounds_follow_tfds():
    parts = data.parse_split("train[10%:-5]")
    assert data.slice_indices(parts[0], 1000) == slice(100, 995)
    assert data.slice_indices(data.parse_split("train")[0], 7) == slice(0, 7)


def test_embedded_digits():
    tr, te = data.load("digits", "train"), data.load("digits", "test")
    assert tr.images.shape[1:] == (8, 8, 1) and len(tr.images) + len(te.images) == 1797
    assert tr.images.dtype == np.float32 and tr.images.max() == 1.0 and tr.images.min() == 0.0
    assert set(np.unique(tr.labels)) == set(range(10))
    assert tr.info.source.startswith("embedded:")


def _copy_mnist(src, dst):
    (dst / "mnist").mkdir()
    for f in (src / "mnist").iterdir():
        shutil.copy(f, dst / "mnist" / f.name)
    return dst / "mnist"


def test_truncated_idx_names_the_file(tmp_path, data_dir):
    folder = _copy_mnist(data_dir, tmp_path)
    target = folder / "t10k-images-idx3-ubyte.gz"
    target.write_bytes(target.read_bytes()[: 100_000])
    with pytest.raises(data.CorruptDataError, match="t10k-images-idx3-ubyte.gz"):
        data.load("mnist", "test", data_dir=tmp_path)


def test_idx_with_missing_pixels_is_detected(tmp_path, data_dir):
    folder = _copy_mnist(data_dir, tmp_path)
    target = folder / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(target.read_bytes())
    target.write_bytes(gzip.compress(raw[:-784]))  # valid gzip, one image short
    with pytest.raises(data.CorruptDataError, match="header announces"):
        data.load("mnist", "test", data_dir=tmp_path)


def test_truncated_npz_names_the_file(tmp_path, data_dir):
    (tmp_path / "kmnist").mkdir()
    for f in (data_dir / "kmnist").iterdir():
        shutil.copy(f, tmp_path / "kmnist" / f.name)
    target = tmp_path / "kmnist" / "kmnist-test-imgs.npz"
    target.write_bytes(target.read_bytes()[:5000])
    with pytest.raises(data.CorruptDataError, match="kmnist-test-imgs.npz"):
        data.load("kmnist", "test", data_dir=tmp_path)


def test_missing_directory_lists_where_it_looked(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(data.DataNotFoundError) as e:
        data.load("mnist", "test", data_dir=missing, download=False)
    msg = str(e.value)
    assert str(missing / "mnist") in msg and "tfds" in msg and "digits" in msg


def test_unknown_dataset_is_clear():
    with pytest.raises(data.DataNotFoundError, match="no_such_dataset"):
        data.load("no_such_dataset", "train", download=False)
