"""Gradient-based attributions of a teacher's class score: the baselines DeepVID is compared to.

Every function maps ``images [B, H, W, C]`` and ``class_idx [B]`` to attributions
``[B, H, W, C]`` for that class, so metrics treat all methods alike (DeepVID's own attribution is
`explain.Explanation.class_weights`). The score explained is the class **logit** (pre-softmax),
as in the papers that define these methods.

All but `grad_cam` need only a pure ``teacher_apply(params, images) -> logits``; Grad-CAM needs the
`models.Teacher` CNN itself, because it reads a convolutional layer's feature maps.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from deepvid_jax import validate
from deepvid_jax.models.networks import Teacher, TeacherApply, TeacherConfig

GRADIENT_METHODS = ("gradient", "grad_x_input", "integrated_gradients", "smoothgrad", "grad_cam")


@dataclasses.dataclass(frozen=True)
class AttributionConfig:
    """Settings of the gradient-based methods.

    Attributes:
      ig_steps: Riemann steps of Integrated Gradients (trapezoid rule; more is closer to
        completeness).
      ig_baseline: the constant image Integrated Gradients integrates from (0 = black).
      smoothgrad_samples: noisy copies averaged by SmoothGrad.
      smoothgrad_sigma: their noise std, in pixel units ([0, 1] images; Smilkov et al. suggest
        10-20 % of the input range).
      gradcam_layer: Teacher feature map for Grad-CAM (None = the last conv block).
    """

    ig_steps: int = 32
    ig_baseline: float = 0.0
    smoothgrad_samples: int = 16
    smoothgrad_sigma: float = 0.15
    gradcam_layer: str | None = None

    def __post_init__(self):
        validate.fields(self, positive_int=("ig_steps", "smoothgrad_samples"),
                        nonneg=("smoothgrad_sigma",), probability=("ig_baseline",))
        if self.gradcam_layer is not None and not isinstance(self.gradcam_layer, str):
            raise ValueError(f"AttributionConfig.gradcam_layer must be a layer name or None, "
                             f"got {self.gradcam_layer!r}.")


def class_score(
    teacher_apply: TeacherApply, params, images: jax.Array, class_idx: jax.Array
) -> jax.Array:
    """The logit of class ``class_idx[b]`` for image b: [B, H, W, C], [B] -> [B]."""
    logits = teacher_apply(params, images)
    return jnp.take_along_axis(logits, class_idx[:, None], axis=1)[:, 0]


def _score_grad(teacher_apply, params, images, class_idx):
    # Each image's score depends only on itself, so the gradient of the sum is per image.
    return jax.grad(lambda x: jnp.sum(class_score(teacher_apply, params, x, class_idx)))(images)


def gradient(teacher_apply: TeacherApply, params, images: jax.Array, class_idx: jax.Array):
    """Vanilla gradient saliency d logit_c / d x (Simonyan et al. 2014): -> [B, H, W, C]."""
    return _score_grad(teacher_apply, params, images, class_idx)


def grad_x_input(teacher_apply: TeacherApply, params, images: jax.Array, class_idx: jax.Array):
    """Gradient x input (Shrikumar et al. 2016): -> [B, H, W, C]."""
    return images * _score_grad(teacher_apply, params, images, class_idx)


def integrated_gradients(
    teacher_apply: TeacherApply, params, images: jax.Array, class_idx: jax.Array, *,
    steps: int = 32, baseline: float = 0.0,
) -> jax.Array:
    """Integrated Gradients (Sundararajan et al. 2017) from a constant baseline image.

    (x - x') * integral_0^1 grad f(x' + a (x - x')) da, by the trapezoid rule on ``steps``
    intervals. Completeness: the attributions sum to f(x) - f(x') up to the quadrature error.

    Returns:
      [B, H, W, C].
    """
    base = jnp.full_like(images, baseline)
    alphas = jnp.linspace(0.0, 1.0, steps + 1)
    weights = jnp.full((steps + 1,), 1.0 / steps).at[jnp.array([0, -1])].set(0.5 / steps)

    def body(total, aw):
        a, w = aw
        g = _score_grad(teacher_apply, params, base + a * (images - base), class_idx)
        return total + w * g, None

    # scan, not vmap over alphas: memory stays at one batch of images.
    avg_grad, _ = jax.lax.scan(body, jnp.zeros_like(images), (alphas, weights))
    return (images - base) * avg_grad


def smoothgrad(
    teacher_apply: TeacherApply, params, images: jax.Array, class_idx: jax.Array,
    key: jax.Array, *, samples: int = 16, sigma: float = 0.15,
) -> jax.Array:
    """SmoothGrad (Smilkov et al. 2017): the gradient averaged over x + N(0, sigma^2) copies.

    Returns:
      [B, H, W, C].
    """

    def body(total, k):
        noisy = images + sigma * jax.random.normal(k, images.shape, images.dtype)
        return total + _score_grad(teacher_apply, params, noisy, class_idx), None

    total, _ = jax.lax.scan(body, jnp.zeros_like(images), jax.random.split(key, samples))
    return total / samples


def grad_cam(
    params, images: jax.Array, class_idx: jax.Array, *, config: TeacherConfig,
    layer: str | None = None,
) -> jax.Array:
    """Grad-CAM (Selvaraju et al. 2017) on a `models.Teacher` conv layer, upsampled to input size.

    cam = ReLU(sum_f alpha_f A_f), alpha_f = spatial mean of d logit_c / d A_f, where A is the
    (post-ReLU) feature map of ``layer``; bilinearly resized to [H, W] and repeated over C.

    Args:
      params: `models.Teacher` parameters.
      images: [B, H, W, C]; class_idx: [B].
      config: the teacher's `TeacherConfig`.
      layer: "conv0", "conv1", ... (default: the last conv block).

    Returns:
      [B, H, W, C], >= 0.
    """
    layer = layer or f"conv{len(config.features) - 1}"
    names = [f"conv{i}" for i in range(len(config.features))]
    if layer not in names:
        raise ValueError(f"grad_cam: layer {layer!r} is not one of the teacher's conv layers "
                         f"{names}.")
    model = Teacher(config)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)["perturbations"]
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def score(perturbations):
        logits, state = model.apply(
            {"params": params, "perturbations": perturbations}, images, mutable=["intermediates"]
        )
        picked = jnp.take_along_axis(logits, class_idx[:, None], axis=1)
        return jnp.sum(picked), state["intermediates"][f"{layer}_features"][0]

    grads, feats = jax.grad(score, has_aux=True)(zeros)
    g = grads[f"{layer}_features"]  # [B, h, w, F]
    alpha = jnp.mean(g, axis=(1, 2), keepdims=True)
    cam = jax.nn.relu(jnp.sum(alpha * feats, axis=-1))  # [B, h, w]
    b, h, w, c = images.shape
    cam = jax.image.resize(cam, (b, h, w), method="bilinear")
    return jnp.repeat(cam[..., None], c, axis=-1)


def attribute(
    method: str,
    images: jax.Array,
    class_idx: jax.Array,
    key: jax.Array,
    *,
    teacher_apply: TeacherApply,
    teacher_params,
    teacher_config: TeacherConfig | None = None,
    config: AttributionConfig = AttributionConfig(),
) -> jax.Array:
    """One entry point for every gradient-based method: -> [B, H, W, C].

    Args:
      method: one of `GRADIENT_METHODS`.
      images: [B, H, W, C] float32 in [0, 1]; class_idx: [B] int in [0, K).
      key: PRNG key (used by SmoothGrad only).
      teacher_apply, teacher_params: the teacher; it must be a JAX function (gradients flow
        through it), not a `callback_teacher` black box.
      teacher_config: needed by "grad_cam" only.
      config: `AttributionConfig`.

    Raises:
      ValueError: unknown method, malformed images or class indices, a teacher that does not
        give finite float logits, or Grad-CAM without (or with a mismatched) teacher_config.
    """
    validate.choice(method, GRADIENT_METHODS, "method")
    validate.config(config, AttributionConfig, "config")
    image_shape = None
    if method == "grad_cam":
        if teacher_config is None:
            raise ValueError("grad_cam needs teacher_config (it reads the Teacher's conv maps).")
        image_shape = validate.config(teacher_config, TeacherConfig, "teacher_config").image_shape
    images, class_idx = validate.images_and_classes(
        images, class_idx, teacher_apply, teacher_params, image_shape=image_shape,
        expected_by="the teacher config")
    return _attribute(method, images, class_idx, key, teacher_apply=teacher_apply,
                      teacher_params=teacher_params, teacher_config=teacher_config,
                      config=config)


@functools.partial(jax.jit, static_argnames=("method", "teacher_apply", "teacher_config", "config"))
def _attribute(
    method: str,
    images: jax.Array,
    class_idx: jax.Array,
    key: jax.Array,
    *,
    teacher_apply: TeacherApply,
    teacher_params,
    teacher_config: TeacherConfig | None = None,
    config: AttributionConfig = AttributionConfig(),
) -> jax.Array:
    """`attribute` without the checks, jitted."""
    class_idx = jnp.asarray(class_idx, jnp.int32)
    if method == "gradient":
        return gradient(teacher_apply, teacher_params, images, class_idx)
    if method == "grad_x_input":
        return grad_x_input(teacher_apply, teacher_params, images, class_idx)
    if method == "integrated_gradients":
        return integrated_gradients(teacher_apply, teacher_params, images, class_idx,
                                    steps=config.ig_steps, baseline=config.ig_baseline)
    if method == "smoothgrad":
        return smoothgrad(teacher_apply, teacher_params, images, class_idx, key,
                          samples=config.smoothgrad_samples, sigma=config.smoothgrad_sigma)
    if method == "grad_cam":
        if teacher_config is None:
            raise ValueError("grad_cam needs teacher_config (it reads the Teacher's conv maps).")
        return grad_cam(teacher_params, images, class_idx, config=teacher_config,
                        layer=config.gradcam_layer)
    raise ValueError(f"Unknown attribution method {method!r}; expected one of {GRADIENT_METHODS}.")
