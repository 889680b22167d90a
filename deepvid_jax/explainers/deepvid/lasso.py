"""The sparse student's solver: L1-penalised regression of class-centred teacher logits on pixels
(`fit_lasso`, FISTA), with its options (group over classes, reweighting, a smoothness penalty on
the pixel grid, screening, a ridge start, rescaling), and the pieces it shares with the ridge
student (`ridge_solve`, the centring).

Ridge shares weight between pixels that move together, so on VAE neighbours (which move
correlated pixels together) it gives relevance to pixels the teacher never reads; the L1
penalty keeps one of each correlated group (docs/results/ground-truth.md).
"""

from __future__ import annotations

import functools
import math

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


def _fit_lasso(x, teacher_logits, relative_penalty, smooth, *, steps, refit_steps, group,
               reweight, shape, rescale, ridge_start, screen):
    """`fit_lasso`'s program (arguments as there, validated)."""
    n, d = x.shape
    smoothing = not (isinstance(smooth, (int, float)) and smooth == 0)
    if smoothing:
        shape = _check_shape(shape, d)
    mu_x, mu_y, xc, yc = _centred(x, teacher_logits)
    c = xc.T @ yc / n  # [D, K]
    lam = relative_penalty * (jnp.max(jnp.linalg.norm(c, axis=1)) if group
                              else jnp.max(jnp.abs(c)))
    # The smoothness penalty's weight, relative to the mean pixel variance (the mean eigenvalue
    # of the Gram matrix / N); its Laplacian's largest eigenvalue is below 8.
    mu_s = smooth * jnp.sum(xc * xc) / (n * d) if smoothing else 0.0
    keep = None  # the screened pixels' indices, or None: all
    if screen < 1.0:
        _, keep = jax.lax.top_k(jnp.linalg.norm(c, axis=1), max(1, math.ceil(screen * d)))
        xc, c = xc[:, keep], c[keep]
    m = xc.shape[1]  # the pixels fitted
    if m <= n:
        gram = xc.T @ xc / n
        hess = lambda v: gram @ v  # noqa: E731
    else:
        hess = lambda v: xc.T @ (xc @ v) / n  # noqa: E731

    if smoothing:  # of the whole grid (screened-out pixels at 0)
        laplacian = (functools.partial(grid_laplacian, shape=shape) if keep is None
                     else _screened_laplacian(keep, shape))

    def power(v, _):
        v = hess(v)
        return v / jnp.maximum(jnp.linalg.norm(v), 1e-30), None

    v, _ = jax.lax.scan(power, jnp.ones((m,), x.dtype) / jnp.sqrt(m), None, 30)
    lipschitz = 1.05 * jnp.maximum(v @ hess(v), 1e-12) + 8.0 * mu_s

    def fista(prox):
        def step(carry, _):
            w, z, t = carry
            grad = hess(z) - c + (mu_s * laplacian(z) if smoothing else 0.0)
            w_next = prox(z - grad / lipschitz)
            t_next = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
            return (w_next, w_next + ((t - 1.0) / t_next) * (w_next - w), t_next), None
        return step

    def run(prox, w, count):
        (w, _, _), _ = jax.lax.scan(fista(prox), (w, w, jnp.ones((), x.dtype)), None, count)
        return w

    def shrink(scale):  # the proximal map of the (weighted) penalty, thresholds lam * scale / L
        def prox(u):
            tau = lam * scale / lipschitz
            if group:
                norm = jnp.linalg.norm(u, axis=1, keepdims=True)
                return u * jnp.maximum(1.0 - tau / jnp.maximum(norm, 1e-30), 0.0)
            return jnp.sign(u) * jnp.maximum(jnp.abs(u) - tau, 0.0)
        return prox

    size = (lambda w: jnp.linalg.norm(w, axis=1, keepdims=True)) if group else jnp.abs

    def weights(w):  # s / (|w| + 0.1 s), s the mean non-zero magnitude
        m = size(w)
        # (tiny: a first fit of all zeros, e.g. a constant teacher, stays zero, not NaN)
        s = jnp.maximum(jnp.sum(m) / jnp.maximum(jnp.sum(m > 0), 1), jnp.finfo(x.dtype).tiny)
        return 1.0 / (m / s + 0.1)

    w = jnp.zeros((m, yc.shape[1]), x.dtype)
    first = 1.0 if ridge_start is None else weights(ridge_solve(xc, yc, ridge_start))
    w = run(shrink(first), w, steps)
    if reweight:  # one loop over the rounds: the program holds one copy of a round, not three
        w, _ = jax.lax.scan(lambda w, _: (run(shrink(weights(w)), w, steps), None), w, None,
                            reweight)
    if refit_steps:
        support = (w != 0).astype(x.dtype)
        w = run(lambda u: u * support, w, refit_steps)
    w = w - jnp.mean(w, axis=1, keepdims=True)
    if rescale:  # the least-squares multiple of W (1 where W = 0: nothing to scale)
        fit = xc @ w
        w = w * jnp.where(jnp.any(w != 0),
                          jnp.sum(fit * yc) / jnp.maximum(jnp.sum(fit * fit), 1e-30), 1.0)
    if keep is not None:
        w = jnp.zeros((d, w.shape[1]), w.dtype).at[keep].set(w)
    return w, mu_y - mu_x @ w, lam


def _screened_laplacian(keep: jax.Array, shape: tuple[int, int, int]):
    """`grid_laplacian` of the whole grid restricted to the pixels ``keep`` [M] (indices into
    the flattened (H, W, C) grid), the others at 0, as a function of their weights [M, K]:
    each kept pixel's in-grid neighbour count times its weight, minus its kept neighbours'
    weights. The neighbours are looked up once, so each FISTA step gathers M x 4 rows instead
    of scattering the weights into the whole grid and gathering them back."""
    h, w, c = shape
    m = keep.shape[0]
    row, col = keep // (w * c), (keep // c) % w
    slot = jnp.full((h * w * c,), m, keep.dtype).at[keep].set(jnp.arange(m, dtype=keep.dtype))
    offsets = ((-1, 0), (1, 0), (0, -1), (0, 1))
    inside = jnp.stack([(row + dy >= 0) & (row + dy < h) & (col + dx >= 0) & (col + dx < w)
                        for dy, dx in offsets], axis=1)  # [M, 4]
    near = jnp.stack([slot[jnp.clip(keep + (dy * w + dx) * c, 0, h * w * c - 1)]
                      for dy, dx in offsets], axis=1)
    near = jnp.where(inside, near, m)  # [M, 4]: rows of the padded weights (m: a zero row)
    degree = jnp.sum(inside, axis=1, keepdims=True)

    def laplacian(z):
        padded = jnp.concatenate([z, jnp.zeros((1, z.shape[1]), z.dtype)])
        return degree * z - jnp.sum(padded[near], axis=1)
    return laplacian


_LASSO_SETTINGS = ("steps", "refit_steps", "group", "reweight", "shape", "rescale",
                   "ridge_start", "screen")
_lasso_fixed_smooth = jax.jit(_fit_lasso, static_argnames=(*_LASSO_SETTINGS, "smooth"))
_lasso_array_smooth = jax.jit(_fit_lasso, static_argnames=_LASSO_SETTINGS)
