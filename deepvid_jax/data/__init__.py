"""Datasets: `load` (arrays) and `open_source` (streamed) from TFDS, the shared raw files, the
embedded digits, image folders and the synthetic shapes (`synthetic`)."""

from deepvid_jax.data.sources import Dataset, DatasetInfo, Source, load, open_source

__all__ = ["Dataset", "DatasetInfo", "Source", "load", "open_source"]
