"""The explorer's compiled programs: every value a person changes is an array argument.

`LivePrograms` holds one jitted program per job (the band explanation while dragging and at
release, the edited code, the traversals, the morph, the projection features). The band, the
instance and the key are traced arrays, so a drag or a new instance reuses the compiled program;
only a new student setting (a static config) compiles a new one, once.

The band explanation repeats `explainers.deepvid.core.explain_batch`'s latent-band branch step
for step with the band as an array, so its numbers equal ``dv.explain("deepvid", image[None],
key=key, config=...)`` with the same band as ``NeighborConfig.latent_band``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from deepvid_jax import validate
from deepvid_jax.explainers.deepvid import core as dv_core
from deepvid_jax.explainers.deepvid.neighbors import interpolate, latent_codes
from deepvid_jax.models import vae
from deepvid_jax.models.bundle import Models

TRAVERSAL_VALUES = (-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0)


def with_neighbors(config: dv_core.ExplainConfig, num: int) -> dv_core.ExplainConfig:
    """``config`` with ``num`` neighbours and its held-out share kept (at least one)."""
    validate.integer(num, "num", minimum=4)
    holdout = max(1, min(num - 2, round(config.holdout * num / config.neighbors.num)))
    return dataclasses.replace(config, neighbors=dataclasses.replace(config.neighbors, num=num),
                               holdout=holdout)


def band_config(config: dv_core.ExplainConfig, num: int | None = None) -> dv_core.ExplainConfig:
    """``config`` as the band programs compile it: no static band (the band is an argument),
    a fixed (unused) scale so nothing is calibrated, neighbours returned for the grid, and
    ``num`` neighbours (the holdout scaled with them) when given."""
    if num is not None:
        config = with_neighbors(config, num)
    nc = dataclasses.replace(config.neighbors, sampler="vae", latent_band=None, latent_scale=1.0)
    return dataclasses.replace(config, neighbors=nc, return_neighbors=True, chunk_size=1)


def explain_band(image: jax.Array, key: jax.Array, band: jax.Array, teacher_params, vae_params,
                 *, teacher_apply, config: dv_core.ExplainConfig) -> tuple[Any, jax.Array]:
    """DeepVID's explanation of one image [H, W, C] with latent offsets drawn uniformly in
    ``band`` [Z, 2] (low, high per dimension; an array, so not compiled in).

    Uses the key ``fold_in(key, 0)``, as `dv.explain` does for its first image. Returns
    (`Explanation` with batch axis 1, the latent codes sampled [1, N, Z])."""
    nc = config.neighbors
    images = image[None]
    keys = jax.random.fold_in(key, 0)[None]
    t_instance = teacher_apply(teacher_params, images)
    rows = jax.vmap(lambda im, k: latent_codes(vae_params, im, k, num=nc.num, scale=1.0,
                                               use_posterior_std=nc.use_posterior_std,
                                               band=band, vae_config=config.vae))(images, keys)
    codes = rows
    rows, generate = dv_core.neighbour_rows(images, rows, keys, vae_params, config)

    if config.block_size is None:
        nb = jax.vmap(generate)(rows)
        t_logits = jax.vmap(lambda x: teacher_apply(teacher_params, x))(nb)
    else:
        nb, t_logits = dv_core.label_in_blocks(rows, generate, teacher_apply, teacher_params,
                                               config.block_size)
    e = jax.vmap(lambda im, n, ti, tl: dv_core._distil(im, n, ti, tl, None, config))(
        images, nb, t_instance, t_logits)
    return e, codes


class LivePrograms:
    """The compiled programs of one explorer session (one set of models).

    Args:
      models: `Models` with a VAE.
      config: the DeepVID `ExplainConfig` explained with (its ``latent_band`` is ignored: the
        band is an argument); default the registered "deepvid" config.
      drag_neighbors: neighbours while a band is being dragged (the full count on release).
    """

    def __init__(self, models: Models, config: dv_core.ExplainConfig | None = None,
                 drag_neighbors: int = 128):
        validate.config(models, Models, "models")
        if models.vae_params is None or models.vae_config is None:
            raise ValueError("the explorer's latent and student views need a VAE (vae/ in "
                             "--checkpoints).")
        validate.integer(drag_neighbors, "drag_neighbors", minimum=4)
        from deepvid_jax.explainers import registry

        base = registry.get("deepvid").config if config is None else config
        validate.config(base, dv_core.ExplainConfig, "config")
        self.models = models
        self.base = dataclasses.replace(base, num_classes=models.num_classes,
                                        vae=models.vae_config)
        self.drag_neighbors = min(drag_neighbors, self.base.neighbors.num)
        self._explain = jax.jit(explain_band, static_argnames=("teacher_apply", "config"))
        self._decode = jax.jit(functools.partial(_decode_classify,
                                                 teacher_apply=models.teacher_apply,
                                                 vae_config=models.vae_config))
        self._traverse = jax.jit(functools.partial(_traverse_classify,
                                                   teacher_apply=models.teacher_apply,
                                                   vae_config=models.vae_config))
        self._morph = jax.jit(functools.partial(_morph_classify,
                                                teacher_apply=models.teacher_apply,
                                                vae_config=models.vae_config),
                              static_argnames="steps")
        self._encode = jax.jit(functools.partial(_encode, vae_config=models.vae_config))

    @property
    def latent_dim(self) -> int:
        return self.models.vae_config.latent_dim

    def config_for(self, full: bool, student=None) -> dv_core.ExplainConfig:
        """The compiled config of a drag (``full`` False) or a release, with ``student``."""
        base = self.base if student is None else dataclasses.replace(self.base, student=student)
        return band_config(base, None if full else self.drag_neighbors)

    def explain(self, image: np.ndarray, key: jax.Array, band: np.ndarray, *, full: bool,
                student=None) -> tuple[Any, np.ndarray]:
        """(`Explanation` of numpy arrays with batch axis 1, sampled codes [N, Z])."""
        e, codes = self._explain(jnp.asarray(image, jnp.float32), key,
                                 jnp.asarray(band, jnp.float32), self.models.teacher_params,
                                 self.models.vae_params, teacher_apply=self.models.teacher_apply,
                                 config=self.config_for(full, student))
        return jax.tree.map(np.asarray, e), np.asarray(codes[0])

    def compilations(self) -> int:
        """How many programs the band explanation has compiled (one per config)."""
        return self._explain._cache_size()

    def encode(self, images: np.ndarray, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """(latent means [B, Z], log-variances [B, Z]) in fixed-size chunks (one program)."""
        out_m, out_v = [], []
        for s in range(0, len(images), chunk):
            x = np.asarray(images[s:s + chunk], np.float32)
            pad = chunk - len(x) if len(images) > chunk else 0
            xp = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
            m, v = self._encode(self.models.vae_params, jnp.asarray(xp))
            out_m.append(np.asarray(m)[:len(x)])
            out_v.append(np.asarray(v)[:len(x)])
        return np.concatenate(out_m), np.concatenate(out_v)

    def decode(self, code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """code [Z] -> (image [H, W, C], teacher probabilities [K])."""
        img, p = self._decode(self.models.teacher_params, self.models.vae_params,
                              jnp.asarray(code, jnp.float32)[None])
        return np.asarray(img[0]), np.asarray(p[0])

    def traverse(self, code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each axis moved by `TRAVERSAL_VALUES` from ``code`` [Z]: (images [Z, V, H, W, C],
        teacher probabilities [Z, V, K])."""
        img, p = self._traverse(self.models.teacher_params, self.models.vae_params,
                                jnp.asarray(code, jnp.float32),
                                jnp.asarray(TRAVERSAL_VALUES, jnp.float32))
        return np.asarray(img), np.asarray(p)

    def morph(self, a: np.ndarray, b: np.ndarray, steps: int = 16
              ) -> tuple[np.ndarray, np.ndarray]:
        """The decoded line between two images' codes: (images [S, H, W, C], probs [S, K])."""
        img, p = self._morph(self.models.teacher_params, self.models.vae_params,
                             jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32),
                             steps=steps)
        return np.asarray(img), np.asarray(p)


