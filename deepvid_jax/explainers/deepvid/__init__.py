"""DeepVID (Wang et al., IEEE TVCG 2019): VAE neighbours around an image's latent code, labelled
by the teacher, distilled into a linear student whose weight images are the explanation.

- `core`: the explanation of one image and of a batch (`explain_batch`), its config (whose
  default is DeepVID's) and presets (`FAST`, `FIXED_RADIUS`, `FIXED_SMOOTH`: the former
  default), and the registered explainer function `deepvid_attribution`;
- `neighbors`: where neighbours come from (VAE latent bands, pixel noise, masks);
- `radius`: the calibrated radius of the VAE neighbours (the probes and their search);
- `student`: the linear students (exact ridge, the sparse lasso, the KD student);
- `lasso`: the sparse student's solver (FISTA and its options).
"""

from deepvid_jax.explainers.deepvid.core import (
    FAST,
    FIXED_RADIUS,
    FIXED_SMOOTH,
    ExplainConfig,
    Explanation,
    deepvid_attribution,
    explain_batch,
    explain_images,
    explain_instance,
)
from deepvid_jax.explainers.deepvid.neighbors import NeighborConfig, sample_neighbors
from deepvid_jax.explainers.deepvid.student import (
    StudentConfig,
    fit_student,
    fit_student_selected,
)

__all__ = [
    "FAST",
    "FIXED_RADIUS",
    "FIXED_SMOOTH",
    "ExplainConfig",
    "Explanation",
    "NeighborConfig",
    "StudentConfig",
    "deepvid_attribution",
    "explain_batch",
    "explain_images",
    "explain_instance",
    "fit_student",
    "fit_student_selected",
    "sample_neighbors",
]
