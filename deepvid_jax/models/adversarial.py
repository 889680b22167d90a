"""Adversarial examples, batched: FGSM (Goodfellow et al. 2015) and L-inf PGD (Madry et al. 2018).

Attacks maximise (untargeted) or minimise (targeted) the cross-entropy of the teacher's logits,
and return images within ``epsilon`` of the originals in L-inf and inside [0, 1]. Each image's
loss only depends on itself, so attacking a batch equals attacking its images one by one
(random starts are drawn per image from ``fold_in(key, i)``).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from deepvid_jax import driver, validate
from deepvid_jax.models.networks import TeacherApply

ATTACKS = ("fgsm", "pgd")


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """An L-inf attack.

    Attributes:
      method: "fgsm" (one signed-gradient step of size epsilon) or "pgd" (``steps`` signed
        steps of ``step_size``, projected back onto the epsilon ball and [0, 1] after each).
      epsilon: L-inf radius, in pixel units of [0, 1] images.
      steps: PGD iterations.
      step_size: PGD step; None means 2.5 * epsilon / steps (Madry et al.'s rule of thumb).
      random_start: PGD starts from a uniform point of the ball (FGSM: from the image).
      targeted: move towards the given labels instead of away from them.
    """

    method: str = "pgd"
    epsilon: float = 0.1
    steps: int = 10
    step_size: float | None = None
    random_start: bool = True
    targeted: bool = False

    def __post_init__(self):
        validate.choice(self.method, ATTACKS, "AttackConfig.method")
        validate.fields(self, probability=("epsilon",), positive_int=("steps",),
                        positive=("step_size",), boolean=("random_start", "targeted"))

    @property
    def alpha(self) -> float:
        """The PGD step size actually used."""
        return self.step_size if self.step_size is not None else 2.5 * self.epsilon / self.steps


def _loss_grad(teacher_apply, params, images, labels):
    # Summed (not averaged) so that each image's gradient is independent of the batch size.
    def loss(x):
        logits = teacher_apply(params, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()

    return jax.grad(loss)(images)


def project(adv: jax.Array, images: jax.Array, epsilon: float) -> jax.Array:
    """Clips ``adv`` into the L-inf ball of radius epsilon around ``images`` and into [0, 1]."""
    return jnp.clip(jnp.clip(adv, images - epsilon, images + epsilon), 0.0, 1.0)


def fgsm(
    teacher_apply: TeacherApply, params, images: jax.Array, labels: jax.Array, *,
    epsilon: float, targeted: bool = False,
) -> jax.Array:
    """Fast gradient sign method: images [B, H, W, C] in [0, 1], labels [B] -> [B, H, W, C].

    ``labels`` are the true labels (untargeted) or the targets (targeted). `attack` with
    ``AttackConfig(method="fgsm")``.
    """
    validate.number(epsilon, "epsilon", low=0.0, high=1.0)
    return attack(images, labels, jax.random.PRNGKey(0), teacher_apply=teacher_apply,
                  teacher_params=params,
                  config=AttackConfig(method="fgsm", epsilon=epsilon, targeted=targeted))


def pgd(
    teacher_apply: TeacherApply, params, images: jax.Array, labels: jax.Array, key: jax.Array, *,
    epsilon: float, steps: int = 10, step_size: float | None = None, random_start: bool = True,
    targeted: bool = False,
) -> jax.Array:
    """Projected gradient descent in L-inf: -> [B, H, W, C], within epsilon and in [0, 1].
    Image ``i``'s random start is drawn from ``fold_in(key, i)``. `attack` with
    ``AttackConfig(method="pgd")``."""
    validate.number(epsilon, "epsilon", low=0.0, high=1.0)
    validate.integer(steps, "steps", minimum=1)
    if step_size is not None:
        validate.number(step_size, "step_size", low=0.0, low_open=True)
    return attack(images, labels, key, teacher_apply=teacher_apply, teacher_params=params,
                  config=AttackConfig(method="pgd", epsilon=epsilon, steps=steps,
                                      step_size=step_size, random_start=random_start,
                                      targeted=targeted))


def _fgsm(teacher_apply, params, images, labels, *, epsilon, targeted):
    """`fgsm`, unchecked."""
    sign = -1.0 if targeted else 1.0
    g = _loss_grad(teacher_apply, params, images, labels)
    return project(images + sign * epsilon * jnp.sign(g), images, epsilon)


def _pgd(teacher_apply, params, images, labels, keys, *, epsilon, steps, step_size,
         random_start, targeted):
    """`pgd` with one key per image (keys [B]), unchecked."""
    alpha = step_size if step_size is not None else 2.5 * epsilon / steps
    sign = -1.0 if targeted else 1.0
    adv = images
    if random_start:
        noise = jax.vmap(lambda k, x: jax.random.uniform(k, x.shape, x.dtype, -epsilon, epsilon))(
            keys, images)
        adv = project(images + noise, images, epsilon)

    def body(_, adv):
        g = _loss_grad(teacher_apply, params, adv, labels)
        return project(adv + sign * alpha * jnp.sign(g), images, epsilon)

    return jax.lax.fori_loop(0, steps, body, adv)


def attack(
    images: jax.Array, labels: jax.Array, key: jax.Array, *, teacher_apply: TeacherApply,
    teacher_params, config: AttackConfig = AttackConfig(),
) -> jax.Array:
    """The configured attack: images [B, H, W, C] in [0, 1], labels [B] in [0, K) ->
    adversarial images [B, H, W, C]. Usable inside jitted code (then only shapes are checked).

    Raises:
      ValueError: malformed images (e.g. 0-255 pixels, which would leave epsilon meaningless)
        or labels, or a teacher that does not give finite float logits.
    """
    validate.config(config, AttackConfig, "config")
    images, labels = validate.images_and_classes(images, labels, teacher_apply, teacher_params,
                                                 name="labels")
    keys = driver.instance_keys(key, 0, images.shape[0])
    return _attack(teacher_params, images, labels, keys, teacher_apply=teacher_apply,
                   config=config)


@functools.partial(jax.jit, static_argnames=("teacher_apply", "config"))
def _attack(
    teacher_params, images: jax.Array, labels: jax.Array, keys: jax.Array, *,
    teacher_apply: TeacherApply, config: AttackConfig = AttackConfig(),
) -> jax.Array:
    """`attack` without the checks, jitted, with one key per image (keys [B]): the driver's
    contract, so a chunk's results do not depend on the chunk."""
    labels = jnp.asarray(labels, jnp.int32)
    if config.method == "fgsm":
        return _fgsm(teacher_apply, teacher_params, images, labels, epsilon=config.epsilon,
                     targeted=config.targeted)
    return _pgd(teacher_apply, teacher_params, images, labels, keys, epsilon=config.epsilon,
                steps=config.steps, step_size=config.alpha, random_start=config.random_start,
                targeted=config.targeted)


def attack_dataset(
    images, labels, key: jax.Array, *, teacher_apply: TeacherApply, teacher_params,
    config: AttackConfig = AttackConfig(), batch_size: int = 500,
):
    """`attack` over any number of images [N, H, W, C] in batches of ``batch_size`` by the
    driver (`driver.map_instances`: the last batch padded, one compiled program, sharded over
    accelerators); image ``i`` draws its random start from ``fold_in(key, i)``, so the result
    equals `attack` on all the images at once, whatever the batch size. Returns numpy
    [N, H, W, C]. Everything is checked once, before the first batch."""
    validate.config(config, AttackConfig, "config")
    images, labels = validate.images_and_classes(images, labels, teacher_apply, teacher_params,
                                                 name="labels")
    validate.integer(batch_size, "batch_size", minimum=1)
    fn = functools.partial(_attack, teacher_apply=teacher_apply, config=config)
    return driver.map_instances(lambda p, xy, keys: fn(p, xy[0], xy[1], keys), teacher_params,
                                (np.asarray(images), np.asarray(labels)), key,
                                chunk_size=batch_size)
