"""DeepVID explanations, batched: neighbours -> teacher soft labels -> linear student.

`explain_instance` explains one image and is a pure function; `explain_batch` is its `vmap`
over instances (pure, jittable); `explain_images` is the driver that validates input, splits any
number of images into fixed-size chunks (padding the last one, so one compiled program serves
all), shards each chunk's instance axis over the available devices, and gathers the result on
the host.
`deepvid_attribution` is the registered explainer (the contract of `explainers.base`): the
student's weight image of the requested class, for "deepvid" and every variant of it ("noise",
"mask", `FAST`, ...), which differ only in their `ExplainConfig`.

Instance ``i`` of a call always uses the key ``fold_in(key, i)``, so a result does not depend on
the chunk size, the device count, or which other images share the batch.

The module is long because the per-instance program and the blocked batch program are two
orders of the same steps (calibrate, draw and mix, label, distil): they share those pieces and
are read, and must be kept equal (tests), side by side.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from deepvid_jax import validate
from deepvid_jax.driver import map_instances
from deepvid_jax.explainers.base import Attribution, check_inputs
from deepvid_jax.explainers.deepvid.neighbors import (
    NeighborConfig,
    expand_patch_cells,
    latent_codes,
    mixed_rows,
    patch_mix_cells,
    sample_neighbors,
)
from deepvid_jax.explainers.deepvid.radius import (
    calibrate_scale,
    probe_flips,
    probe_noise,
    search_scale,
)
from deepvid_jax.explainers.deepvid.student import StudentConfig, fit_student_selected
from deepvid_jax.metrics import fidelity as metrics
from deepvid_jax.models import vae
from deepvid_jax.models.bundle import Models
from deepvid_jax.models.networks import TeacherApply, VAEConfig


@dataclasses.dataclass(frozen=True)
class ExplainConfig:
    """Everything that shapes an explanation (hashable: it is a static argument of `jit`).

    ``ExplainConfig()`` is DeepVID's default, the registered "deepvid": 512 VAE neighbours (448 to
    fit) at a radius calibrated per image (16 fixed probes in orthonormal directions, a whole basis
    of a 16-d latent space such as the README's VAEs have, and 3 secant steps on the logit of the
    flip fraction against the log radius: a function of the image alone, not of the key) to a soft
    flip fraction of 0.16, at which about a fifth of the plain decodings change the teacher's
    label; the last step's 16 probes are the first 16 fitted neighbours, so the search costs 32
    extra decodings; 70 % of those fitted on take random 2x2
    patches from the instance on a grid shifted per neighbour, so that pixels which move together in
    VAE decodings come apart. The student is the group lasso over classes (a pixel is kept or
    dropped for every class) on the half of the pixels most correlated with the teacher's logits,
    penalty 0.025, reweighted three times (small weights, which on unread pixels are sampling noise,
    penalised more; large ones less), each of the four fits stopped after 30 FISTA iterations, and
    finally rescaled by the one factor that fits the teacher best. The first fit is made twice,
    without and with a smoothness penalty on adjacent pixels' weights (1.5 of the mean pixel
    variance), the smooth one kept unless it costs more than 40 % of the other's held-out error,
    and only the kept one is reweighted, so a teacher that reads strokes gets a smooth map, stable
    across seeds, and one that reads single pixels a per-pixel map; the students are fitted 8
    instances at a time. Chosen on the frontier of seed agreement, leak onto pixels a teacher
    cannot see and time (docs/design/stable-default.md); one smoothness for every image, at
    1,024 neighbours, is `FIXED_SMOOTH`. `NeighborConfig()` and `StudentConfig()` alone are the
    plain VAE sampler and the ridge student: the presets beside this class (`FAST`,
    `FIXED_RADIUS`) are built from them.

    Attributes:
      num_classes: K; the teacher must output K logits.
      vae: architecture of the VAE whose parameters are passed (image shape included).
      neighbors: how neighbours are drawn, and how many (`NeighborConfig.num`).
      student: distillation settings. Giving ``neighbors`` alone keeps the default student
        (the pixel and mask samplers included).
      holdout: of the ``neighbors.num`` neighbours, the last ``holdout`` are not used to fit the
        student and measure its fidelity instead.
      chunk_size: instances per compiled call; bounds device memory whatever the batch.
      block_size: decode and label neighbours this many rows at a time across the chunk's
        instances (None: all at once); bounds the decoder's and teacher's activation memory.
        A calibrated radius's probes are not blocked (probes x instances rows). The default
        measured best on a 2-core CPU (1.8-3.8x the unblocked rate, flat in batch;
        docs/design/blocks.md).
      student_block: fit the students this many instances at a time (a `lax.map` over groups
        of the chunk's instances, vmapped within a group; None: the whole chunk at once). On a
        CPU a small group's Gram matrices stay in cache across the lasso's iterations
        (docs/design/stable-default.md); on an accelerator, where the loop serialises work it
        could run at once, None may be faster (not measured). Used with ``block_size``; with
        ``block_size=None`` the whole per-instance program is vmapped over the chunk.
      return_neighbors: also return the neighbours and the teacher's probabilities on them.
      shard: split each chunk's instances over all local devices when there are several
        accelerators (not over CPU devices: `map_instances`).
    """

    num_classes: int = 10
    vae: VAEConfig = VAEConfig()
    neighbors: NeighborConfig = NeighborConfig(num=512, patch_mix=2, patch_mix_share=0.7,
                                               patch_mix_shift=True, probe_draw="fixed",
                                               calibration_probes=16, calibration="secant",
                                               calibration_steps=3, reuse_probes=True,
                                               target_flip=0.16)
    student: StudentConfig = StudentConfig(method="lasso", lasso=0.025, lasso_group=True,
                                           lasso_reweight=3, steps=30, lasso_rescale=True,
                                           lasso_screen=0.5, lasso_smooth_grid=(0.0, 1.5),
                                           lasso_smooth_tolerance=0.0,
                                           lasso_smooth_relative=0.4)
    holdout: int = 64
    chunk_size: int = 64
    block_size: int | None = 1024
    student_block: int | None = 8
    return_neighbors: bool = False
    shard: bool = True

    def __post_init__(self):
        validate.config(self.vae, VAEConfig, "ExplainConfig.vae")
        validate.config(self.neighbors, NeighborConfig, "ExplainConfig.neighbors")
        validate.config(self.student, StudentConfig, "ExplainConfig.student")
        validate.fields(self, positive_int=("chunk_size", "block_size", "student_block"),
                        nonneg_int=("holdout", "num_classes"))
        if not 1 <= self.holdout < self.neighbors.num:
            raise ValueError(
                f"ExplainConfig.holdout must be in [1, neighbors.num - 1] = "
                f"[1, {self.neighbors.num - 1}], got {self.holdout}."
            )
        if self.num_classes < 2:
            raise ValueError(f"ExplainConfig.num_classes must be >= 2, got {self.num_classes}.")
        band = self.neighbors.latent_band
        if band is not None and len(band) != self.vae.latent_dim:
            raise ValueError(f"NeighborConfig.latent_band has {len(band)} bands; the VAE has "
                             f"latent_dim {self.vae.latent_dim}.")

    @property
    def num_fit(self) -> int:
        """Neighbours used to fit the student."""
        return self.neighbors.num - self.holdout

    def with_samples(self, num: int) -> ExplainConfig:
        """This config with ``num`` neighbours, the held-out share kept (at least one)."""
        validate.integer(num, "num", minimum=2)
        holdout = max(1, round(num * self.holdout / self.neighbors.num))
        return dataclasses.replace(self, neighbors=dataclasses.replace(self.neighbors, num=num),
                                   holdout=min(holdout, num - 1))


Fidelity = metrics.Fidelity  # re-exported: explanations carry one

# Presets beside the default `ExplainConfig()`.
# Ridge over 512 plain VAE neighbours, radius calibrated, solved in closed form: DeepVID's
# fastest (docs/results/bench.md), but on a teacher blind to a region it puts 0.28-0.57 of its
# relevance there (docs/results/ground-truth.md). For users who want DeepVID's fastest
# explanations, not its most truthful ones (registered "deepvid_fast").
FAST = ExplainConfig(neighbors=NeighborConfig(), student=StudentConfig(), holdout=128)
# `FAST` with the latent radius fixed at 1 prior std instead of calibrated per instance
# (registered "deepvid_fixed_radius"): no probe decodes, but the share of neighbours the
# teacher relabels then varies with the data set.
FIXED_RADIUS = ExplainConfig(neighbors=NeighborConfig(latent_scale=1.0),
                             student=StudentConfig(), holdout=128)
# One smoothness (0.2) for every image, at 1,024 neighbours, 35 % patch-mixed with 4x4
# patches, random calibration probes bisected, no screen (docs/design/stable-default.md). Its
# leak is as low, but its maps agree less across seeds (0.66-0.71) and on a teacher that reads
# single pixels 0.39-0.50 of its relevance lies off them.
FIXED_SMOOTH = ExplainConfig(
    neighbors=NeighborConfig(num=1024, patch_mix=4, patch_mix_share=0.35, patch_mix_shift=True),
    student=StudentConfig(method="lasso", lasso=0.02, lasso_group=True, lasso_reweight=3,
                          steps=30, lasso_smooth=0.2, lasso_rescale=True),
    holdout=128)


class Explanation(NamedTuple):
    """One explanation per instance (a pytree; leading axis B when batched).

    Attributes:
      weights: [B, H, W, C, K] the student's weights, one image per class, centred over
        classes.
      bias: [B, K] the student's bias.
      teacher_probs: [B, K] the teacher's probabilities at the instance itself.
      student_probs: [B, K] the student's probabilities at the instance itself.
      fidelity: `Fidelity` of [B] arrays.
      neighbors: [B, N, H, W, C], or None (without ``return_neighbors``).
      neighbor_probs: [B, N, K] the teacher's probabilities on the neighbours, or None.
      penalty: [B] the ridge penalty chosen per instance by GCV (students "ridge" and "kd"),
        the L1 penalty ("lasso"), or None ("adam").
      flip_fraction: [B] the fraction of neighbours the teacher labels otherwise than the
        instance: how far the neighbourhood reaches across decision boundaries.
      scale: [B] the latent scale calibrated per instance (``NeighborConfig.calibrated``), or
        None.
      smooth: [B] the smoothness chosen per instance by held-out fit
        (``StudentConfig.lasso_smooth_grid``), or None.
    """

    weights: jax.Array
    bias: jax.Array
    teacher_probs: jax.Array
    student_probs: jax.Array
    fidelity: Fidelity
    neighbors: jax.Array | None = None
    neighbor_probs: jax.Array | None = None
    penalty: jax.Array | None = None
    flip_fraction: jax.Array | None = None
    scale: jax.Array | None = None
    smooth: jax.Array | None = None

    def class_weights(self, class_idx: jax.Array) -> jax.Array:
        """The weight image of one class per instance: class_idx [B] ints in [0, K) ->
        [B, H, W, C]; DeepVID's attribution for that class."""
        b, k = self.weights.shape[0], self.weights.shape[-1]
        idx = validate.class_indices(class_idx, batch=b, num_classes=k)
        idx = jnp.asarray(idx)[:, None, None, None, None]
        return jnp.take_along_axis(jnp.asarray(self.weights), idx, axis=-1)[..., 0]

    def evidence(self, images: jax.Array, class_idx: jax.Array) -> jax.Array:
        """weights x input for one class per instance: images [B, H, W, C], class_idx [B] ->
        [B, H, W, C] (each pixel's contribution to that class's logit)."""
        images = validate.images(images, image_shape=self.weights.shape[1:-1],
                                 expected_by="the explanation")
        if images.shape[0] != self.weights.shape[0]:
            raise ValueError(f"images has {images.shape[0]} images, the explanation "
                             f"{self.weights.shape[0]}.")
        return self.class_weights(class_idx) * images


def explain_instance(
    image: jax.Array,
    key: jax.Array,
    *,
    teacher_apply: TeacherApply,
    teacher_params,
    vae_params,
    config: ExplainConfig,
) -> Explanation:
    """Explains one image.

    Args:
      image: [H, W, C] float32 in [0, 1].
      key: PRNG key for its neighbours.
      teacher_apply: pure ``(params, images [N, H, W, C]) -> logits [N, K]``.
      teacher_params: the teacher's parameters (any pytree).
      vae_params: VAE parameters (unused by the "pixel" sampler; may be None then).
      config: `ExplainConfig`.

    Returns:
      `Explanation` without the batch axis.
    """
    nc = config.neighbors
    if not nc.calibrated:
        nb = sample_neighbors(image, key, vae_params, nc, config.vae, split=config.num_fit)
        if nc.patch_mix:
            nb = jnp.where(_mix_masks(key, image.shape, config), image[None], nb)
        # One teacher call for the instance and its neighbours.
        both = teacher_apply(teacher_params, jnp.concatenate([image[None], nb]))
        return _distil(image, nb, both[0], both[1:], None, config)
    # The instance's label is needed first, to calibrate the radius around it.
    t_instance = teacher_apply(teacher_params, image[None])[0]
    scale, k_nb, probes = _calibrate(image, key, t_instance, teacher_apply, teacher_params,
                                     vae_params, config)
    nb = sample_neighbors(image, k_nb, vae_params, nc, config.vae, scale=scale,
                          split=config.num_fit)
    nb = jnp.where(_mix_masks(k_nb, image.shape, config), image[None], nb)
    p = reused_probes(config)
    if p:  # the first rows are the probes (the blocked program decodes no others)
        nb = jnp.concatenate([probes[0][:p], nb[p:]])
        t_logits = jnp.concatenate([probes[1][:p], teacher_apply(teacher_params, nb[p:])])
    else:
        t_logits = teacher_apply(teacher_params, nb)
    return _distil(image, nb, t_instance, t_logits, scale, config)


def _mix_cells(key: jax.Array, image_shape, config: ExplainConfig) -> jax.Array:
    """`patch_mix_cells` of one instance's neighbours ([N, cells + 2]; `NeighborConfig.
    patch_mix`, no cell taken without it); its key is ``fold_in(neighbour key, 1)``."""
    nc = config.neighbors
    return patch_mix_cells(jax.random.fold_in(key, 1), nc.num, mixed_rows(nc, config.num_fit),
                           image_shape[0], image_shape[1], max(nc.patch_mix, 1),
                           nc.patch_mix_keep, nc.patch_mix_shift)


def _mix_masks(key: jax.Array, image_shape, config: ExplainConfig) -> jax.Array:
    """[N, H, W, 1] where a neighbour takes the instance's pixels (all False without
    ``patch_mix``): `_mix_cells` expanded."""
    nc = config.neighbors
    return expand_patch_cells(_mix_cells(key, image_shape, config), image_shape[0],
                              image_shape[1], max(nc.patch_mix, 1), nc.patch_mix_shift)


def neighbour_rows(
    images: jax.Array, codes: jax.Array, keys: jax.Array, vae_params, config: ExplainConfig,
) -> tuple[jax.Array, Callable[[jax.Array], jax.Array]]:
    """What `label_in_blocks` turns into VAE neighbours: (rows [B, N, R], generate).

    Args:
      images: [B, H, W, C] the instances; codes: [B, N, Z] their neighbours' latent codes;
      keys: [B] the neighbours' keys (their patch cells come from ``fold_in(key, 1)``).

    Returns:
      rows: the codes, and with ``patch_mix`` each row's instance index and patch cells
      (`patch_mix_cells`: a few dozen numbers, not the H x W mask, so the rows stay small);
      generate: rows [M, R] -> neighbours [M, H, W, C], decoded and mixed with their instance.
    """
    nc = config.neighbors
    z_dim, (h, w) = codes.shape[-1], images.shape[1:3]
    rows = codes
    if nc.patch_mix:
        cells = jax.vmap(lambda k: _mix_cells(k, images.shape[1:], config))(keys)
        index = jnp.broadcast_to(jnp.arange(images.shape[0])[:, None, None],
                                 (*codes.shape[:2], 1))
        rows = jnp.concatenate([codes, index.astype(codes.dtype), cells.astype(codes.dtype)],
                               -1)

    def generate(r):
        decoded = vae.decode(vae_params, r[:, :z_dim], config=config.vae)
        if not nc.patch_mix:
            return decoded
        take = expand_patch_cells(r[:, z_dim + 1:], h, w, max(nc.patch_mix, 1),
                                  nc.patch_mix_shift)
        return jnp.where(take, images[r[:, z_dim].astype(jnp.int32)], decoded)

    return rows, generate


def reused_probes(config: ExplainConfig) -> int:
    """How many of the last calibration step's probes are the first fitted neighbours
    (`NeighborConfig.reuse_probes`): the first ``calibration_probes`` of them, or as many as
    there are fitted neighbours neither patch-mixed nor held out; 0 without the reuse or a
    calibrated radius."""
    validate.config(config, ExplainConfig, "config")
    nc = config.neighbors
    if not (nc.reuse_probes and nc.calibrated):
        return 0
    return min(nc.calibration_probes, mixed_rows(nc, config.num_fit)[0])


def _calibrate(image, key, t_instance, teacher_apply, teacher_params, vae_params,
               config: ExplainConfig):
    """(the calibrated latent scale [], the key of the neighbours, (the last step's probes
    [P, H, W, C], their logits [P, K]) or None when none is reused, `reused_probes`) of one
    instance: the instance's key is split into the probes' key and the neighbours'."""
    k_probe, k_nb = jax.random.split(key)
    reuse = bool(reused_probes(config))
    out = calibrate_scale(
        vae_params, image, k_probe, lambda x: teacher_apply(teacher_params, x),
        jnp.argmax(t_instance), config.neighbors, config.vae, with_last=reuse)
    scale, probes = out if reuse else (out, None)
    return scale, k_nb, probes


def _calibrate_blocked(images, keys, t_instance, teacher_apply, teacher_params, vae_params,
                       config: ExplainConfig):
    """`_calibrate` of a batch (images [B, H, W, C], keys [B], t_instance [B, K]) with each
    search step's B x probes rows decoded and labelled in blocks: the same scales [B],
    neighbour keys [B] and last probes ([B, P, H, W, C], [B, P, K]), in a memory that does not
    grow with B x probes."""
    nc = config.neighbors
    k_probe, k_nb = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)
    mean, logvar = vae.encode(vae_params, images, config=config.vae)  # [B, Z]
    std = jnp.exp(0.5 * logvar) if nc.use_posterior_std else jnp.ones_like(mean)
    eps = jax.vmap(lambda k: probe_noise(k, nc, mean.shape[-1]))(k_probe)  # [B, P, Z]
    label = jnp.argmax(t_instance, -1)
    reuse = bool(reused_probes(config))

    def flips(scale):  # [B] -> [B]
        z = mean[:, None] + scale[:, None, None] * std[:, None] * eps
        x, logits = label_in_blocks(z, lambda r: vae.decode(vae_params, r, config=config.vae),
                                    teacher_apply, teacher_params, config.block_size)
        fraction = jnp.mean(probe_flips(logits, label[:, None], nc), axis=1)
        return fraction, ((x, logits) if reuse else None)

    scale, probes = search_scale(flips, nc, shape=(images.shape[0],), with_last=True)
    return scale, k_nb, probes


