"""Agreement between a surrogate and its teacher. All functions are pure and batched."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def top1_agreement(student_logits: jax.Array, teacher_logits: jax.Array) -> jax.Array:
    """Fraction of rows whose argmax agrees: [..., N, K] x2 -> [...]."""
    return jnp.mean(jnp.argmax(student_logits, -1) == jnp.argmax(teacher_logits, -1), axis=-1)


def kl_divergence(teacher_logits: jax.Array, student_logits: jax.Array) -> jax.Array:
    """Mean over rows of KL(softmax(teacher) || softmax(student)), in nats: [..., N, K] -> [...]."""
    t = jax.nn.log_softmax(teacher_logits)
    s = jax.nn.log_softmax(student_logits)
    return jnp.mean(jnp.sum(jnp.exp(t) * (t - s), axis=-1), axis=-1)


def probability_r2(teacher_logits: jax.Array, student_logits: jax.Array) -> jax.Array:
    """R^2 of the student's class probabilities against the teacher's, pooled over rows and
    classes: [..., N, K] -> [...]. 1 is perfect; 0 is no better than the teacher's mean."""
    t = jax.nn.softmax(teacher_logits)
    s = jax.nn.softmax(student_logits)
    ss_res = jnp.sum((t - s) ** 2, axis=(-2, -1))
    ss_tot = jnp.sum((t - jnp.mean(t, axis=-2, keepdims=True)) ** 2, axis=(-2, -1))
    return 1.0 - ss_res / jnp.maximum(ss_tot, 1e-12)
