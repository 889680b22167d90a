"""Every explainer of the library behind one interface, reachable by name.

A `Method` is one pure batched function

    fn(params, images [B, H, W, C], classes [B], keys [B], *, models, config) -> Attribution

(``params``: the pytree of `Models.params`; ``models``: the static rest of `Models`; ``config``:
the method's frozen config dataclass), registered in `METHODS` with its default config. The
attribution is for the requested class, ``[B, H, W, C]`` whatever the method (per-pixel maps are
repeated over channels); each method adds its own extras (DeepVID's weight image of every class
and its fidelity, LIME's held-out fit, ...), all with a leading axis B.

`explain` runs any method over any number of images through the one driver
(`driver.map_instances`): instance ``i`` gets ``fold_in(key, i)``, so results equal a loop over
instances, whatever the chunk size. A new method plugs into the CLI, the dataset runner, the
benchmarks and the invariance tests by `register`.

The functions registered here are the method modules' own public explainer functions (the
contract of `explainers.base`); variants of a method are the same function with another
config ("noise", "mask", "deepvid_fast" are DeepVID's), and `with_samples` sets any sampled
method's sample count.
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
from deepvid_jax.explainers import gradients, lime, rise, surrogate
from deepvid_jax.explainers.base import Attribution, jitted
from deepvid_jax.explainers.deepvid import core as deepvid
from deepvid_jax.explainers.deepvid.neighbors import NeighborConfig
from deepvid_jax.explainers.deepvid.student import StudentConfig
from deepvid_jax.models.bundle import Models

NEEDS = ("vae", "gradients", "teacher_config", "surrogate")


@dataclasses.dataclass(frozen=True)
class Method:
    """One registered explainer.

    Attributes:
      name: its registry name.
      fn: ``fn(params, images, classes, keys, *, models, config) -> Attribution``, pure and
        batched (unjitted; `batch` is its jitted form).
      config: the default config (a frozen dataclass; None when the method has none).
      needs: what it needs beyond the teacher, from `NEEDS`.
      stochastic: whether its result depends on the key.
      description: one line for listings.
    """

    name: str
    fn: Callable[..., Attribution]
    config: Any
    needs: tuple[str, ...] = ()
    stochastic: bool = True
    description: str = ""

    def __post_init__(self):
        for n in self.needs:
            validate.choice(n, NEEDS, f"Method {self.name!r} needs")

    @property
    def batch(self) -> Callable[..., Attribution]:
        """``fn`` jitted (``models`` and ``config`` static; one wrapper per function, shared
        by the methods that register it with other configs)."""
        return jitted(self.fn)

    @property
    def sampled(self) -> bool:
        """Whether its config has a sample count (neighbours, perturbations, masks) that
        `with_samples` sets."""
        return hasattr(self.config, "with_samples")

    def check(self, models: Models, config: Any) -> None:
        """A clear error when ``models`` lack what this method needs, or ``config`` is not of
        the method's config type."""
        if self.config is not None:
            validate.config(config, type(self.config), f"config of {self.name!r}")
        missing = {
            "vae": models.vae_params is None or models.vae_config is None,
            "teacher_config": models.teacher_config is None,
            "surrogate": models.surrogate_params is None or models.explainer_params is None,
            "gradients": models.black_box,
        }
        for need in self.needs:
            if missing[need]:
                raise ValueError(f"{self.name!r} {_WHY[need]}")


_WHY = {
    "vae": "needs a VAE: Models(vae_params=..., vae_config=...) (deepvid train-vae).",
    "teacher_config": "reads the teacher's conv maps: it needs Models(teacher_config=...) of "
                      "a models.Teacher.",
    "surrogate": "needs the attentive surrogate and its explainer network "
                 "(deepvid train-surrogate).",
    "gradients": "needs gradients through the teacher, and a callback_teacher black box has "
                 "none: use a sampling method (deepvid, noise, mask, lime, rise).",
}

METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Adds ``method`` to `METHODS` (a name may be registered once)."""
    if method.name in METHODS:
        raise ValueError(f"an explainer named {method.name!r} is already registered.")
    METHODS[method.name] = method
    return method


def get(name: str) -> Method:
    """The registered method called ``name``; a clear error listing the others."""
    validate.choice(name, tuple(METHODS), "explainer")
    return METHODS[name]


def with_samples(config: Any, num: int) -> Any:
    """A sampled method's config with ``num`` samples (DeepVID's neighbours, LIME's perturbed
    images, RISE's masks), its held-out share kept: ``config.with_samples(num)``."""
    if not hasattr(config, "with_samples"):
        raise ValueError(f"a {type(config).__name__} has no sample count to set.")
    return config.with_samples(num)


# --------------------------------------------------------------------------------------------
# The methods: each module's explainer function, registered as it is
# --------------------------------------------------------------------------------------------

_STUDENT = "a linear student distilled from the teacher on "
register(Method("deepvid", deepvid.deepvid_attribution, deepvid.ExplainConfig(), ("vae",),
                description=_STUDENT + "VAE neighbours (DeepVID)"))
# The random-perturbation baselines fit `deepvid_fast`'s ridge student (`StudentConfig()`):
# only their neighbours differ from it (docs/methods/deepvid.md).
register(Method("noise", deepvid.deepvid_attribution,
                deepvid.ExplainConfig(neighbors=NeighborConfig(sampler="pixel"),
                                      student=StudentConfig(), holdout=128),
                description=_STUDENT + "Gaussian-noise neighbours"))
