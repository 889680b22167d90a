"""``deepvid explore``: DeepVID's three linked views of a split in the browser, served locally."""

from __future__ import annotations

import argparse
from pathlib import Path

from deepvid_jax.cli import options

DEFAULT_PORT = 8765


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is in 0..65535 (0: any free one), got {value}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Registers `deepvid explore` (with set_defaults(func=run)) and returns its parser."""
    p = subparsers.add_parser(
        "explore", help="DeepVID's visual analytics in the browser: the dataset, latent and "
        "student views, linked and live (a local server; offline).")
    p.add_argument("store", nargs="?", default=None,
                   help="A finished 'deepvid run' store: its split, colour by its per-instance "
                   "numbers, its attributions beside the live ones (models optional).")
    p.add_argument("--checkpoints", default=None,
                   help="Folder with teacher/ and vae/ (the live latent and student views).")
    p.add_argument("--dataset", default=None,
                   help="Dataset name (default: the store's, else 'digits').")
    p.add_argument("--split", default=None,
                   help="Split in TFDS syntax, e.g. 'test[8000:]' (default: the store's, else "
                   "'test').")
    p.add_argument("--data-dir", default=None, help="Folder of raw dataset files.")
    p.add_argument("--host", default="127.0.0.1",
                   help="Address to listen on (default 127.0.0.1: this machine only).")
    p.add_argument("--port", type=_port, default=DEFAULT_PORT,
                   help=f"Port (default {DEFAULT_PORT}; 0 picks a free one).")
    p.add_argument("--drag-neighbors", type=options.int_at_least(4), default=128,
                   help="Neighbours while a band is dragged (the full count on release).")
    p.add_argument("--neighbors", type=options.int_at_least(4), default=None,
                   help="The full neighbour count (default DeepVID's).")
    p.add_argument("--cache-dir", default=None,
                   help="Where the t-SNE projection is cached (default "
                   "~/.cache/deepvid_jax/explore).")
    p.add_argument("--export-dir", default="explore_exports",
                   help="Where 'export' writes PNG, JSON and NPZ (default ./explore_exports).")
    p.set_defaults(func=run)
    return p


def prepare(args: argparse.Namespace):
    """Everything `run` checks and loads before serving: (session, server). Raises a clear
    error (missing checkpoints or store, a port in use) before any model is loaded."""
    from deepvid_jax.data import sources as data
    from deepvid_jax.explainers import registry
    from deepvid_jax.explore import programs, state
    from deepvid_jax.explore import server as server_lib
    from deepvid_jax.models.bundle import Models

    server_lib.check_port(args.host, args.port)
    if args.store is None and args.checkpoints is None:
        raise ValueError("give --checkpoints (a folder with teacher/ and vae/) or a store of "
                         "'deepvid run'.")
    if args.checkpoints is not None:
        folder = Path(args.checkpoints)
        if not (folder / "teacher").exists():
            raise ValueError(f"no teacher checkpoint in {folder} (expected {folder / 'teacher'}"
                             "; train one with 'deepvid train-teacher').")
    store = state.open_store(args.store) if args.store is not None else None
    name = args.dataset or (store.dataset["name"] if store else "digits")
    split = args.split or (store.dataset["split"] if store else "test")
    models = Models.load(args.checkpoints) if args.checkpoints is not None else None
    dataset = data.load(name, split, data_dir=args.data_dir, download=False)
    if store is not None and len(next(iter(store.quantities.values()), dataset.labels)) != \
            len(dataset.labels):
        raise ValueError(f"the store has another number of instances than {name} {split} "
                         f"({len(dataset.labels)}): give the store's split.")
    state.validate_dataset(dataset, models)
    config = None
    if args.neighbors is not None and models is not None:
        config = programs.with_neighbors(registry.get("deepvid").config, args.neighbors)
    cache = Path(args.cache_dir) if args.cache_dir else Path.home() / ".cache" / \
        "deepvid_jax" / "explore"
    session = state.Session(dataset, models, store=store, config=config,
                            drag_neighbors=args.drag_neighbors, cache_dir=cache,
                            export_dir=args.export_dir)
    return session, server_lib.Server(session, args.host, args.port)


def run(args: argparse.Namespace) -> int:
    """Serves until interrupted; prints the URL first."""
    session, server = prepare(args)
    url = server.start()
    print(f"deepvid explore: {len(session.images)} instances of {session.info.name} "
          f"{session.info.split} at {url} (Ctrl-C stops)", flush=True)
    try:
        while server.running():
            server.wait(1.0)
    finally:
        server.stop()
    return 0
