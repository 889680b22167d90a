"""One explorer session: the dataset, the models, what the page asks for and its checks.

`Session` answers the page's requests (`Session.handle`, one operation name and a JSON-like
message) with JSON-able dicts. Every request is validated before any work: the page can name an
instance only by its index in the session's dataset, and a bad value (an index out of range,
a non-finite number, a band whose low end exceeds its high end) raises `RequestError` with a
message for the page, never a traceback.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from deepvid_jax import files, validate, viz
from deepvid_jax.data.sources import Dataset
from deepvid_jax.explainers import registry
from deepvid_jax.explainers.deepvid.student import StudentConfig
from deepvid_jax.explore import programs
from deepvid_jax.models.bundle import Models

STUDENTS = ("lasso", "ridge", "kd")
MAX_BAND = 8.0  # prior units: further out the decoder is extrapolating
MAX_SEED = 2**31 - 1
MAX_STABILITY_RUNS = 8
NEIGHBOURS_SHOWN = 24


class RequestError(ValueError):
    """A request the page made that cannot be answered as asked (shown in the page)."""


def _b64(images: np.ndarray) -> str:
    """images in [0, 1] -> base64 of their uint8 bytes (the page draws them on Canvas)."""
    return base64.b64encode(np.clip(np.round(np.asarray(images) * 255), 0, 255)
                            .astype(np.uint8).tobytes()).decode()


def _floats(a, digits: int = 5) -> Any:
    return np.round(np.asarray(a, np.float64), digits).tolist()


def _index(value, n: int, name: str = "index") -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or value != int(value):
        raise RequestError(f"{name} must be a whole number, got {value!r}.")
    if not 0 <= int(value) < n:
        raise RequestError(f"{name} {int(value)} is out of range: the dataset has {n} "
                           f"instances (0 to {n - 1}).")
    return int(value)


def _number(value, name: str, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RequestError(f"{name} must be a finite number, got {value!r}.")
    if (low is not None and value < low) or (high is not None and value > high):
        raise RequestError(f"{name} must be in [{low}, {high}], got {value}.")
    return float(value)


def check_band(band, latent_dim: int) -> np.ndarray:
    """The page's band ([Z] pairs (low, high) of offsets from the instance's latent mean) as
    an array [Z, 2] float32, or `RequestError` naming the first bad value."""
    if not isinstance(band, list | tuple) or len(band) != latent_dim:
        raise RequestError(f"band must be {latent_dim} (low, high) pairs, one per latent "
                           f"dimension; got {band!r:.80}.")
    out = np.zeros((latent_dim, 2), np.float32)
    for d, pair in enumerate(band):
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise RequestError(f"band of dimension {d} must be a (low, high) pair, got {pair!r}.")
        low = _number(pair[0], f"band low of dimension {d}", -MAX_BAND, MAX_BAND)
        high = _number(pair[1], f"band high of dimension {d}", -MAX_BAND, MAX_BAND)
        if low > high:
            raise RequestError(f"band of dimension {d} is empty: low {low} > high {high}.")
        out[d] = low, high
    return out


def student_config(spec) -> StudentConfig:
    """The page's student setting ({"method": "lasso" | "ridge" | "kd", "temperature",
    "steps"}) -> `StudentConfig`: "lasso" the registered default, "ridge" the exact closed
    form, "kd" the distilled student with its temperature and steps."""
    spec = {"method": "lasso"} if spec is None else spec
    if not isinstance(spec, dict) or spec.get("method") not in STUDENTS:
        raise RequestError(f"student method must be one of {', '.join(STUDENTS)}; got "
                           f"{spec!r:.80}.")
    if spec["method"] == "lasso":
        return registry.get("deepvid").config.student
    if spec["method"] == "ridge":
        return StudentConfig()
    t = _number(spec.get("temperature", 4.0), "temperature", 0.1, 100.0)
    steps = _index(spec.get("steps", 200), 2001, "steps")
    if steps < 1:
        raise RequestError("steps must be at least 1.")
    return StudentConfig(method="kd", temperature=t, steps=steps)


def _key(seed) -> tuple[int, jax.Array]:
    s = _index(seed, MAX_SEED + 1, "key")
    return s, jax.random.PRNGKey(s)


def pca(features: np.ndarray) -> np.ndarray:
    """features [N, D] -> their first two principal components [N, 2] (the first paint)."""
    x = np.asarray(features, np.float64)
    x = x - x.mean(axis=0)
    if x.shape[1] < 2:
        x = np.concatenate([x, np.zeros((len(x), 2 - x.shape[1]))], 1)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return (x @ vt[:2].T).astype(np.float32)


def tsne(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """features [N, D] -> scikit-learn's t-SNE [N, 2] (PCA-initialised, seeded)."""
    from sklearn.manifold import TSNE

    n = len(features)
    return TSNE(2, perplexity=float(min(30, max(2, (n - 1) // 3))), init="pca",
                random_state=seed).fit_transform(np.asarray(features, np.float32)).astype(
                    np.float32)


@dataclasses.dataclass
class Store:
    """What the explorer reads from a finished `deepvid run` store."""

    path: Path
    quantities: dict[str, np.ndarray]  # "method/extra" -> [N] per-instance numbers
    attributions: dict[str, Any]  # method -> its zarr array [N, H, W, C]
    teacher_probs: np.ndarray | None
    dataset: dict


def open_store(path: str | Path) -> Store:
    """Reads a `deepvid run` store's per-instance numbers; a clear error when ``path`` is not
    a readable store of deepvid_jax explanations."""
    import zarr

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"store {path} does not exist.")
    try:
        root = zarr.open_group(str(path), mode="r", zarr_format=3)
        meta = dict(root.attrs).get("deepvid_jax", {})
    except Exception as e:  # zarr raises many kinds for a damaged store
        raise ValueError(f"{path} is not a readable Zarr store ({type(e).__name__}: {e}).") \
            from e
    if "dataset" not in meta.get("identity", {}):
        raise ValueError(f"{path} is not a store of 'deepvid run' (no deepvid_jax identity).")
    quantities: dict[str, np.ndarray] = {}
    attributions = {}
    for group_name, group in root.groups():
        if group_name == "done":
            continue
        for name, arr in group.arrays():
            if name == "attributions":
                attributions[group_name] = arr
            elif arr.ndim == 1 and np.dtype(arr.dtype).kind in "fiu":
                quantities[f"{group_name}/{name}"] = np.asarray(arr[:], np.float64)
    probs = np.asarray(root["teacher_probs"][:]) if "teacher_probs" in root else None
    return Store(path, quantities, attributions, probs, meta["identity"]["dataset"])


class Session:
    """The state of one `deepvid explore`: a dataset, optional models, an optional store.

    Args:
      dataset: the split shown (images [N, H, W, C] in [0, 1], labels [N]).
      models: `Models` (a VAE for the latent and student views), or None with a store.
      store: a `Store` of the same split, or None.
      config: DeepVID's `ExplainConfig` (default the registered one).
      drag_neighbors: neighbours while dragging.
      method_configs: method name -> config for the side-by-side view (default registered).
      cache_dir: where the t-SNE projection is cached (None: not cached).
      export_dir: where "export" writes.
      tsne_in_background: compute t-SNE in a thread after the first (PCA) paint.
    """

    def __init__(self, dataset: Dataset, models: Models | None = None, *,
                 store: Store | None = None, config=None, drag_neighbors: int = 128,
                 method_configs: dict | None = None, cache_dir: str | Path | None = None,
                 export_dir: str | Path = "explore_exports", tsne_in_background: bool = True):
        if models is None and store is None:
            raise ValueError("the explorer needs models (--checkpoints) or a store.")
        self.images = np.asarray(dataset.images, np.float32)
        self.labels = np.asarray(dataset.labels, np.int64)
        self.info = dataset.info
        self.models, self.store = models, store
        n = len(self.images)
        self.live = None
        if models is not None and models.vae_params is not None:
            self.live = programs.LivePrograms(models, config, drag_neighbors)
        if store is not None and store.teacher_probs is not None and models is None:
            if len(store.teacher_probs) != n:
                raise ValueError(f"the store has {len(store.teacher_probs)} instances, the "
                                 f"dataset {n}.")
            self.probs = store.teacher_probs.astype(np.float32)
        elif models is not None:
            self.probs = registry.teacher_probabilities(self.images, models)
        else:
            raise ValueError("a store without teacher probabilities needs models.")
        self.num_classes = self.probs.shape[1]
        self.preds = self.probs.argmax(1)
        self.method_configs = dict(method_configs or {})
        self.export_dir = Path(export_dir)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.codes = self.logvars = None
        if self.live is not None:
            self.codes, self.logvars = self.live.encode(self.images)
            features = self.codes
        else:
            features = np.log(np.clip(self.probs, 1e-6, 1.0))
        self.features = features
        self.projections = {"pca": pca(features)}
        self.projection_source = "VAE latent means" if self.live is not None else \
            "teacher log-probabilities"
        self._lock = threading.Lock()
        self.stats = {"requests": 0, "errors": 0}
        self._tsne_thread = None
        cached = self._tsne_cache()
        if cached is not None and cached.exists():
            self.projections["tsne"] = np.load(cached)
        elif tsne_in_background:
            self._tsne_thread = threading.Thread(target=self._compute_tsne, daemon=True,
                                                 name="deepvid-explore-tsne")
            self._tsne_thread.start()

    # -- the dataset view -------------------------------------------------------------------

    def _tsne_cache(self) -> Path | None:
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256(np.ascontiguousarray(self.features).tobytes()).hexdigest()[:16]
        return self.cache_dir / f"tsne-{len(self.features)}-{digest}.npy"

    def _compute_tsne(self) -> None:
        try:
            proj = tsne(self.features)
        except Exception as e:  # shown in the page; PCA stays
            self.projections["tsne_error"] = f"{type(e).__name__}: {e}"
            return
        path = self._tsne_cache()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, proj)
            tmp.replace(path)
        self.projections["tsne"] = proj

    def quantities(self) -> dict[str, np.ndarray]:
        """Per-instance numbers the page can colour and sort by."""
        p = np.clip(self.probs, 1e-12, 1.0)
        out = {"confidence": self.probs.max(1), "entropy": -(p * np.log(p)).sum(1)}
        if self.store is not None:
            out.update({k: v for k, v in self.store.quantities.items()
                        if len(v) == len(self.images)})
        return out

    def meta(self) -> dict:
        h, w, c = self.images.shape[1:]
        cfg = None if self.live is None else self.live.base
        return {
            "dataset": {"name": self.info.name, "split": self.info.split,
                        "count": len(self.images), "image_shape": [h, w, c]},
            "num_classes": self.num_classes,
            "class_names": list(getattr(self.info, "class_names", None) or
                                [str(k) for k in range(self.num_classes)]),
            "latent_dim": None if self.live is None else self.live.latent_dim,
            "live": self.live is not None,
            "neighbors": None if cfg is None else {"drag": self.live.drag_neighbors,
                                                   "full": cfg.neighbors.num},
            "methods": [name for name, m in registry.METHODS.items()
                        if self.models is not None and _usable(m, self.models)],
            "store": None if self.store is None else {
                "path": str(self.store.path), "methods": sorted(self.store.attributions)},
            "students": list(STUDENTS),
            "traversal_values": list(programs.TRAVERSAL_VALUES),
            "projection_source": self.projection_source,
        }

    def points(self) -> dict:
        kind = "tsne" if "tsne" in self.projections else "pca"
        conf = np.zeros((self.num_classes, self.num_classes), np.int64)
        np.add.at(conf, (self.labels, self.preds), 1)
        return {
            "projection": kind,
            "tsne_error": self.projections.get("tsne_error"),
            "xy": _floats(self.projections[kind], 4),
            "labels": self.labels.tolist(),
            "preds": self.preds.tolist(),
            "quantities": {k: _floats(v, 5) for k, v in self.quantities().items()},
            "confusion": conf.tolist(),
        }

    def image_batch(self, indices) -> dict:
        if not isinstance(indices, list) or len(indices) > 1000:
            raise RequestError("images are asked for by a list of at most 1000 indices.")
        idx = [_index(i, len(self.images)) for i in indices]
        return {"indices": idx, "shape": list(self.images.shape[1:]),
                "data": _b64(self.images[idx])}

    # -- requests ---------------------------------------------------------------------------

    def handle(self, op: str, msg: dict) -> dict:
        """Answers one request of the page (`RequestError` on a bad one)."""
        handlers: dict[str, Callable[[dict], dict]] = {
            "explain": self.explain, "edit": self.edit, "traverse": self.traverse,
            "morph": self.morph, "methods": self.methods, "stability": self.stability,
            "export": self.export, "probs": self.instance_probs}
        if op not in handlers:
            raise RequestError(f"unknown request {op!r:.40}.")
        if not isinstance(msg, dict):
            raise RequestError("a request is a JSON object.")
        if op not in ("probs", "methods") and self.live is None:
            raise RequestError("this view needs models with a VAE (--checkpoints).")
        with self._lock:  # one computation at a time: the device is one
            self.stats["requests"] += 1
            return handlers[op](msg)

    def instance_probs(self, msg: dict) -> dict:
        i = _index(msg.get("index"), len(self.images))
        return {"index": i, "probs": _floats(self.probs[i]), "label": int(self.labels[i]),
                "pred": int(self.preds[i])}

    def _band_request(self, msg: dict):
        i = _index(msg.get("index"), len(self.images))
        band = check_band(msg.get("band"), self.live.latent_dim)
        seed, key = _key(msg.get("key", 0))
        student = student_config(msg.get("student"))
        return i, band, seed, key, student

    def explain(self, msg: dict) -> dict:
        i, band, seed, key, student = self._band_request(msg)
        full = bool(msg.get("full", True))
        t0 = time.perf_counter()
        e, codes = self.live.explain(self.images[i], key, band, full=full, student=student)
        ms = 1000 * (time.perf_counter() - t0)
        w = e.weights[0]  # [H, W, C, K]
        cls = int(np.argmax(e.teacher_probs[0]))
        image = self.images[i]
        offsets = codes - self.codes[i]
        nb = e.neighbors[0][:NEIGHBOURS_SHOWN]
        nb_labels = np.argmax(e.neighbor_probs[0][:NEIGHBOURS_SHOWN], -1)
        return {
            "index": i, "key": seed, "full": full, "band": band.tolist(),
            "sampled_band": np.stack([offsets.min(0), offsets.max(0)], 1).tolist(),
            "num_neighbors": int(codes.shape[0]), "class": cls,
            "weights": _floats(w.mean(axis=2).transpose(2, 0, 1), 6),  # [K, H, W]
            "evidence": _floats((w[..., cls] * image).mean(axis=2), 6),
            **_numbers(e, student),
            "neighbors": _b64(nb), "neighbor_labels": nb_labels.tolist(),
            "compilations": self.live.compilations(), "ms": ms,
            "student": dataclasses.asdict(student)["method"],
        }

    def edit(self, msg: dict) -> dict:
        i = _index(msg.get("index"), len(self.images))
        code = msg.get("code")
        z = self.live.latent_dim
        if not isinstance(code, list) or len(code) != z:
            raise RequestError(f"code must be {z} numbers.")
        code = np.array([_number(v, f"code[{d}]", -20.0, 20.0) for d, v in enumerate(code)],
                        np.float32)
        image, probs = self.live.decode(code)
        # The edited code's place in the dataset view: the mean position of its nearest codes
        # (t-SNE has no out-of-sample map; the same rule serves PCA).
        d = np.linalg.norm(self.codes - code, axis=1)
        near = np.argsort(d)[:5]
        kind = "tsne" if "tsne" in self.projections else "pca"
        xy = self.projections[kind][near].mean(0)
        return {"index": i, "image": _b64(image), "probs": _floats(probs),
                "label": int(np.argmax(probs)), "xy": _floats(xy), "projection": kind,
                "code": code.tolist()}

    def traverse(self, msg: dict) -> dict:
        i = _index(msg.get("index"), len(self.images))
        imgs, probs = self.live.traverse(self.codes[i])
        return {"index": i, "code": _floats(self.codes[i]),
                "std": _floats(np.exp(0.5 * self.logvars[i])),
                "order": programs.axis_order(probs).tolist(),
                "values": list(programs.TRAVERSAL_VALUES), "images": _b64(imgs),
                "labels": probs.argmax(-1).tolist()}

    def morph(self, msg: dict) -> dict:
        a = _index(msg.get("a"), len(self.images), "a")
        b = _index(msg.get("b"), len(self.images), "b")
        steps = _index(msg.get("steps", 16), 65, "steps")
        if steps < 2:
            raise RequestError("steps must be at least 2.")
        imgs, probs = self.live.morph(self.images[a], self.images[b], steps)
        labels = probs.argmax(-1)
        return {"a": a, "b": b, "images": _b64(imgs), "probs": _floats(probs),
                "labels": labels.tolist(),
                "changes": (np.nonzero(labels[1:] != labels[:-1])[0] + 1).tolist()}

    def methods(self, msg: dict) -> dict:
        i = _index(msg.get("index"), len(self.images))
        seed, key = _key(msg.get("key", 0))
        names = msg.get("names", [])
        available = self.meta()["methods"]
        store_methods = [] if self.store is None else sorted(self.store.attributions)
        if not isinstance(names, list) or len(names) > 12:
            raise RequestError("methods must be a list of at most 12 names.")
        out = {}
        for name in names:
            if isinstance(name, str) and name.startswith("store:") and \
                    name[6:] in store_methods:
                a = np.asarray(self.store.attributions[name[6:]][i])
            elif name in available:
                a = registry.explain(name, self.images[i:i + 1], key=key, models=self.models,
                                     config=self.method_configs.get(name)).attributions[0]
            else:
                known = available + ["store:" + m for m in store_methods]
                raise RequestError(f"unknown method {name!r:.40}; choose from "
                                   f"{', '.join(known)}.")
            out[name] = _floats(np.asarray(a).mean(axis=-1), 6)
        return {"index": i, "key": seed, "maps": out}

    def stability(self, msg: dict) -> dict:
        i, band, seed, key, student = self._band_request(msg)
        runs = _index(msg.get("runs", 4), MAX_STABILITY_RUNS + 1, "runs")
        if runs < 2:
            raise RequestError("stability needs at least 2 runs.")
        maps = []
        cls = int(self.preds[i])
        for r in range(runs):
            e, _ = self.live.explain(self.images[i], jax.random.PRNGKey((seed + r) % MAX_SEED),
                                     band, full=True, student=student)
            maps.append(e.weights[0][..., cls].mean(axis=2))
        return {"index": i, "keys": [(seed + r) % MAX_SEED for r in range(runs)],
                "agreement": programs.pearson_agreement(np.stack(maps)),
                "maps": _floats(np.stack(maps), 6)}

    def export(self, msg: dict) -> dict:
        i, band, seed, key, student = self._band_request(msg)
        e, codes = self.live.explain(self.images[i], key, band, full=True, student=student)
        self.export_dir.mkdir(parents=True, exist_ok=True)
        stem = self.export_dir / f"explanation-{i}-key{seed}-{student.method}"
        settings = {"dataset": self.meta()["dataset"], "index": i, "key": seed,
                    "band": band.tolist(), "student": dataclasses.asdict(student),
                    "neighbors": int(codes.shape[0])}
        # Each file is written whole or not at all (a full disk or a stopped server leaves the
        # earlier export of the same name intact).
        files.write_json(stem.with_suffix(".json"), {"settings": settings,
                                                     "numbers": _numbers(e, student)})
        with files.atomic_path(stem.with_suffix(".npz")) as tmp, open(tmp, "wb") as f:
            np.savez(f, weights=e.weights[0], bias=e.bias[0], image=self.images[i], band=band,
                     codes=codes)
        _export_png(stem.with_suffix(".png"), self.images[i], e.weights[0],
                    np.asarray(e.teacher_probs[0]))
        return {"files": [str(stem.with_suffix(s)) for s in (".png", ".json", ".npz")]}


def _usable(method, models: Models) -> bool:
    try:
        method.check(models, method.config)
    except ValueError:
        return False
    return True


def _numbers(e, student: StudentConfig) -> dict:
    """The numbers of a one-instance `Explanation` the page shows and an export keeps: the
    teacher's and student's probabilities, the held-out fidelity, the share of neighbours
    relabelled, the regression students' penalty (None for "kd"), and the lasso's smoothness
    (None for the others) with the grid it was chosen from: 0 of a grid says smoothing cost
    this fit too much (the teacher reads single pixels here), the largest value that it cost
    little."""
    lasso = student.method == "lasso"
    return {"teacher_probs": _floats(e.teacher_probs[0]),
            "student_probs": _floats(e.student_probs[0]),
            "fidelity": {k: float(v[0]) for k, v in e.fidelity._asdict().items()},
            "flip_fraction": float(e.flip_fraction[0]),
            "penalty": None if e.penalty is None else float(e.penalty[0]),
            "smooth": float(e.smooth[0]) if e.smooth is not None else
            (student.lasso_smooth if lasso else None),
            "smooth_grid": list(student.lasso_smooth_grid) if lasso else []}


def _export_png(path: Path, image: np.ndarray, weights: np.ndarray, probs: np.ndarray) -> None:
    plt = viz.pyplot()

    k = weights.shape[-1]
    fig, axes = plt.subplots(1, k + 1, figsize=(1.3 * (k + 1), 1.6))
    axes[0].imshow(image.squeeze(), cmap="gray" if image.shape[-1] == 1 else None)
    axes[0].set_title("input", fontsize=8)
    lim = float(np.abs(weights).max()) or 1.0
    for c in range(k):
        axes[c + 1].imshow(weights[..., c].mean(-1), cmap="RdBu_r", vmin=-lim, vmax=lim)
        axes[c + 1].set_title(f"{c}: {probs[c]:.2f}", fontsize=8)
    for ax in axes:
        ax.axis("off")
    try:
        files.savefig(fig, path, dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)


def validate_dataset(dataset: Dataset, models: Models | None) -> None:
    """The dataset's images fit the models (a clear error before the server starts)."""
    if models is not None and models.vae_config is not None:
        validate.images(dataset.images[:1], image_shape=models.vae_config.image_shape,
                        expected_by="the VAE")
