"""What every benchmark script reports the same way: the machine, and mean +- 95 % intervals.

Imported as ``from common import ...``: the scripts are run as ``python benchmarks/<name>.py``,
which puts this folder on ``sys.path``.
"""

from __future__ import annotations

import os
import platform

import jax
import numpy as np


def machine_info() -> dict:
    """Platform, processor, core count, JAX version, backend and devices."""
    return {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "jax": jax.__version__, "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
    }


def interval(x) -> dict:
    """Mean and normal-approximation 95 % interval half-width of per-image values; NaNs
    (undefined values) are left out and counted."""
    x = np.asarray(x, np.float64)
    undefined = int(np.isnan(x).sum())
    x = x[~np.isnan(x)]
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else float("nan")
    mean = float(x.mean()) if len(x) else float("nan")
    return {"mean": mean, "ci95": float(half), "n": len(x), "undefined": undefined}
