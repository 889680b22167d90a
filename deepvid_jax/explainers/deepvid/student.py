"""The linear student and its distillation: ``logits = x @ W + b`` over flattened pixels.

Three ways to fit it (`StudentConfig.method`), each a pure function of (neighbours, teacher
logits, config) that `jax.vmap` maps over instances:

- ``"adam"``: the finite-temperature distillation loss (DeepVID's), a fixed number of Adam
  steps inside `lax.scan` from zero.
- ``"ridge"``: exact distillation in the high-temperature limit. There the KD loss matches the
  logits up to a constant per row (Hinton et al. 2015, section 2.1), so the student is the ridge
  regression of the class-centred teacher logits on the pixels, solved in closed form
  (`fit_ridge`): in the primal (D x D) when D <= N, else in the dual (N x N), from one
  eigendecomposition that also gives the generalised cross-validation score of every penalty on
  a grid at almost no cost; the penalty with the lowest score is used and reported.
- ``"kd"``: the finite-temperature loss again, warm-started from the ridge solution, so a few
  Adam steps suffice.
- ``"lasso"``: the same high-temperature regression with an L1 penalty instead (`fit_lasso`,
  FISTA): a sparse student. Ridge shares weight between pixels that move together, so on VAE
  neighbours (which move correlated pixels together) it gives relevance to pixels the teacher
  never reads; the L1 penalty keeps one of each correlated group (docs/results/ground-truth.md).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from deepvid_jax import validate
from deepvid_jax.explainers.deepvid.lasso import _centred, fit_lasso, fit_lasso_selected

SOLVERS = ("adam", "ridge", "kd", "lasso")  # `StudentConfig.method`: how the student is fitted
LASSO_STARTS = ("zero", "ridge")  # `StudentConfig.lasso_start`: the first round's weights
# A grid of relative penalties for generalised cross-validation: StudentConfig(penalties=...).
GCV_PENALTIES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)


@dataclasses.dataclass(frozen=True)
class StudentConfig:
    """Distillation settings.

    Defaults were chosen by measurement (docs/design/student.md): the closed-form ridge
    student at a fixed relative penalty 0.3 matches the 200-step Adam student's held-out
    fidelity (MNIST top-1 0.871 vs 0.876, KMNIST 0.780 vs 0.775) with twice its seed agreement
    (0.75 vs 0.33 on MNIST, 0.71 vs 0.31 on KMNIST) in a fraction of the time; choosing the
    penalty per instance by GCV (`GCV_PENALTIES`) fits as well but agrees less across seeds
    (0.49), since GCV picks small penalties that fit each draw's noise. The Adam settings: on
    MNIST a grid over learning rate {0.02, 0.1}, T {1, 2, 4} and l2 {0, 1} gave the best
    held-out fidelity at lr 0.1, l2 1; T 4 also recovers a linear teacher exactly where T 1
    does not (saturated soft labels carry little information).

    Attributes:
      method: "adam", "ridge" or "kd" (module docstring).
      temperature: T; both teacher and student logits are divided by T ("adam", "kd").
      steps: full-batch Adam steps ("adam"; for "kd", the steps after the warm start).
      learning_rate: Adam step size.
      hard_label_weight: weight of cross-entropy on the teacher's argmax labels.
      l1: weight of mean |W| (sparser explanations).
      l2: weight of mean W^2.
      penalties: the ridge penalties tried per instance ("ridge", "kd"), relative to the mean
        eigenvalue of the centred neighbours' Gram matrix (`fit_ridge`; so it does not depend
        on the image size or the neighbour count); with several, the one with the best GCV
        score is used per instance (e.g. `GCV_PENALTIES`).
      lasso: the L1 penalty of "lasso", relative to the smallest one that makes every weight
        zero (in (0, 1)); its iterations are ``steps``.
      lasso_refit: "lasso" only: iterations of the unpenalised fit on the lasso's non-zero
        weights that follow (the relaxed lasso, `fit_lasso`); 0 for none.
      lasso_group: "lasso" only: penalise each pixel's row of weights as a group over classes
        (the group lasso, `fit_lasso`).
      lasso_reweight: "lasso" only: rounds of reweighted L1 after the first fit (`fit_lasso`),
        each of ``steps`` iterations; 0 for none.
      lasso_smooth: "lasso" only: weight of a spatial smoothness penalty on the weights (the
        sum over adjacent pixels of their squared difference), relative to the mean pixel
        variance of the neighbours (`fit_lasso`); 0 for none. Needs the image shape
        (`fit_student`'s ``shape``).
      lasso_rescale: "lasso" only: multiply the weights by the one factor that fits the teacher
        best (`fit_lasso`), undoing the penalties' shrinkage on average.
      lasso_start: "lasso" only: "zero" (the first round penalises every pixel alike) or
        "ridge" (the adaptive lasso of Zou 2006: the first round's per-pixel penalties already
        reweighted from the ridge fit at ``penalties[0]``, a stable estimate, instead of from an
        unweighted first round, whose choice among correlated pixels depends on the draw).
      lasso_smooth_grid: "lasso" only: when not empty, the smoothness of each instance is
        chosen among these values (each >= 0; replacing ``lasso_smooth``) by the fit on the
        held-out neighbours (`fit_student_selected`): a teacher that reads single pixels gets
        per-pixel maps, one that reads strokes smooth ones. The fits share the Gram matrix;
        their FISTA iterations are repeated per value.
      lasso_smooth_tolerance: with a grid, the smoothest value is chosen whose held-out error
        exceeds the least by at most this many standard errors (`fit_student_selected`; 1:
        the one-standard-error rule), plus ``lasso_smooth_relative`` times the least.
      lasso_smooth_relative: with a grid, the relative part of that allowance (>= 0): 0.5 lets
        a smoother fit cost up to half again the least held-out error. Measured on MNIST and
        KMNIST, smoothness costs a teacher that reads strokes 4-16 % (median) of its error and
        one that reads 40 single pixels 150-210 %, while the standard error varies with the
        draw (docs/design/stable-default.md).
      lasso_screen: "lasso" only: the share of pixels (in (0, 1]) the lasso is fitted on: those
        of the largest marginal correlation with the teacher's logits (the row norms of
        x_c^T y_c; sure independence screening, Fan & Lv 2008), the others get zero weight
        (`fit_lasso`). 1: every pixel. Below 1 the iterations multiply by the screened pixels'
        Gram matrix, so their cost falls with the square of the share.
    """

    method: str = "ridge"
    temperature: float = 4.0
    steps: int = 200
    learning_rate: float = 0.1
    hard_label_weight: float = 0.0
    l1: float = 0.0
    l2: float = 1.0
    penalties: tuple[float, ...] = (0.3,)
    lasso: float = 0.02
    lasso_refit: int = 0
    lasso_group: bool = False
    lasso_reweight: int = 0
    lasso_smooth: float = 0.0
    lasso_rescale: bool = False
    lasso_start: str = "zero"
    lasso_smooth_grid: tuple[float, ...] = ()
    lasso_smooth_tolerance: float = 1.0
    lasso_smooth_relative: float = 0.0
    lasso_screen: float = 1.0

    def __post_init__(self):
        validate.choice(self.method, SOLVERS, "StudentConfig.method")
        validate.fields(self, positive=("temperature", "learning_rate"), positive_int=("steps",),
                        nonneg=("hard_label_weight", "l1", "l2", "lasso_smooth",
                                "lasso_smooth_tolerance", "lasso_smooth_relative"),
                        nonneg_int=("lasso_refit", "lasso_reweight"),
                        boolean=("lasso_group", "lasso_rescale"))
        if not isinstance(self.penalties, tuple) or not self.penalties:
            raise ValueError(f"StudentConfig.penalties must be a non-empty tuple, got "
                             f"{self.penalties!r}.")
        for i, v in enumerate(self.penalties):
            validate.number(v, f"StudentConfig.penalties[{i}]", low=0.0, low_open=True)
        validate.number(self.lasso, "StudentConfig.lasso", low=0.0, high=1.0, low_open=True,
                        high_open=True)
        validate.choice(self.lasso_start, LASSO_STARTS, "StudentConfig.lasso_start")
        validate.number(self.lasso_screen, "StudentConfig.lasso_screen", low=0.0, high=1.0,
                        low_open=True)
        if self.lasso_screen < 1.0 and self.method != "lasso":
            raise ValueError(f"StudentConfig.lasso_screen screens the lasso's pixels; method is "
                             f"{self.method!r} (use method='lasso').")
        if not isinstance(self.lasso_smooth_grid, tuple):
            raise ValueError(f"StudentConfig.lasso_smooth_grid must be a tuple of smoothness "
                             f"values (>= 0), got {self.lasso_smooth_grid!r}.")
        for i, v in enumerate(self.lasso_smooth_grid):
            validate.number(v, f"StudentConfig.lasso_smooth_grid[{i}]", low=0.0)
        if self.lasso_smooth_grid and self.method != "lasso":
            raise ValueError(f"StudentConfig.lasso_smooth_grid chooses the lasso's smoothness; "
                             f"method is {self.method!r} (use method='lasso').")


class RidgeFit(NamedTuple):
    """A closed-form student: w [D, K], b [K] (centred over classes), penalty [] (the absolute
    ridge penalty chosen), grid [L] (the absolute penalties tried), gcv [L] (their scores)."""

    w: jax.Array
    b: jax.Array
    penalty: jax.Array
    grid: jax.Array
    gcv: jax.Array


def fit_ridge(
    x: jax.Array, teacher_logits: jax.Array, penalties: tuple[float, ...], *,
    relative: bool = True,
) -> RidgeFit:
    """Ridge regression of class-centred logits on pixels with an unpenalised intercept, for the
    penalty of ``penalties`` with the lowest generalised cross-validation score.

    min_W,b ||x W + b - (t - mean_k t)||^2 + lambda ||W||^2, solved from one eigendecomposition
    of the centred Gram matrix, D x D (primal) when D <= N, else N x N (dual); GCV(lambda) =
    N * RSS / (N - 1 - tr H)^2 (Golub et al. 1979; the 1 is the intercept).

    Args:
      x: [N, D] neighbours; teacher_logits: [N, K].
      penalties: the grid; relative to the mean non-zero eigenvalue of the Gram matrix unless
        ``relative=False`` (then absolute).

    Returns:
      `RidgeFit`.
    """
    n, d = x.shape
    mu_x, mu_y, xc, yc = _centred(x, teacher_logits)
    primal = d <= n
    gram = xc.T @ xc if primal else xc @ xc.T
    e, vecs = jnp.linalg.eigh(gram)
    # Below numpy's rank tolerance an eigenvalue is rounding noise of an exact zero (centring
    # removes one direction; N < D leaves more): noise there skews tr H, so GCV, at small
    # penalties.
    tol = jnp.max(e) * max(n, d) * jnp.finfo(x.dtype).eps
    e = jnp.where(e > tol, e, 0.0)
    grid = jnp.asarray(penalties, x.dtype)
    if relative:  # the mean non-zero eigenvalue. The count of non-zero ones can move by one
        # where rounding noise crosses tol (low-rank neighbourhoods): the penalty then moves by
        # about 1/rank between programs that sum in another order.
        rank = jnp.maximum(jnp.sum(e > 0), 1)
        grid = grid * jnp.sum(e) / rank
    lam = grid[:, None]  # [L, 1]
    shrink = lam / (e[None, :] + lam)  # [L, m]: the part of each direction the penalty removes
    if primal:
        z = vecs.T @ (xc.T @ yc)  # [D, K]
        proj = jnp.where(e > 0, jnp.sum(z**2, axis=1) / jnp.where(e > 0, e, 1.0), 0.0)
        rss = jnp.sum(yc**2) - jnp.sum((1.0 - shrink**2) * proj[None, :], axis=1)
    else:
        yt = vecs.T @ yc  # [N, K]
        rss = jnp.sum(shrink**2 * jnp.sum(yt**2, axis=1)[None, :], axis=1)
    dof = jnp.sum(1.0 - shrink, axis=1)  # tr H
    gcv = n * jnp.maximum(rss, 0.0) / jnp.maximum(n - 1.0 - dof, 1e-6) ** 2
    best = jnp.argmin(gcv)
    inv = 1.0 / (e + grid[best])
    if primal:
        w = vecs @ (z * inv[:, None])
    else:
        w = xc.T @ (vecs @ (yt * inv[:, None]))
    # Exactly centred over classes already, up to rounding that 1 / (e + lambda) amplifies in
    # near-flat directions: remove that.
    w = w - jnp.mean(w, axis=1, keepdims=True)
    b = mu_y - mu_x @ w
    return RidgeFit(w, b, grid[best], grid, gcv)


def _lasso(x, teacher_logits, config: StudentConfig, shape, smooth):
    ridge = config.penalties[0] if config.lasso_start == "ridge" else None
    return fit_lasso(x, teacher_logits, config.lasso, config.steps, config.lasso_refit,
                     group=config.lasso_group, reweight=config.lasso_reweight, smooth=smooth,
                     shape=shape, rescale=config.lasso_rescale, ridge_start=ridge,
                     screen=config.lasso_screen)


def fit_student_selected(
    x: jax.Array, teacher_logits: jax.Array, x_held: jax.Array, teacher_held: jax.Array,
    config: StudentConfig, shape: tuple[int, ...] | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """`fit_student` with the smoothness chosen by held-out fit (``config.lasso_smooth_grid``;
    without a grid, ``config.lasso_smooth``).

    Args:
      x: [N, D] neighbours to fit on; teacher_logits: [N, K].
      x_held: [M, D] held-out neighbours; teacher_held: [M, K].
      shape: the image shape (H, W, C).

    Returns:
      (W [D, K], b [K], penalty [], smoothness []): with a grid, the lasso's first round is
      fitted at every smoothness, `lasso.choose_smoothness` picks one by the first-round fits'
      error on the held-out neighbours' class-centred logits (the smoothest whose error
      exceeds the least by at most ``config.lasso_smooth_tolerance`` standard errors plus
      ``config.lasso_smooth_relative`` times the least error), and only that one is
      reweighted (`lasso.fit_lasso_selected`).
    """
    validate.array(x, "x", ndim=2)
    validate.array(teacher_logits, "teacher_logits", shape=(x.shape[0], None))
    validate.array(x_held, "x_held", shape=(None, x.shape[1]))
    validate.array(teacher_held, "teacher_held", shape=(x_held.shape[0], teacher_logits.shape[1]))
    validate.config(config, StudentConfig, "config")
    if not config.lasso_smooth_grid:  # validated above: fit_student's program directly
        w, b, penalty = _fit_student(x, teacher_logits, config=config,
                                     shape=_static_shape(shape))
        return w, b, penalty, jnp.asarray(config.lasso_smooth, x.dtype)
    return _fit_selected(x, teacher_logits, x_held, teacher_held, config=config,
                         shape=_static_shape(shape))


def _fit_selected(x, teacher_logits, x_held, teacher_held, *, config: StudentConfig, shape):
    """`fit_student_selected` with a smoothness grid (validated arguments)."""
    ridge = config.penalties[0] if config.lasso_start == "ridge" else None
    return fit_lasso_selected(
        x, teacher_logits, x_held, teacher_held, config.lasso, config.steps,
        config.lasso_smooth_grid, config.lasso_smooth_tolerance, config.lasso_smooth_relative,
        config.lasso_refit, group=config.lasso_group, reweight=config.lasso_reweight,
        shape=shape, rescale=config.lasso_rescale, ridge_start=ridge,
        screen=config.lasso_screen)


def distillation_loss(
    student_logits: jax.Array, teacher_logits: jax.Array, temperature: float
) -> jax.Array:
    """Mean over rows of T^2 * KL(softmax(teacher / T) || softmax(student / T)).

    Args:
      student_logits, teacher_logits: [N, K].

    Returns:
      scalar. The T^2 factor keeps gradient magnitudes comparable across temperatures
      (Hinton et al. 2015).
    """
    t = jax.nn.log_softmax(teacher_logits / temperature)
    s = jax.nn.log_softmax(student_logits / temperature)
    return temperature**2 * jnp.mean(jnp.sum(jnp.exp(t) * (t - s), axis=-1))


def student_loss(
    params: tuple[jax.Array, jax.Array], x: jax.Array, teacher_logits: jax.Array,
    config: StudentConfig,
) -> jax.Array:
    """Distillation loss plus the optional hard-label, L1 and L2 terms; x: [N, D]."""
    w, b = params
    logits = x @ w + b
    loss = distillation_loss(logits, teacher_logits, config.temperature)
    if config.hard_label_weight:
        hard = jnp.argmax(teacher_logits, -1)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, hard).mean()
        loss += config.hard_label_weight * ce
    if config.l1:
        loss += config.l1 * jnp.mean(jnp.abs(w))
    if config.l2:
        loss += config.l2 * jnp.mean(w**2)
    return loss


def fit_student(
    x: jax.Array, teacher_logits: jax.Array, config: StudentConfig = StudentConfig(),
    shape: tuple[int, ...] | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Distils a linear student from teacher logits on one instance's neighbours.

    Args:
      x: [N, D] flattened neighbours.
      teacher_logits: [N, K].
      config: `StudentConfig`.
      shape: the image shape (H, W, C), H * W * C = D; needed by ``config.lasso_smooth``.
        A config with a smoothness grid (the default `ExplainConfig().student`) needs held-out
        neighbours: `fit_student_selected`.

    Returns:
      (W [D, K], b [K], penalty []): W and b are centred over classes (each row of W and b
      sums to zero): softmax is unchanged by adding one vector to every class, so this picks the
      one representative of the student's equivalence class that does not depend on the
      optimiser's path. ``penalty`` is the ridge penalty chosen by GCV ("ridge", "kd"), the
      absolute L1 penalty ("lasso"), or the final loss ("adam").
    """
    validate.array(x, "x", ndim=2)
    validate.array(teacher_logits, "teacher_logits", shape=(x.shape[0], None))
    validate.config(config, StudentConfig, "config")
    if config.lasso_smooth_grid:
        raise ValueError("StudentConfig.lasso_smooth_grid chooses the smoothness by held-out "
                         "fit: use fit_student_selected with held-out neighbours, or a fixed "
                         "smoothness (lasso_smooth_grid=(), lasso_smooth=...).")
    return _fit_student(x, teacher_logits, config=config, shape=_static_shape(shape))


