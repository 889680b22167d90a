"""Quieting dependencies: orbax and TFDS log their own warnings and tracebacks (through absl)
on paths where the library raises one clear error of its own."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

DEPENDENCY_LOGGERS = ("absl", "orbax", "orbax.checkpoint", "tensorflow_datasets")


@contextlib.contextmanager
def quiet(*names: str) -> Iterator[None]:
    """Silences the named loggers (default: `DEPENDENCY_LOGGERS`) and Python warnings inside
    the block, restoring their levels after it."""
    loggers = [logging.getLogger(n) for n in (names or DEPENDENCY_LOGGERS)]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