register(Method("mask", deepvid.deepvid_attribution,
                deepvid.ExplainConfig(neighbors=NeighborConfig(sampler="mask"),
                                      student=StudentConfig(), holdout=128),
                description=_STUDENT + "random-mask neighbours"))
register(Method("deepvid_fast", deepvid.deepvid_attribution, deepvid.FAST, ("vae",),
                description="DeepVID's fastest preset: ridge over 512 plain VAE neighbours"))
register(Method("deepvid_fixed_radius", deepvid.deepvid_attribution, deepvid.FIXED_RADIUS,
                ("vae",), description="deepvid_fast at a fixed latent radius"))
register(Method("lime", lime.lime_attribution, lime.LimeConfig(),
                description="LIME on a grid of patches, batched"))
_GRAD = gradients.AttributionConfig()
register(Method("gradient", gradients.gradient_attribution, _GRAD, ("gradients",),
                stochastic=False, description="gradient"))
register(Method("grad_x_input", gradients.grad_x_input_attribution, _GRAD, ("gradients",),
                stochastic=False, description="grad x input"))
register(Method("integrated_gradients", gradients.integrated_gradients_attribution, _GRAD,
                ("gradients",), stochastic=False, description="integrated gradients"))
register(Method("smoothgrad", gradients.smoothgrad_attribution, _GRAD, ("gradients",),
                description="smoothgrad"))
register(Method("grad_cam", gradients.grad_cam_attribution, _GRAD,
                ("gradients", "teacher_config"), stochastic=False, description="grad cam"))
register(Method("rise", rise.rise_attribution, rise.RiseConfig(),
                description="RISE, random smooth masks"))
register(Method("surrogate", surrogate.surrogate_attribution, None, ("surrogate",),
                stochastic=False, description="attentive surrogate saliency, one forward pass"))


# --------------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames="teacher_apply")
def _argmax(params, images, teacher_apply):
    return jnp.argmax(teacher_apply(params, images), -1)


@functools.partial(jax.jit, static_argnames="teacher_apply")
def _probabilities(params, images, teacher_apply):
    return jax.nn.softmax(teacher_apply(params, images))


def predicted_classes(images, models: Models, chunk_size: int = 256) -> np.ndarray:
    """The teacher's argmax [B] on images [B, H, W, C], in chunks by the one driver."""
    return map_instances(lambda p, x, k: _argmax(p, x, models.teacher_apply),
                         models.teacher_params, images, jax.random.PRNGKey(0),
                         chunk_size=chunk_size, desc="classify")


def teacher_probabilities(images, models: Models, *, chunk_size: int = 256,
                          full_chunks: bool = False) -> np.ndarray:
    """The teacher's softmax [B, K] on images [B, H, W, C], in chunks by the one driver."""
    return map_instances(lambda p, x, k: _probabilities(p, x, models.teacher_apply),
                         models.teacher_params, images, jax.random.PRNGKey(0),
                         chunk_size=chunk_size, full_chunks=full_chunks)


def run_method(method: Method, models: Models, config: Any, images, classes, key: jax.Array, *,
               chunk_size: int, **driver_options) -> Attribution:
    """``method`` over checked images [B, H, W, C] and classes [B] by the one driver, no checks
    of its own (what `explain` and the dataset runner share); ``driver_options`` go to
    `map_instances` (progress, check, offset, full_chunks, ...)."""
    static = models.static()

    def fn(params, inputs, keys):
        return method.batch(params, inputs[0], inputs[1], keys, models=static, config=config)

    driver_options.setdefault("desc", method.name)
    return map_instances(fn, models.params(), (images, np.asarray(classes, np.int32)), key,
                         chunk_size=chunk_size, **driver_options)


def explain(
    method: str,
    images,
    classes=None,
    key: jax.Array | None = None,
    *,
    models: Models,
    config: Any = None,
    chunk_size: int = 64,
    progress: bool = False,
) -> Attribution:
    """Explains every image with the method called ``method``.

    Args:
      method: a name in `METHODS`.
      images: [B, H, W, C] float in [0, 1].
      classes: [B] ints in [0, K): the class explained per image (default: the teacher's).
      key: PRNG key (default PRNGKey(0)); instance i uses ``fold_in(key, i)``.
      models: `Models`.
      config: the method's config (default: its registered one).
      chunk_size: instances per compiled call (the last chunk is padded).
      progress: a progress bar over chunks.

    Returns:
      `Attribution` of numpy arrays with leading axis B.

    Raises:
      ValueError: unknown method, models lacking what it needs, malformed images or classes,
        a teacher without finite float logits of the right width, or non-finite results.
    """
    m = get(method)
    config = m.config if config is None else config
    validate.config(models, Models, "models")
    m.check(models, config)
    image_shape = models.vae_config.image_shape if "vae" in m.needs else None
    arr = validate.images(images, image_shape=image_shape, expected_by="the VAE")
    validate.teacher(models.teacher_apply, models.teacher_params, arr,
                     num_classes=models.num_classes)
    cls = (predicted_classes(arr, models) if classes is None
           else validate.class_indices(classes, batch=len(arr), num_classes=models.num_classes))
    key = jax.random.PRNGKey(0) if key is None else key

    def finite(out: Attribution, start: int) -> None:
        rows = validate.nonfinite_rows(out.attributions, start=start)
        if rows:
            raise ValueError(f"{method} attributions of images {rows[:10]} are not finite: the "
                             "teacher returned NaN or inf on some inputs it was shown.")

    return run_method(m, models, config, arr, cls, key, chunk_size=chunk_size,
                      progress=progress, check=finite)
