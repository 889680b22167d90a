"""Shared fixtures. Tests never download: DEEPVID_OFFLINE is forced on."""

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ["DEEPVID_OFFLINE"] = "1"

# The tests compile hundreds of small programs and run most of them once: compiling is most of
# their time (about 70 % of the workers' CPU time in one `-n 2` run, measured with
# `jax.monitoring`'s compile events). Two XLA CPU settings cut it: LLVM's optimisation level 0
# instead of XLA's default 2, and XLA's older loop emitters for fusions instead of its MLIR
# fusion emitters (`--xla_cpu_use_fusion_emitters=false`), whose compiles cost more on these
# tiny programs. Together they took the suite from 8:52 to 5:59 on the 2-core machine (one
# run each). The programs are the same HLO, their results equal to float rounding (8e-6 of
# 0.4 on DeepVID's weights between two programs; a seeded two-epoch MNIST training's
# explanations fit its teacher on held-out neighbours with top-1 0.958 against 0.960, KL
# 0.028 both). Set before jax is imported, so that the tests' child processes inherit them; a
# jaxlib that no longer knows a flag would abort at its first computation, so each flag is
# first tried in a child (once, in the first pytest process). DEEPVID_TEST_XLA=default runs
# the tests as users' programs run.
_XLA_TEST_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")


def cpu_env(**extra: str) -> dict[str, str]:
    """The environment of a child process that runs JAX: this one's on the CPU (a child on an
    accelerator would contend with this process for it), with ``extra`` variables set."""
    return {**os.environ, "JAX_PLATFORMS": "cpu", **extra}


def _known_xla_flags(flags: tuple[str, ...]) -> list[str]:
    """Those of ``flags`` this jaxlib accepts (an unknown XLA flag is a fatal error)."""
    import subprocess
    import sys

    probe = "import jax, jax.numpy as jnp; jnp.zeros(2).block_until_ready()"
    env = cpu_env(XLA_FLAGS=" ".join(flags))
    if subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True).returncode == 0:
        return list(flags)
    return [f for f in flags if subprocess.run([sys.executable, "-c", probe], capture_output=True,
                                               env={**env, "XLA_FLAGS": f}).returncode == 0]


if (os.environ.get("DEEPVID_TEST_XLA", "fast") != "default"
        and "DEEPVID_TEST_XLA_FLAGS" not in os.environ):  # the first pytest process
    # a setting the caller's own XLA_FLAGS already makes is theirs
    _unset = tuple(f for f in _XLA_TEST_FLAGS
                   if f.split("=")[0] not in os.environ.get("XLA_FLAGS", ""))
    os.environ["DEEPVID_TEST_XLA_FLAGS"] = " ".join(_known_xla_flags(_unset) if _unset else [])
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " "
                               + os.environ["DEEPVID_TEST_XLA_FLAGS"]).strip()

# One compilation cache per test run (issue 28: compile reuse). The first pytest process of a
# run (xdist's controller, or the only process) makes an empty folder and removes it at the
# end; the xdist workers and every child process the tests start inherit it through the
# environment. With `-n 2` one test file's tests and module fixtures run on both workers, and
# many files compile the same tiny networks and programs: a program compiled in one process
# is loaded, not compiled again, in the others. Only the workers write (each entry atomically:
# `_share_compiles`); the tests' child processes, some of them killed mid-run, only read.
# DEEPVID_TEST_COMPILE_CACHE=off runs without it.
COMPILE_CACHE_ENV = "DEEPVID_TEST_COMPILE_CACHE"
_OWN_COMPILE_CACHE = None
if not os.environ.get(COMPILE_CACHE_ENV):
    _OWN_COMPILE_CACHE = os.environ[COMPILE_CACHE_ENV] = tempfile.mkdtemp(
        prefix="deepvid-test-compiles-")
if os.environ[COMPILE_CACHE_ENV] != "off":
    os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ[COMPILE_CACHE_ENV]
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "1e9"  # children: read only


