"""How live `deepvid explore` is: a band drag to the first updated weight image, the full
neighbour count after release, the dataset view's first paint, and recompilations.

Models: a teacher and a VAE trained briefly (``--epochs``) on MNIST test[:8000] (the only MNIST
split in the shared data folder), reused from ``--models`` when present; the page shows the
whole test split (10,000 points). The browser is Debian's Chromium driven by Playwright,
headless; every time is measured in the page (request sent -> answer drawn, `performance.now`).

    .venv/bin/python benchmarks/explore.py --data-dir /work/shared/data \
        [--screenshot docs/explore.png]

Writes benchmarks/results/explore/explore.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

import deepvid_jax as dv
from deepvid_jax.data import sources as data
from deepvid_jax.explore import Server, Session
from deepvid_jax.models import checkpoint, train
from deepvid_jax.models.networks import TeacherConfig, VAEConfig

RESULTS = Path(__file__).resolve().parent / "results" / "explore"
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def models(folder: Path, data_dir: str | None, epochs: int) -> dv.Models:
    """The MNIST teacher and VAE of ``folder``, trained there first when absent."""
    if not (folder / "teacher").exists() or not (folder / "vae").exists():
        tr = data.load("mnist", "test[:7000]", data_dir=data_dir, download=False)
        va = data.load("mnist", "test[7000:8000]", data_dir=data_dir, download=False)
        meta = {"name": "mnist", "image_shape": [28, 28, 1], "num_classes": 10}
        t0 = time.perf_counter()
        tp, _ = train.train_teacher((tr.images, tr.labels), (va.images, va.labels),
                                    TeacherConfig(), train.TrainConfig(epochs=epochs),
                                    progress=False)
        checkpoint.save(folder / "teacher", tp, kind="teacher", config=TeacherConfig(),
                        dataset=meta)
        vp, _ = train.train_vae(tr.images, va.images[:256], VAEConfig(),
                                train.TrainConfig(epochs=epochs), progress=False)
        checkpoint.save(folder / "vae", vp, kind="vae", config=VAEConfig(), dataset=meta)
        print(f"trained teacher and VAE in {time.perf_counter() - t0:.0f} s", flush=True)
    return dv.Models.load(folder)


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "jax_backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()],
            "load_average_1m_at_start": os.getloadavg()[0], "python": sys.version.split()[0]}


def drag(page, dy_steps: int, step_px: float, pause_s: float) -> None:
    """Drags the top handle of the first axis ``dy_steps`` moves of ``step_px`` and releases."""
    handle = page.locator("#parcoords rect.handle-high").first
    box = handle.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    for k in range(1, dy_steps + 1):
        page.mouse.move(x, y + step_px * k)
        time.sleep(pause_s)
    time.sleep(4 * pause_s)  # held a moment before release, as a person does
    page.mouse.up()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("DEEPVID_DATA_DIR"))
    ap.add_argument("--models", default="/tmp/deepvid_explore_mnist")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--split", default="test")
    ap.add_argument("--drags", type=int, default=8)
    ap.add_argument("--drag-neighbors", type=int, default=128)
    ap.add_argument("--screenshot", default=None, help="Also save the page here (a PNG).")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    m = models(Path(args.models), args.data_dir, args.epochs)
    ds = data.load("mnist", args.split, data_dir=args.data_dir, download=False)
    t0 = time.perf_counter()
    session = Session(ds, m, drag_neighbors=args.drag_neighbors,
                      cache_dir=Path(args.models) / "cache", export_dir="/tmp/explore_exports")
    session_s = time.perf_counter() - t0
    tsne_cached = "tsne" in session.projections
    server = Server(session)
    url = server.start()
    out: dict = {"machine": machine(), "command": " ".join(sys.argv), "split": args.split,
                 "points": len(ds.images), "models": "teacher (TeacherConfig()) and VAE "
                 f"(VAEConfig()) trained {args.epochs} epochs on MNIST test[:7000]",
                 "neighbors": {"drag": session.live.drag_neighbors,
                               "full": session.live.base.neighbors.num},
                 "session_start_s": session_s}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1150})
            errors = []
            page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
            page.on("pageerror", lambda e: errors.append(str(e)))
            if not tsne_cached:  # t-SNE shares the CPUs: measure the drags after it
                while "tsne" not in session.projections and \
                        "tsne_error" not in session.projections:
                    time.sleep(2)
                out["tsne_s"] = time.perf_counter() - t0
            page.goto(url)
            page.wait_for_function("window.__explore && __explore.paintedAt", timeout=600_000)
            out["dataset_paint_ms"] = page.evaluate("__explore.paintedAt")
            page.wait_for_function("__explore.lastExplain && __explore.lastExplain.full",
                                   timeout=600_000)
            out["first_full_explanation_ms_with_compile"] = page.evaluate(
                "__explore.timings.filter(t => t.op === 'explain' && t.full)[0].ms")
            # warm-up: the drag program compiles once (a page's drags may all be replaced by
            # their release while the first compiles)
            band = page.evaluate("__explore.band")
            session.handle("explain", {"index": 0, "band": band, "full": False})
            compiled = session.live.compilations()
            page.evaluate("__explore.timings = []")
            for k in range(args.drags):
                n = len(page.evaluate("__explore.timings"))
                drag(page, 10, 3 if k % 2 else -3, 0.15)
                page.wait_for_function(f"__explore.timings.length > {n} && "
                                       "__explore.timings[__explore.timings.length - 1].full",
                                       timeout=600_000)
            timings = page.evaluate("__explore.timings")
            out["compilations_before_drags"] = compiled
            out["compilations_after_drags"] = session.live.compilations()
            drag_ms = [t["ms"] for t in timings if t["op"] == "explain" and not t["full"]]
            full_ms = [t["ms"] for t in timings if t["op"] == "explain" and t["full"]]
            out["drag_ms"] = drag_ms
            out["release_ms"] = full_ms
            out["stats"] = session.stats
            out["tsne_from_cache"] = tsne_cached
            page.wait_for_function("__explore.points.projection === 'tsne'", timeout=900_000)
            out["tsne_ready_after_start_s"] = time.perf_counter() - t0
            if args.screenshot:
                page.screenshot(path=args.screenshot, full_page=True)
            out["console_errors"] = errors
            browser.close()
    finally:
        server.stop()
    write(out)
    return 0


def summary(values: list[float]) -> str:
    if not values:
        return "n/a"
    return (f"median {statistics.median(values):.0f} ms, p90 {np.percentile(values, 90):.0f} ms"
            f", max {max(values):.0f} ms (n={len(values)})")


def write(out: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "explore.json").write_text(json.dumps(out, indent=1))
    mc = out["machine"]
    lines = [
        "# deepvid explore: live latency",
        "",
        f"Machine: {mc['platform']}, {mc['cpu_count']} CPUs, JAX {mc['jax_backend']}, "
        f"load average {mc['load_average_1m_at_start']:.1f} at start (the CPUs were shared).",
        f"Models: {out['models']}. Page: {out['points']} points of MNIST {out['split']}.",
        f"Command: `{out['command']}`",
        "",
        "| measure | target | measured |",
        "|---|---|---|",
        f"| band drag -> updated weight image ({out['neighbors']['drag']} neighbours) | "
        f"<= 300 ms | {summary(out['drag_ms'])} |",
        f"| release -> weight image ({out['neighbors']['full']} neighbours) | <= 1 s | "
        f"{summary(out['release_ms'])} |",
        f"| dataset view, {out['points']} points, first paint | <= 2 s | "
        f"{out['dataset_paint_ms']:.0f} ms after navigation |",
        f"| compilations during the drags | 0 | "
        f"{out['compilations_after_drags'] - out['compilations_before_drags']} "
        f"({out['compilations_after_drags']} programs in all) |",
        "",
        f"First full explanation including its compilation: "
        f"{out['first_full_explanation_ms_with_compile']:.0f} ms; session start (data, "
        f"teacher probabilities, latent means, PCA): {out['session_start_s']:.1f} s; t-SNE: "
        + ("read from its disk cache" if out["tsne_from_cache"] else
           f"{out['tsne_s']:.0f} s in the background (the drags were measured after it)")
        + f". Requests {out['stats'].get('requests')}, replaced by newer ones "
        f"before computing: {out['stats'].get('superseded', 0)}. Console errors: "
        f"{len(out['console_errors'])}.",
        "",
    ]
    (RESULTS / "explore.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
