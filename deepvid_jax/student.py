"""The linear student and its distillation: ``logits = x @ W + b`` over flattened pixels.

`fit_student` runs a fixed number of Adam steps inside `lax.scan`, so a fit is a pure function of
(neighbours, teacher logits, config) and `jax.vmap` maps it over instances.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from deepvid_jax import validate


@dataclasses.dataclass(frozen=True)
class StudentConfig:
    """Distillation settings.

    Defaults were chosen by measurement (README): on MNIST with VAE neighbours a grid over
    learning rate {0.02, 0.1}, T {1, 2, 4} and l2 {0, 1} gave the best held-out fidelity at
    lr 0.1, l2 1 (T 2 and 4 within noise); T 4 also recovers a linear teacher exactly where
    T 1 does not (saturated soft labels carry little information).

    Attributes:
      temperature: T; both teacher and student logits are divided by T.
      steps: full-batch Adam steps.
      learning_rate: Adam step size.
      hard_label_weight: weight of cross-entropy on the teacher's argmax labels.
      l1: weight of mean |W| (sparser explanations).
      l2: weight of mean W^2.
    """

    temperature: float = 4.0
    steps: int = 200
    learning_rate: float = 0.1
    hard_label_weight: float = 0.0
    l1: float = 0.0
    l2: float = 1.0

    def __post_init__(self):
        validate.fields(self, positive=("temperature", "learning_rate"), positive_int=("steps",),
                        nonneg=("hard_label_weight", "l1", "l2"))


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
    x: jax.Array, teacher_logits: jax.Array, config: StudentConfig = StudentConfig()
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Distils a linear student from teacher logits on one instance's neighbours.

    Args:
      x: [N, D] flattened neighbours.
      teacher_logits: [N, K].
      config: `StudentConfig`.

    Returns:
      (W [D, K], b [K], final loss). W and b are centred over classes (each row of W and b
      sums to zero): softmax is unchanged by adding one vector to every class, so this picks the
      one representative of the student's equivalence class that does not depend on the
      optimiser's path.
    """
    validate.array(x, "x", ndim=2)
    validate.array(teacher_logits, "teacher_logits", shape=(x.shape[0], None))
    # Optimise on centred inputs (better conditioned; same function class), then fold the
    # centre back into the bias.
    mu = jnp.mean(x, axis=0)
    xc = x - mu
    d, k = x.shape[1], teacher_logits.shape[1]
    params = (jnp.zeros((d, k), x.dtype), jnp.zeros((k,), x.dtype))
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
    return w, b, losses[-1]


def student_logits(w: jax.Array, b: jax.Array, x: jax.Array) -> jax.Array:
    """x [N, D] -> logits [N, K]."""
    return x @ w + b
