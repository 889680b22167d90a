"""The sparse student's solver: L1-penalised regression of class-centred teacher logits on pixels
(`fit_lasso`, FISTA), with its options (group over classes, reweighting, a smoothness penalty on
the pixel grid, screening, a ridge start, rescaling), and the pieces it shares with the ridge
student (`ridge_solve`, the centring).

Ridge shares weight between pixels that move together, so on VAE neighbours (which move
correlated pixels together) it gives relevance to pixels the teacher never reads; the L1
penalty keeps one of each correlated group (docs/results/ground-truth.md).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from deepvid_jax import validate


def _centred(x: jax.Array, teacher_logits: jax.Array):
    """What the regression students fit: (mean pixel [D], mean centred logit [K], pixels minus
    their mean [N, D], class-centred logits minus their mean [N, K]); the intercept is then
    ``mean logit - mean pixel @ W``."""
    y = teacher_logits - jnp.mean(teacher_logits, axis=1, keepdims=True)
    mu_x, mu_y = jnp.mean(x, axis=0), jnp.mean(y, axis=0)
    return mu_x, mu_y, x - mu_x, y - mu_y


def grid_laplacian(w: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """The gradient of 1/2 sum over 4-adjacent pixel pairs (p, q) of |w_p - w_q|^2, per channel
    and class: w [D, K], D = H * W * C for ``shape`` (H, W, C) -> [D, K]. That is the graph
    Laplacian of the pixel grid (free boundary) applied to each column; its eigenvalues lie in
    [0, 8)."""
    g = w.reshape(*shape, -1)
    dy, dx = g[1:] - g[:-1], g[:, 1:] - g[:, :-1]
    out = jnp.zeros_like(g).at[1:].add(dy).at[:-1].add(-dy)
    return out.at[:, 1:].add(dx).at[:, :-1].add(-dx).reshape(w.shape)


def _check_shape(shape, d: int) -> tuple[int, int, int]:
    if shape is None or len(shape) != 3 or math.prod(shape) != d:
        raise ValueError(f"a smoothness penalty needs the image shape (H, W, C) of the {d} "
                         f"pixel columns; got shape={shape!r}.")
    return tuple(int(v) for v in shape)


def ridge_solve(xc: jax.Array, yc: jax.Array, relative_penalty: float) -> jax.Array:
    """The ridge solution W [D, K] of centred pixels xc [N, D] and centred logits yc [N, K] at
    one penalty relative to the mean non-zero eigenvalue of the Gram matrix (taken as its trace
    over min(N - 1, D), the rank of centred data in general position), by one Cholesky solve:
    D x D when D <= N, else N x N. The fixed-penalty case of `fit_ridge`, without its
    eigendecomposition."""
    n, d = xc.shape
    primal = d <= n
    gram = xc.T @ xc if primal else xc @ xc.T
    lam = relative_penalty * jnp.trace(gram) / max(min(n - 1, d), 1)
    factor = jax.scipy.linalg.cho_factor(gram + lam * jnp.eye(gram.shape[0], dtype=gram.dtype))
    if primal:
        return jax.scipy.linalg.cho_solve(factor, xc.T @ yc)
    return xc.T @ jax.scipy.linalg.cho_solve(factor, yc)


def fit_lasso(x: jax.Array, teacher_logits: jax.Array, relative_penalty: float, steps: int,
              refit_steps: int = 0, *, group: bool = False,
              reweight: int = 0, smooth: float | jax.Array = 0.0,
              shape: tuple[int, ...] | None = None, rescale: bool = False,
              ridge_start: float | None = None,
              screen: float = 1.0) -> tuple[jax.Array, jax.Array, jax.Array]:
    """L1-penalised regression of class-centred logits on pixels, with an unpenalised intercept:

    min_W,b 1/(2N) ||x W + b - (t - mean_k t)||^2 + lambda |W|_1,  lambda = relative_penalty *
    lambda_max (lambda_max = max |x_c^T y_c| / N: the smallest penalty with W = 0), by ``steps``
    iterations of FISTA (Beck & Teboulle 2009) from zero; the step is 1 / L with L from 30
    power iterations (times 1.05, as they approach the largest eigenvalue from below). When
    D <= N the iterations multiply by the D x D Gram matrix, formed once, instead of by the
    neighbours twice.

    With ``group``, the group lasso over classes (Yuan & Lin 2006): the penalty is the sum over
    pixels of the L2 norm of the pixel's row of W, so a pixel is kept or dropped for every class
    at once (lambda_max is then the largest row norm of x_c^T y_c / N). A pixel the teacher never
    reads carries no signal for any class, while a pixel it reads carries signal for several:
    the group pools that evidence.

    With ``reweight``, that many rounds of reweighted L1 (Candes, Wakin & Boyd 2008; the adaptive
    lasso of Zou 2006): each round solves again with each weight's (or row's) penalty scaled by
    s / (|w| + 0.1 s), s the mean magnitude of the previous solution's non-zero weights, from
    that solution (``steps`` iterations each): large weights are shrunk less than small ones,
    so the small weights that sampling noise gives to unread pixels go to zero while the
    fidelity of the large ones is kept.

    Few ``steps`` stop FISTA before it converges, which shrinks more than the penalty alone:
    of two pixels that move together the converged fit keeps one (which one depends on the
    draw), the early-stopped fit both, shrunk (each reweighting round shrinks the second
    further); the default `ExplainConfig().student` stops at 30 for that stability.

    With ``smooth`` (and the image ``shape`` (H, W, C) of the D columns), a spatial smoothness
    penalty mu/2 sum over 4-adjacent pixels p, q of |W_p - W_q|^2 is added to the smooth part
    (`grid_laplacian`), mu = ``smooth`` times the mean pixel variance of the neighbours (so it
    does not depend on the image size or the neighbour count): of adjacent pixels that move
    together the lasso keeps whichever the draw favours; the penalty shares their weight, so a
    map depends less on the draw, at the price of some weight one pixel beyond the evidence.

    With ``refit_steps``, the relaxed lasso (Meinshausen 2007): that many more FISTA steps of
    the problem without the L1 penalty restricted to the weights the lasso left non-zero, from
    the lasso's solution. The L1 penalty picks which pixels matter and also shrinks their
    weights, which costs fidelity; the refit keeps the choice and undoes the shrinkage.

    With ``rescale``, W is finally multiplied by the one number that fits the centred logits
    best (least squares of x_c (alpha W) on y_c): the penalties shrink every kept weight, which
    costs fidelity; one common factor undoes the shrinkage on average without changing which
    pixels are kept or any map's shape (the relaxed lasso's refit re-grows weights one by one,
    the leaked ones too).

    With ``ridge_start`` (a relative ridge penalty, as `fit_ridge`'s), the first round is
    already reweighted, from the ridge solution (`ridge_solve`) instead of an unweighted first
    round: the adaptive lasso (Zou 2006). A ridge fit does not choose among correlated pixels,
    so the weights the rounds start from depend less on the draw.

    With ``screen`` < 1, only the ceil(screen * D) pixels of the largest marginal correlation
    with the centred logits (row norms of x_c^T y_c) are fitted, the others kept at zero: sure
    independence screening (Fan & Lv 2008). lambda_max, the smoothness weight and the
    smoothness penalty (over the whole grid, a screened-out pixel counting as 0) are those of
    the whole image; the iterations multiply by the screened pixels' Gram matrix. On VAE
    neighbours the lasso's non-zero pixels lie among the top half by this score (on MNIST and
    KMNIST: docs/design/stable-default.md), so a screen of 0.5 keeps them at about a quarter of
    the iterations' work.

    ``smooth`` may be a traced scalar (e.g. under `jax.vmap` over several values, which then
    share the Gram matrix and the power iterations).

    The fit is one jitted program per setting (all but ``x``, ``teacher_logits``,
    ``relative_penalty`` and an array ``smooth`` are static), so calls outside `jit` cost one
    compilation, not a dispatch per operation.

    Args:
      x: [N, D] neighbours; teacher_logits: [N, K].

    Returns:
      (W [D, K] centred over classes, b [K], lambda []).
    """
    validate.number(screen, "screen", low=0.0, high=1.0, low_open=True)
    validate.array(x, "x", ndim=2)
    validate.array(teacher_logits, "teacher_logits", shape=(x.shape[0], None))
    settings = dict(steps=steps, refit_steps=refit_steps, group=group, reweight=reweight,
                    shape=None if shape is None else tuple(shape), rescale=rescale,
                    ridge_start=ridge_start, screen=screen)
    if isinstance(smooth, (int, float)):
        return _lasso_fixed_smooth(x, teacher_logits, relative_penalty, smooth=smooth,
                                   **settings)
    return _lasso_array_smooth(x, teacher_logits, relative_penalty, smooth, **settings)


class _Problem(NamedTuple):
    """What every fit of one neighbourhood shares (`_problem`)."""

    mu_x: jax.Array  # [D] mean pixel
    mu_y: jax.Array  # [K] mean centred logit
    xc: jax.Array  # [N, M] centred (screened) pixels
    yc: jax.Array  # [N, K] centred logits
    c: jax.Array  # [K, M] (x_c^T y_c / N)^T: the iterations hold the weights as [K, M]
    lam: jax.Array  # [] the L1 penalty
    keep: jax.Array | None  # [M] the screened pixels' indices, or None: all
    gram: jax.Array | None  # [M, M] x_c^T x_c / N when M <= N, else None
    lipschitz: jax.Array  # [] of the squared error alone
    pixel_var: jax.Array  # [] the mean pixel variance (of the whole image)
    group: bool


def _problem(x, teacher_logits, relative_penalty, *, group, screen) -> _Problem:
    n, d = x.shape
    mu_x, mu_y, xc, yc = _centred(x, teacher_logits)
    c = xc.T @ yc / n  # [D, K]
    lam = relative_penalty * (jnp.max(jnp.linalg.norm(c, axis=1)) if group
                              else jnp.max(jnp.abs(c)))
    pixel_var = jnp.sum(xc * xc) / (n * d)
    keep = None
    if screen < 1.0:
        _, keep = jax.lax.top_k(jnp.linalg.norm(c, axis=1), max(1, math.ceil(screen * d)))
        xc, c = xc[:, keep], c[keep]
    m = xc.shape[1]
    gram = xc.T @ xc / n if m <= n else None
    hess = _hessian(xc, gram)

    def power(v, _):
        v = hess(v)
        return v / jnp.maximum(jnp.linalg.norm(v), 1e-30), None

    v, _ = jax.lax.scan(power, jnp.ones((m,), x.dtype) / jnp.sqrt(m), None, 30)
    lipschitz = 1.05 * jnp.maximum(v @ hess(v), 1e-12)
    return _Problem(mu_x, mu_y, xc, yc, c.T, lam, keep, gram, lipschitz, pixel_var, group)


def _hessian(xc, gram):
    """v [..., M] -> v x_c^T x_c / N, by the Gram matrix when there is one (D <= N).

    The weights are held as [K, M], not [M, K]: on a CPU the product of a [K, M] block by the
    [M, M] Gram matrix takes about 0.6x the time of the Gram matrix by an [M, K] block (the
    same numbers, the Gram matrix being symmetric)."""
    if gram is not None:
        return lambda v: v @ gram
    return lambda v: (v @ xc.T) @ xc / xc.shape[0]


def _laplacian(p: _Problem, shape):
    """`grid_laplacian` of the whole grid on the fitted pixels' weights [K, M] (screened-out
    pixels at 0)."""
    if p.keep is None:
        return lambda v: grid_laplacian(v.T, shape).T
    return _screened_laplacian(p.keep, shape)


def _smoothed(hess, laplacian, mu):
    """The Hessian of the squared error plus the smoothness penalty mu/2 w^T L w."""
    return lambda v: hess(v) + mu * laplacian(v)


def _run(p: _Problem, hess, lipschitz, scale, w, count):
    """``count`` FISTA steps from ``w`` [K, M] with the (weighted, by ``scale``) L1 penalty."""
    def prox(u):  # the proximal map of the (weighted) penalty, thresholds lam * scale / L
        tau = p.lam * scale / lipschitz
        if p.group:
            norm = jnp.linalg.norm(u, axis=0, keepdims=True)
            return u * jnp.maximum(1.0 - tau / jnp.maximum(norm, 1e-30), 0.0)
        return jnp.sign(u) * jnp.maximum(jnp.abs(u) - tau, 0.0)

    return _fista(hess, p.c, lipschitz, prox, w, count)


def _fista(hess, c, lipschitz, prox, w, count):
    def step(carry, _):
        w, z, t = carry
        w_next = prox(z - (hess(z) - c) / lipschitz)
        t_next = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
        return (w_next, w_next + ((t - 1.0) / t_next) * (w_next - w), t_next), None

    (w, _, _), _ = jax.lax.scan(step, (w, w, jnp.ones((), w.dtype)), None, count)
    return w


def _weights(p: _Problem, w):
    """The reweighting's penalty scales s / (|w| + 0.1 s), s the mean non-zero magnitude."""
    m = jnp.linalg.norm(w, axis=0, keepdims=True) if p.group else jnp.abs(w)
    # (tiny: a first fit of all zeros, e.g. a constant teacher, stays zero, not NaN)
    s = jnp.maximum(jnp.sum(m) / jnp.maximum(jnp.sum(m > 0), 1), jnp.finfo(w.dtype).tiny)
    return 1.0 / (m / s + 0.1)


