"""Neuron consistency (Dong, Su, Zhu, Bao 2017): do a neuron's top images share one concept, on
real images and on adversarial ones alike?

The metric. For a neuron n, take its ``k`` most activating images in a pool of real images and
its ``k`` most activating images in a pool of adversarial images; let p_real, p_adv in the
simplex over concepts be the concept frequencies among them (an adversarial image's concept is
the concept of the real image it was made from: what a person sees in it). The paper scores a
neuron by the quadratic form ``consis(n) = p^T A p`` with A a concept-affinity matrix (WordNet
similarity of ImageNet classes). Here:
- ``joint``: p = (p_real + p_adv) / 2, the frequencies over the union of the 2k images;
  ``joint = p^T A p``. The main number: 1 when real and adversarial top images all show one
  concept; it falls when the neuron's adversarial top images show other concepts than its real
  ones, or when either is mixed.
- ``real``, ``adversarial``: the same form on each pool alone.
- ``agreement``: ``p_real^T A p_adv``, how much the two pools' concepts coincide.
Dead neurons (constant on a pool, e.g. a ReLU that never fires) have no top images and get
NaN. Departure from the paper: digits and Kuzushiji characters have no WordNet hierarchy, so A is
the identity by default (then p^T p is the probability that two of the top images, drawn at
random, share a concept; its floor is 1 / K); any affinity matrix can be passed.

Adversarial consistent training adds to the cross-entropy on clean and adversarial images a
term pulling the adversarial image's representation at one layer towards the clean one's
(`consistency_loss`; a relative squared distance, a documented departure from a plain L2).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from deepvid_jax import driver, validate
from deepvid_jax.models.networks import Teacher, TeacherConfig


def layer_names(config: TeacherConfig) -> list[str]:
    """The Teacher's hidden layers whose neurons can be analysed, bottom to top."""
    return [*(f"conv{i}" for i in range(len(config.features))), "dense"]


def logits_and_features(
    params, images: jax.Array, *, config: TeacherConfig, layer: str = "dense", pool: bool = True
) -> tuple[jax.Array, jax.Array]:
    """One Teacher forward pass giving both its logits [B, K] and the post-ReLU activations of
    one layer (flax ``capture`` of its sown features).

    Args:
      params: Teacher parameters.
      images: [B, H, W, C] in [0, 1].
      config: its `TeacherConfig`.
      layer: one of `layer_names`.
      pool: average conv feature maps over space, giving one value per channel (neuron).

    Returns:
      (logits [B, K], features [B, F] (dense, or pooled conv) or [B, h, w, F] (conv,
      pool=False)).
    """
    names = layer_names(config)
    if layer not in names:
        raise ValueError(f"layer {layer!r} is not one of the teacher's layers {names}.")
    logits, state = Teacher(config).apply({"params": params}, images, mutable=["intermediates"])
    feats = state["intermediates"][f"{layer}_features"][0]
    if pool and feats.ndim == 4:
        feats = jnp.mean(feats, axis=(1, 2))
    return logits, feats


def layer_features(
    params, images: jax.Array, *, config: TeacherConfig, layer: str = "dense", pool: bool = True
) -> jax.Array:
    """The activations of `logits_and_features` alone: [B, F] or [B, h, w, F]."""
    return logits_and_features(params, images, config=config, layer=layer, pool=pool)[1]


def top_k_concepts(
    activations: jax.Array, concepts: jax.Array, k: int, num_concepts: int
) -> tuple[jax.Array, jax.Array]:
    """Each neuron's top-k images and their concept frequencies.

    Args:
      activations: [P, F] over a pool of P images.
      concepts: [P] int concept of each image.
      k: images per neuron.
      num_concepts: K.

    Returns:
      (indices [F, k] into the pool, most activating first; frequencies [F, K], rows sum to 1).
    """
    activations = validate.array(activations, "activations", ndim=2)
    concepts = _concepts(concepts, activations.shape[0], num_concepts, "concepts")
    validate.integer(k, "k", minimum=1)
    if not 1 <= k <= activations.shape[0]:
        raise ValueError(f"k must be in [1, pool size {activations.shape[0]}], got {k}.")
    _, idx = jax.lax.top_k(activations.T, k)  # [F, k]
    freq = jnp.mean(jax.nn.one_hot(jnp.asarray(concepts)[idx], num_concepts), axis=1)
    return idx, freq


class NeuronConsistency(NamedTuple):
    """Per neuron [F]: ``joint`` (the main score), ``real``, ``adversarial``, ``agreement`` (see
    the module docstring), NaN for dead neurons; ``alive``: [F] bool, the neuron's activation
    varies over both pools (a constant neuron has no top images: its "top-k" would be an
    arbitrary tie-break); ``real_top``, ``adversarial_top``: [F, k] pool indices."""

    joint: jax.Array
    real: jax.Array
    adversarial: jax.Array
    agreement: jax.Array
    alive: jax.Array
    real_top: jax.Array
    adversarial_top: jax.Array


