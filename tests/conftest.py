"""Shared fixtures. Tests never download: DEEPVID_OFFLINE is forced on."""

import os
from pathlib import Path

import pytest

os.environ["DEEPVID_OFFLINE"] = "1"

from deepvid_jax import data, train  # noqa: E402
from deepvid_jax.models import TeacherConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# The tiny teacher the explain, evaluation and consistency tests share (8x8 embedded digits).
TINY_TEACHER = TeacherConfig(features=(8, 16), hidden=32, image_shape=(8, 8, 1))
TINY_TRAIN = train.TrainConfig(epochs=10, batch_size=64, learning_rate=3e-3)


def shared_data_dir() -> Path | None:
    """$DEEPVID_DATA_DIR (set by .ci/run), else ../shared/data beside the repo, else None."""
    for candidate in (os.environ.get("DEEPVID_DATA_DIR"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "mnist" / "t10k-images-idx3-ubyte.gz").is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = shared_data_dir()
    if d is None:
        pytest.skip("real MNIST/KMNIST files not found (set DEEPVID_DATA_DIR)")
    return d


@pytest.fixture(scope="session")
def tiny_teacher() -> dict:
    """`TINY_TEACHER` parameters briefly trained (`TINY_TRAIN`) on the embedded digits: trained
    models make well-posed explanations (untrained ones give near-flat teachers)."""
    tr, te = data.load("digits", "train"), data.load("digits", "test")
    params, _ = train.train_teacher((tr.images, tr.labels), (te.images, te.labels), TINY_TEACHER,
                                    TINY_TRAIN, progress=False)
    return params
