"""The ``deepvid`` parser and entry point: one subcommand per module of `COMMANDS`, each with
``add_parser(subparsers)`` and ``run(args) -> exit code``."""

from __future__ import annotations

import _thread
import argparse
import os
import signal
import sys
import threading
import time

from deepvid_jax.cli import (
    bench,
    demo,
    explain,
    explore,
    report,
    run,
    train_surrogate,
    train_teacher,
    train_vae,
    verify,
)
from deepvid_jax.data import sources as data
from deepvid_jax.models import checkpoint

# The subcommands, in the order --help lists them.
COMMANDS = (train_teacher, train_vae, train_surrogate, demo, explain, bench, run, verify, report,
            explore)
INTERRUPTED = 130


class _RepeatedInterrupt:
    """A SIGINT handler: KeyboardInterrupt, raised again each ``every`` seconds until the
    command has seen one (`seen`).

    One raise alone can be lost: JAX wraps calls that follow an XLA compilation in bare
    ``except:`` clauses, and a signal that arrives while a program compiles is raised at the
    first Python line after it, inside one of them; the command then ran to its end.
    """

    def __init__(self, every: float = 0.05):
        self.every, self.pending, self.seen = every, False, False

    def __call__(self, signum, frame):
        if self.seen:  # a repeat that crossed the command's handling of the first
            return
        if not self.pending:
            self.pending = True
            threading.Thread(target=self._repeat, daemon=True).start()
        raise KeyboardInterrupt

    def _repeat(self) -> None:
        while True:
            time.sleep(self.every)
            if self.seen:
                return
            _thread.interrupt_main(signal.SIGINT)


def build_parser() -> argparse.ArgumentParser:
    """The ``deepvid`` parser with every subcommand of `COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="deepvid", description="Explain image classifiers by distillation (DeepVID, JAX)."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs one command; a problem the user can fix is one line on stderr and exit code 2.

    ``argv`` None: this is the process's own command line. An interrupt then ends the process
    at once after the message (exit code 130), without unwinding JAX's runtime while its
    threads are mid-computation; with ``argv`` given the code is returned.
    """
    args = build_parser().parse_args(argv)
    interrupt = _RepeatedInterrupt()
    if (argv is None and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
        signal.signal(signal.SIGINT, interrupt)  # (not where SIGINT is ignored, as by nohup)
    try:
        return args.func(args)
    except (data.DataNotFoundError, data.CorruptDataError, checkpoint.CheckpointError,
            ValueError) as e:
        print(f"deepvid {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permissions, ...: name the file, no traceback
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"deepvid {args.command}: error: {e.strerror or e}{where}; files written "
              "before this point are complete, checkpoints are the previous ones.",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        interrupt.seen = True
        print(f"deepvid {args.command}: interrupted; checkpoints and result files are the "
              "previous complete ones.", file=sys.stderr)
        if argv is None:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(INTERRUPTED)
        return INTERRUPTED
    finally:
        interrupt.seen = True  # a command that ended before an interrupt re-raised: no more
