"""DeepVID (Wang et al., IEEE TVCG 2019): VAE neighbours around an image's latent code, labelled
by the teacher, distilled into a linear student whose weight images are the explanation.

- `core`: the explanation of one image and of a batch (`explain_batch`), its config and presets;
- `neighbors`: where neighbours come from (VAE latent bands, pixel noise, masks);
- `student`: the linear students (exact ridge, the sparse lasso, the KD student).
"""

from deepvid_jax.explainers.deepvid.core import (
    FAST,
    ExplainConfig,
    Explanation,
    callback_teacher,
    explain_batch,
    explain_instance,
)
from deepvid_jax.explainers.deepvid.neighbors import NeighborConfig, sample_neighbors
from deepvid_jax.explainers.deepvid.student import StudentConfig, fit_student

__all__ = [
    "FAST",
    "ExplainConfig",
    "Explanation",
    "NeighborConfig",
    "StudentConfig",
    "callback_teacher",
    "explain_batch",
    "explain_instance",
    "fit_student",
    "sample_neighbors",
]
