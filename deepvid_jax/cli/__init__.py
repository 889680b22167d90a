"""The ``deepvid`` command line: thin commands that parse, call the library and print (one
module per command, registered in `main.COMMANDS`)."""

from deepvid_jax.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
