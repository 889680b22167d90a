"""Every metric behind one interface, by name, in three kinds (`KINDS`).

- ``"explanation"``: a metric of attributions, given the teacher. Its function is

      fn(params, images [B, H, W, C], attributions [B, H, W, C], classes [B], keys [B], *,
         models, config) -> {output name: [B, ...]}

  (deletion / insertion AUCs, average drop / increase); `score` runs it.
- ``"localisation"``: a metric of attributions against a known region, the same function with
  ``regions`` [B, H, W] bool in place of ``classes`` (relevance mass and rank accuracy, the
  pointing game); `score` runs it with ``regions=``.
- ``"explainer"``: a metric of an explainer, which calls it again on other inputs, keys or
  teachers. Its function is

      fn(explain, params, images, classes, keys, reference, *, models, config)
         -> {output name: [B, ...]}

  with ``explain(params, images, classes, keys) -> attributions [B, H, W, C]`` the registered
  method with its config and ``reference`` the attributions of ``images`` with ``keys`` (or
  None) (max-sensitivity, seed agreement, cascading randomisation); `score_explainer` runs it.

Each function calls the same public, validated metric functions a user calls (`fidelity`,
`localisation`, `stability`, `randomisation`). Every metric is registered in `METRICS` with its
default config and, per scalar output, whether lower or higher is better. `score` and
`score_explainer` run any number of images through the one driver (`driver.map_instances`):
instance i gets ``fold_in(key, i)``, so results equal a loop over instances whatever the chunk
size.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from deepvid_jax import validate
from deepvid_jax.driver import map_batches, map_instances
from deepvid_jax.metrics import fidelity, localisation, randomisation, stability
from deepvid_jax.models.bundle import Models
from deepvid_jax.models.networks import init_teacher

KINDS = ("explanation", "localisation", "explainer")
NEEDS = ("teacher_config",)


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DeletionConfig:
    """Deletion / insertion curves (`fidelity.deletion_insertion`): ``steps`` points after the
    first, pixels replaced by the ``baseline`` image ("zero", "blur", "mean"). Tied pixels go
    in a random order per image (from the image's key), averaged over ``tie_orders`` orders:
    in raster order 38 % of an MNIST Grad-CAM map ties at zero and its top rows would go
    first, moving one image's deletion area by up to 0.11."""

    steps: int = 49
    baseline: str = "zero"
    blur_sigma: float = 2.0
    tie_orders: int = 1

    def __post_init__(self):
        validate.fields(self, positive_int=("steps", "tie_orders"))
        validate.choice(self.baseline, fidelity.BASELINES, "DeletionConfig.baseline")
        validate.number(self.blur_sigma, "DeletionConfig.blur_sigma", low=0.0, low_open=True)


@dataclasses.dataclass(frozen=True)
class LocalisationConfig:
    """How relevance is pooled over channels (`localisation.relevance`): "abs" (the sum of
    |a|, what a heat map shows) or "positive" (the positive part of the channel sum)."""

    pooling: str = "abs"

    def __post_init__(self):
        validate.choice(self.pooling, localisation.POOLINGS, "LocalisationConfig.pooling")


@dataclasses.dataclass(frozen=True)
class SensitivityConfig:
    """Max-sensitivity (`stability.max_sensitivity`): the largest relative change of the
    attribution over ``samples`` draws of uniform noise in an L-inf ball of ``radius``."""

    radius: float = 0.05
    samples: int = 4

    def __post_init__(self):
        validate.fields(self, positive=("radius",), positive_int=("samples",))


@dataclasses.dataclass(frozen=True)
class SeedConfig:
    """Seed agreement (`stability.seed_agreement`) over ``runs`` runs that differ only in the
    key: the reference run's and ``runs - 1`` keys derived from it."""

    runs: int = 3

    def __post_init__(self):
        validate.integer(self.runs, "SeedConfig.runs", minimum=2)


@dataclasses.dataclass(frozen=True)
class RandomisationConfig:
    """Cascading randomisation (`randomisation.cascading_randomisation`): the fresh teacher's
    parameters come from ``PRNGKey(seed)`` (one teacher for every image, whatever the key)."""

    seed: int = 1

    def __post_init__(self):
        validate.fields(self, nonneg_int=("seed",))


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Metric:
    """One registered metric.

    Attributes:
      name: its registry name.
      fn: the batched function of its kind (module docstring), unjitted; `batch` is its jitted
        form (explanation and localisation metrics).
      config: the default config (a frozen dataclass, or None).
      better: scalar output name -> "lower" or "higher"; outputs not named here (curves,
        per-stage values) are kept but not tabulated.
      kind: one of `KINDS`.
      label: a short qualifier for table headers (e.g. the baseline).
      needs: what it needs of the models beyond the teacher, from `NEEDS`.
    """

    name: str
    fn: Callable[..., dict]
    config: Any
    better: dict[str, str]
    kind: str = "explanation"
    label: str = ""
    needs: tuple[str, ...] = ()

    def __post_init__(self):
        validate.choice(self.kind, KINDS, f"Metric {self.name!r} kind")
        for v in self.better.values():
            validate.choice(v, ("lower", "higher"), f"Metric {self.name!r} better")
        for n in self.needs:
            validate.choice(n, NEEDS, f"Metric {self.name!r} needs")

    @functools.cached_property
    def batch(self) -> Callable[..., dict]:
        """``fn`` jitted (``models`` and ``config`` static); explanation and localisation
        metrics only (an explainer metric calls a jitted explainer itself)."""
        if self.kind == "explainer":
            raise ValueError(f"{self.name!r} measures an explainer: it has no jitted batch "
                             "form (score_explainer runs it).")
        return jax.jit(self.fn, static_argnames=("models", "config"))

    def __hash__(self):
        return hash(self.name)


METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Adds ``metric`` to `METRICS` (a name may be registered once)."""
    validate.config(metric, Metric, "metric")
    if metric.name in METRICS:
        raise ValueError(f"a metric named {metric.name!r} is already registered.")
    METRICS[metric.name] = metric
    return metric


def get(name: str) -> Metric:
    """The registered metric called ``name``; a clear error listing the others."""
    validate.choice(name, tuple(METRICS), "metric")
    return METRICS[name]


# --------------------------------------------------------------------------------------------
# The metrics
# --------------------------------------------------------------------------------------------


def _deletion(params, images, attributions, classes, keys, *, models: Models,
              config: DeletionConfig) -> dict:
    return fidelity.deletion_insertion(
        images, attributions, classes, teacher_apply=models.teacher_apply,
        teacher_params=params["teacher"], steps=config.steps, baseline=config.baseline,
        blur_sigma=config.blur_sigma, keys=keys, tie_orders=config.tie_orders)._asdict()


def _average_drop(params, images, attributions, classes, keys, *, models: Models,
                  config: None) -> dict:
    drop, increase = fidelity.average_drop_increase(
        images, jnp.sum(attributions, axis=-1), classes, teacher_apply=models.teacher_apply,
        teacher_params=params["teacher"])
    return {"average_drop": drop, "increase": increase}


def _localisation(name: str, metric: Callable) -> Callable[..., dict]:
    def fn(params, images, attributions, regions, keys, *, models, config: LocalisationConfig):
        return {name: metric(attributions, regions, config.pooling)}

    return fn


def _tagged(keys: jax.Array, tag: int, count: int) -> jax.Array:
    """[count, B] keys derived from instance keys [B]: ``split(fold_in(keys[i], tag))``."""
    return jnp.swapaxes(jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, tag), count))(
        keys), 0, 1)


# Tags of the keys an explainer metric derives from an instance's key (never the key itself,
# which the reference explanation uses).
_NOISE, _RUNS = 1, 2


def _max_sensitivity(explain, params, images, classes, keys, reference, *, models: Models,
                     config: SensitivityConfig) -> dict:
    """Image i's noise from instance key i; every explanation with the instance keys."""
    ms = stability.max_sensitivity(lambda x: explain(params, x, classes, keys), images,
                                   keys=_tagged(keys, _NOISE, 1)[0], radius=config.radius,
                                   samples=config.samples, reference=reference)
    return {"max_sensitivity": ms}


def _seed_agreement(explain, params, images, classes, keys, reference, *, models: Models,
                    config: SeedConfig) -> dict:
    """Run 0 with the instance keys, run r >= 1 with ``_tagged(keys, _RUNS, runs - 1)[r - 1]``."""
    ref = explain(params, images, classes, keys) if reference is None else reference
    runs = [ref] + [explain(params, images, classes, k)
                    for k in _tagged(keys, _RUNS, config.runs - 1)]
    return {"seed_agreement": stability.seed_agreement(jnp.stack([jnp.asarray(r)
                                                                  for r in runs]))}


def _randomisation(explain, params, images, classes, keys, reference, *, models: Models,
                   config: RandomisationConfig) -> dict:
    """Every stage explained with the instance keys; output "spearman" [B, S] per stage
    (`randomisation.teacher_layers`, top first) and its last column."""
    fresh = init_teacher(jax.random.PRNGKey(config.seed), models.teacher_config)
    rho = randomisation.cascading_randomisation(
        lambda tp, x: explain({**params, "teacher": tp}, x, classes, keys), images,
        params["teacher"], fresh, randomisation.teacher_layers(models.teacher_config),
        reference=reference)
    return {"spearman": rho, "spearman_all_layers": rho[:, -1]}


for _b in fidelity.BASELINES:
    register(Metric(f"auc_{_b}", _deletion, DeletionConfig(baseline=_b),
                    {"deletion": "lower", "insertion": "higher"}, label=_b))
register(Metric("average_drop", _average_drop, None,
                {"average_drop": "lower", "increase": "higher"}))
for _name, _fn in (("relevance_mass", localisation.relevance_mass),
                   ("relevance_rank", localisation.relevance_rank_accuracy),
                   ("pointing_game", localisation.pointing_game)):
    register(Metric(_name, _localisation(_name, _fn), LocalisationConfig(), {_name: "higher"},
                    kind="localisation"))
register(Metric("max_sensitivity", _max_sensitivity, SensitivityConfig(),
                {"max_sensitivity": "lower"}, kind="explainer"))
register(Metric("seed_agreement", _seed_agreement, SeedConfig(), {"seed_agreement": "higher"},
                kind="explainer"))
register(Metric("randomisation", _randomisation, RandomisationConfig(),
                {"spearman_all_layers": "lower"}, kind="explainer", needs=("teacher_config",)))


# --------------------------------------------------------------------------------------------
# The entry points
# --------------------------------------------------------------------------------------------


def _config(m: Metric, config: Any) -> Any:
    config = m.config if config is None else config
    if m.config is not None:
        validate.config(config, type(m.config), f"config of metric {m.name!r}")
    elif config is not None:
        raise ValueError(f"metric {m.name!r} takes no config, got {type(config).__name__}.")
    return config


@functools.partial(jax.jit, static_argnames="teacher_apply")
def _argmax(params, images, teacher_apply):
    return jnp.argmax(teacher_apply(params, images), -1)


def _teacher_classes(images: np.ndarray, models: Models) -> np.ndarray:
    """The teacher's argmax [B] on checked images, in chunks by the one driver."""
    return map_batches(lambda p, x: _argmax(p, x, models.teacher_apply), models.teacher_params,
                       images, batch_size=256)


def score(
    name: str,
    images,
    attributions,
    classes=None,
    *,
    models: Models | None = None,
    regions=None,
    config: Any = None,
    key: jax.Array | None = None,
    chunk_size: int = 64,
) -> dict[str, np.ndarray]:
    """The explanation or localisation metric called ``name`` of attributions.

    Args:
      name: a metric in `METRICS` of kind "explanation" or "localisation".
      images: [B, H, W, C] float in [0, 1].
      attributions: [B, H, W, C] finite, for one class per image.
      classes: [B] ints in [0, K): the class each map explains (explanation metrics; default:
        the teacher's). Not read by localisation metrics.
      models: `Models` (explanation metrics: the teacher); not read by localisation metrics.
      regions: [B, H, W] bool, the region each map should point at (localisation metrics
        only).
      config: the metric's config (default: its registered one).
      key: PRNG key (default PRNGKey(0)); instance i uses ``fold_in(key, i)`` (e.g. the
        random order of tied pixels).
      chunk_size: instances per compiled call.

    Returns:
      output name -> numpy [B, ...] (e.g. "deletion", "insertion", "deletion_curve").

    Raises:
      ValueError: unknown metric or one of an explainer (`score_explainer`), a config of the
        wrong type, malformed images, attributions, classes or regions, a missing teacher or
        regions, or a teacher that returns NaN or inf on the perturbed images (naming them).
    """
    m = get(name)
    if m.kind == "explainer":
        raise ValueError(f"{name!r} measures an explainer, not attributions: use "
                         f"score_explainer({name!r}, method, images, ...).")
    config = _config(m, config)
    arr = validate.images(images)
    attr = np.asarray(validate.array(attributions, "attributions", shape=arr.shape), np.float32)
    validate.integer(chunk_size, "chunk_size", minimum=1)
    if m.kind == "localisation":
        if regions is None:
            raise ValueError(f"{name!r} is a localisation metric: it needs regions=[B, H, W] "
                             "bool (the pixels each map should point at).")
        reg = np.asarray(validate.array(regions, "regions", shape=arr.shape[:3],
                                        floating=False))
        if reg.dtype != bool:
            raise ValueError(f"regions must be a bool mask [B, H, W], got dtype {reg.dtype}.")
        params, static, third, check = {}, None, reg, None
    else:
        if regions is not None:
            raise ValueError(f"{name!r} is not a localisation metric: it takes no regions.")
        if models is None:
            raise ValueError(f"{name!r} needs models=Models(...) (the teacher it measures "
                             "against).")
        validate.config(models, Models, "models")
        validate.teacher(models.teacher_apply, models.teacher_params, arr,
                         num_classes=models.num_classes)
        third = (_teacher_classes(arr, models) if classes is None else
                 validate.class_indices(classes, batch=len(arr), num_classes=models.num_classes))
        third = np.asarray(third, np.int32)
        params, static = models.params(), models.static()

        def check(out: dict, start: int) -> None:
            fidelity.require_finite(f"{name} ({', '.join(m.better)})",
                                    *(out[k] for k in m.better), start=start)

    def fn(params, inputs, keys):
        return m.batch(params, *inputs, keys, models=static, config=config)

    return map_instances(fn, params, (arr, attr, third),
                         jax.random.PRNGKey(0) if key is None else key, chunk_size=chunk_size,
                         desc=name, check=check)


def score_explainer(
    name: str,
    method: Any,
    images,
    classes=None,
    key: jax.Array | None = None,
    *,
    models: Models,
    config: Any = None,
    method_config: Any = None,
    reference=None,
    chunk_size: int = 64,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """The explainer metric called ``name`` of the explainer ``method``.

    The explainer runs as `explainers.explain` runs it: image i with the key
    ``fold_in(key, i)``, so ``reference`` (its attributions of ``images``, if already computed)
    is ``dv.explain(method.name, images, classes, key, models=models, config=method_config)``'s.
    Metrics sit below explainers, so the method is passed as the registered object
    (``dv.get("deepvid")``), not by name.

    Args:
      name: a metric in `METRICS` of kind "explainer" ("max_sensitivity", "seed_agreement",
        "randomisation").
      method: a registered explainer, `explainers.Method` (``dv.get(name)``; anything with its
        ``name``, ``config``, ``needs``, ``check`` and jitted ``batch``).
      images: [B, H, W, C] float in [0, 1].
      classes: [B] ints in [0, K), the class explained per image (default: the teacher's).
      key: PRNG key (default PRNGKey(0)).
      models: `Models`.
      config: the metric's config (default: its registered one).
      method_config: the method's config (default: its registered one).
      reference: [B, H, W, C] the method's attributions of ``images`` with ``key`` (saves one
        explanation per image).
      chunk_size: instances per call.
      progress: a progress bar over chunks.

    Returns:
      output name -> numpy [B, ...].

    Raises:
      ValueError: unknown metric, a method that is not a registered explainer, a metric of
        attributions (`score`), configs of the wrong type, models lacking what the method or
        metric needs, malformed images, classes or reference, or non-finite attributions
        (naming the images).
    """
    m = get(name)
    if m.kind != "explainer":
        raise ValueError(f"{name!r} is a metric of attributions, not of an explainer: use "
                         f"score({name!r}, images, attributions, ...).")
    config = _config(m, config)
    validate.config(models, Models, "models")
    if not all(hasattr(method, a) for a in ("name", "config", "needs", "check", "batch")):
        raise ValueError(f"method must be a registered explainer (dv.get(name), an "
                         f"explainers.Method), got {type(method).__name__}"
                         + (f": use dv.get({method!r})." if isinstance(method, str) else "."))
    meth = method
    method_config = meth.config if method_config is None else method_config
    meth.check(models, method_config)
    if "teacher_config" in m.needs and models.teacher_config is None:
        raise ValueError(f"{name!r} re-initialises the teacher's layers: it needs "
                         "Models(teacher_config=...) of a models.Teacher.")
    image_shape = models.vae_config.image_shape if "vae" in meth.needs else None
    arr = validate.images(images, image_shape=image_shape, expected_by="the VAE")
    validate.integer(chunk_size, "chunk_size", minimum=1)
    validate.teacher(models.teacher_apply, models.teacher_params, arr,
                     num_classes=models.num_classes)
    cls = (_teacher_classes(arr, models) if classes is None
           else validate.class_indices(classes, batch=len(arr), num_classes=models.num_classes))
    ref = (None if reference is None else
           np.asarray(validate.array(reference, "reference", shape=arr.shape), np.float32))
    static = models.static()

    def fn(params, inputs, keys):
        x, c, index = inputs[:3]

        def explain(params, images, classes, keys):
            a = meth.batch(params, images, classes, keys, models=static,
                           config=method_config).attributions
            rows = validate.nonfinite_rows(a)
            if rows:
                raise ValueError(
                    f"{meth.name} attributions of images {np.asarray(index)[rows][:10].tolist()} "
                    f"are not finite while measuring {name}: the teacher returned NaN or inf "
                    "on some inputs it was shown.")
            return a

        return m.fn(explain, params, x, c, keys, None if len(inputs) < 4 else inputs[3],
                    models=static, config=config)

    inputs = (arr, np.asarray(cls, np.int32), np.arange(len(arr), dtype=np.int32))
    return map_instances(fn, models.params(), inputs if ref is None else (*inputs, ref),
                         jax.random.PRNGKey(0) if key is None else key, chunk_size=chunk_size,
                         progress=progress, desc=name)
