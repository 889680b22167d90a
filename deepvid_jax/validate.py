"""One validation layer for every public entry point: images, class indices, labels, teachers,
matching lengths, and the fields of every config dataclass.

Each check raises a `ValueError` that names the argument and what is wrong with it, before any
long work starts. Checks of *values* (range, finiteness, index range) need concrete arrays; when
an argument is a JAX tracer (the function is being traced under `jit`/`vmap` by a caller), only
its static shape and dtype are checked, so the same public functions stay usable inside jitted
code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_traced(x: Any) -> bool:
    """True for a JAX tracer (abstract value inside jit/vmap/grad): its values are unknown."""
    return isinstance(x, jax.core.Tracer)


def _shape_str(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


# --------------------------------------------------------------------------------------------
# Scalars
# --------------------------------------------------------------------------------------------


def integer(value: Any, name: str, *, minimum: int | None = None) -> int:
    """A Python/numpy integer (not a bool, not a float) >= ``minimum``; returns it as int."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__}).")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")
    return int(value)


def number(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite real number in the given (closed unless ``*_open``) interval; returns a float."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.number):
        raise ValueError(f"{name} must be a number, got {value!r} ({type(value).__name__}).")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}.")
    bad_low = low is not None and (v <= low if low_open else v < low)
    bad_high = high is not None and (v >= high if high_open else v > high)
    if bad_low or bad_high:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        interval = f"{'(' if low_open or low is None else '['}{lo}, {hi}" \
                   f"{')' if high_open or high is None else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}.")
    return v


