"""Shared fixtures. Tests never download: DEEPVID_OFFLINE is forced on."""

import os
from pathlib import Path

import pytest

os.environ["DEEPVID_OFFLINE"] = "1"

REPO = Path(__file__).resolve().parents[1]


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