def _share_compiles() -> None:
    """This process reads and writes the run's compilation cache, from its first compile on.

    JAX's file cache (`LRUCache.put`, without eviction, its default) writes an entry in place,
    so a reader in the other worker could load half a file (JAX then warns and compiles);
    here an entry is written under a temporary name and renamed. Were JAX's cache internals
    other than expected, this process would compile everything itself (only slower).
    """
    import jax

    folder = os.environ[COMPILE_CACHE_ENV]
    try:
        from jax._src import lru_cache
        suffix, put = lru_cache._CACHE_SUFFIX, lru_cache.LRUCache.put
    except (ImportError, AttributeError):
        folder = "off"
    if folder == "off":
        jax.config.update("jax_compilation_cache_dir", None)
        return
    replace = os.replace  # bound now: tests monkeypatch os.replace to fail

    def atomic_put(self, key: str, value: bytes) -> None:
        if getattr(self, "eviction_enabled", True):
            return put(self, key, value)
        path = self.path / f"{key}{suffix}"
        if not path.exists():
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                f.write(value)
            replace(tmp, path)

    lru_cache.LRUCache.put = atomic_put
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


_share_compiles()


def pytest_unconfigure(config):
    if _OWN_COMPILE_CACHE:
        shutil.rmtree(_OWN_COMPILE_CACHE, ignore_errors=True)

from deepvid_jax.data import sources as data  # noqa: E402
from deepvid_jax.explainers import gradients as attribution  # noqa: E402
from deepvid_jax.explainers import lime as superpixel  # noqa: E402
from deepvid_jax.explainers import registry as explainers  # noqa: E402
from deepvid_jax.explainers import rise  # noqa: E402
from deepvid_jax.explainers.deepvid import core as ex  # noqa: E402
from deepvid_jax.models import train  # noqa: E402
from deepvid_jax.models.networks import TeacherConfig, VAEConfig  # noqa: E402
from deepvid_jax.runner.run import RunConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# The tiny teacher the explain, evaluation and consistency tests share (8x8 embedded digits).
TINY_TEACHER = TeacherConfig(features=(8, 16), hidden=32, image_shape=(8, 8, 1))
TINY_TRAIN = train.TrainConfig(epochs=10, batch_size=64, learning_rate=3e-3)

# Small settings of every method, so the tables of every method (grayscale,
# colour) run in seconds.
def _small_student(name: str) -> ex.ExplainConfig:
    """The registered pixel student's config (neighbours and student) at 32 neighbours."""
    config = explainers.get(name).config
    return dataclasses.replace(config, neighbors=dataclasses.replace(config.neighbors, num=32),
                               holdout=8)


SMALL = {
    **{name: _small_student(name)
       for name in ("deepvid", "noise", "mask", "deepvid_fast", "deepvid_fixed_radius")},
    "lime": superpixel.LimeConfig(num_samples=32, holdout=8, patch=2),
    "rise": rise.RiseConfig(num_masks=24, batch=8, grid=3),
    **{m: attribution.AttributionConfig(ig_steps=4, smoothgrad_samples=3)
       for m in attribution.GRADIENT_METHODS},
    "surrogate": None,
}


