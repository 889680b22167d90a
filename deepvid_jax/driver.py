"""The one driver that runs any batched, keyed explainer over any number of instances.

Every explainer of the library (`explainers`), DeepVID's `deepvid.explain`, batched LIME and the
dataset runner go through `map_instances`: fixed-size chunks (the last one padded, so one compiled
program serves them all), sharded over the local accelerators, gathered on the host. Instance
``i`` always gets the key ``fold_in(key, i)`` (`instance_keys`), whatever the chunking, the device
count or the other instances in its batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from deepvid_jax import validate


def instance_keys(key: jax.Array, start: int, count: int) -> jax.Array:
    """Keys [count] of instances start..start+count-1: ``fold_in(key, i)``."""
    return _instance_keys(key, jnp.int32(start), count)


@functools.partial(jax.jit, static_argnums=2)
def _instance_keys(key: jax.Array, start: jax.Array, count: int) -> jax.Array:
    # One compiled program per count (the start is traced): dispatched op by op, the fold_ins
    # cost ~3 ms a chunk, a tenth of the gradient's whole time on MNIST.
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(start + jnp.arange(count))


def map_instances(
    fn: Callable,
    params,
    inputs,
    key: jax.Array,
    *,
    chunk_size: int,
    shard: bool = True,
    progress: bool = False,
    desc: str = "explain",
    check: Callable | None = None,
    offset: int = 0,
    full_chunks: bool = False,
):
    """Runs a batched, keyed explainer over any number of instances, in fixed-size chunks.

    The last chunk is padded with copies of its last instance, so one compiled program serves
    every chunk; with several local devices (and ``shard``) each chunk's instance axis is split
    over them and ``params`` are replicated. Instance ``i`` gets the key ``fold_in(key, i)``
    (`instance_keys`), so results do not depend on the chunk size or the device count.

    Args:
      fn: ``fn(params, inputs_chunk, keys [chunk]) -> pytree`` whose leaves have a leading
        instance axis (typically a jitted, vmapped explainer).
      params: pytree passed to ``fn`` unchanged (replicated over the devices).
      inputs: pytree of arrays with a common leading axis B.
      key: PRNG key.
      chunk_size: instances per call (rounded up to a multiple of the device count, and down
        to what B needs).
      shard: split chunks over the local devices when there are several accelerators (not
        over CPU devices: `_shardable`).
      progress: show a progress bar over chunks, labelled ``desc``.
      check: ``check(output_chunk, start)`` called on each chunk's host output (real
        instances only) before the next chunk starts; raise there to stop at the first bad one.
      offset: the index of ``inputs``' first instance in a larger set (keys are
        ``fold_in(key, offset + i)``; a dataset runner explains a slice at a time).
      full_chunks: pad to ``chunk_size`` even when B is smaller (by default the chunk shrinks
        to what B needs), so a caller that passes one chunk at a time keeps one compiled
        program and the same results as one call over everything.

    Returns:
      ``fn``'s output pytree as numpy arrays with leading axis B.
    """
    validate.integer(chunk_size, "chunk_size", minimum=1)
    leaves = [np.asarray(a) for a in jax.tree.leaves(inputs)]
    treedef = jax.tree.structure(inputs)
    b = len(leaves[0])
    devices = jax.local_devices()
    shard = shard and len(devices) > 1 and _shardable(devices)
    mesh = Mesh(np.array(devices), ("instances",)) if shard else None
    n_dev = 1 if mesh is None else len(devices)
    chunk = -(-chunk_size // n_dev) * n_dev  # a multiple of the device count
    if not full_chunks:
        chunk = min(chunk, -(-b // n_dev) * n_dev)  # no bigger than needed
    if mesh is not None:
        params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
        split = NamedSharding(mesh, PartitionSpec("instances"))

    outputs = []
    for start in tqdm(range(0, b, chunk), desc=desc, unit="chunk", disable=not progress):
        xs = [a[start : start + chunk] for a in leaves]
        real = len(xs[0])
        if real < chunk:  # pad with copies of the last instance: same shape, no recompilation
            xs = [np.concatenate([a, np.repeat(a[-1:], chunk - real, axis=0)]) for a in xs]
        xs, keys = [jnp.asarray(a) for a in xs], instance_keys(key, offset + start, chunk)
        if mesh is not None:
            xs, keys = jax.device_put(xs, split), jax.device_put(keys, split)
        out = fn(params, jax.tree.unflatten(treedef, xs), keys)
        out = jax.tree.map(lambda a, r=real: np.asarray(a[:r]), out)
        if check is not None:
            check(out, offset + start)
        outputs.append(out)
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outputs)


def _shardable(devices) -> bool:
    """Whether to shard over these devices: accelerators yes; CPU devices (forced with
    ``--xla_force_host_platform_device_count``) no. They share the same cores, so sharding
    gains nothing, and XLA CPU (jax 0.10.2) deadlocks running the ridge student's program
    sharded over them (with multi-threaded Eigen; with it off, still with the calibrated
    radius). Tests replace this function to exercise the sharded path on CPU."""
    return devices[0].platform != "cpu"


def map_batches(fn: Callable, params, images, batch_size: int = 1000) -> np.ndarray:
    """``fn(params, batch)`` over ``images`` [N, ...] in batches of ``batch_size`` by
    `map_instances` (the last batch padded: one compiled program; sharded over accelerators),
    gathered on the host: whole-dataset inference with bounded device memory. ``fn`` must treat
    rows independently (pass a jitted one)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if len(images) == 0:
        raise ValueError("map_batches: no images.")
    return map_instances(lambda p, x, keys: fn(p, x), params, images, jax.random.PRNGKey(0),
                         chunk_size=batch_size)