def _distil(image, nb, t_instance, t_logits, scale, config: ExplainConfig) -> Explanation:
    """The student of one instance from its labelled neighbours: image [H, W, C], nb
    [N, H, W, C], t_instance [K], t_logits [N, K]."""
    x = nb.reshape(nb.shape[0], -1)
    n = config.num_fit
    w, b, penalty, smooth = fit_student_selected(x[:n], t_logits[:n], x[n:], t_logits[n:],
                                                 config.student, image.shape)
    s_hold = x[n:] @ w + b
    fidelity = metrics.fidelity(t_logits[n:], s_hold)
    return Explanation(
        weights=w.reshape(*image.shape, -1),
        bias=b,
        teacher_probs=jax.nn.softmax(t_instance),
        student_probs=jax.nn.softmax(image.reshape(-1) @ w + b),
        fidelity=fidelity,
        neighbors=nb if config.return_neighbors else None,
        neighbor_probs=jax.nn.softmax(t_logits) if config.return_neighbors else None,
        penalty=None if config.student.method == "adam" else penalty,
        flip_fraction=jnp.mean(jnp.argmax(t_logits, -1) != jnp.argmax(t_instance)),
        scale=scale,
        smooth=smooth if config.student.lasso_smooth_grid else None,
    )


def student_fidelity(
    weights: jax.Array, bias: jax.Array, neighbors: jax.Array, teacher_logits: jax.Array
) -> metrics.Fidelity:
    """Fidelity of explanations' students on any neighbours, e.g. of another sampler.

    Args:
      weights: [B, H, W, C, K]; bias: [B, K] (an `Explanation`'s).
      neighbors: [B, N, H, W, C]; teacher_logits: [B, N, K] the teacher's on them.

    Returns:
      `metrics.Fidelity` of [B] arrays.
    """
    validate.array(weights, "weights", ndim=5)
    b, k = weights.shape[0], weights.shape[-1]
    validate.array(bias, "bias", shape=(b, k))
    validate.array(neighbors, "neighbors", shape=(b, None, *weights.shape[1:-1]))
    n = neighbors.shape[1]
    validate.array(teacher_logits, "teacher_logits", shape=(b, n, k))
    w = weights.reshape(b, -1, weights.shape[-1])
    s = jnp.einsum("bnd,bdk->bnk", neighbors.reshape(b, n, -1), w) + bias[:, None, :]
    return metrics.fidelity(teacher_logits, s)


