"""The TFDS source, offline: TFDS's own mocks (`tfds.testing.mock_data`) for a grayscale and a
colour dataset, and a real array_record dataset prepared here from a tiny builder (no network),
read by index ranges."""

from __future__ import annotations

import numpy as np
import pytest

from deepvid_jax.data import sources as data

tfds = pytest.importorskip("tensorflow_datasets")
tfds_mocking = pytest.importorskip("tensorflow_datasets.testing.mocking")


class DeepvidTinyColour(tfds.core.GeneratorBasedBuilder):
    """Seven 8x8 RGB test images and twenty train images of three classes. `Tensor`, not `Image`:
    encoding PNGs while preparing needs TensorFlow, which we do not install."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(8, 8, 3), dtype=np.uint8),
                "label": tfds.features.ClassLabel(names=["red", "green", "blue"]),
            }),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples(0, 20), "test": self._generate_examples(1, 7)}

    def _generate_examples(self, seed, n):
        rng = np.random.default_rng(seed)
        for i in range(n):
            yield i, {"image": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "label": i % 3}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A data folder holding the tiny dataset as TFDS prepares it (array_record)."""
    root = tmp_path_factory.mktemp("tfds")
    builder = DeepvidTinyColour(data_dir=str(root))
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(verify_ssl=False))
    return root


def _mock_getitems(*args, generator, serialized=False):
    """TFDS 4.9's mock data source sets ``__getitems__`` to a partial of a function of (self,
    keys), but MagicMock binds ``self`` only for the magic methods it knows, so batched reads of
    the mock fail; the same records, one by one."""
    assert not serialized
    return [generator[key] for key in args[-1]]


@pytest.mark.parametrize("name, shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_mocked_tfds_datasets_load_with_their_shapes_and_classes(name, shape, tmp_path,
                                                                  monkeypatch):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(tfds_mocking, "_getitems", _mock_getitems)
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = data.load(name, "test", data_dir=tmp_path, download=True)
        source = data.open_source(name, "test", data_dir=tmp_path, download=True)
        assert isinstance(source, data.TfdsSource)
        chunk, labels = source.read(3, 7)
        names = tuple(tfds.builder(name).info.features["label"].names)
    assert ds.images.shape == (12, *shape) and ds.images.dtype == np.float32
    assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0 and ds.images.std() > 0.1
    assert ds.labels.dtype == np.int32 and ds.labels.min() >= 0 and ds.labels.max() < 10
    assert ds.info.image_shape == shape and ds.info.source.startswith("tfds:")
    assert ds.info.class_names == names and ds.info.num_classes == 10
    np.testing.assert_array_equal(chunk, ds.images[3:7])
    np.testing.assert_array_equal(labels, ds.labels[3:7])


def test_a_prepared_array_record_split_is_read_by_slices(prepared):
    whole = data.load("deepvid_tiny_colour", "train", data_dir=prepared, download=False)
    part = data.open_source("deepvid_tiny_colour", "train[2:9]+test[:2]", data_dir=prepared,
                            download=False)
    test = data.load("deepvid_tiny_colour", "test", data_dir=prepared, download=False)
    assert whole.images.shape == (20, 8, 8, 3) and test.images.shape == (7, 8, 8, 3)
    assert whole.info.class_names == ("red", "green", "blue")
    assert part.info.source == f"tfds:{prepared / 'deepvid_tiny_colour' / '1.0.0'}"
    assert len(part) == 9
    x, y = part.read(0, 9)
    np.testing.assert_array_equal(x[:7], whole.images[2:9])
    np.testing.assert_array_equal(x[7:], test.images[:2])
    np.testing.assert_array_equal(y, np.concatenate([whole.labels[2:9], test.labels[:2]]))
    # The stored bytes: uint8 scaled by 1/255, exactly.
    np.testing.assert_array_equal(np.round(x * 255), np.round(x * 255).astype(np.uint8))


def test_fingerprint_streams_to_the_digest_of_the_whole_split(prepared):
    source = data.open_source("deepvid_tiny_colour", "train", data_dir=prepared, download=False)
    stored = source._stored(0, len(source))
    assert source.fingerprint(chunk=3) == data.array_digest(stored)
    assert source.fingerprint(chunk=3) == source.fingerprint(chunk=64)
    other = data.open_source("deepvid_tiny_colour", "train[1:]", data_dir=prepared,
                             download=False)
    assert other.fingerprint() != source.fingerprint()
    arrays = data.open_source("digits", "test[:50]")
    assert arrays.fingerprint(chunk=7) == data.array_digest(arrays._stored(0, 50))


class _CountingRecords:
    """A data source that records which indices were decoded."""

    def __init__(self, images, labels):
        self.images, self.labels, self.asked = images, labels, []

    def __len__(self):
        return len(self.images)

    def __getitems__(self, indices):
        self.asked.extend(indices)
        return [{"image": self.images[i], "label": self.labels[i]} for i in indices]


def test_a_chunk_decodes_only_its_records():
    rng = np.random.default_rng(0)
    records = _CountingRecords(rng.integers(0, 256, (50, 5, 5, 3), dtype=np.uint8),
                               rng.integers(0, 4, 50))
    source = data.TfdsSource(records, "image", "label", "toy", "train", "test", ("a", "b", "c",
                                                                               "d"))
    records.asked.clear()
    x, y = source.read(10, 14)
    assert records.asked == [10, 11, 12, 13]
    np.testing.assert_array_equal(x, records.images[10:14] / np.float32(255))
    np.testing.assert_array_equal(y, records.labels[10:14])


def test_mixed_image_sizes_are_a_clear_error():
    images = [np.zeros((5, 5, 3), np.uint8)] * 3 + [np.zeros((6, 5, 3), np.uint8)]
    source = data.TfdsSource(_CountingRecords(images, [0, 1, 0, 1]), "image", "label", "toy",
                             "train", "test", ("a", "b"))
    source.read(0, 3)
    with pytest.raises(data.CorruptDataError, match="different sizes|resize"):
        source.read(0, 4)


def test_without_class_names_the_labels_say_how_many_classes():
    records = _CountingRecords(np.zeros((6, 2, 2), np.uint8), [0, 4, 1, 2, 0, 1])
    source = data.TfdsSource(records, "image", "label", "toy", "train", "test")
    assert source.info.num_classes == 5 and source.info.image_shape == (2, 2, 1)


def test_an_empty_tfds_split_is_clear():
    with pytest.raises(ValueError, match="selects no images"):
        data.TfdsSource(_CountingRecords([], []), "image", "label", "toy", "train[5:5]", "test")
