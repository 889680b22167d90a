"""deepvid_jax: explain and diagnose image classifiers by knowledge distillation, in JAX.

``import deepvid_jax as dv`` gives the public API::

    models = dv.Models.load("runs/mnist")                  # teacher, VAE (+ surrogate)
    models = dv.Models(*dv.from_flax(module, variables, image_shape=(32, 32, 3)))  # yours
    ds = dv.load_dataset("mnist", "test[:100]")
    out = dv.explain("deepvid", ds.images, key=jax.random.PRNGKey(0), models=models)
    out.attributions                                       # [B, H, W, C], the teacher's class
    dv.score("auc_zero", ds.images, out.attributions, classes, models=models)

Every explainer is in `METHODS` and every metric in `METRICS`, by name; `register` /
`register_metric` add one. The subpackages hold the rest, one folder a family:
`explainers` (one module per method family: `explainers.deepvid` with its neighbours and
students, `lime`, `gradients`, `rise`, `surrogate`), `metrics`, `models` (networks, the VAE,
training, checkpoints, adapters), `data`, `runner` (dataset runs, reports, `deepvid bench`) and
`cli`.
"""

from deepvid_jax.data.sources import Dataset, open_source
from deepvid_jax.data.sources import load as load_dataset
from deepvid_jax.driver import instance_keys, map_instances
from deepvid_jax.explainers.deepvid.core import ExplainConfig, Explanation, callback_teacher
from deepvid_jax.explainers.deepvid.neighbors import NeighborConfig
from deepvid_jax.explainers.deepvid.student import StudentConfig
from deepvid_jax.explainers.gradients import AttributionConfig
from deepvid_jax.explainers.lime import LimeConfig
from deepvid_jax.explainers.registry import (
    METHODS,
    Attribution,
    Method,
    Models,
    explain,
    get,
    register,
)
from deepvid_jax.explainers.rise import RiseConfig
from deepvid_jax.metrics.registry import METRICS, DeletionConfig, Metric, score
from deepvid_jax.metrics.registry import get as get_metric
from deepvid_jax.metrics.registry import register as register_metric
from deepvid_jax.models.adapters import (
    Teacher,
    ensemble,
    from_callback,
    from_equinox,
    from_flax,
    from_keras,
    from_nnx,
    load_teacher,
)

__version__ = "0.2.0"

__all__ = [
    "METHODS",
    "METRICS",
    "Attribution",
    "AttributionConfig",
    "Dataset",
    "DeletionConfig",
    "ExplainConfig",
    "Explanation",
    "LimeConfig",
    "Method",
    "Metric",
    "Models",
    "NeighborConfig",
    "RiseConfig",
    "StudentConfig",
    "Teacher",
    "__version__",
    "callback_teacher",
    "ensemble",
    "explain",
    "from_callback",
    "from_equinox",
    "from_flax",
    "from_keras",
    "from_nnx",
    "get",
    "get_metric",
    "instance_keys",
    "load_dataset",
    "load_teacher",
    "map_instances",
    "open_source",
    "register",
    "register_metric",
    "score",
]