def _first_round(p: _Problem, hess, lipschitz, steps, ridge_start):
    w = jnp.zeros((p.yc.shape[1], p.xc.shape[1]), p.xc.dtype)
    first = 1.0 if ridge_start is None else _weights(p, ridge_solve(p.xc, p.yc, ridge_start).T)
    return _run(p, hess, lipschitz, first, w, steps)


def _later_rounds(p: _Problem, hess, lipschitz, w, steps, reweight, refit_steps):
    if reweight:  # one loop over the rounds: the program holds one copy of a round, not three
        w, _ = jax.lax.scan(
            lambda w, _: (_run(p, hess, lipschitz, _weights(p, w), w, steps), None), w, None,
            reweight)
    if refit_steps:
        support = (w != 0).astype(w.dtype)
        w = _fista(hess, p.c, lipschitz, lambda u: u * support, w, refit_steps)
    return w


def _finish(p: _Problem, w, rescale):
    """The fitted weights [K, M] -> (W [D, K] centred over classes, b [K])."""
    w = w.T - jnp.mean(w.T, axis=1, keepdims=True)
    if rescale:  # the least-squares multiple of W (1 where W = 0: nothing to scale)
        fit = p.xc @ w
        w = w * jnp.where(jnp.any(w != 0),
                          jnp.sum(fit * p.yc) / jnp.maximum(jnp.sum(fit * fit), 1e-30), 1.0)
    if p.keep is not None:
        w = jnp.zeros((p.mu_x.shape[0], w.shape[1]), w.dtype).at[p.keep].set(w)
    return w, p.mu_y - p.mu_x @ w


