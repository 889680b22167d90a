"""The ``deepvid`` command line: thin commands that parse, call the library and print."""

from deepvid_jax.cli.commands import build_parser, main

__all__ = ["build_parser", "main"]