def boolean(value: Any, name: str) -> bool:
    """A Python bool, True or False (not 0, 1, None or a numpy bool)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}.")
    return value


# Rules for `fields`: rule name -> check(value, "Class.field").
_RULES: dict[str, Callable[[Any, str], Any]] = {
    "positive_int": lambda v, n: integer(v, n, minimum=1),
    "nonneg_int": lambda v, n: integer(v, n, minimum=0),
    "positive": lambda v, n: number(v, n, low=0.0, low_open=True),
    "nonneg": lambda v, n: number(v, n, low=0.0),
    "finite": lambda v, n: number(v, n),
    "probability": lambda v, n: number(v, n, low=0.0, high=1.0),
    "open_probability": lambda v, n: number(v, n, low=0.0, high=1.0, low_open=True,
                                           high_open=True),
    "positive_ints": lambda v, n: _int_tuple(v, n),
    "image_shape": lambda v, n: image_shape(v, n),
    "boolean": boolean,
}
# Rules for which None is a wrong value, not an optional setting left out.
_NONE_CHECKED = frozenset({"boolean"})


def _int_tuple(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, tuple | list) or not value:
        raise ValueError(f"{name} must be a non-empty tuple of positive integers, got {value!r}.")
    return tuple(integer(v, f"{name}[{i}]", minimum=1) for i, v in enumerate(value))


def image_shape(value: Any, name: str) -> tuple[int, int, int]:
    """(H, W, C) of positive integers."""
    if not isinstance(value, tuple | list) or len(value) != 3:
        raise ValueError(f"{name} must be (H, W, C), got {value!r}.")
    return tuple(integer(v, f"{name}[{i}]", minimum=1) for i, v in enumerate(value))


def fields(config: Any, **rules: Sequence[str]) -> None:
    """Checks fields of a config dataclass by rule, e.g.
    ``fields(self, positive_int=("num",), probability=("mask_keep",))``.

    Rules: positive_int, nonneg_int, positive, nonneg, finite, probability (in [0, 1]),
    open_probability (in (0, 1)), positive_ints (non-empty tuple), image_shape ((H, W, C)),
    boolean (True or False). Fields whose value is None are skipped (optional settings), except
    under ``boolean``.
    """
    cls = type(config).__name__
    for rule, names in rules.items():
        check = _RULES[rule]
        for field in names:
            value = getattr(config, field)
            if value is not None or rule in _NONE_CHECKED:
                check(value, f"{cls}.{field}")


def config(value: Any, cls: type, name: str) -> Any:
    """``value`` must be an instance of the config dataclass ``cls``."""
    if not isinstance(value, cls):
        raise ValueError(f"{name} must be a {cls.__name__}, got {type(value).__name__}.")
    return value


def choice(value: Any, options: Sequence[str], name: str) -> str:
    """``value`` must be one of ``options``."""
    if value not in options:
        raise ValueError(f"{name} must be one of {tuple(options)}, got {value!r}.")
    return value


# --------------------------------------------------------------------------------------------
# Arrays
# --------------------------------------------------------------------------------------------


def images(
    x: Any,
    *,
    name: str = "images",
    image_shape: Sequence[int] | None = None,
    expected_by: str = "the model",
) -> Any:
    """Images [B, H, W, C] float in [0, 1], finite, B >= 1.

    Returns a float32 numpy array (or the tracer itself, shape/dtype checked only).
    """
    arr = x if is_traced(x) else np.asarray(x)
    if arr.ndim != 4:
        hint = f" (a single image? use {name}[None])" if arr.ndim == 3 else ""
        raise ValueError(f"{name} must have shape [B, H, W, C]; got shape "
                         f"{_shape_str(arr.shape)}{hint}.")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise ValueError(f"{name} must be floating point in [0, 1]; got dtype {arr.dtype} "
                         f"(for uint8 pixels use {name} / 255).")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty (B = 0).")
    if image_shape is not None and tuple(arr.shape[1:]) != tuple(image_shape):
        what = "channels" if tuple(arr.shape[1:3]) == tuple(image_shape[:2]) else "image shape"
        raise ValueError(
            f"{name}: {what} mismatch: per-image shape {tuple(arr.shape[1:])}, but "
            f"{expected_by} expects image_shape {tuple(image_shape)} (H, W, C)."
        )
    if is_traced(arr):
        return arr
    bad = ~np.isfinite(arr)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        raise ValueError(f"{name} contain NaN or inf ({int(bad.sum())} values, in images "
                         f"{rows[:10].tolist()}).")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        scale = " (0-255 pixels? divide by 255)" if hi > 1.0 and hi <= 255.0 else ""
        raise ValueError(f"{name} must be in [0, 1]; got values in [{lo:.4g}, {hi:.4g}]{scale}.")
    return arr.astype(np.float32, copy=False)


def class_indices(
    idx: Any, *, batch: int, num_classes: int | None, name: str = "class_idx"
) -> Any:
    """Integer class indices [B] in [0, num_classes); one per image (no broadcasting).

    Returns an int32 numpy array (or the tracer, shape/dtype checked only).
    """
    arr = idx if is_traced(idx) else np.asarray(idx)
    if arr.dtype == bool or not jnp.issubdtype(arr.dtype, jnp.integer):
        raise ValueError(f"{name} must be integers; got dtype {arr.dtype}.")
    if arr.shape != (batch,):
        raise ValueError(f"{name} must have shape [B] = [{batch}], one per image; got shape "
                         f"{_shape_str(arr.shape)}.")
    if is_traced(arr) or num_classes is None:
        return arr
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        bad = np.nonzero((arr < 0) | (arr >= num_classes))[0]
        raise ValueError(f"{name} must be in [0, {num_classes}); got {arr[bad[:5]].tolist()} "
                         f"at positions {bad[:5].tolist()} (negative indices are not allowed).")
    return arr.astype(np.int32, copy=False)


def array(
    x: Any,
    name: str,
    *,
    ndim: int | None = None,
    shape: Sequence[int | None] | None = None,
    floating: bool = True,
    finite: bool = True,
) -> Any:
    """A numeric array with the given rank / shape (None entries are free), float and finite
    unless told otherwise. Returns numpy (or the tracer)."""
    arr = x if is_traced(x) else np.asarray(x)
    if arr.dtype == object or not (jnp.issubdtype(arr.dtype, jnp.number)
                                   or arr.dtype == bool):
        raise ValueError(f"{name} must be a numeric array; got dtype {arr.dtype}.")
    if floating and not jnp.issubdtype(arr.dtype, jnp.floating):
        raise ValueError(f"{name} must be floating point; got dtype {arr.dtype}.")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions; got shape "
                         f"{_shape_str(arr.shape)}.")
    if shape is not None:
        want = tuple(shape)
        ok = arr.ndim == len(want) and all(w is None or w == s for w, s in zip(want, arr.shape,
                                                                              strict=True))
        if not ok:
            spec = "[" + ", ".join("*" if w is None else str(w) for w in want) + "]"
            raise ValueError(f"{name} must have shape {spec}; got {_shape_str(arr.shape)}.")
    if finite and not is_traced(arr) and jnp.issubdtype(arr.dtype, jnp.floating):
        bad = ~np.isfinite(arr)
        if bad.any():
            raise ValueError(f"{name} contains NaN or inf ({int(bad.sum())} values).")
    return arr


def nonfinite_rows(*arrays: Any, start: int = 0) -> list[int]:
    """Indices (offset by ``start``) of the rows, along the common leading axis, in which any
    of ``arrays`` holds NaN or inf: how a chunked driver names the instances that went wrong."""
    bad = np.zeros(len(arrays[0]), bool)
    for a in arrays:
        a = np.asarray(a)
        bad |= ~np.isfinite(a.reshape(len(a), -1)).all(axis=1)
    return (np.nonzero(bad)[0] + start).tolist()


def same_length(**arrays: Any) -> int:
    """All arrays have the same leading length; returns it."""
    lengths = {k: int(np.shape(v)[0]) if np.ndim(v) else None for k, v in arrays.items()}
    if None in lengths.values():
        scalars = [k for k, v in lengths.items() if v is None]
        raise ValueError(f"{', '.join(scalars)} must be arrays with a leading axis.")
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"{k} has {v}" for k, v in lengths.items())
        raise ValueError(f"lengths must match: {desc}.")
    return next(iter(lengths.values()))


# --------------------------------------------------------------------------------------------
# Teachers
# --------------------------------------------------------------------------------------------


def teacher(
    teacher_apply: Callable,
    teacher_params: Any,
    probe: Any,
    *,
    num_classes: int | None = None,
    name: str = "teacher_apply",
    probe_size: int = 4,
) -> int | None:
    """Runs the teacher once on a probe batch (the first few of ``probe`` [B, H, W, C]) and
    checks that it returns float, finite logits [n, K] (K = ``num_classes`` when given, else
    K >= 2). Returns K; None when the probe is traced (checked by the caller's trace instead).
    """
    if not callable(teacher_apply):
        raise ValueError(f"{name} must be a callable (params, images) -> logits, got "
                         f"{type(teacher_apply).__name__}.")
    if is_traced(probe) or any(is_traced(leaf) for leaf in jax.tree.leaves(teacher_params)):
        return None
    x = jnp.asarray(np.asarray(probe)[:probe_size])
    # A host-side black box (`adapters.callback_teacher`) is probed directly: an error inside
    # jax.pure_callback would arrive wrapped in XLA's runtime error and logged traceback.
    host_call = getattr(teacher_apply, "host_call", None)
    try:
        out = host_call(np.asarray(x)) if host_call else teacher_apply(teacher_params, x)
    except Exception as e:
        raise ValueError(
            f"{name} failed on a probe batch of shape {_shape_str(x.shape)}: "
            f"{type(e).__name__}: {str(e)[:500]}"
        ) from e
    if not hasattr(out, "shape") or not hasattr(out, "dtype"):
        raise ValueError(f"{name} must return an array of logits [N, K]; got "
                         f"{type(out).__name__}.")
    n = x.shape[0]
    if out.ndim != 2 or out.shape[0] != n:
        raise ValueError(f"{name} returned shape {_shape_str(out.shape)} for {n} images; "
                         f"expected logits [{n}, K].")
    k = int(out.shape[1])
    if num_classes is not None and k != num_classes:
        raise ValueError(f"{name} returned {k} logits per image; expected {num_classes} "
                         f"(the number of classes).")
    if k < 2:
        raise ValueError(f"{name} returned {k} logit per image; a classifier needs K >= 2.")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(f"{name} returned {out.dtype} logits; expected floating point "
                         "(integer logits carry no probabilities).")
    values = np.asarray(out)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} returned NaN or inf logits on a probe batch of {n} images.")
    return k


def images_and_classes(
    x: Any,
    class_idx: Any,
    teacher_apply: Callable,
    teacher_params: Any,
    *,
    name: str = "class_idx",
    image_shape: Sequence[int] | None = None,
    expected_by: str = "the model",
) -> tuple[Any, Any]:
    """The common arguments of everything that explains, attacks or scores a teacher's class:
    checked images ``x`` [B, H, W, C], the teacher probed on them (giving K), and class indices
    [B] in [0, K). Returns (images, class indices) as numpy (or tracers)."""
    arr = images(x, image_shape=image_shape, expected_by=expected_by)
    k = teacher(teacher_apply, teacher_params, arr)
    return arr, class_indices(class_idx, batch=arr.shape[0], num_classes=k, name=name)