def _fit_lasso(x, teacher_logits, relative_penalty, smooth, *, steps, refit_steps, group,
               reweight, shape, rescale, ridge_start, screen):
    """`fit_lasso`'s program (arguments as there, validated)."""
    smoothing = not (isinstance(smooth, (int, float)) and smooth == 0)
    if smoothing:
        shape = _check_shape(shape, x.shape[1])
    p = _problem(x, teacher_logits, relative_penalty, group=group, screen=screen)
    hess = _hessian(p.xc, p.gram)
    lipschitz = p.lipschitz
    if smoothing:  # of the whole grid (screened-out pixels at 0); mu relative to the mean
        # pixel variance (the mean eigenvalue of the Gram matrix / N); its Laplacian's largest
        # eigenvalue is below 8
        mu_s = smooth * p.pixel_var
        hess = _smoothed(hess, _laplacian(p, shape), mu_s)
        lipschitz = lipschitz + 8.0 * mu_s
    w = _first_round(p, hess, lipschitz, steps, ridge_start)
    w = _later_rounds(p, hess, lipschitz, w, steps, reweight, refit_steps)
    w, b = _finish(p, w, rescale)
    return w, b, p.lam


def fit_lasso_selected(x: jax.Array, teacher_logits: jax.Array, x_held: jax.Array,
                       teacher_held: jax.Array, relative_penalty: float, steps: int,
                       smooth_grid: tuple[float, ...], tolerance: float = 1.0,
                       relative: float = 0.0, refit_steps: int = 0, *, group: bool = False,
                       reweight: int = 0, shape: tuple[int, ...] | None = None,
                       rescale: bool = False, ridge_start: float | None = None,
                       screen: float = 1.0) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """`fit_lasso` with the smoothness chosen from ``smooth_grid`` by held-out fit
    (`choose_smoothness`), after the first round.

    The first round (``steps`` FISTA iterations) is fitted for every smoothness in the grid
    (sharing the Gram matrix, the screening and the power iterations); each is finished as
    the final fit is (centred over classes, rescaled) and scored on the held-out neighbours;
    the reweighting rounds and the refit then run for the chosen smoothness alone, with its
    Laplacian folded into the Gram matrix (one matrix product a step instead of a product and
    a neighbour lookup). Choosing on the first round's fits instead of the final ones costs
    the choice little, since the rounds reweight the pixels the first round picked, and it
    saves the other fits' rounds.

    Args:
      x: [N, D] neighbours to fit on; teacher_logits: [N, K].
      x_held: [M, D] held-out neighbours; teacher_held: [M, K].
      smooth_grid: the smoothness values (``smooth`` of `fit_lasso`), at least one.
      tolerance, relative: `choose_smoothness`'s.
      Others: as `fit_lasso`.

    Returns:
      (W [D, K] centred over classes, b [K], lambda [], the chosen smoothness []).
    """
    validate.number(screen, "screen", low=0.0, high=1.0, low_open=True)
    validate.array(x, "x", ndim=2)
    validate.array(teacher_logits, "teacher_logits", shape=(x.shape[0], None))
    validate.array(x_held, "x_held", shape=(None, x.shape[1]))
    validate.array(teacher_held, "teacher_held", shape=(x_held.shape[0], teacher_logits.shape[1]))
    if not isinstance(smooth_grid, tuple) or not smooth_grid:
        raise ValueError(f"smooth_grid must be a non-empty tuple of smoothness values, got "
                         f"{smooth_grid!r}.")
    for i, v in enumerate(smooth_grid):
        validate.number(v, f"smooth_grid[{i}]", low=0.0)
    validate.number(tolerance, "tolerance", low=0.0)
    validate.number(relative, "relative", low=0.0)
    return _lasso_selected(x, teacher_logits, x_held, teacher_held, relative_penalty,
                           steps=steps, smooth_grid=tuple(float(v) for v in smooth_grid),
                           tolerance=float(tolerance), relative=float(relative),
                           refit_steps=refit_steps, group=group, reweight=reweight,
                           shape=None if shape is None else tuple(shape), rescale=rescale,
                           ridge_start=ridge_start, screen=screen)


