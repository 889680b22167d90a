"""Every metric behind one contract, by name: `METRICS`, `get`, `register`, `score`.

`fidelity` (deletion / insertion, average drop and increase, the student's fidelity), `stability`
and randomisation live in `fidelity` for now; `localisation` (relevance mass and rank, pointing
game) and `groundtruth` (hidden regions, masked teachers) measure where relevance lands.
"""

from deepvid_jax.metrics.registry import METRICS, DeletionConfig, Metric, get, register, score

__all__ = ["METRICS", "DeletionConfig", "Metric", "get", "register", "score"]
