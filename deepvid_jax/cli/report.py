"""``deepvid report``: one self-contained HTML page about a store of ``deepvid run``."""

from __future__ import annotations

import argparse

from deepvid_jax.data import sources as data
from deepvid_jax.runner import report as report_lib


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Registers ``deepvid report`` and returns its parser."""
    p = subparsers.add_parser("report", help="A self-contained HTML page about a store of "
                              "'deepvid run': configuration, fidelity, class means, galleries.")
    p.add_argument("store", help="The Zarr store written by 'deepvid run'.")
    p.add_argument("--out", default=None, help="The HTML file (default: STORE.html).")
    p.add_argument("--data-dir", default=None,
                   help="Where to read the input images for the galleries (default "
                   f"${data.DATA_DIR_ENV}).")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Writes the page and says where it is."""
    path = report_lib.write(args.store, args.out, data_dir=args.data_dir)
    print(f"wrote {path} (open it in a browser; it needs no network)")
    return 0