@functools.partial(jax.jit, static_argnames=("teacher_apply", "config"))
def explain_batch(
    images: jax.Array,
    keys: jax.Array,
    *,
    teacher_apply: TeacherApply,
    teacher_params,
    vae_params,
    config: ExplainConfig,
) -> Explanation:
    """`explain_instance` over images [B, H, W, C] and keys [B]; one jitted program.

    With ``config.block_size``, the neighbours of all B instances
    are decoded and labelled by the teacher ``block_size`` rows at a time (a `lax.map` over
    blocks of the flattened B x N rows) instead of all at once, so the decoder's and teacher's
    activations take the memory of one block whatever the batch; the sampling and the students
    stay vmapped over instances (as do a calibrated radius's probes). Same numbers as the vmap
    up to float reassociation.
    """
    if config.block_size is None:
        fn = functools.partial(
            explain_instance, teacher_apply=teacher_apply, teacher_params=teacher_params,
            vae_params=vae_params, config=config,
        )
        return jax.vmap(fn)(images, keys)
    nc = config.neighbors
    t_instance = teacher_apply(teacher_params, images)
    scale = probes = None
    if nc.calibrated:  # the probes in blocks too, then the neighbours
        scale, keys, probes = _calibrate_blocked(images, keys, t_instance, teacher_apply,
                                                 teacher_params, vae_params, config)
    if nc.sampler == "vae":
        fixed = nc.latent_scale if scale is None else None
        rows = jax.vmap(lambda im, k, s: latent_codes(
            vae_params, im, k, num=nc.num, scale=fixed if s is None else s,
            use_posterior_std=nc.use_posterior_std, band=nc.latent_band,
            vae_config=config.vae, draw=nc.draw, split=config.num_fit))(images, keys, scale)
        rows, generate = neighbour_rows(images, rows, keys, vae_params, config)
    else:
        rows = jax.vmap(lambda im, k: sample_neighbors(im, k, None, nc, config.vae))(images,
                                                                                   keys)

        def generate(x):
            return x
    skip = reused_probes(config)  # rows the probes stand for
    nb, t_logits = label_in_blocks(rows[:, skip:], generate, teacher_apply, teacher_params,
                                   config.block_size)
    if skip:
        nb, t_logits = (jnp.concatenate([p[:, :skip], q], 1)
                        for p, q in zip(probes, (nb, t_logits), strict=True))
    return jax.lax.map(lambda a: _distil(*a, config), (images, nb, t_instance, t_logits, scale),
                       batch_size=config.student_block or images.shape[0])


