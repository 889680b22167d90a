"""The models explainers read and how they are made: `Models` (the one bundle), the networks
(`networks`: teacher, VAE, attentive surrogate), `vae`, `train`, `adversarial`, `consistency`,
`checkpoint` and `adapters` (your own classifier from Flax, NNX, Keras, Equinox or a callback)."""

from deepvid_jax.models.adapters import (
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
from deepvid_jax.models.bundle import Models
from deepvid_jax.models.networks import ExplainerConfig, SurrogateConfig, TeacherConfig, VAEConfig

__all__ = [
    "ExplainerConfig",
    "Models",
    "SurrogateConfig",
    "Teacher",
    "TeacherConfig",
    "VAEConfig",
    "callback_teacher",
    "ensemble",
    "from_callback",
    "from_equinox",
    "from_flax",
    "from_keras",
    "from_nnx",
    "load_teacher",
]
