"""``deepvid run``: explain a whole split with several explainers into a Zarr store,
resumably; several processes with jax.distributed."""

from __future__ import annotations

import argparse
import errno
import math
import os
import socket
import time

import jax

from deepvid_jax.cli import options
from deepvid_jax.data import sources as data
from deepvid_jax.explainers import registry
from deepvid_jax.explainers.deepvid import core as deepvid
from deepvid_jax.runner import run as run_lib

# jax.distributed.initialize's own default: how long a process waits for the others.
COORDINATOR_TIMEOUT = 300.0


def _class_choice(text: str) -> str | int:
    if text in run_lib.CLASS_CHOICES:
        return text
    try:
        return options.NON_NEGATIVE(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected 'predicted', 'label' or a class index, got {text!r}") from None


def coordinator(text: str) -> str:
    """An argparse type: 'host:port' ('[v6 address]:port' for IPv6) with a port in 1..65535."""
    host, sep, port = text.rpartition(":")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not bare or any(c.isspace() for c in host) or \
            (":" in bare and bare == host):
        raise argparse.ArgumentTypeError(f"expected host:port (e.g. 10.0.0.1:1234; IPv6 in "
                                         f"brackets), got {text!r}")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"the port must be an integer in 1..65535, got "
                                         f"{port!r} in {text!r}")
    return text


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Registers ``deepvid run`` and returns its parser."""
    p = subparsers.add_parser("run", help="Explain a whole split with several explainers into "
                              "a Zarr store; re-run to resume; several processes with "
                              "jax.distributed.")
    d = run_lib.RunConfig()
    options.split_options(p)
    p.add_argument("--checkpoints", default=None,
                   help="Folder with teacher/ (and vae/, surrogate/, explainer/ as needed).")
    options.teacher_option(p, " --checkpoints then gives the rest (vae/ for deepvid).")
    p.add_argument("--explainers", type=options.name_list(registry.METHODS, "explainer"),
                   default=d.explainers,
                   help="Comma-separated, or 'all': " + ", ".join(registry.METHODS) + ".")
    p.add_argument("--out", required=True, help="The Zarr store (a folder), e.g. test.zarr.")
    p.add_argument("--chunk-size", type=options.POSITIVE, default=d.chunk_size)
    p.add_argument("--seed", type=options.NON_NEGATIVE, default=d.seed)
    p.add_argument("--class", dest="class_", metavar="CLASS", type=_class_choice,
                   default=d.classes,
                   help="The class explained: 'predicted' (the teacher's), 'label', or an "
                   "index for every image.")
    p.add_argument("--weights", action="store_true",
                   help="Also store the students' weight images for every class (K x larger).")
    p.add_argument("--fast", action="store_true", help="deepvid with " + options.FAST_HELP)
    p.add_argument("--overwrite", action="store_true",
                   help="Replace a store of another run (only a deepvid_jax store).")
    p.add_argument("--repair", action="store_true",
                   help="Compute again the chunks of the store found damaged (without it a "
                   "damaged chunk is an error naming it).")
    p.add_argument("--coordinator", type=coordinator, default=None, metavar="HOST:PORT",
                   help="jax.distributed coordinator (multi-process runs; process 0 serves it).")
    p.add_argument("--num-processes", type=options.POSITIVE, default=None)
    p.add_argument("--process-id", type=options.NON_NEGATIVE, default=None)
    p.add_argument("--coordinator-timeout", type=options.finite(low=0.0, low_open=True),
                   default=COORDINATOR_TIMEOUT, metavar="SECONDS",
                   help="How long a process waits for the coordinator and the other processes "
                   f"(default {COORDINATOR_TIMEOUT:g}).")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)
    return p


def _wait_for_coordinator(address: str, timeout: float) -> None:
    """Returns once ``address`` accepts a connection; a clear error naming it after
    ``timeout`` seconds (jax.distributed itself would abort the process, or wait silently)."""
    host, port = _host_port(address)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(
                    2.0, deadline - time.monotonic()))):
                return
        except socket.gaierror as e:
            raise ValueError(f"--coordinator {address}: cannot resolve {host!r} ({e}).") from None
        except OSError as e:
            if time.monotonic() >= deadline:
                why = e.strerror or e
                raise ValueError(
                    f"cannot reach the coordinator {address} within {timeout:g} s ({why}): "
                    "is process 0 running with the same --coordinator, and the port open? "
                    "(--coordinator-timeout sets the wait)") from None
            time.sleep(0.2)


def _check_port_free(address: str) -> None:
    """Process 0 serves the coordinator on the port: a clear error if it is taken."""
    _, port = _host_port(address)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ValueError(f"--coordinator {address}: process 0 serves the coordinator on "
                                 f"port {port}, which is already in use.") from None


def distributed(args: argparse.Namespace) -> None:
    """jax.distributed from the flags, checked first (all three or none, 0 <= id < count, the
    coordinator reachable within --coordinator-timeout), or from the environment it reads
    itself (SLURM, TPU pods, JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID)."""
    flags = {"--coordinator": args.coordinator, "--num-processes": args.num_processes,
             "--process-id": args.process_id}
    if all(v is None for v in flags.values()):
        if os.environ.get("JAX_COORDINATOR_ADDRESS"):
            jax.distributed.initialize()
        return
    missing = [f for f, v in flags.items() if v is None]
    if missing:
        raise ValueError(f"--coordinator, --num-processes and --process-id go together: "
                         f"{' and '.join(missing)} missing.")
    if not args.process_id < args.num_processes:
        raise ValueError(f"--process-id {args.process_id} must be < --num-processes "
                         f"{args.num_processes}.")
    if args.process_id == 0:
        _check_port_free(args.coordinator)
    else:
        _wait_for_coordinator(args.coordinator, args.coordinator_timeout)
    jax.distributed.initialize(coordinator_address=args.coordinator,
                               num_processes=args.num_processes, process_id=args.process_id,
                               initialization_timeout=max(1, math.ceil(args.coordinator_timeout)))


def run(args: argparse.Namespace) -> int:
    """Explains the split into the store; process 0 prints one line."""
    config = run_lib.RunConfig(explainers=args.explainers, chunk_size=args.chunk_size,
                               seed=args.seed, classes=args.class_, save_weights=args.weights)
    distributed(args)
    source = data.open_source(args.dataset, args.split, **options.data_options(args))
    models = options.models(args, source.info)
    # --fast: DeepVID's fastest preset (and nothing else changes; the store records it)
    configs = {"deepvid": deepvid.FAST} if args.fast else None
    summary = run_lib.explain_dataset(source, models, args.out, config, configs=configs,
                                      overwrite=args.overwrite, repair=args.repair,
                                      progress=not args.quiet)
    if summary["process"] == 0:
        rate = summary["images_per_second"]
        repaired = summary.get("chunks_repaired")
        print(f"{summary['images']} images x {len(summary['explainers'])} explainers "
              f"({', '.join(summary['explainers'])}): {summary['chunks_computed']} chunks "
              f"computed, {summary['chunks_found_done']} found done, "
              + (f"{repaired} repaired, " if repaired else "")
              + f"{summary['seconds']:.1f} s" + (f", {rate:.1f} images/s" if rate else "")
              + f"; {'complete' if summary.get('complete') else 'incomplete'} store "
              f"{summary['store']}")
    return 0
