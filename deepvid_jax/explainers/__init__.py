"""Every explainer behind one contract, by name: `METHODS`, `get`, `register`, `explain`.

One module per method family: `deepvid` (its neighbours and students), `lime`, `gradients`
(gradient, gradient x input, integrated gradients, SmoothGrad, Grad-CAM), `rise`, `surrogate`
(the attentive surrogate). `base` holds the contract every explainer function answers
(``fn(params, images, classes, keys, *, models, config) -> Attribution``); each family module
defines its own public, validated function(s) of that contract, and `registry` registers
exactly those, by name, beside the entry point `explain`.
"""

from deepvid_jax.explainers.deepvid import ExplainConfig, NeighborConfig, StudentConfig
from deepvid_jax.explainers.gradients import AttributionConfig
from deepvid_jax.explainers.lime import LimeConfig
from deepvid_jax.explainers.registry import (
    METHODS,
    Attribution,
    Method,
    explain,
    get,
    register,
    with_samples,
)
from deepvid_jax.explainers.rise import RiseConfig

__all__ = [
    "METHODS",
    "Attribution",
    "AttributionConfig",
    "ExplainConfig",
    "LimeConfig",
    "Method",
    "NeighborConfig",
    "RiseConfig",
    "StudentConfig",
    "explain",
    "get",
    "register",
    "with_samples",
]