def _fit_lasso_selected(x, teacher_logits, x_held, teacher_held, relative_penalty, *, steps,
                        smooth_grid, tolerance, relative, refit_steps, group, reweight, shape,
                        rescale, ridge_start, screen):
    """`fit_lasso_selected`'s program (arguments as there, validated)."""
    smoothing = any(v > 0 for v in smooth_grid)
    if smoothing:
        shape = _check_shape(shape, x.shape[1])
    p = _problem(x, teacher_logits, relative_penalty, group=group, screen=screen)
    grid = jnp.asarray(smooth_grid, x.dtype)
    mu = grid * p.pixel_var  # [G]
    plain = _hessian(p.xc, p.gram)
    laplacian = _laplacian(p, shape) if smoothing else None

    def first(m):
        hess = _smoothed(plain, laplacian, m) if smoothing else plain
        return _first_round(p, hess, p.lipschitz + 8.0 * m, steps, ridge_start)

    firsts = jax.vmap(first)(mu)  # [G, K, M]
    w, b = jax.vmap(lambda w: _finish(p, w, rescale))(firsts)
    pick = choose_smoothness(x_held, teacher_held, w, b, grid, tolerance, relative)
    m = mu[pick]
    if not smoothing:
        hess = plain
    elif p.gram is not None:
        folded = p.gram + m * _dense_laplacian(p.keep, shape, x.dtype)
        hess = lambda v: v @ folded  # noqa: E731
    else:
        hess = _smoothed(plain, laplacian, m)
    w = _later_rounds(p, hess, p.lipschitz + 8.0 * m, firsts[pick], steps, reweight,
                      refit_steps)
    w, b = _finish(p, w, rescale)
    return w, b, p.lam, grid[pick]


