"""Sphinx configuration: MyST Markdown sources, the notebooks executed by MyST-NB, the API
reference and the command line generated from the package, and nothing fetched from the network
(no intersphinx, no CDN scripts, fonts or math)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent))

# The notebooks run on their small settings, with Keras on JAX; the kernel inherits these.
os.environ.setdefault("DEEPVID_NOTEBOOK_QUICK", "1")
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("DEEPVID_OFFLINE", "1")

import deepvid_jax  # noqa: E402

project = "deepvid_jax"
author = "the deepvid_jax authors"
copyright = "the deepvid_jax authors, Apache-2.0"
release = version = deepvid_jax.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.napoleon",
    "deepvid_docs",
]

source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "constraints.txt", "**/.ipynb_checkpoints", "README.md"]
root_doc = "index"
nitpicky = False

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# Notebooks: executed once per content change (jupyter-cache), so the doctest build that follows
# the HTML build reuses the outputs instead of running them again; a cell error fails the build.
# DEEPVID_DOCS_EXECUTE=off skips them (a quick look at the prose).
nb_execution_mode = os.environ.get("DEEPVID_DOCS_EXECUTE", "cache")
nb_execution_cache_path = str(HERE / "_build" / ".jupyter_cache")
nb_execution_timeout = 900
nb_execution_raise_on_error = True
nb_execution_in_temp = True
nb_execution_excludepatterns: list[str] = []
nb_merge_streams = True

autodoc_default_options = {"members": False}
autodoc_typehints = "description"
autodoc_member_order = "bysource"
autosummary_generate = False
default_role = "literal"  # docstrings quote names in `single backticks`

# Offline: no intersphinx inventories, no math renderer from a CDN (math is not rendered), no
# web fonts (the theme's fonts are served from _static).
intersphinx_mapping: dict = {}
mathjax_path = "no-math.js"  # a local no-op: TeX shows as written

html_theme = "sphinx_book_theme"
html_title = f"deepvid_jax {release}"
html_static_path = ["_static"]
html_favicon = "_static/favicon.png"  # else the browser asks the server for /favicon.ico
html_theme_options = {
    "repository_url": "",
    "use_repository_button": False,
    "use_download_button": False,
    "show_toc_level": 2,
    "navigation_with_keys": False,
}
# A fixed colour mode: the theme otherwise reads an unset preference and logs a console error.
html_context = {"default_mode": "light"}
html_show_sourcelink = False
html_last_updated_fmt = None
html_copy_source = False

doctest_global_setup = "import numpy as np\nimport deepvid_jax as dv\n"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # "Attributes:" as fields, not as entries that autodoc repeats
suppress_warnings = ["myst.header"]  # included result tables start at their own level
