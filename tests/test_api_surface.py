"""The public surface, pinned: `dv.__all__`, the method and metric registries, every CLI
subcommand with its options, and the checkpoint kinds. A change to any of them fails here until
``tests/api_surface.json`` is regenerated on purpose (``DEEPVID_UPDATE_SURFACE=1 pytest
tests/test_api_surface.py``), so every change of the public face is one a reviewer sees."""

import argparse
import json
import os
from pathlib import Path

import deepvid_jax as dv

SNAPSHOT = Path(__file__).with_name("api_surface.json")


def _cli_surface() -> dict:
    from deepvid_jax.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {name: sorted(s for a in p._actions for s in a.option_strings or [a.dest])
            for name, p in sorted(sub.choices.items())}


def surface() -> dict:
    from deepvid_jax.models import checkpoint

    return {
        "all": sorted(dv.__all__),
        "methods": {n: {"needs": list(m.needs), "stochastic": m.stochastic,
                        "config": None if m.config is None else type(m.config).__name__}
                    for n, m in sorted(dv.METHODS.items())},
        "metrics": sorted(dv.METRICS),
        "cli": _cli_surface(),
        "checkpoint_kinds": sorted(checkpoint.KINDS),
    }


def test_public_surface_is_pinned():
    now = surface()
    if os.environ.get("DEEPVID_UPDATE_SURFACE"):
        SNAPSHOT.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
    pinned = json.loads(SNAPSHOT.read_text())
    for part in pinned:
        assert now[part] == pinned[part], f"the public {part} changed: regenerate on purpose"
    assert set(now) == set(pinned)


def test_every_public_name_resolves():
    for name in dv.__all__:
        assert getattr(dv, name) is not None, name