def choose_smoothness(x_held: jax.Array, teacher_held: jax.Array, w: jax.Array, b: jax.Array,
                      grid: jax.Array, tolerance: float, relative: float) -> jax.Array:
    """The index [] of the smoothest of G fits that fit held-out neighbours well enough.

    Of the fits (w [G, D, K], b [G, K], at the smoothness values grid [G]) whose squared error
    on the held-out neighbours' (x_held [M, D]) class-centred logits (teacher_held [M, K])
    exceeds the least one by at most ``tolerance`` standard errors (of the mean per-neighbour
    difference from the best fit) plus ``relative`` times the least error, the one of the
    largest smoothness (the first of equals). The standard-error part alone, at 1, is the
    one-standard-error rule (Hastie, Tibshirani & Friedman, 2009, 7.10), which keeps an
    image's choice from following its draw where smoothness costs no significant fit; the
    relative part lets smoothness cost a stated share of the fit, which separates a teacher
    that reads shapes (smoothing costs it little) from one that reads single pixels (it costs
    that one several times its error) better than the standard error does.
    """
    y = teacher_held - jnp.mean(teacher_held, axis=1, keepdims=True)
    err = jnp.mean((jnp.einsum("md,gdk->gmk", x_held, w) + b[:, None] - y) ** 2, axis=2)
    best = jnp.argmin(jnp.mean(err, axis=1))
    diff = err - err[best]  # [G, M] against the best fit
    se = jnp.std(diff, axis=1) / jnp.sqrt(max(x_held.shape[0] - 1, 1))
    ok = jnp.mean(diff, axis=1) <= tolerance * se + relative * jnp.mean(err[best])
    return jnp.argmax(jnp.where(ok, grid, -1.0))