def deepvid_attribution(params, images, classes, keys, *, models: Models,
                        config: ExplainConfig = ExplainConfig()) -> Attribution:
    """DeepVID (and its noise / mask / `FAST` variants) as an explainer: the student's weight
    image of the requested class.

    Args:
      params: ``{"teacher": ..., "vae": ...}`` (`Models.params`).
      images: [B, H, W, C] in [0, 1] (the VAE's image shape for the "vae" sampler).
      classes: [B] in [0, K), K = ``models.num_classes``.
      keys: [B] PRNG keys, instance i's neighbours from ``keys[i]``.
      models: `Models` (its ``num_classes`` and VAE config replace ``config``'s).
      config: `ExplainConfig`.

    Returns:
      `Attribution`: [B, H, W, C]; extras ``weights`` [B, H, W, C, K], ``bias``,
      ``teacher_probs``, ``student_probs`` [B, K], ``flip_fraction``, ``fidelity_*`` [B] and,
      when the student or sampler gives them, ``penalty``, ``scale`` and ``smooth`` [B].

    Raises:
      ValueError: a "vae" sampler without a VAE in ``models``, or malformed images, classes,
        keys or config (values checked when concrete).
    """
    validate.config(config, ExplainConfig, "config")
    vae_sampler = config.neighbors.sampler == "vae"
    if vae_sampler and models.vae_config is None:
        raise ValueError("DeepVID's 'vae' sampler needs a VAE: Models(vae_params=..., "
                         "vae_config=...) (deepvid train-vae).")
    images, classes = check_inputs(
        images, classes, keys, models=models, config=config, config_type=ExplainConfig,
        image_shape=models.vae_config.image_shape if vae_sampler else None,
        expected_by="the VAE")
    config = dataclasses.replace(config, num_classes=models.num_classes,
                                 vae=models.vae_config or config.vae)
    e = explain_batch(jnp.asarray(images), keys, teacher_apply=models.teacher_apply,
                      teacher_params=params["teacher"], vae_params=params["vae"], config=config)
    extras = {"weights": e.weights, "bias": e.bias, "teacher_probs": e.teacher_probs,
              "student_probs": e.student_probs, "flip_fraction": e.flip_fraction,
              **{f"fidelity_{k}": v for k, v in e.fidelity._asdict().items()}}
    extras.update({k: v for k, v in (("penalty", e.penalty), ("scale", e.scale),
                                     ("smooth", e.smooth)) if v is not None})
    idx = jnp.asarray(classes, jnp.int32)[:, None, None, None, None]
    return Attribution(jnp.take_along_axis(e.weights, idx, axis=-1)[..., 0], extras)