def shared_data_dir() -> Path | None:
    """$DEEPVID_DATA_DIR (set by .ci/run), else ../shared/data beside the repo, else None."""
    for candidate in (os.environ.get("DEEPVID_DATA_DIR"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "mnist" / "t10k-images-idx3-ubyte.gz").is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = shared_data_dir()
    if d is None:
        pytest.skip("real MNIST/KMNIST files not found (set DEEPVID_DATA_DIR)")
    return d


@pytest.fixture(scope="session")
def tiny_teacher() -> dict:
    """`TINY_TEACHER` parameters briefly trained (`TINY_TRAIN`) on the embedded digits: trained
    models make well-posed explanations (untrained ones give near-flat teachers)."""
    tr, te = data.load("digits", "train"), data.load("digits", "test")
    params, _ = train.train_teacher((tr.images, tr.labels), (te.images, te.labels), TINY_TEACHER,
                                    TINY_TRAIN, progress=False)
    return params


# The dataset runner's small run (tests/test_run.py, tests/test_report.py).
RUN_VAE = VAEConfig(latent_dim=4, features=(8, 16), hidden=32, image_shape=(8, 8, 1))
RUN_SPLIT = "test[:20]"
RUN_EXPLAINERS = ("deepvid", "gradient")
RUN_CONFIG = RunConfig(explainers=RUN_EXPLAINERS, chunk_size=8)


@pytest.fixture(scope="session")
def run_checkpoints(tmp_path_factory, tiny_teacher) -> Path:
    """Teacher and VAE checkpoints of the embedded digits, as `deepvid run` reads them."""
    from deepvid_jax.models import checkpoint

    folder = tmp_path_factory.mktemp("models")
    tr = data.load("digits", "train")
    vp, _ = train.train_vae(tr.images, tr.images[:64], RUN_VAE,
                            train.TrainConfig(epochs=2, batch_size=64), progress=False)
    meta = {"name": "digits", "image_shape": [8, 8, 1], "num_classes": 10}
    checkpoint.save(folder / "teacher", tiny_teacher, kind="teacher", config=TINY_TEACHER,
                    dataset=meta)
    checkpoint.save(folder / "vae", vp, kind="vae", config=RUN_VAE, dataset=meta)
    return folder


@pytest.fixture(scope="session")
def run_store(tmp_path_factory, run_checkpoints) -> Path:
    """An uninterrupted run of `RUN_CONFIG` (in this process)."""
    from deepvid_jax.explainers import registry as explainers
    from deepvid_jax.runner import run

    path = tmp_path_factory.mktemp("clean") / "store.zarr"
    summary = run.explain_dataset(data.open_source("digits", RUN_SPLIT),
                                  explainers.Models.load(run_checkpoints), path, RUN_CONFIG,
                                  progress=False)
    assert summary["complete"] and summary["chunks_computed"] == 3
    return path


# The modules whose tests take longest, longest first (seconds of test time each in one
# `-n 2` run of the whole suite on the 2-core machine): run first, so that with `-n 2` (one
# module per worker: --dist loadfile in pyproject.toml) the two workers end on short modules
# at about the same time. The other modules (a few seconds each) follow in their usual order.
SLOW_MODULES = (
    "explainers/test_explainers.py",  # 111
    "hostile/test_hostile_cli.py",  # 86
    "explainers/test_explain.py",  # 85
    "explainers/test_variance_reduction.py",  # 78
    "runner/test_run.py",  # 77
    "models/test_mnist_fidelity.py",  # 76
    "explainers/test_student.py",  # 58
    "data/test_colour.py",  # 57
    "models/test_train.py",  # 40
    "metrics/test_evaluation.py",  # 39
    "metrics/test_registry.py",  # 37
    "models/test_adapters.py",  # 37
    "runner/test_bench.py",  # 36
    "models/test_checkpoint.py",  # 34
    "explore/test_explore.py",  # 34
    "explainers/test_surrogate.py",  # 33
    "hostile/test_hostile_api.py",  # 29
    "models/test_consistency.py",  # 27
    "explainers/test_neighborhoods.py",  # 25
    "hostile/test_hostile_store.py",  # 12
    "runner/test_report.py",  # 11
    "metrics/test_localisation.py",  # 9
    "data/test_image_folder.py",  # 8
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_MODULES)}
    tests = Path(__file__).parent

    def module_rank(item) -> int:
        try:
            name = item.path.relative_to(tests).as_posix()
        except ValueError:
            return len(rank)
        return rank.get(name, len(rank))

    items.sort(key=module_rank)  # stable: each module's own order is kept