def _dense_laplacian(keep: jax.Array | None, shape: tuple[int, int, int], dtype) -> jax.Array:
    """`grid_laplacian` of the whole grid restricted to the pixels ``keep`` [M] (all pixels
    when None) as a matrix [M, M]: each pixel's in-grid neighbour count on the diagonal, -1 for
    each pair of kept 4-adjacent pixels."""
    h, w, c = shape
    if keep is None:
        keep = jnp.arange(h * w * c)
    near, inside = _grid_neighbours(keep, shape)
    m = keep.shape[0]
    adjacency = jnp.sum(jax.nn.one_hot(near, m + 1, dtype=dtype)[..., :m], axis=1)
    return jnp.diag(jnp.sum(inside, axis=1).astype(dtype)) - adjacency


def _grid_neighbours(keep: jax.Array, shape: tuple[int, int, int]):
    """For pixels ``keep`` [M] of the flattened (H, W, C) grid: (near [M, 4], the slots in
    ``keep`` of each pixel's up, down, left and right neighbours, M where that neighbour is
    outside the grid or not kept; inside [M, 4], whether it is inside the grid)."""
    h, w, c = shape
    m = keep.shape[0]
    row, col = keep // (w * c), (keep // c) % w
    slot = jnp.full((h * w * c,), m, keep.dtype).at[keep].set(jnp.arange(m, dtype=keep.dtype))
    offsets = ((-1, 0), (1, 0), (0, -1), (0, 1))
    inside = jnp.stack([(row + dy >= 0) & (row + dy < h) & (col + dx >= 0) & (col + dx < w)
                        for dy, dx in offsets], axis=1)  # [M, 4]
    near = jnp.stack([slot[jnp.clip(keep + (dy * w + dx) * c, 0, h * w * c - 1)]
                      for dy, dx in offsets], axis=1)
    return jnp.where(inside, near, m), inside


def _screened_laplacian(keep: jax.Array, shape: tuple[int, int, int]):
    """`grid_laplacian` of the whole grid restricted to the pixels ``keep`` [M] (indices into
    the flattened (H, W, C) grid), the others at 0, as a function of their weights [K, M] (the
    iterations' layout): each kept pixel's in-grid neighbour count times its weight, minus its
    kept neighbours' weights. The neighbours are looked up once, so each FISTA step gathers
    M x 4 weights a class instead of scattering the weights into the whole grid and gathering
    them back."""
    near, inside = _grid_neighbours(keep, shape)  # near: the padded weights' slots
    degree = jnp.sum(inside, axis=1)

    def laplacian(z):
        padded = jnp.concatenate([z, jnp.zeros((z.shape[0], 1), z.dtype)], axis=1)
        return degree * z - jnp.sum(padded[:, near], axis=2)
    return laplacian


_LASSO_SETTINGS = ("steps", "refit_steps", "group", "reweight", "shape", "rescale",
                   "ridge_start", "screen")
_lasso_fixed_smooth = jax.jit(_fit_lasso, static_argnames=(*_LASSO_SETTINGS, "smooth"))
_lasso_array_smooth = jax.jit(_fit_lasso, static_argnames=_LASSO_SETTINGS)
_lasso_selected = jax.jit(_fit_lasso_selected,
                          static_argnames=(*_LASSO_SETTINGS, "smooth_grid", "tolerance",
                                           "relative"))