def _encode(vae_params, images, *, vae_config):
    return vae.encode(vae_params, images, config=vae_config)


def _decode_classify(teacher_params, vae_params, z, *, teacher_apply, vae_config):
    img = vae.decode(vae_params, z, config=vae_config)
    return img, jax.nn.softmax(teacher_apply(teacher_params, img))


def _traverse_classify(teacher_params, vae_params, code, values, *, teacher_apply, vae_config):
    z_dim = code.shape[0]
    z = (code + jnp.eye(z_dim)[:, None, :] * values[None, :, None]).reshape(-1, z_dim)
    img = vae.decode(vae_params, z, config=vae_config)
    p = jax.nn.softmax(teacher_apply(teacher_params, img))
    return (img.reshape(z_dim, values.shape[0], *img.shape[1:]),
            p.reshape(z_dim, values.shape[0], -1))


def _morph_classify(teacher_params, vae_params, a, b, *, steps, teacher_apply, vae_config):
    img = interpolate(vae_params, a, b, steps, vae_config=vae_config)
    return img, jax.nn.softmax(teacher_apply(teacher_params, img))


def axis_order(traversal_probs: np.ndarray) -> np.ndarray:
    """Latent axes by how much each moves the teacher, most first: traversal probabilities
    [Z, V, K] -> permutation [Z] (total variation of the probabilities along each axis)."""
    p = np.asarray(traversal_probs)
    moved = np.abs(np.diff(p, axis=1)).sum(axis=(1, 2))
    return np.argsort(-moved, kind="stable")


def pearson_agreement(maps: np.ndarray) -> float:
    """Mean pairwise Pearson correlation of maps [R, ...] (R >= 2): DeepVID's stability."""
    m = np.asarray(maps, np.float64).reshape(len(maps), -1)
    if len(m) < 2:
        raise ValueError("agreement needs at least two maps.")
    m = m - m.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(m, axis=1)
    norm[norm == 0] = 1.0
    c = (m @ m.T) / np.outer(norm, norm)
    iu = np.triu_indices(len(m), 1)
    return float(c[iu].mean())
