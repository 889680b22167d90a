"""``deepvid verify STORE``: checks a store of ``deepvid run`` against its checksums."""

from __future__ import annotations

import argparse

from deepvid_jax.runner import integrity

DAMAGED = 1  # the exit code of a store with damaged chunks


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Registers ``deepvid verify`` (with set_defaults(func=run)) and returns its parser."""
    p = subparsers.add_parser(
        "verify", help="Check a store of 'deepvid run': every chunk marked done is read back "
        "and compared with the checksums written with it. Exit code 0: intact; 1: damaged "
        "chunks (listed; 'deepvid run --repair' computes exactly those again).")
    p.add_argument("store", help="The Zarr store written by 'deepvid run'.")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Lists damaged chunks; exit 0 when clean, 1 when damaged (say `deepvid run --repair`)."""
    damage = integrity.verify(args.store)
    if not damage:
        print(f"{args.store}: every chunk marked done reads back as written.")
        return 0
    print(f"{args.store}: {len(damage)} damaged chunk(s):")
    for d in damage:
        print(f"  {d}")
    print("Re-run the same 'deepvid run' command with --repair to compute exactly these "
          "chunks again.")
    return DAMAGED
