"""Every metric behind one contract, by name: `METRICS`, `get`, `register`, `score`,
`score_explainer`.

One module an idea: `fidelity` (deletion / insertion, average drop and increase, the student's
fidelity to the teacher), `stability` (max-sensitivity, seed agreement, per-instance
correlations), `randomisation` (cascading model-parameter randomisation), `localisation`
(relevance mass and rank, pointing game) and `groundtruth` (hidden regions, masked teachers);
`registry` puts them behind one interface in three kinds (metrics of explanations, of
localisation, of an explainer).
"""

from deepvid_jax.metrics.registry import (
    KINDS,
    METRICS,
    DeletionConfig,
    LocalisationConfig,
    Metric,
    RandomisationConfig,
    SeedConfig,
    SensitivityConfig,
    get,
    register,
    score,
    score_explainer,
)

__all__ = ["KINDS", "METRICS", "DeletionConfig", "LocalisationConfig", "Metric",
           "RandomisationConfig", "SeedConfig", "SensitivityConfig", "get", "register", "score",
           "score_explainer"]