def label_in_blocks(
    rows: jax.Array, generate: Callable[[jax.Array], jax.Array], teacher_apply: TeacherApply,
    teacher_params, block_size: int,
) -> tuple[jax.Array, jax.Array]:
    """Neighbours and the teacher's logits on them, ``block_size`` rows at a time.

    Args:
      rows: [B, N, ...] what ``generate`` turns into images (latent codes, or the images).
      generate: rows [M, ...] -> images [M, H, W, C] (the VAE's decoder, or the identity).

    Returns:
      (neighbours [B, N, H, W, C], logits [B, N, K]); the flattened B x N rows go through
      `lax.map` in blocks (the last padded with zeros), so activations take one block's memory.
    """
    b, n = rows.shape[:2]
    flat = rows.reshape(b * n, *rows.shape[2:])
    block = min(block_size, flat.shape[0])  # never pad a small chunk up to a block
    blocks = -(-flat.shape[0] // block)
    pad = blocks * block - flat.shape[0]
    flat = jnp.concatenate([flat, jnp.zeros((pad, *flat.shape[1:]), flat.dtype)])

    def label(x):
        x = generate(x)
        return x, teacher_apply(teacher_params, x)

    nb, logits = jax.lax.map(label, flat.reshape(blocks, block, *flat.shape[1:]))
    nb = nb.reshape(blocks * block, *nb.shape[2:])[: b * n]
    logits = logits.reshape(blocks * block, -1)[: b * n]
    return nb.reshape(b, n, *nb.shape[1:]), logits.reshape(b, n, -1)


def explain_images(
    images,
    key: jax.Array,
    *,
    teacher_apply: TeacherApply,
    teacher_params,
    vae_params,
    config: ExplainConfig = ExplainConfig(),
    progress: bool = False,
) -> Explanation:
    """Explains every image, in chunks of ``config.chunk_size``, sharded over local devices.

    Args:
      images: [B, H, W, C] float in [0, 1] (numpy or jax).
      key: PRNG key; instance i uses ``fold_in(key, i)``.
      teacher_apply: pure ``(params, images) -> logits [N, K]``; to explain a non-JAX model,
        wrap it with `dv.callback_teacher`.
      teacher_params: its parameters.
      vae_params: VAE parameters (None is allowed with the "pixel" sampler).
      config: `ExplainConfig`.
      progress: show a progress bar over chunks.

    Returns:
      `Explanation` of numpy arrays with leading axis B.

    Raises:
      ValueError: on malformed images (rank, channels, dtype, NaN, range), a teacher whose
        output on a probe batch is not finite float logits [N, num_classes], or explanations
        that come out non-finite (the teacher gave NaN/inf on some neighbours).
    """
    validate.config(config, ExplainConfig, "config")
    vae_sampler = config.neighbors.sampler == "vae"
    arr = validate.images(images, image_shape=config.vae.image_shape if vae_sampler else None,
                          expected_by="the VAE")
    if vae_sampler and vae_params is None:
        raise ValueError("The 'vae' sampler needs vae_params.")
    validate.teacher(teacher_apply, teacher_params, arr, num_classes=config.num_classes)

    def fn(params, x, keys):
        return explain_batch(x, keys, teacher_apply=teacher_apply, teacher_params=params[0],
                             vae_params=params[1], config=config)

    return map_instances(fn, (teacher_params, vae_params), arr, key,
                         chunk_size=config.chunk_size, shard=config.shard, progress=progress,
                         check=_finite_explanations)


def _finite_explanations(e: Explanation, start: int) -> None:
    """A NaN/inf teacher output on some neighbours poisons the student: say so, do not return
    NaN weights with a plausible fidelity."""
    rows = validate.nonfinite_rows(e.weights, e.bias, e.fidelity.kl, start=start)
    if rows:
        raise ValueError(f"explanations of images {rows[:10]} are not finite: the teacher "
                         "returned NaN or inf logits on some of their neighbours (or the "
                         "student diverged); check the teacher on such inputs.")
