"""What the docs generate from the package at build time, so nothing is copied by hand:

- the ``cli-reference`` directive: every ``deepvid`` subcommand's ``--help``, from
  ``deepvid_jax.cli.build_parser()``;
- ``_generated/api/*.md``: one page per public module, an autodoc entry for every name in its
  ``__all__`` (a name already documented under ``deepvid_jax`` links there); a public name
  without a docstring of its own is a warning, so ``-W`` fails the build;
- ``notebooks/*.ipynb``: copies of the repository's notebooks, which MyST-NB executes;
- ``_generated/changelog.md``: the repository's CHANGELOG.md, included;
- the ``study-machine`` directive: the command and machine a result file records.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import re
import shutil
from pathlib import Path

import docutils.core
from docutils import nodes
from docutils.parsers.rst import Directive
from sphinx.util import logging

log = logging.getLogger(__name__)

DOCS = Path(__file__).resolve().parents[1]
ROOT = DOCS.parent
GENERATED = DOCS / "_generated"

# The public modules, in the order of the reference; each page lists the module's __all__.
API_MODULES = (
    "deepvid_jax",
    "deepvid_jax.explainers",
    "deepvid_jax.metrics",
    "deepvid_jax.models",
    "deepvid_jax.data",
    "deepvid_jax.runner",
)


def _write(path: Path, text: str) -> None:
    """Write only on a change, so Sphinx does not rebuild pages that did not change."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


# ------------------------------------------------------------------------------------ the CLI


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser's subcommands by name, in the order --help lists them."""
    for action in parser._actions:  # argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_help() -> list[tuple[str, str]]:
    """(title, help text) for ``deepvid`` and each subcommand, as the installed command prints
    them."""
    from deepvid_jax.cli import build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps help at the terminal's width
    parser = build_parser()
    return [("deepvid", parser.format_help())] + [
        (f"deepvid {name}", sub.format_help()) for name, sub in subcommands(parser).items()]


class CliReference(Directive):
    """``{cli-reference}``: every subcommand's ``--help``, from ``build_parser()``."""

    def run(self):
        out = []
        for title, text in cli_help():
            rubric = nodes.rubric()
            rubric += nodes.literal(text=title)
            out += [rubric, nodes.literal_block(text.rstrip(), text.rstrip(), language="text")]
        return out


# ------------------------------------------------------------------------ the API reference


def own_doc(obj: object) -> str | None:
    """The object's own docstring; None when it has none (or only the one dataclass or the
    base class writes for it)."""
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    if not doc or not doc.strip():
        return None
    if inspect.isclass(obj) and doc.startswith(f"{obj.__name__}("):  # dataclass's signature
        return None
    return doc


def kind(obj: object) -> str:
    if inspect.isclass(obj):
        return "autoexception" if issubclass(obj, BaseException) else "autoclass"
    if callable(obj):
        return "autofunction"
    return "autodata"


def data_doc(obj: object) -> str:
    """One line on a public value: a registry's names, or the value itself."""
    if isinstance(obj, dict):
        names = ", ".join(f"``{k}``" for k in sorted(obj))
        return f"A registry (``dict``), by name: {names}."
    return f"``{obj!r}``"


def undocumented() -> list[str]:
    """Every public name (``__all__`` of the API modules) whose object has no docstring of its
    own; data (dicts, strings) is described by its module instead."""
    missing = []
    for modname in API_MODULES:
        mod = importlib.import_module(modname)
        for name in mod.__all__:
            obj = getattr(mod, name)
            if kind(obj) != "autodata" and own_doc(obj) is None:
                missing.append(f"{modname}.{name}")
    return missing


def api_pages() -> dict[str, str]:
    """Page name -> Markdown, one page per module of `API_MODULES`, and the index."""
    seen: dict[int, str] = {}  # id(object) -> where it is documented
    pages = {}
    for modname in API_MODULES:
        mod = importlib.import_module(modname)
        lines = [f"# `{modname}`\n", "```{eval-rst}", f".. automodule:: {modname}",
                 "   :no-members:", "```\n"]
        for name in mod.__all__:
            obj = getattr(mod, name)
            full = f"{modname}.{name}"
            k = kind(obj)
            if k != "autodata" and id(obj) in seen:
                lines.append(f"- `{name}`: the same object as {{py:obj}}`{seen[id(obj)]}`.")
                continue
            if k != "autodata":
                seen[id(obj)] = full
            if k == "autodata":
                lines += ["", "```{eval-rst}", f".. py:data:: {name}",
                          f"   :module: {modname}", "", f"   {data_doc(obj)}", "```"]
                continue
            opts = ["   :members:"] if k in ("autoclass", "autoexception") else []
            lines += ["", "```{eval-rst}", f".. {k}:: {full}", *opts, "```"]
        pages[modname] = "\n".join(lines) + "\n"
    index = ["# API reference\n",
             "Generated at build time from the docstrings of every name in each public "
             "module's `__all__` (`import deepvid_jax as dv`; the rest by subpackage).\n",
             "```{toctree}", ":maxdepth: 1", "", *API_MODULES, "```\n"]
    pages["index"] = "\n".join(index)
    return pages