def neuron_consistency(
    real_activations: jax.Array,
    real_concepts: jax.Array,
    adversarial_activations: jax.Array,
    adversarial_concepts: jax.Array,
    *,
    k: int = 20,
    num_concepts: int = 10,
    affinity: jax.Array | None = None,
) -> NeuronConsistency:
    """Consistency of every neuron of a layer: [P, F] activations and [P] concepts per pool.

    Args:
      real_activations, adversarial_activations: [P_real, F], [P_adv, F].
      real_concepts, adversarial_concepts: [P_real], [P_adv] ints in [0, num_concepts).
      k: top images per neuron and pool.
      num_concepts: K.
      affinity: [K, K] concept affinity A (symmetric, 1 on the diagonal); default identity.

    Returns:
      `NeuronConsistency`.

    Raises:
      ValueError: non-finite or mis-shaped activations, concept labels whose count differs from
        the pool's or that fall outside [0, num_concepts), a bad k or affinity.
    """
    validate.integer(num_concepts, "num_concepts", minimum=2)
    real_activations = validate.array(real_activations, "real_activations", ndim=2)
    adversarial_activations = validate.array(adversarial_activations, "adversarial_activations",
                                             ndim=2)
    real_concepts = _concepts(real_concepts, real_activations.shape[0], num_concepts,
                              "real_concepts")
    adversarial_concepts = _concepts(adversarial_concepts, adversarial_activations.shape[0],
                                     num_concepts, "adversarial_concepts")
    if real_activations.shape[1] != adversarial_activations.shape[1]:
        raise ValueError(f"real and adversarial activations have different neuron counts: "
                         f"{real_activations.shape[1]} vs {adversarial_activations.shape[1]}.")
    a = jnp.eye(num_concepts) if affinity is None else jnp.asarray(
        validate.array(affinity, "affinity", shape=(num_concepts, num_concepts)))
    ri, rp = top_k_concepts(real_activations, real_concepts, k, num_concepts)
    ai, ap = top_k_concepts(adversarial_activations, adversarial_concepts, k, num_concepts)

    def form(p, q):
        return jnp.einsum("fi,ij,fj->f", p, a, q)

    joint = 0.5 * (rp + ap)
    alive = (jnp.ptp(real_activations, axis=0) > 0) & (jnp.ptp(adversarial_activations, axis=0) > 0)

    def mask(v):
        return jnp.where(alive, v, jnp.nan)

    return NeuronConsistency(mask(form(joint, joint)), mask(form(rp, rp)), mask(form(ap, ap)),
                             mask(form(rp, ap)), alive, ri, ai)


def _concepts(concepts, pool: int, num_concepts: int, name: str):
    """Concept labels [P] of a pool of P images: ints in [0, num_concepts)."""
    return validate.class_indices(concepts, batch=pool, num_classes=num_concepts, name=name)


def consistency_loss(clean_features: jax.Array, adversarial_features: jax.Array) -> jax.Array:
    """Relative squared distance of each adversarial representation from its clean one,
    averaged over images: mean_b ||phi(x_adv) - sg(phi(x))||^2 / (||sg(phi(x))||^2 + 1e-6).

    The clean side is held fixed (``stop_gradient``): the term pulls the adversarial
    representation towards the clean one, not the reverse. It is relative, not absolute,
    because both sides come from the same weights: an absolute distance is minimised by
    shrinking every activation towards zero (measured: with weight 1 on MNIST it collapsed
    clean accuracy to 61 %), a relative one only by making them agree. [B, ...] x2 -> scalar;
    zero exactly when the two coincide.
    """
    if clean_features.shape != adversarial_features.shape:
        raise ValueError(f"clean and adversarial features must have one shape; got "
                         f"{list(clean_features.shape)} and {list(adversarial_features.shape)}.")
    clean = jax.lax.stop_gradient(clean_features).reshape(clean_features.shape[0], -1)
    diff = adversarial_features.reshape(clean.shape) - clean
    return jnp.mean(jnp.sum(diff**2, axis=1) / (jnp.sum(clean**2, axis=1) + 1e-6))


def pool_activations(
    params, images, *, config: TeacherConfig, layer: str, batch_size: int = 1000
) -> np.ndarray:
    """`layer_features` (pooled) over any number of images, in batches: -> numpy [P, F]."""
    images = validate.images(images, image_shape=config.image_shape,
                             expected_by="the teacher config")
    if layer not in layer_names(config):
        raise ValueError(f"layer {layer!r} is not one of the teacher's layers "
                         f"{layer_names(config)}.")
    fn = jax.jit(lambda p, x: layer_features(p, x, config=config, layer=layer))
    return driver.map_batches(fn, params, images, batch_size)
