"""Every metric of attributions behind one interface, by name (the metrics' `explainers`).

A `Metric` is one pure batched function

    fn(params, images [B, H, W, C], attributions [B, H, W, C], classes [B], keys [B], *,
       models, config) -> {output name: [B, ...]}

registered in `METRICS` with its default config and, per scalar output, whether lower or higher
is better. `score` runs one over any number of images through the one driver
(`driver.map_instances`). `benchmarks/evaluate.py` loops over this registry: a metric added here
gets its columns in the evaluation's tables without an edit there.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from deepvid_jax import validate
from deepvid_jax.driver import map_instances
from deepvid_jax.metrics import fidelity as metrics
from deepvid_jax.models.bundle import Models


@dataclasses.dataclass(frozen=True)
class DeletionConfig:
    """Deletion / insertion curves (`metrics.deletion_insertion`): ``steps`` points after the
    first, pixels replaced by the ``baseline`` image ("zero", "blur", "mean"). Tied pixels go
    in a random order per image (from the image's key), averaged over ``tie_orders`` orders:
    in raster order 38 % of an MNIST Grad-CAM map ties at zero and its top rows would go
    first, moving one image's deletion area by up to 0.11."""

    steps: int = 49
    baseline: str = "zero"
    blur_sigma: float = 2.0
    tie_orders: int = 1

    def __post_init__(self):
        validate.fields(self, positive_int=("steps", "tie_orders"))
        validate.choice(self.baseline, metrics.BASELINES, "DeletionConfig.baseline")
        validate.number(self.blur_sigma, "DeletionConfig.blur_sigma", low=0.0, low_open=True)


@dataclasses.dataclass(frozen=True)
class Metric:
    """One registered metric.

    Attributes:
      name: its registry name.
      fn: the batched function (module docstring), unjitted; `batch` is its jitted form.
      config: the default config (a frozen dataclass, or None).
      better: scalar output name -> "lower" or "higher"; outputs not named here (curves) are
        kept but not tabulated.
      label: a short qualifier for table headers (e.g. the baseline).
    """

    name: str
    fn: Callable[..., dict]
    config: Any
    better: dict[str, str]
    label: str = ""

    @functools.cached_property
    def batch(self) -> Callable[..., dict]:
        return jax.jit(self.fn, static_argnames=("models", "config"))

    def __hash__(self):
        return hash(self.name)


METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Adds ``metric`` to `METRICS` (a name may be registered once)."""
    if metric.name in METRICS:
        raise ValueError(f"a metric named {metric.name!r} is already registered.")
    for v in metric.better.values():
        validate.choice(v, ("lower", "higher"), f"Metric {metric.name!r} better")
    METRICS[metric.name] = metric
    return metric


def get(name: str) -> Metric:
    """The registered metric called ``name``; a clear error listing the others."""
    validate.choice(name, tuple(METRICS), "metric")
    return METRICS[name]


def _deletion(params, images, attributions, classes, keys, *, models: Models,
              config: DeletionConfig) -> dict:
    r = metrics._deletion_insertion(images, attributions, classes,
                                    teacher_apply=models.teacher_apply,
                                    teacher_params=params["teacher"], steps=config.steps,
                                    baseline=config.baseline, blur_sigma=config.blur_sigma,
                                    keys=keys, tie_orders=config.tie_orders)
    return r._asdict()


def _average_drop(params, images, attributions, classes, keys, *, models: Models,
                  config: None) -> dict:
    drop, increase = metrics._average_drop_increase(
        images, jnp.sum(attributions, axis=-1), classes, teacher_apply=models.teacher_apply,
        teacher_params=params["teacher"])
    return {"average_drop": drop, "increase": increase}


for _b in metrics.BASELINES:
    register(Metric(f"auc_{_b}", _deletion, DeletionConfig(baseline=_b),
                    {"deletion": "lower", "insertion": "higher"}, label=_b))
register(Metric("average_drop", _average_drop, None,
                {"average_drop": "lower", "increase": "higher"}))


def score(
    name: str,
    images,
    attributions,
    classes,
    *,
    models: Models,
    config: Any = None,
    key: jax.Array | None = None,
    chunk_size: int = 64,
) -> dict[str, np.ndarray]:
    """The metric called ``name`` of attributions [B, H, W, C] of images [B, H, W, C] for
    classes [B]: output name -> numpy [B, ...]."""
    m = get(name)
    config = m.config if config is None else config
    if m.config is not None:
        validate.config(config, type(m.config), f"config of metric {name!r}")
    validate.config(models, Models, "models")
    arr = validate.images(images)
    validate.teacher(models.teacher_apply, models.teacher_params, arr,
                     num_classes=models.num_classes)
    attr = validate.array(attributions, "attributions", shape=arr.shape)
    cls = validate.class_indices(classes, batch=len(arr), num_classes=models.num_classes)
    static = models.static()

    def fn(params, inputs, keys):
        return m.batch(params, *inputs, keys, models=static, config=config)

    return map_instances(fn, models.params(), (arr, np.asarray(attr, np.float32),
                                               np.asarray(cls, np.int32)),
                         jax.random.PRNGKey(0) if key is None else key, chunk_size=chunk_size,
                         desc=name)
