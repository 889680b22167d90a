"""Gradient-based attributions of a teacher's class score: the baselines DeepVID is compared to.

Every method maps ``images [B, H, W, C]`` and ``class_idx [B]`` to attributions
``[B, H, W, C]`` for that class, so metrics treat all methods alike (DeepVID's own attribution is
`deepvid.Explanation.class_weights`). The score explained is the class **logit** (pre-softmax),
as in the papers that define these methods.

Each method has two entry points that compute the same numbers:
- the registered explainer function (`gradient_attribution`, `grad_x_input_attribution`,
  `integrated_gradients_attribution`, `smoothgrad_attribution`, `grad_cam_attribution`): the
  contract of `explainers.base` (params, images, classes, keys, models, config);
- the function of a bare teacher (`gradient`, `grad_x_input`, `integrated_gradients`,
  `smoothgrad`, `grad_cam`), and `attribute`, any of them by name.
SmoothGrad's noise for instance i comes from instance i's key (``fold_in(key, i)`` when one key
is given), so a batch equals a loop over its images.

All but Grad-CAM need only a pure ``teacher_apply(params, images) -> logits``; Grad-CAM needs the
`models.Teacher` CNN itself, because it reads a convolutional layer's feature maps.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from deepvid_jax import validate
from deepvid_jax.driver import instance_keys
from deepvid_jax.explainers.base import Attribution, check_inputs, jitted
from deepvid_jax.models.bundle import Models
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


def _checked(teacher_apply: TeacherApply, params, images, class_idx, image_shape=None,
             num_classes: int | None = None):
    """Images [B, H, W, C] and class indices [B] in [0, K), K the teacher's logits width
    (from its output shape, without running it) or ``num_classes``: (images, class_idx) as
    arrays; values are checked when concrete."""
    if not callable(teacher_apply):
        raise ValueError(f"teacher_apply must be a callable (params, images) -> logits, got "
                         f"{type(teacher_apply).__name__}.")
    images = validate.images(images, image_shape=image_shape, expected_by="the teacher config")
    if num_classes is None:
        out = jax.eval_shape(teacher_apply, params, jax.ShapeDtypeStruct(images.shape,
                                                                         images.dtype))
        if len(getattr(out, "shape", ())) != 2 or out.shape[0] != images.shape[0]:
            raise ValueError(f"teacher_apply returned shape {list(getattr(out, 'shape', ()))} "
                             f"for {images.shape[0]} images; expected logits "
                             f"[{images.shape[0]}, K].")
        num_classes = int(out.shape[1])
    class_idx = validate.class_indices(class_idx, batch=images.shape[0], num_classes=num_classes)
    return jnp.asarray(images), jnp.asarray(class_idx, jnp.int32)


def class_score(
    teacher_apply: TeacherApply, params, images: jax.Array, class_idx: jax.Array
) -> jax.Array:
    """The logit of class ``class_idx[b]`` for image b: [B, H, W, C], [B] -> [B]."""
    images, class_idx = _checked(teacher_apply, params, images, class_idx)
    return _class_score(teacher_apply, params, images, class_idx)


def _class_score(teacher_apply, params, images, class_idx):
    logits = teacher_apply(params, images)
    return jnp.take_along_axis(logits, class_idx[:, None], axis=1)[:, 0]


def _score_grad(teacher_apply, params, images, class_idx):
    # Each image's score depends only on itself, so the gradient of the sum is per image.
    return jax.grad(lambda x: jnp.sum(_class_score(teacher_apply, params, x, class_idx)))(images)


def _integrated(teacher_apply, params, images, class_idx, steps: int, baseline: float):
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


def _smooth(teacher_apply, params, images, class_idx, keys, samples: int, sigma: float):
    """SmoothGrad of each instance with its own key: images [B, ...], keys [B]."""

    def one(x, c, key):  # x [1, H, W, C]: instance i's noise is drawn from its key alone
        def body(total, k):
            noisy = x + sigma * jax.random.normal(k, x.shape, x.dtype)
            return total + _score_grad(teacher_apply, params, noisy, c), None

        total, _ = jax.lax.scan(body, jnp.zeros_like(x), jax.random.split(key, samples))
        return (total / samples)[0]

    return jax.vmap(one)(images[:, None], class_idx[:, None], keys)


def _cam(params, images, class_idx, config: TeacherConfig, layer: str | None):
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


# --------------------------------------------------------------------------------------------
# Of a bare teacher
# --------------------------------------------------------------------------------------------


def gradient(teacher_apply: TeacherApply, params, images: jax.Array, class_idx: jax.Array):
    """Vanilla gradient saliency d logit_c / d x (Simonyan et al. 2014).

    Args:
      teacher_apply, params: a teacher through which gradients flow (not a black box).
      images: [B, H, W, C] float in [0, 1]; class_idx: [B] ints in [0, K), K the teacher's
        number of logits.

    Returns:
      [B, H, W, C].

    Raises:
      ValueError: malformed images or class indices (values checked when concrete).
    """
    images, class_idx = _checked(teacher_apply, params, images, class_idx)
    return _score_grad(teacher_apply, params, images, class_idx)


def grad_x_input(teacher_apply: TeacherApply, params, images: jax.Array, class_idx: jax.Array):
    """Gradient x input (Shrikumar et al. 2016): images [B, H, W, C], class_idx [B] in [0, K)
    -> [B, H, W, C]. Raises ValueError on malformed images or class indices."""
    images, class_idx = _checked(teacher_apply, params, images, class_idx)
    return images * _score_grad(teacher_apply, params, images, class_idx)


def integrated_gradients(
    teacher_apply: TeacherApply, params, images: jax.Array, class_idx: jax.Array, *,
    steps: int = 32, baseline: float = 0.0,
) -> jax.Array:
    """Integrated Gradients (Sundararajan et al. 2017) from a constant baseline image.

    (x - x') * integral_0^1 grad f(x' + a (x - x')) da, by the trapezoid rule on ``steps``
    intervals. Completeness: the attributions sum to f(x) - f(x') up to the quadrature error.

    Args:
      images: [B, H, W, C] in [0, 1]; class_idx: [B] in [0, K).
      steps: >= 1; baseline: the constant value of x', in [0, 1].

    Returns:
      [B, H, W, C].
    """
    config = AttributionConfig(ig_steps=steps, ig_baseline=baseline)
    images, class_idx = _checked(teacher_apply, params, images, class_idx)
    return _integrated(teacher_apply, params, images, class_idx, config.ig_steps,
                       config.ig_baseline)


def smoothgrad(
    teacher_apply: TeacherApply, params, images: jax.Array, class_idx: jax.Array,
    key: jax.Array, *, samples: int = 16, sigma: float = 0.15,
) -> jax.Array:
    """SmoothGrad (Smilkov et al. 2017): the gradient averaged over x + N(0, sigma^2) copies;
    image i's noise comes from ``fold_in(key, i)`` (the registered "smoothgrad" with the same
    key gives the same numbers).

    Args:
      images: [B, H, W, C] in [0, 1]; class_idx: [B] in [0, K); key: a PRNG key.
      samples: noisy copies (>= 1); sigma: their noise std (>= 0).

    Returns:
      [B, H, W, C].
    """
    config = AttributionConfig(smoothgrad_samples=samples, smoothgrad_sigma=sigma)
    images, class_idx = _checked(teacher_apply, params, images, class_idx)
    keys = instance_keys(key, 0, images.shape[0])
    return _smooth(teacher_apply, params, images, class_idx, keys, config.smoothgrad_samples,
                   config.smoothgrad_sigma)


def grad_cam(
    params, images: jax.Array, class_idx: jax.Array, *, config: TeacherConfig,
    layer: str | None = None,
) -> jax.Array:
    """Grad-CAM (Selvaraju et al. 2017) on a `models.Teacher` conv layer, upsampled to input size.

    cam = ReLU(sum_f alpha_f A_f), alpha_f = spatial mean of d logit_c / d A_f, where A is the
    (post-ReLU) feature map of ``layer``; bilinearly resized to [H, W] and repeated over C.

    Args:
      params: `models.Teacher` parameters.
      images: [B, H, W, C] of ``config.image_shape``; class_idx: [B] in [0, K).
      config: the teacher's `TeacherConfig`.
      layer: "conv0", "conv1", ... (default: the last conv block).

    Returns:
      [B, H, W, C], >= 0.
    """
    validate.config(config, TeacherConfig, "config")
    images, class_idx = _checked(Teacher(config).apply, params, images, class_idx,
                                 image_shape=config.image_shape, num_classes=config.num_classes)
    return _cam(params, images, class_idx, config, layer)


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
    """Any gradient method by name: the registered explainer function of ``method`` on a bare
    teacher (instance i's key is ``fold_in(key, i)``, as in `registry.explain`): ->
    [B, H, W, C].

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
    arr, class_idx = validate.images_and_classes(
        images, class_idx, teacher_apply, teacher_params, image_shape=image_shape,
        expected_by="the teacher config")
    k = int(jax.eval_shape(teacher_apply, teacher_params,
                           jax.ShapeDtypeStruct(arr.shape, arr.dtype)).shape[-1])
    models = Models(teacher_apply, teacher_params, k, teacher_config=teacher_config)
    fn = ATTRIBUTIONS[method]
    out = jitted(fn)(models.params(), arr, class_idx, instance_keys(key, 0, arr.shape[0]),
                     models=models.static(), config=config)
    return out.attributions


# --------------------------------------------------------------------------------------------
# The registered explainer functions (the contract of `explainers.base`)
# --------------------------------------------------------------------------------------------


def _inputs(images, classes, keys, models: Models, config, image_shape=None):
    if models.black_box:
        raise ValueError("gradient methods need gradients through the teacher, and a "
                         "callback_teacher black box has none: use a sampling method.")
    images, classes = check_inputs(images, classes, keys, models=models, config=config,
                                   config_type=AttributionConfig, image_shape=image_shape,
                                   expected_by="the teacher config")
    return jnp.asarray(images), jnp.asarray(classes, jnp.int32)


def gradient_attribution(params, images, classes, keys, *, models: Models,
                         config: AttributionConfig = AttributionConfig()) -> Attribution:
    """`gradient` as an explainer: images [B, H, W, C], classes [B], keys [B] (unused) ->
    `Attribution` ([B, H, W, C], no extras)."""
    x, c = _inputs(images, classes, keys, models, config)
    return Attribution(_score_grad(models.teacher_apply, params["teacher"], x, c), {})


def grad_x_input_attribution(params, images, classes, keys, *, models: Models,
                             config: AttributionConfig = AttributionConfig()) -> Attribution:
    """`grad_x_input` as an explainer (keys unused)."""
    x, c = _inputs(images, classes, keys, models, config)
    return Attribution(x * _score_grad(models.teacher_apply, params["teacher"], x, c), {})


def integrated_gradients_attribution(params, images, classes, keys, *, models: Models,
                                     config: AttributionConfig = AttributionConfig()
                                     ) -> Attribution:
    """`integrated_gradients` as an explainer (``config.ig_steps``, ``config.ig_baseline``;
    keys unused)."""
    x, c = _inputs(images, classes, keys, models, config)
    return Attribution(_integrated(models.teacher_apply, params["teacher"], x, c,
                                   config.ig_steps, config.ig_baseline), {})


def smoothgrad_attribution(params, images, classes, keys, *, models: Models,
                           config: AttributionConfig = AttributionConfig()) -> Attribution:
    """`smoothgrad` as an explainer: instance i's noise from ``keys[i]``
    (``config.smoothgrad_samples``, ``config.smoothgrad_sigma``)."""
    x, c = _inputs(images, classes, keys, models, config)
    return Attribution(_smooth(models.teacher_apply, params["teacher"], x, c, keys,
                               config.smoothgrad_samples, config.smoothgrad_sigma), {})


def grad_cam_attribution(params, images, classes, keys, *, models: Models,
                         config: AttributionConfig = AttributionConfig()) -> Attribution:
    """`grad_cam` as an explainer: needs ``models.teacher_config`` (our `models.Teacher`);
    layer ``config.gradcam_layer`` (keys unused)."""
    if models.teacher_config is None:
        raise ValueError("grad_cam reads the teacher's conv maps: it needs "
                         "Models(teacher_config=...) of a models.Teacher.")
    x, c = _inputs(images, classes, keys, models, config,
                   image_shape=models.teacher_config.image_shape)
    return Attribution(_cam(params["teacher"], x, c, models.teacher_config,
                            config.gradcam_layer), {})


ATTRIBUTIONS = {"gradient": gradient_attribution, "grad_x_input": grad_x_input_attribution,
                "integrated_gradients": integrated_gradients_attribution,
                "smoothgrad": smoothgrad_attribution, "grad_cam": grad_cam_attribution}
