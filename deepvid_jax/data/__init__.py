"""Datasets: `load` (arrays) and `open_source` (streamed) from TFDS, the shared raw files, the
embedded digits, image folders and the synthetic shapes (`synthetic`).

Modules: `catalogue` (the datasets known by name, their splits and original files, the split
syntax), `base` (`Source`, what every source shares), `folder` (image folders and how an image
file is decoded: `decode_image`), `sources` (TFDS, generated and resized sources; `load`,
`open_source`).
"""

from deepvid_jax.data.base import Source, array_digest
from deepvid_jax.data.catalogue import (
    CorruptDataError,
    DataNotFoundError,
    Dataset,
    DatasetInfo,
    parse_split,
)
from deepvid_jax.data.folder import ImageFolderSource, decode_image
from deepvid_jax.data.sources import load, open_source

__all__ = [
    "CorruptDataError", "DataNotFoundError", "Dataset", "DatasetInfo", "ImageFolderSource",
    "Source", "array_digest", "decode_image", "load", "open_source", "parse_split",
]
