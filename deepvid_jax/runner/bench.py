"""`deepvid bench`: explanations per second of every explainer on this machine, comparable
across CPUs, GPUs and TPUs.

Each method is one jitted batched program ``(images [B, H, W, C], classes [B], keys [B]) ->
attributions`` compiled ahead of time (compile time reported), then timed on a batch. For every
row: explanations/s, FLOPs per explanation counted from the program's jaxpr (matrix products,
convolutions and eigendecompositions, loops multiplied by their trip counts; XLA's own cost
analysis counts a loop body once, and is reported beside it), achieved FLOP/s against a float32
matmul measured in the same run, and XLA's memory analysis of the compiled program. Two
references run alongside: ``decode_classify`` (decoding and classifying DeepVID's neighbours,
nothing else: the floor of DeepVID's time) and, when the `lime` package is installed,
``lime_image`` (the reference LIME, on the host, one image at a time).

Results merge into ``<out>/bench.json`` keyed by device, so runs from several machines make one
table (``bench.md``) and one figure per device (``bench_<device>.png``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from deepvid_jax import driver, files, validate, viz
from deepvid_jax.explainers import registry
from deepvid_jax.explainers.deepvid import core as deepvid
from deepvid_jax.explainers.deepvid.neighbors import latent_codes
from deepvid_jax.models import vae
from deepvid_jax.models.bundle import Models

# The two references beside the registered explainers: decoding and classifying DeepVID's
# neighbours (the floor of its time), and the `lime` package on the host.
REFERENCES = ("decode_classify", "lime_image")
ROWS = (*registry.METHODS, *REFERENCES)
# Rows that take the sample count: the sampled methods (`registry.with_samples`) and both
# references.
SAMPLED = (*(n for n, m in registry.METHODS.items() if m.sampled), *REFERENCES)


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """What `run` measures.

    Attributes:
      methods: names from `ROWS` (the registered explainers and the references).
      batch_sizes: explanations per timed call (images are repeated when the split is smaller).
      samples: neighbours / perturbations / masks per explanation for the sampling methods
        (`SAMPLED`); the gradient methods and the surrogate run once per batch size.
      repeats: timed calls per row after the compile (at least; short calls repeat until
        ``min_seconds`` have passed, at most 50); the median is reported.
      lime_images: images explained by the `lime` package per sample count.
      block_size: the ``block_size`` of the configs that have one (DeepVID's) and of
        ``decode_classify``.
      student_block: the ``student_block`` of the configs that have one (DeepVID's): the
        instances whose students one vmapped program fits (None: the whole batch).
      pairs: after the rows, each DeepVID row (`paired`) and ``decode_classify`` at its batch
        size and sample count are called alternately this many times (A B, then B A), and the
        median of the per-pair time ratios is reported (``decode_classify_ratio``): a machine
        whose speed drifts between rows measured minutes apart slows both calls of a pair
        alike. 0: the ratio of the two rows' own medians.
    """

    methods: tuple[str, ...] = ROWS
    batch_sizes: tuple[int, ...] = (16, 64, 256)
    samples: tuple[int, ...] = (512,)
    repeats: int = 1
    min_seconds: float = 0.5
    lime_images: int = 4
    block_size: int = deepvid.ExplainConfig.block_size
    student_block: int | None = deepvid.ExplainConfig.student_block
    pairs: int = 3

    def __post_init__(self):
        validate.fields(self, positive_ints=("batch_sizes", "samples"),
                        positive_int=("repeats", "lime_images", "block_size",
                                      "student_block"),
                        nonneg=("min_seconds",), nonneg_int=("pairs",))
        if not self.methods:
            raise ValueError("BenchConfig.methods is empty.")
        for m in self.methods:
            validate.choice(m, ROWS, "BenchConfig.methods")
        if min(self.samples) < 2:
            raise ValueError(f"BenchConfig.samples must be >= 2, got {self.samples}.")


# --------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------


def jaxpr_flops(jaxpr) -> float:
    """FLOPs of matrix products, convolutions and eigendecompositions in a (closed) jaxpr, with
    scans multiplied by their length and conds by their costliest branch (2 per multiply-add;
    an [n, n] eigendecomposition with vectors counted as 9 n^3)."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (lc, _), _ = eqn.params["dimension_numbers"]
            a = eqn.invars[0].aval
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(
                a.shape[i] for i in lc)
        elif name == "conv_general_dilated":
            rhs = eqn.invars[1].aval
            spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, *spatial)
            per_output = rhs.shape[spec[1]] * math.prod(rhs.shape[i] for i in spec[2:])
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * per_output
        elif name == "eigh":
            shape = eqn.invars[0].aval.shape
            total += 9.0 * math.prod(shape[:-2]) * shape[-1] ** 3
        elif name == "scan":
            total += eqn.params["length"] * jaxpr_flops(eqn.params["jaxpr"])
        elif name == "cond":
            total += max(jaxpr_flops(b) for b in eqn.params["branches"])
        elif name == "while":  # a trip count unknown when tracing: the body once, as XLA does
            total += jaxpr_flops(eqn.params["body_jaxpr"])
        else:
            for v in eqn.params.values():
                if hasattr(v, "eqns") or hasattr(v, "jaxpr"):
                    total += jaxpr_flops(v)
    return total


def matmul_flops_per_second(n: int = 2048, repeats: int = 5) -> float:
    """Best-of-``repeats`` float32 [n, n] @ [n, n] throughput: the machine's reference."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n))
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


# --------------------------------------------------------------------------------------------
# The programs
# --------------------------------------------------------------------------------------------


def bench_config(method: registry.Method, samples: int, block_size: int,
                 student_block: int | None = deepvid.ExplainConfig.student_block) -> Any:
    """``method``'s registered config with ``samples`` samples when it is sampled, and
    ``block_size`` and ``student_block`` when the config has them."""
    config = registry.with_samples(method.config, samples) if method.sampled else method.config
    if dataclasses.is_dataclass(config) and hasattr(config, "block_size"):
        config = dataclasses.replace(config, block_size=block_size)
    if dataclasses.is_dataclass(config) and hasattr(config, "student_block"):
        config = dataclasses.replace(config, student_block=student_block)
    return config


def program(method: str, models: Models, samples: int, block_size: int,
            student_block: int | None = deepvid.ExplainConfig.student_block) -> Callable:
    """``fn(images, classes, keys) -> pytree`` of one row, unjitted: the registered explainer's
    function (`registry.Method.fn`) at `bench_config`, or the ``decode_classify`` reference.

    Raises:
      ValueError: ``models`` lack what the method needs (`registry.Method.check`).
    """
    if method == "decode_classify":
        if models.vae_config is None:
            raise ValueError("decode_classify needs a VAE: Models(vae_params=..., vae_config=...).")
        apply, tp, vp, vcfg = (models.teacher_apply, models.teacher_params, models.vae_params,
                               models.vae_config)

        def decode_classify(x, c, keys):
            z = jax.vmap(lambda im, key: latent_codes(vp, im, key, num=samples, scale=1.0,
                                                      vae_config=vcfg))(x, keys)
            return deepvid.label_in_blocks(z, lambda r: vae.decode(vp, r, config=vcfg), apply,
                                           tp, block_size)[1]
        return decode_classify
    m = registry.get(method)
    config = bench_config(m, samples, block_size, student_block)
    m.check(models, config)
    params, static = models.params(), models.static()
    return lambda x, c, keys: m.fn(params, x, c, keys, models=static, config=config)


def measure(fn: Callable, images: np.ndarray, classes: np.ndarray, repeats: int,
            min_seconds: float = 0.5) -> dict:
    """Compile ``fn`` for this batch, then time ``repeats`` calls or more (median)."""
    return measure_timer(fn, images, classes, repeats, min_seconds)[0]


def measure_timer(fn: Callable, images: np.ndarray, classes: np.ndarray, repeats: int,
                  min_seconds: float = 0.5) -> tuple[dict, Callable[[], float]]:
    """`measure`'s row, and a function that times one more call of the compiled program
    (seconds): two programs' timers go to `paired_ratio`."""
    x, c = jnp.asarray(images), jnp.asarray(classes, jnp.int32)
    keys = driver.instance_keys(jax.random.PRNGKey(0), 0, len(images))
    start = time.perf_counter()
    traced = jax.jit(fn).trace(x, c, keys)  # one trace: the jaxpr counted, and compiled
    compiled = traced.lower().compile()
    compile_s = time.perf_counter() - start
    flops = jaxpr_flops(traced.jaxpr)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    xla_flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    mem = compiled.memory_analysis()
    if mem is not None:
        need = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
        have = device_memory_bytes()
        if have and need > 0.8 * have:  # refuse before running, not an allocator crash
            raise MemoryError(f"needs {need / 2**30:.1f} GiB, the device has "
                              f"{have / 2**30:.1f} GiB")

    def call() -> float:
        start = time.perf_counter()
        jax.block_until_ready(compiled(x, c, keys))
        return time.perf_counter() - start

    seconds = []  # at least `repeats` calls, and more (up to 50) until min_seconds passed
    while len(seconds) < repeats or (sum(seconds) < min_seconds and len(seconds) < 50):
        seconds.append(call())
    sec = float(np.median(seconds))
    b = len(images)
    row = {"explanations_per_s": b / sec, "seconds": sec, "compile_s": compile_s,
           "flops_per_explanation": flops / b, "xla_flops_per_explanation": xla_flops / b,
           "achieved_flops_per_s": flops / sec}
    if mem is not None:
        row["temp_mib"] = mem.temp_size_in_bytes / 2**20
        row["memory_mib"] = (mem.temp_size_in_bytes + mem.argument_size_in_bytes
                             + mem.output_size_in_bytes) / 2**20
    return row, call


def paired(method: str) -> bool:
    """Whether ``method``'s rows get a paired ratio to ``decode_classify``
    (`BenchConfig.pairs`): DeepVID's, whose floor that reference is."""
    return method.startswith("deepvid")


def paired_ratio(call: Callable[[], float], reference: Callable[[], float],
                 pairs: int) -> list[float]:
    """``pairs`` ratios of the seconds of ``call`` to those of ``reference``, the two called
    alternately (A B, then B A, ...) so that a drift in the machine's speed slows both alike."""
    validate.integer(pairs, "pairs", minimum=1)
    out = []
    for i in range(pairs):
        if i % 2:
            r = reference()
            out.append(call() / r)
        else:
            a = call()
            out.append(a / reference())
    return out


def device_memory_bytes() -> int | None:
    """The default device's memory: its allocator's limit, or the host's RAM for a CPU."""
    dev = jax.devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def measure_lime_image(models: Models, images: np.ndarray, samples: int) -> dict:
    """The `lime` package on ``images`` one at a time, ``samples`` perturbations each."""
    from lime import lime_image

    apply, params = models.teacher_apply, models.teacher_params
    predict = jax.jit(lambda x: jax.nn.softmax(apply(params, x)))
    channels = images.shape[-1]

    def classifier_fn(batch):  # lime passes RGB [n, H, W, 3]
        batch = np.asarray(batch, np.float32)
        x = batch.mean(-1, keepdims=True) if channels == 1 else batch
        return np.asarray(predict(jnp.asarray(x)))

    explainer = lime_image.LimeImageExplainer(random_state=0)
    classifier_fn(np.zeros((1, *images.shape[1:3], 3)))  # compile outside the timing
    start = time.perf_counter()
    for img in images:
        explainer.explain_instance(
            (img[..., 0] if channels == 1 else img).astype(np.float64), classifier_fn,
            top_labels=1, hide_color=0, num_samples=samples, batch_size=256, random_seed=0)
    sec = time.perf_counter() - start
    return {"explanations_per_s": len(images) / sec, "seconds": sec}


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def device_info() -> dict:
    """The device's name (the key runs merge on), kind, count, backend and host."""
    dev = jax.devices()[0]
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    kind = cpu if dev.platform == "cpu" else dev.device_kind
    cores = os.cpu_count()
    name = f"{dev.platform}: {kind}" + (f" ({cores} cores)" if dev.platform == "cpu" else "")
    return {"name": name, "platform": dev.platform, "kind": kind, "count": jax.device_count(),
            "host_cores": cores, "jax": jax.__version__}


def batch_of(images: np.ndarray, classes: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``b`` images, repeated when there are fewer."""
    reps = -(-b // len(images))
    return np.concatenate([images] * reps)[:b], np.concatenate([classes] * reps)[:b]


def run(models: Models, images: np.ndarray, config: BenchConfig = BenchConfig(), *,
        trained: bool, log: Callable[[str], None] = print) -> dict:
    """Measures every (method, batch size, sample count) of ``config`` on ``images`` [N, H, W,
    C] (the first 256 are used) with ``models`` (`Models.load` or `Models.untrained`; speed
    does not depend on the weights, and ``trained`` records which). A method whose needs
    ``models`` lack (a VAE, the surrogate, ...) is skipped with a log line.

    Returns:
      {"device", "matmul_flops_per_s", "rows", "config", "models_trained", "image_shape"}.
    """
    validate.config(config, BenchConfig, "config")
    validate.config(models, Models, "models")
    validate.boolean(trained, "trained")
    shape = (models.vae_config.image_shape if models.vae_config is not None
             else models.teacher_config.image_shape if models.teacher_config is not None
             else None)
    images = validate.images(images, image_shape=shape, expected_by="the models")[:256]
    validate.teacher(models.teacher_apply, models.teacher_params, images,
                     num_classes=models.num_classes)
    classes = registry.predicted_classes(images, models)
    device = device_info()
    peak = matmul_flops_per_second()
    log(f"device: {device['name']}; float32 2048^2 matmul {peak / 1e9:.1f} GFLOP/s")
    rows, calls = [], {}  # (method, batch, samples) -> time one more call (paired rows)
    for method in config.methods:
        for s in (config.samples if method in SAMPLED else (None,)):
            if method == "lime_image":
                try:
                    r = measure_lime_image(models, images[: config.lime_images], s)
                except ImportError:
                    log("lime_image: skipped (pip install lime)")
                    continue
                rows.append({"method": method, "batch": 1, "samples": s, **r})
                log(f"{method:22s} B=    1 S={s}: {r['explanations_per_s']:9.2f} expl/s")
                continue
            try:
                fn = program(method, models, s or 0, config.block_size, config.student_block)
            except ValueError as e:  # models without what it needs
                log(f"{method}: skipped ({e})")
                break
            for b in config.batch_sizes:
                x, c = batch_of(images, classes, b)
                try:
                    r, call = measure_timer(fn, x, c, config.repeats, config.min_seconds)
                except (MemoryError, jax.errors.JaxRuntimeError) as e:  # too big here: say so
                    reason = str(e).strip().splitlines()[0][:200]
                    rows.append({"method": method, "batch": b, "samples": s, "error": reason})
                    log(f"{method:22s} B={b:5d} S={s or '-'}: not run ({reason})")
                    continue
                if paired(method) or method == "decode_classify":  # for the paired ratios
                    calls[method, b, s] = call
                r["fraction_of_matmul"] = r["achieved_flops_per_s"] / peak
                rows.append({"method": method, "batch": b, "samples": s, **r})
                log(f"{method:22s} B={b:5d} S={s or '-'}: {r['explanations_per_s']:9.2f} expl/s, "
                    f"{r['achieved_flops_per_s'] / 1e9:7.1f} GFLOP/s "
                    f"({100 * r['fraction_of_matmul']:.0f} % of matmul), "
                    f"{r.get('memory_mib', float('nan')):.0f} MiB")
    for r in rows:
        mine = calls.get((r["method"], r["batch"], r["samples"]))
        ref = calls.get(("decode_classify", r["batch"], r["samples"]))
        if config.pairs and paired(r["method"]) and mine and ref:
            runs = paired_ratio(mine, ref, config.pairs)
            r["decode_classify_ratio"] = float(np.median(runs))
            r["decode_classify_ratios"] = runs
            log(f"{r['method']:22s} B={r['batch']:5d} S={r['samples']}: "
                f"{r['decode_classify_ratio']:.2f}x decode_classify (median of {len(runs)} "
                "alternating pairs)")
    return {"device": device, "matmul_flops_per_s": peak, "rows": rows,
            "config": dataclasses.asdict(config), "models_trained": trained,
            "image_shape": list(images.shape[1:])}


def ratios(result: dict) -> list[str]:
    """The comparisons that matter, within one run: DeepVID against lime_image, against
    decoding and classifying its neighbours, and its batch scaling."""
    rows = [r for r in result["rows"] if "error" not in r]

    def rate(method, b, s):
        return next((r["explanations_per_s"] for r in rows
                     if r["method"] == method and r["batch"] == b and r["samples"] == s), None)

    out = []
    for s in sorted({r["samples"] for r in rows if r["samples"]}):
        best = max((r for r in rows if r["method"] == "deepvid" and r["samples"] == s),
                   key=lambda r: r["explanations_per_s"], default=None)
        lime = rate("lime_image", 1, s)
        if best and lime:
            out.append(f"S={s}: DeepVID (batch {best['batch']}) is "
                       f"{best['explanations_per_s'] / lime:.1f}x lime_image's explanations/s")
        ours = max((r for r in rows if r["method"] == "lime" and r["samples"] == s),
                   key=lambda r: r["explanations_per_s"], default=None)
        if best and ours:
            out.append(f"S={s}: DeepVID (batch {best['batch']}) is "
                       f"{best['explanations_per_s'] / ours['explanations_per_s']:.1f}x our "
                       f"batched LIME's explanations/s (batch {ours['batch']})")
        for r in rows:
            if paired(r["method"]) and r["samples"] == s:
                ref = rate("decode_classify", r["batch"], s)
                if "decode_classify_ratio" in r:
                    n = len(r["decode_classify_ratios"])
                    out.append(f"S={s} B={r['batch']}: {r['method']} takes "
                               f"{r['decode_classify_ratio']:.2f}x the time of decoding and "
                               "classifying its neighbours alone (median of "
                               f"{n} alternating pair{'s' * (n > 1)})")
                elif ref:
                    out.append(f"S={s} B={r['batch']}: {r['method']} takes "
                               f"{ref / r['explanations_per_s']:.2f}x the time of decoding and "
                               "classifying its neighbours alone")
        sizes = sorted(r["batch"] for r in rows if r["method"] == "deepvid" and r["samples"] == s)
        if len(sizes) > 1:
            lo, hi = rate("deepvid", sizes[0], s), rate("deepvid", sizes[-1], s)
            out.append(f"S={s}: DeepVID at batch {sizes[-1]} runs {hi / lo:.2f}x its "
                       f"explanations/s at batch {sizes[0]}")
    return out


def markdown(runs: dict) -> str:
    """One table per device of the merged runs."""
    lines = []
    for name, result in sorted(runs.items()):
        peak = result["matmul_flops_per_s"]
        shape = "x".join(str(v) for v in result["image_shape"])
        lines += [f"### {name}", "",
                  f"JAX {result['device']['jax']}, {result['device']['count']} device(s); "
                  f"images {shape}; float32 2048² matmul {peak / 1e9:.1f} GFLOP/s; "
                  f"{'trained' if result['models_trained'] else 'untrained'} models.", "",
                  "| method | batch | samples | explanations/s | compile s | GFLOP / expl. "
                  "(XLA's count) | achieved GFLOP/s (% of matmul) | memory MiB |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in result["rows"]:
            if "error" in r:
                lines.append(f"| {r['method']} | {r['batch']} | {r['samples'] or '–'} | not run: "
                             f"{r['error']} | | | | |")
                continue
            if "flops_per_explanation" in r:
                fl = (f"{r['flops_per_explanation'] / 1e9:.3f} "
                      f"({r['xla_flops_per_explanation'] / 1e9:.3f})")
                ach = (f"{r['achieved_flops_per_s'] / 1e9:.1f} "
                       f"({100 * r['fraction_of_matmul']:.0f} %)")
                mem = f"{r['memory_mib']:.0f}" if "memory_mib" in r else "–"
                comp = f"{r['compile_s']:.1f}"
            else:
                fl = ach = mem = comp = "–"
            lines.append(f"| {r['method']} | {r['batch']} | {r['samples'] or '–'} | "
                         f"{r['explanations_per_s']:.2f} | {comp} | {fl} | {ach} | {mem} |")
        lines += ["", *(f"- {t}" for t in ratios(result)), ""]
    return "\n".join(lines)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:60]


def plot(result: dict, path: Path) -> Path:
    """Explanations/s against batch size, one line per (method, samples); lime_image dashed."""
    plt = viz.pyplot()

    fig, ax = plt.subplots(figsize=(10, 5))
    series: dict[str, list] = {}
    for r in (r for r in result["rows"] if "error" not in r):
        label = r["method"] + (f" (S={r['samples']})" if r["samples"] else "")
        series.setdefault(label, []).append((r["batch"], r["explanations_per_s"]))
    colors, markers = plt.cm.tab20.colors, "os^vDP*Xhp<>"
    for i, (label, pts) in enumerate(series.items()):
        pts.sort()
        if label.startswith("lime_image"):
            ax.axhline(pts[0][1], ls="--", color="k", lw=1, label=label)
        else:
            ax.plot(*zip(*pts, strict=True), marker=markers[i % len(markers)],
                    color=colors[i % len(colors)], label=label,
                    lw=2.5 if label.startswith("deepvid ") else 1.2)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size (explanations per call)")
    ax.set_ylabel("explanations / s")
    ax.set_title(result["device"]["name"], fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    files.savefig(fig, path, dpi=110)
    plt.close(fig)
    return path


def write(result: dict, out: Path) -> list[Path]:
    """Merges ``result`` into ``out/bench.json`` (replacing this device's previous run) and
    rewrites ``bench.md`` and this device's figure; atomic writes."""
    out = files.check_writable_dir(out, "--out")
    path = out / "bench.json"
    runs = {}
    if path.exists():
        try:
            runs = json.loads(path.read_text())["runs"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is not a bench result file ({e}); pass another --out.") \
                from None
    runs[result["device"]["name"]] = result
    files.write_json(path, {"runs": runs})
    files.write_text(out / "bench.md", markdown(runs))
    fig = plot(result, out / f"bench_{slug(result['device']['name'])}.png")
    return [path, out / "bench.md", fig]
