"""Your classifier as the library's teacher: ``(apply, params, num_classes)``.

Every explainer reads a teacher as a pure ``apply(params, images [B, H, W, C] float32 in [0, 1])
-> logits [B, K]`` with its parameters beside it. These adapters make one from the models people
have, pure and differentiable where the framework allows it:

====================  =====================================  ===============================
framework             adapter                                gradient methods
====================  =====================================  ===============================
Flax linen            ``from_flax(module, variables)``       yes
Flax NNX              ``from_nnx(model)``                    yes
Keras 3, JAX backend  ``from_keras(model)``                  yes (``stateless_call``)
Equinox               ``from_equinox(model)``                yes
anything else         ``from_callback(fn, num_classes)``     no: sampling methods only
several of the above  ``ensemble(teachers)``                 yes, unless one is a black box
====================  =====================================  ===============================

A `Teacher` unpacks into `explainers.Models`' first three fields: ``dv.Models(*teacher, ...)``.
Each adapter probes the model once on zeros of ``image_shape`` and raises a clear error when it
does not return float logits ``[N, K]``.

Logits or probabilities are read from the outputs themselves, whatever ``outputs`` declares: on
a probe batch of random images, rows that are non-negative and sum to one (within 1e-3) are
probabilities. A declaration the outputs contradict (a softmax model declared
``outputs="logits"``, a logits model declared ``outputs="probabilities"``, whose log would be
taken) is refused with what was seen. With ``image_shape`` the probe runs when the teacher is
made; without it, on the first call, at that call's image shape (with the adapter's own
parameters, outside any trace), before any output is returned.

``layout="NCHW"`` feeds a model that wants channels first (PyTorch's habit); ``preprocess`` maps
the library's [0, 1] images to what the model was trained on (e.g. ``lambda x: (x - mean) /
std``), inside the differentiable function.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from deepvid_jax import validate
from deepvid_jax.models.networks import TeacherApply

LAYOUTS = ("NHWC", "NCHW")
OUTPUTS = ("logits", "probabilities")


class Teacher(NamedTuple):
    """A classifier as the library reads it.

    Attributes:
      apply: pure ``(params, images [B, H, W, C] float32 in [0, 1]) -> logits [B, K]``.
      params: its parameters (a pytree of arrays; None for a black box).
      num_classes: K.
    """

    apply: TeacherApply
    params: Any
    num_classes: int

    @property
    def differentiable(self) -> bool:
        """False for a host callback (`from_callback`): gradient methods cannot run."""
        return not hasattr(self.apply, "host_call")


def _wrap(call: Callable, *, layout: str, preprocess: Callable | None, outputs: str,
          batched: bool) -> tuple[TeacherApply, TeacherApply]:
    """``call(params, x)`` (the framework's forward pass) -> the library's ``apply`` and the raw
    ``apply`` (the model's own outputs, before the log of declared probabilities)."""
    validate.choice(layout, LAYOUTS, "layout")
    validate.choice(outputs, OUTPUTS, "outputs")
    if preprocess is not None and not callable(preprocess):
        raise ValueError(f"preprocess must be a function of images, got {type(preprocess)}.")

    def raw(params, images):
        x = images if preprocess is None else preprocess(images)
        if layout == "NCHW":
            x = jnp.transpose(x, (0, 3, 1, 2))
        return call(params, x) if batched else jax.vmap(lambda xi: call(params, xi))(x)

    def apply(params, images):
        out = raw(params, images)
        if outputs == "probabilities":  # log-probabilities are logits (softmax inverts them)
            out = jnp.log(jnp.clip(out, 1e-30, None))
        return out

    return apply, raw


def _probe(apply: TeacherApply, params, image_shape, num_classes: int | None, name: str) -> int:
    """Runs the model once on zeros [2, *image_shape]; returns K."""
    shape = validate.image_shape(image_shape, "image_shape") if image_shape is not None else None
    if shape is None:
        if num_classes is None:
            raise ValueError(f"{name}: give image_shape=(H, W, C) (to probe the model) or "
                             "num_classes.")
        return validate.integer(num_classes, "num_classes", minimum=2)
    k = validate.teacher(apply, params, np.zeros((2, *shape), np.float32),
                         num_classes=num_classes, name=name)
    return int(k)


PROBE_SIZE = 4  # random images the outputs' kind is read from
_SUM_TOLERANCE = 1e-3  # rows of probabilities sum to one within this


def _probe_batch(image_shape) -> np.ndarray:
    """[PROBE_SIZE, *image_shape] float32 uniform in [0, 1], the same every time."""
    shape = tuple(int(d) for d in image_shape)
    return np.random.default_rng(0).uniform(0, 1, (PROBE_SIZE, *shape)).astype(np.float32)


def check_outputs(out, outputs: str, name: str) -> bool:
    """Refuses model outputs [N, K] that contradict the declared kind: probabilities (rows
    non-negative, summing to one within 1e-3) declared ``"logits"``, or anything else declared
    ``"probabilities"``. Returns whether the outputs could be judged: ones that are not a
    finite float [N, K] are left to the teacher probe's own errors (False)."""
    out = np.asarray(out)
    if out.ndim != 2 or not np.issubdtype(out.dtype, np.floating) or not np.isfinite(out).all():
        return False
    sums = out.sum(-1)
    seen = (f"values in [{out.min():.4g}, {out.max():.4g}], row sums in [{sums.min():.4g}, "
            f"{sums.max():.4g}] on {len(out)} probe images")
    # A softmax computed in float32 can round a zero to a tiny negative.
    probabilities = bool((out >= -1e-6).all() and np.allclose(sums, 1.0, atol=_SUM_TOLERANCE))
    if outputs == "logits" and probabilities:
        raise ValueError(f"{name}: the model's outputs are probabilities (non-negative, rows "
                         f"sum to 1: {seen}), not logits; pass outputs='probabilities' (their "
                         "log is used) or remove the final softmax.")
    if outputs == "probabilities" and not probabilities:
        raise ValueError(f"{name}: outputs='probabilities' was declared, but the model's "
                         f"outputs are not probabilities ({seen}; probabilities are "
                         "non-negative and each row sums to 1); pass outputs='logits' (the "
                         "default) for a model without a final softmax.")
    return True


def _check_kind(raw: TeacherApply, params, image_shape, outputs: str, name: str) -> bool:
    """Runs the model (its own outputs) on the probe batch, eagerly even inside a trace, and
    checks their kind (`check_outputs`)."""
    with jax.ensure_compile_time_eval():
        out = raw(params, jnp.asarray(_probe_batch(image_shape)))
    return check_outputs(out, outputs, name)


def _teacher(apply, raw, params, image_shape, num_classes, outputs: str, name: str) -> Teacher:
    """Probes the wrapped model (clear errors) and checks the declared kind of its outputs: now
    with ``image_shape``, else on the first call (`check_outputs`)."""
    k = _probe(apply, params, image_shape, num_classes, name)
    if image_shape is not None:
        _check_kind(raw, params, image_shape, outputs, name)
        return Teacher(apply, params, k)
    checked = []  # the first call checks, at its image shape; later calls only run the model

    def apply_checked(p, images):
        if not checked and _check_kind(raw, params, images.shape[1:], outputs, name):
            checked.append(True)
        return apply(p, images)

    return Teacher(apply_checked, params, k)


def from_flax(module, variables, *, image_shape=None, num_classes: int | None = None,
              layout: str = "NHWC", preprocess: Callable | None = None,
              outputs: str = "logits", **apply_kwargs) -> Teacher:
    """A Flax linen module and its variables (``{"params": ..., "batch_stats": ...}``); extra
    keyword arguments go to ``module.apply`` (e.g. ``train=False``)."""
    if not hasattr(module, "apply") or not hasattr(module, "init"):
        raise ValueError(f"from_flax needs a flax.linen Module, got {type(module).__name__}.")
    if not isinstance(variables, dict):
        raise ValueError("from_flax: variables must be the dict module.init returned, e.g. "
                         "{'params': ...}.")

    def call(v, x):
        return module.apply(v, x, **apply_kwargs)

    apply, raw = _wrap(call, layout=layout, preprocess=preprocess, outputs=outputs,
                       batched=True)
    return _teacher(apply, raw, variables, image_shape, num_classes, outputs, "from_flax")


def from_nnx(model, *, image_shape=None, num_classes: int | None = None, layout: str = "NHWC",
             preprocess: Callable | None = None, outputs: str = "logits") -> Teacher:
    """A Flax NNX module: its state becomes the params (``nnx.split``), the graph is merged back
    inside the pure function (put dropout/batch norm in eval mode first: ``model.eval()``)."""
    from flax import nnx

    if not isinstance(model, nnx.Module):
        raise ValueError(f"from_nnx needs a flax.nnx.Module, got {type(model).__name__}.")
    graphdef, state = nnx.split(model)

    def call(s, x):
        return nnx.merge(graphdef, s)(x)

    apply, raw = _wrap(call, layout=layout, preprocess=preprocess, outputs=outputs,
                       batched=True)
    return _teacher(apply, raw, state, image_shape, num_classes, outputs, "from_nnx")


def from_keras(model, *, image_shape=None, num_classes: int | None = None,
               layout: str = "NHWC", preprocess: Callable | None = None,
               outputs: str = "logits") -> Teacher:
    """A Keras 3 model on the JAX backend (``KERAS_BACKEND=jax`` before importing keras): its
    variables become the params and ``model.stateless_call(..., training=False)`` the pure
    forward pass. A model ending in softmax needs ``outputs="probabilities"``."""
    backend = os.environ.get("KERAS_BACKEND")
    try:
        import keras
    except ImportError as e:
        raise ValueError(f"from_keras needs keras 3 installed ({e}).") from e
    if keras.backend.backend() != "jax":
        raise ValueError(f"from_keras needs Keras on the JAX backend, but it runs on "
                         f"{keras.backend.backend()!r} (KERAS_BACKEND={backend!r}); set "
                         "KERAS_BACKEND=jax before keras is first imported.")
    if not hasattr(model, "stateless_call"):
        raise ValueError(f"from_keras needs a keras.Model, got {type(model).__name__}.")
    if not model.built:
        if image_shape is None:
            raise ValueError("from_keras: the model is not built; give image_shape=(H, W, C).")
        model.build((None, *image_shape))
    params = ([v.value for v in model.trainable_variables],
              [v.value for v in model.non_trainable_variables])

    def call(p, x):
        return model.stateless_call(p[0], p[1], x, training=False)[0]

    apply, raw = _wrap(call, layout=layout, preprocess=preprocess, outputs=outputs,
                       batched=True)
    return _teacher(apply, raw, params, image_shape, num_classes, outputs, "from_keras")


def from_equinox(model, *, image_shape=None, num_classes: int | None = None,
                 layout: str = "NCHW", preprocess: Callable | None = None,
                 outputs: str = "logits", batched: bool = False) -> Teacher:
    """An Equinox module: its arrays become the params (``eqx.partition``). Equinox models take
    one example at a time, channels first, by convention (``eqx.nn.Conv2d``): the defaults
    ``layout="NCHW", batched=False`` vmap it over the batch."""
    import equinox as eqx

    if not isinstance(model, eqx.Module):
        raise ValueError(f"from_equinox needs an equinox.Module, got {type(model).__name__}.")
    params, static = eqx.partition(model, eqx.is_array)

    def call(p, x):
        return eqx.combine(p, static)(x)

    apply, raw = _wrap(call, layout=layout, preprocess=preprocess, outputs=outputs,
                       batched=batched)
    return _teacher(apply, raw, params, image_shape, num_classes, outputs, "from_equinox")


def callback_teacher(fn: Callable[[np.ndarray], np.ndarray], num_classes: int) -> TeacherApply:
    """Wraps a non-JAX classifier (numpy in, logits out) as a pure JAX ``teacher_apply``.

    The returned function ignores its params argument and calls ``fn(images [N, H, W, C])`` on
    the host through `jax.pure_callback`; under `vmap` it is called once per instance. ``fn``
    must be a pure function of its input. Pass ``teacher_params=None``.

    Keep the returned object and reuse it: it is a static argument of `jit`, and a new wrapper
    means a new compilation.
    """

    validate.integer(num_classes, "num_classes", minimum=2)
    if not callable(fn):
        raise ValueError(f"callback_teacher needs a callable, got {type(fn).__name__}.")

    def host_call(x):
        out = np.asarray(fn(np.asarray(x)))
        if out.shape != (len(x), num_classes):
            raise ValueError(f"the wrapped model returned shape {list(out.shape)} for {len(x)} "
                             f"images; expected logits [{len(x)}, {num_classes}].")
        if not np.issubdtype(out.dtype, np.floating):
            raise ValueError(f"the wrapped model returned {out.dtype} logits; expected floats.")
        return out.astype(np.float32)

    def apply(params, images):
        del params
        out = jax.ShapeDtypeStruct((images.shape[0], num_classes), jnp.float32)
        return jax.pure_callback(host_call, out, images, vmap_method="sequential")

    apply.host_call = host_call  # the teacher probe calls it directly: plain errors
    return apply


def from_callback(fn: Callable[[np.ndarray], np.ndarray], num_classes: int, *,
                  image_shape=None, outputs: str = "logits") -> Teacher:
    """Any other model (PyTorch, ONNX, a remote service) as a black box: ``fn(images [N, H, W,
    C] float32 numpy) -> logits [N, K]`` (or probabilities, with ``outputs="probabilities"``:
    their log is used) called on the host (`callback_teacher`). The sampling methods
    (deepvid, noise, mask, lime, rise) work; the gradient ones (gradient, grad_x_input,
    integrated_gradients, smoothgrad, grad_cam) and the attentive surrogate's training raise a
    clear error. The kind of the outputs is checked on the probe batch with ``image_shape``,
    else on the first call's outputs (`check_outputs`)."""
    validate.choice(outputs, OUTPUTS, "outputs")
    if not callable(fn):
        raise ValueError(f"from_callback needs a callable, got {type(fn).__name__}.")
    # Whether the next outputs are judged: the first ones (on random images with image_shape,
    # after the shape probe on zeros), until a judgement is made.
    judge = [image_shape is None]

    def host_fn(images: np.ndarray) -> np.ndarray:
        out = np.asarray(fn(images))
        if judge[0] and check_outputs(out, outputs, "from_callback"):
            judge[0] = False
        if outputs == "probabilities" and np.issubdtype(out.dtype, np.floating):
            out = np.log(np.clip(out, 1e-30, None))
        return out

    apply = callback_teacher(host_fn, num_classes)
    if image_shape is not None:
        shape = validate.image_shape(image_shape, "image_shape")
        _probe(apply, None, shape, num_classes, "from_callback")
        judge[0] = True
        apply.host_call(_probe_batch(shape))
    return Teacher(apply, None, num_classes)


def ensemble(teachers) -> Teacher:
    """Several classifiers of the same classes as one: logits ``log(mean_i softmax(apply_i(
    params_i, images)))`` (the log of the averaged probabilities, so softmax of them is that
    average), with ``params`` the tuple of theirs. Pure and differentiable when every member
    is; a black box member (`from_callback`) makes the ensemble one.

    Args:
      teachers: a sequence of `Teacher` (or ``(apply, params, num_classes)``), at least one.
    """
    members = [Teacher(*t) for t in teachers]
    if not members:
        raise ValueError("ensemble needs at least one teacher.")
    counts = sorted({t.num_classes for t in members})
    if len(counts) > 1:
        raise ValueError(f"ensemble members must predict the same classes; their class counts "
                         f"are {counts}.")
    applies = tuple(t.apply for t in members)

    def apply(params, images):
        logp = jnp.stack([jax.nn.log_softmax(a(p, images), axis=-1)
                          for a, p in zip(applies, params, strict=True)])
        return jax.nn.logsumexp(logp, axis=0) - jnp.log(len(applies))

    params = tuple(t.params for t in members)
    if not all(t.differentiable for t in members):
        # A black box member makes the ensemble one: gradient methods refuse it, and the
        # teacher probe calls this on the host, like a member's own (`callback_teacher`).
        apply.host_call = lambda images: np.asarray(apply(params, jnp.asarray(images)))
    return Teacher(apply, params, counts[0])


ADAPTERS: dict[str, Callable[..., Teacher]] = {
    "flax": from_flax, "nnx": from_nnx, "keras": from_keras, "equinox": from_equinox,
    "callback": from_callback,
}


def load_teacher(spec: str) -> Teacher:
    """``"package.module:function"`` -> the `Teacher` that function returns (called with no
    arguments; a ``(apply, params, num_classes)`` tuple is accepted too): how the command line
    loads a user's model (``--teacher``), like ``uvicorn module:app``."""
    import importlib

    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ValueError(f"--teacher must be 'package.module:function', got {spec!r}.")
    module_name, attr = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"--teacher {spec}: cannot import {module_name!r} ({e}); is it on "
                         "PYTHONPATH (the current folder is searched)?") from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"--teacher {spec}: {module_name} has no function {attr!r}.")
    out = factory()
    if not isinstance(out, tuple) or len(out) != 3:
        raise ValueError(f"--teacher {spec}: the function must return (apply, params, "
                         f"num_classes), got {type(out).__name__}.")
    apply, params, k = out
    if not callable(apply):
        raise ValueError(f"--teacher {spec}: apply must be callable (params, images) -> logits.")
    return Teacher(apply, params, validate.integer(k, "num_classes", minimum=2))