# ------------------------------------------------------------------------------- generation


def generate(app) -> None:
    for name, text in api_pages().items():
        _write(GENERATED / "api" / f"{name}.md", text)
    for name in undocumented():
        log.warning(f"public name without a docstring of its own: {name}")
    changelog = ROOT / "CHANGELOG.md"
    _write(GENERATED / "changelog.md",
           "```{include} ../../CHANGELOG.md\n:heading-offset: 0\n```\n" if changelog.exists()
           else "# Changelog\n\nThe changelog (CHANGELOG.md) is not written yet.\n")
    notebooks = DOCS / "notebooks"
    notebooks.mkdir(exist_ok=True)
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        target = notebooks / nb.name
        if not target.exists() or target.read_bytes() != nb.read_bytes():
            shutil.copyfile(nb, target)


# ---------------------------------------------------------------------- the study-machine tag


def machine_words(m: dict) -> str:
    if "name" in m:
        return f"{m['name']}, JAX {m.get('jax', '?')}"
    devices = ", ".join(m.get("devices", [])) or "?"
    cpu = m.get("processor") if m.get("processor") not in (None, "x86_64") else "CPU"
    return f"{cpu}, {m.get('cpu_count', '?')} cores ({devices}), JAX {m.get('jax', '?')}"


class StudyMachine(Directive):
    """``{study-machine} benchmarks/results/<file>.json``: "Measured on <machine>" (every device
    of a `deepvid bench` file), and the command when the file records one."""

    required_arguments = 1

    def run(self):
        path = ROOT / self.arguments[0]
        env = self.state.document.settings.env
        env.note_dependency(str(path))
        if not path.exists():
            raise self.error(f"no result file {self.arguments[0]}")
        doc = json.loads(path.read_text())
        if "runs" in doc:  # deepvid bench: one run per device
            where = "; ".join(machine_words(r.get("device", {"name": n}) | {"name": n})
                              for n, r in doc["runs"].items())
        elif "machine" in doc:
            where = machine_words(doc["machine"])
        else:
            raise self.error(f"{self.arguments[0]} records no machine")
        para = nodes.paragraph()
        para += nodes.strong(text="Measured on: ")
        para += nodes.Text(where + f" (from {self.arguments[0]}).")
        out = [para]
        if doc.get("command"):
            cmd = nodes.paragraph()
            cmd += nodes.strong(text="Written by: ")
            cmd += nodes.literal(text=doc["command"])
            out.append(cmd)
        return out


# ------------------------------------------------------------------- docstrings as docutils sees

# Roles and directives that only Sphinx knows: a plain docutils parse reports them, Sphinx not.
_SPHINX_ONLY = ("Unknown interpreted text role", "Unknown directive type", "No role entry",
                "No directive entry", 'Unknown target name')
_PIPE = re.compile(r"(?<!\\)\|(?=\S)([^|\n]*?\S)\|")


def problems(rst: str) -> list[str]:
    """The warnings and errors docutils gives ``rst``, beyond Sphinx-only roles and
    directives."""
    found: list[str] = []
    settings = {"report_level": 5, "halt_level": 5, "warning_stream": False,
                "file_insertion_enabled": False, "raw_enabled": False}
    doc = docutils.core.publish_doctree(rst, settings_overrides=settings)
    for msg in doc.findall(docutils.nodes.system_message):
        text = msg.astext()
        if msg["level"] >= 2 and not any(s in text for s in _SPHINX_ONLY):
            found.append(text)
    return found


def plain_docstrings(app, what, name, obj, options, lines) -> None:
    """Docstrings are written as plain text with Google-style sections: ``|x|`` means an
    absolute value, not a substitution; a docstring that docutils cannot read as written
    (continuation lines outside a section) is shown as it is, in a literal block, rather than
    mangled."""
    for i, line in enumerate(lines):
        lines[i] = _PIPE.sub(lambda m: "\\|" + m.group(1) + "\\|", line)
    if lines and problems("\n".join(lines)):
        original = (inspect.getdoc(obj) or "").splitlines()
        lines[:] = ["::", ""] + ["    " + line for line in original] + [""]


def setup(app):
    app.connect("builder-inited", generate)
    app.connect("autodoc-process-docstring", plain_docstrings, priority=600)
    app.add_directive("study-machine", StudyMachine)
    app.add_directive("cli-reference", CliReference)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
