"""deepvid_jax: explain and diagnose image classifiers by knowledge distillation, in JAX.

``import deepvid_jax as dv`` gives the public API::

    models = dv.Models.load("runs/mnist")                  # teacher, VAE (+ surrogate)
    models = dv.Models(*dv.from_flax(module, variables, image_shape=(32, 32, 3)))  # yours
    ds = dv.load_dataset("mnist", "test[:100]")
    out = dv.explain("deepvid", ds.images, key=jax.random.PRNGKey(0), models=models)
    out.attributions                                       # [B, H, W, C], the teacher's class
    dv.score("auc_zero", ds.images, out.attributions, models=models)  # the teacher's class

Every explainer is in `METHODS` and every metric in `METRICS`, by name; `register` /
`register_metric` add one. The subpackages hold the rest, one folder a family:
`explainers` (one module per method family: `explainers.deepvid` with its neighbours and
students, `lime`, `gradients`, `rise`, `surrogate`), `metrics`, `models` (networks, the VAE,
training, checkpoints, adapters), `data`, `runner` (dataset runs, reports, `deepvid bench`) and
`cli`.
"""

from typing import Any as _Any

from deepvid_jax import metrics as _metrics
from deepvid_jax.data import Dataset, open_source
from deepvid_jax.data import load as load_dataset
from deepvid_jax.driver import instance_keys, map_instances
from deepvid_jax.explainers import (
    METHODS,
    Attribution,
    AttributionConfig,
    ExplainConfig,
    LimeConfig,
    Method,
    NeighborConfig,
    RiseConfig,
    StudentConfig,
    explain,
    get,
    register,
)
from deepvid_jax.explainers.deepvid import Explanation
from deepvid_jax.metrics import (
    METRICS,
    DeletionConfig,
    LocalisationConfig,
    Metric,
    RandomisationConfig,
    SeedConfig,
    SensitivityConfig,
    score,
)
from deepvid_jax.metrics import get as get_metric
from deepvid_jax.metrics import register as register_metric
from deepvid_jax.models import (
    Models,
    Teacher,
    callback_teacher,
    ensemble,
    from_callback,
    from_equinox,
    from_flax,
    from_keras,
    from_nnx,
    load_teacher,
)


def score_explainer(name: str, method: str | Method, images, classes=None, key=None,
                    **options: _Any) -> dict:
    """The explainer metric ``name`` ("max_sensitivity", "seed_agreement", "randomisation") of
    the explainer ``method``, given by name or as a registered `Method`: `metrics.score_explainer`
    with the name looked up in `METHODS` (metrics sit below explainers, so they take the
    object). ``options``: ``models``, ``config``, ``method_config``, ``reference``,
    ``chunk_size``, ``progress``, as there."""
    return _metrics.score_explainer(name, get(method) if isinstance(method, str) else method,
                                    images, classes, key, **options)


__version__ = "0.3.0"

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
    "LocalisationConfig",
    "Method",
    "Metric",
    "Models",
    "NeighborConfig",
    "RandomisationConfig",
    "RiseConfig",
    "SeedConfig",
    "SensitivityConfig",
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
    "score_explainer",
]
