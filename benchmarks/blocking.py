"""Explanations per second and compiled memory against batch size, with and without blocked
decoding/labelling of the neighbours, in one run on one machine.

    python benchmarks/blocking.py --settings mnist --batch-sizes 16,64,256

For each (block size, batch) the registered "deepvid" explainer is timed by
`deepvid_jax.runner.bench.measure` (compiled ahead of time, XLA's memory analysis read from the
compiled program, median of the timed calls) on the first images of the setting's evaluation
split, for the teacher's class. Student: ridge at relative penalty 0.3 (`student_methods.py`).
Writes ``benchmarks/results/blocking/blocking_<setting>_<backend>.{json,md}``.
"""

from __future__ import annotations

import jax
from common import (
    arguments,
    deepvid_options,
    load,
    out_dir,
    setting,
    timing,
    where,
    write_study,
)

from deepvid_jax.explainers.deepvid import core as ex
from deepvid_jax.explainers.deepvid.neighbors import NeighborConfig
from deepvid_jax.explainers.deepvid.student import StudentConfig
from deepvid_jax.explainers.registry import predicted_classes


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def run(args, name: str) -> dict:
    models, ds = load(name, runs=args.runs, data_dir=args.data_dir, count=max(args.batch_sizes))
    classes = predicted_classes(ds.images, models)
    rows = []
    for block in [None, *args.block_sizes]:
        for b in args.batch_sizes:
            cfg = ex.ExplainConfig(num_classes=models.num_classes, vae=models.vae_config,
                                   block_size=block, holdout=args.holdout,
                                   neighbors=NeighborConfig(num=args.neighbors),
                                   student=StudentConfig(method="ridge", penalties=(0.3,)))
            t = timing("deepvid", models, ds.images[:b], classes[:b], config=cfg,
                       repeats=args.repeats)
            row = {"block_size": block, "batch": b, "explanations_per_s": t["explanations_per_s"],
                   "temp_mib": t.get("temp_mib"), "compile_s": t["compile_s"]}
            rows.append(row)
            print(row, flush=True)
    return {"setting": name, "dataset": ds.info.name, "split": setting(name).eval_split,
            "args": vars(args), "rows": rows}


def markdown(result: dict) -> str:
    a = result["args"]
    lines = [f"{where(result)}, {a['neighbors']} VAE neighbours, ridge "
             "student", "",
             "| block size (rows) | batch | explanations/s | XLA temp memory (MiB) | compile s |",
             "|---|---|---|---|---|"]
    for r in result["rows"]:
        block = "none" if r["block_size"] is None else str(r["block_size"])
        temp = "–" if r["temp_mib"] is None else f"{r['temp_mib']:.0f}"
        lines.append(f"| {block} | {r['batch']} | {r['explanations_per_s']:.2f} | "
                     f"{temp} | {r['compile_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = deepvid_options(arguments(__doc__.splitlines()[0]))
    p.add_argument("--batch-sizes", type=_ints, default=[16, 64, 256])
    p.add_argument("--block-sizes", type=_ints, default=[1024, 4096])
    p.add_argument("--repeats", type=int, default=1,
                   help="Timed calls at least (bench.measure repeats short ones).")
    args = p.parse_args(argv)
    for name in args.settings:
        write_study(out_dir(args, "blocking"), f"blocking_{name}_{jax.default_backend()}",
                    run(args, name), markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