def _static_shape(shape) -> tuple[int, ...] | None:
    """``shape`` as a hashable static argument (a list becomes a tuple)."""
    return None if shape is None else tuple(shape)


# One compiled program per (config, shape, input shapes): outside `jit` a fit then costs one
# compilation instead of a dispatch per operation (and a recompiled loop body per call).
@functools.partial(jax.jit, static_argnames=("config", "shape"))
def _fit_student(x, teacher_logits, *, config: StudentConfig, shape):
    """`fit_student`'s program (validated arguments)."""
    if config.method == "ridge":
        fit = fit_ridge(x, teacher_logits, config.penalties)
        return fit.w, fit.b, fit.penalty
    if config.method == "lasso":
        return _lasso(x, teacher_logits, config, shape, config.lasso_smooth)
    mu = jnp.mean(x, axis=0)
    xc = x - mu
    d, k = x.shape[1], teacher_logits.shape[1]
    if config.method == "kd":  # warm start: the ridge solution in centred coordinates
        fit = fit_ridge(x, teacher_logits, config.penalties)
        params, aux = (fit.w, fit.b + mu @ fit.w), fit.penalty
    else:
        params, aux = (jnp.zeros((d, k), x.dtype), jnp.zeros((k,), x.dtype)), None
    # Optimise on centred inputs (better conditioned; same function class), then fold the
    # centre back into the bias.
    tx = optax.adam(config.learning_rate)
    grad_fn = jax.value_and_grad(student_loss)

    def step(carry, _):
        params, opt_state = carry
        loss, grads = grad_fn(params, xc, teacher_logits, config)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), None, config.steps)
    w, b = params
    b = b - mu @ w
    w = w - jnp.mean(w, axis=1, keepdims=True)
    b = b - jnp.mean(b)
    return w, b, losses[-1] if aux is None else aux


def student_logits(w: jax.Array, b: jax.Array, x: jax.Array) -> jax.Array:
    """x [N, D] -> logits [N, K]."""
    return x @ w + b
