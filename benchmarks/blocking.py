"""Explanations per second and compiled memory against batch size, with and without blocked
decoding/labelling of the neighbours (issue 12, part 3), in one run on one machine.

    python benchmarks/blocking.py --checkpoints runs/mnist --batch-sizes 16,64,256

For each (block size, batch) the jitted `explain_batch` is compiled ahead of time (XLA's memory
analysis is read from the compiled program), then called twice on the same inputs; the second
call is timed. Student: ridge at relative penalty 0.3 (`student_methods.py`).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
from common import deepvid_arguments, load_setup, machine_info, write_results

from deepvid_jax import driver
from deepvid_jax.explainers.deepvid import core as ex
from deepvid_jax.explainers.deepvid.neighbors import NeighborConfig
from deepvid_jax.explainers.deepvid.student import StudentConfig


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def run(args) -> dict:
    args.count = max(args.batch_sizes)
    tp, tcfg, vp, vcfg, apply, pool, _, _ = load_setup(args)
    rows = []
    for block in [None, *args.block_sizes]:
        for b in args.batch_sizes:
            cfg = ex.ExplainConfig(num_classes=tcfg.num_classes, vae=vcfg, block_size=block,
                                   neighbors=NeighborConfig(num=args.neighbors),
                                   student=StudentConfig(method="ridge", penalties=(0.3,)))
            images = jnp.asarray(pool[:b])
            keys = driver.instance_keys(jax.random.PRNGKey(0), 0, b)
            start = time.perf_counter()
            compiled = jax.jit(functools.partial(
                ex.explain_batch, teacher_apply=apply, config=cfg)).lower(
                images, keys, teacher_params=tp, vae_params=vp).compile()
            compile_s = time.perf_counter() - start
            memory = compiled.memory_analysis()
            jax.block_until_ready(compiled(images, keys, teacher_params=tp, vae_params=vp))
            start = time.perf_counter()
            jax.block_until_ready(compiled(images, keys, teacher_params=tp, vae_params=vp))
            seconds = time.perf_counter() - start
            row = {"block_size": block, "batch": b, "explanations_per_s": b / seconds,
                   "temp_mib": memory.temp_size_in_bytes / 2**20, "compile_s": compile_s}
            rows.append(row)
            print(row, flush=True)
    return {"args": vars(args), "machine": machine_info(), "rows": rows}


def markdown(result: dict) -> str:
    a = result["args"]
    lines = [f"{a['dataset']}, {a['neighbors']} VAE neighbours, ridge student; "
             f"{result['machine']['cpu_count']} cores, JAX {result['machine']['jax']} "
             f"{result['machine']['backend']}", "",
             "| block size (rows) | batch | explanations/s | XLA temp memory (MiB) | compile s |",
             "|---|---|---|---|---|"]
    for r in result["rows"]:
        block = "none" if r["block_size"] is None else str(r["block_size"])
        lines.append(f"| {block} | {r['batch']} | {r['explanations_per_s']:.2f} | "
                     f"{r['temp_mib']:.0f} | {r['compile_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = deepvid_arguments(__doc__.splitlines()[0], tag="mnist_cpu")
    p.add_argument("--batch-sizes", type=_ints, default=[16, 64, 256])
    p.add_argument("--block-sizes", type=_ints, default=[1024, 4096])
    args = p.parse_args()
    result = run(args)
    write_results(args.out, f"blocking_{args.tag}", result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
