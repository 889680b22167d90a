"""`Models`: the one bundle of trained models that explainers, metrics, the dataset runner,
`deepvid bench` and the benchmarks read."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax

from deepvid_jax import validate
from deepvid_jax.models import checkpoint, networks
from deepvid_jax.models.networks import (
    ExplainerConfig,
    SurrogateConfig,
    TeacherApply,
    TeacherConfig,
    VAEConfig,
)


@dataclasses.dataclass(frozen=True)
class Models:
    """What explainers read: the teacher and, for the methods that need them, the VAE
    (DeepVID), the teacher's `TeacherConfig` (Grad-CAM) and the attentive surrogate.

    Attributes:
      teacher_apply: pure ``(params, images) -> logits [N, K]``.
      teacher_params: its parameters.
      num_classes: K.
      teacher_config: the `models.Teacher` config when the teacher is ours (Grad-CAM).
      vae_params, vae_config: the VAE of DeepVID's neighbours.
      surrogate_params, surrogate_config, explainer_params, explainer_config: the attentive
        surrogate and its explainer network (`surrogate.train_surrogate` / `train_explainer`).
      teacher_name: which model a user's teacher is (e.g. ``"my_pkg.models:classifier"``);
        None for ours, which its config and parameters identify.
    """

    teacher_apply: TeacherApply
    teacher_params: Any
    num_classes: int
    teacher_config: TeacherConfig | None = None
    vae_params: Any = None
    vae_config: VAEConfig | None = None
    surrogate_params: Any = None
    surrogate_config: SurrogateConfig | None = None
    explainer_params: Any = None
    explainer_config: ExplainerConfig | None = None
    teacher_name: str | None = None

    def __post_init__(self):
        validate.integer(self.num_classes, "Models.num_classes", minimum=2)
        if not callable(self.teacher_apply):
            raise ValueError("Models.teacher_apply must be a function (params, images) -> "
                             "logits.")

    @classmethod
    def ours(cls, teacher_params: Any, teacher_config: TeacherConfig, **parts: Any) -> Models:
        """Our `models.Teacher` of ``teacher_config`` with its parameters (Grad-CAM can read
        its conv maps); ``parts``: the other fields (``vae_params=..., vae_config=...``)."""
        validate.config(teacher_config, TeacherConfig, "teacher_config")
        return cls(networks.teacher_apply_for(teacher_config), teacher_params,
                   teacher_config.num_classes, teacher_config=teacher_config, **parts)

    @classmethod
    def untrained(cls, image_shape: tuple[int, int, int], num_classes: int, *,
                  key: jax.Array | None = None) -> Models:
        """Freshly initialised models for images of ``image_shape`` (H, W, C) and
        ``num_classes`` classes: our teacher (`networks.teacher_config_for`), the VAE
        (`networks.vae_config_for`) and an attentive surrogate of the default size with its
        explanation network, each from its own split of ``key`` (default PRNGKey(0)). What
        speed measurements and tests use: time does not depend on the weights."""
        validate.integer(num_classes, "num_classes", minimum=2)
        shape = validate.image_shape(image_shape, "image_shape")
        key = jax.random.PRNGKey(0) if key is None else key
        k_teacher, k_vae, k_surrogate, k_explainer = jax.random.split(key, 4)
        tcfg = networks.teacher_config_for(shape, num_classes)
        vcfg = networks.vae_config_for(shape)
        scfg = SurrogateConfig(num_classes=num_classes, image_shape=shape)
        ecfg = ExplainerConfig(num_classes=num_classes, num_stages=len(scfg.features),
                               image_shape=shape)
        return cls.ours(networks.init_teacher(k_teacher, tcfg), tcfg,
                        vae_params=networks.init_vae(k_vae, vcfg), vae_config=vcfg,
                        surrogate_params=networks.init_surrogate(k_surrogate, scfg),
                        surrogate_config=scfg,
                        explainer_params=networks.init_explainer(k_explainer, ecfg),
                        explainer_config=ecfg)

    @classmethod
    def load(cls, folder: str | Path | None, teacher: tuple | None = None,
             teacher_name: str | None = None) -> Models:
        """Restores ``folder/{teacher,vae,surrogate,explainer}`` (the CLI's layout); the teacher
        is required, the others are loaded when present. With ``teacher`` (``(apply, params,
        num_classes)``, e.g. an `adapters.Teacher`), that is the teacher and ``folder`` (may be
        None) only provides the rest; ``teacher_name`` says which model it is (recorded by the
        dataset runner, e.g. the ``--teacher`` spec)."""
        folder = None if folder is None else Path(folder)
        parts: dict[str, Any] = {}
        for kind in ("vae", "surrogate", "explainer"):
            if folder is not None and (folder / kind).exists():
                params, config, _ = checkpoint.restore(folder / kind, kind=kind)
                parts.update({f"{kind}_params": params, f"{kind}_config": config})
        if teacher is not None:
            apply, params, k = teacher
            return cls(apply, params, k, teacher_name=teacher_name, **parts)
        if folder is None:
            raise ValueError("Models.load needs a checkpoint folder or a teacher.")
        tp, tcfg, _ = checkpoint.restore(folder / "teacher", kind="teacher")
        return cls.ours(tp, tcfg, **parts)

    @property
    def black_box(self) -> bool:
        """Whether the teacher is a host callback (`adapters.callback_teacher`): no gradients."""
        return hasattr(self.teacher_apply, "host_call")

    def params(self) -> dict:
        """The arrays (traced by jit): teacher, vae, surrogate, explainer."""
        return {"teacher": self.teacher_params, "vae": self.vae_params,
                "surrogate": self.surrogate_params, "explainer": self.explainer_params}

    def static(self) -> Models:
        """This, without the arrays: hashable, a static argument of jit."""
        return dataclasses.replace(self, teacher_params=None, vae_params=None,
                                   surrogate_params=None, explainer_params=None)

    def __hash__(self):  # only static() copies are hashed (arrays are not hashable)
        return hash((self.teacher_apply, self.num_classes, self.teacher_config,
                     self.vae_config, self.surrogate_config, self.explainer_config,
                     self.teacher_name))
