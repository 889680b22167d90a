"""The README and the documentation say what the code does.

Fast (every run): the README's headline table is what benchmarks/headline.py generates; every
table, figure and result file the docs include exists; every public name has a docstring; the
command line reference lists every subcommand; the example checker fails a broken example.

After ``make docs`` (``make docs-test``, i.e. ``pytest -m docs tests/test_docs.py``): every
python block of README.md and docs/**/*.md runs (a file's blocks in order, one namespace, in a
subprocess with a timeout), the README's command-line quickstart runs first, and the built site
opens in headless Chromium with no console error, no request off 127.0.0.1 and every image
decoded; the API reference lists every name of ``dv.__all__``; the notebooks were executed.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
HTML = DOCS / "_build" / "html"
CHROMIUM = "/usr/bin/chromium"
EXAMPLE_TIMEOUT = 1200  # seconds for one file's examples (the README's trains two tiny models)

FENCE = re.compile(r"^(?P<fence>`{3,})(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=fence)[ \t]*$",
                   re.M | re.S)


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def markdown_files() -> list[Path]:
    ignored = ("_build", "_generated", "notebooks")
    return [README] + sorted(p for p in DOCS.rglob("*.md")
                             if not any(part in ignored for part in p.relative_to(DOCS).parts))


def blocks(text: str, language: str) -> list[tuple[int, str]]:
    """(first line of the body, body) of every ```language fence, in order."""
    found = []
    for m in FENCE.finditer(text):
        words = m["info"].strip().split()
        if words and words[0] == language:
            found.append((text[: m.start("body")].count("\n") + 1, m["body"]))
    return found


def console_commands(text: str) -> list[str]:
    """The ``$ command`` lines of every ```console fence."""
    return [line[2:].strip() for _, body in blocks(text, "console")
            for line in body.splitlines() if line.startswith("$ ")]


RUNNER = textwrap.dedent("""
    import json, sys
    path, blocks = sys.argv[1], json.load(open(sys.argv[2]))
    namespace = {"__name__": "__main__"}
    for line, source in blocks:
        # Line numbers of a traceback are the Markdown file's.
        code = compile("\\n" * (line - 1) + source, path, "exec")
        try:
            exec(code, namespace)
        except BaseException:
            print(f"{path}: the python block at line {line} failed", file=sys.stderr)
            raise
""")


def run_examples(md: Path, cwd: Path, timeout: float = EXAMPLE_TIMEOUT
                 ) -> subprocess.CompletedProcess:
    """Runs the python blocks of ``md`` in order, in one namespace, in a fresh interpreter in
    ``cwd``; returns the finished process (non-zero when a block raised)."""
    spec = cwd / f".{md.stem}.blocks.json"
    spec.write_text(json.dumps(blocks(md.read_text(), "python")))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DEEPVID_OFFLINE": "1",
           "KERAS_BACKEND": "jax", "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-c", RUNNER, str(md), str(spec)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


REMOTE_ASSET = re.compile(
    r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*[\"']?(?:https?:)?//", re.I)


def remote_assets(html: str) -> list[str]:
    """Tags of ``html`` that load a script, stylesheet, image or frame from another host."""
    return [m.group(0) for m in REMOTE_ASSET.finditer(html)]


def _docs_selected(config) -> bool:
    return "docs" in (config.getoption("markexpr") or "")


docs_only = pytest.mark.docs


@pytest.fixture
def docs_run(request):
    """Skips unless the docs tests were asked for (``-m docs``): they take minutes."""
    if not _docs_selected(request.config):
        pytest.skip("documentation checks: make docs && make docs-test (pytest -m docs)")


@pytest.fixture(scope="module")
def built():
    if not (HTML / "index.html").is_file():
        pytest.skip("the documentation is not built (make docs)")
    return HTML


# ------------------------------------------------------------------------------- fast checks


def test_readme_headline_table_is_generated():
    headline = _load("headline", ROOT / "benchmarks" / "headline.py")
    text = README.read_text()
    assert headline.section(text) == headline.table(), \
        "README's results table is stale: run python benchmarks/headline.py"


def test_readme_is_a_front_door():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    assert len(blocks(text, "python")) >= 2
    assert any(c.startswith("deepvid demo") for c in console_commands(text))
    for target in re.findall(r"\]\(((?!https?:)[^)#]+)\)", text):  # relative links resolve
        assert (ROOT / target).exists() or target == "CHANGELOG.md", target


def test_every_included_file_and_figure_exists():
    include = re.compile(r"^```\{(include|study-machine)\}\s+(\S+)", re.M)
    image = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
    checked = 0
    for md in markdown_files():
        text = md.read_text()
        for kind, target in include.findall(text):
            base = md.parent if kind == "include" else ROOT
            if target == "../../CHANGELOG.md":
                continue
            assert (base / target).is_file(), f"{md}: {{{kind}}} {target} does not exist"
            checked += 1
        for target in image.findall(text):
            assert (md.parent / target).is_file(), f"{md}: image {target} does not exist"
            checked += 1
    assert checked > 20


def test_every_documented_bench_method_exists():
    """A regenerate command in the docs that names a removed `deepvid bench` row would fail."""
    from deepvid_jax.runner import bench

    methods = re.compile(r"--methods[ =]+([\w,]+)")
    named = {(md.name, name) for md in [*markdown_files(), ROOT / "benchmarks" / "README.md"]
             for found in methods.findall(md.read_text()) for name in found.split(",") if name}
    assert len(named) >= 5
    unknown = sorted(f"{where}: {name}" for where, name in named if name not in bench.ROWS)
    assert not unknown, f"documented bench rows that do not exist: {unknown}"


@docs_only  # the docs extension needs the docs extra (docutils): make docs-test
def test_every_public_name_has_a_docstring():
    ext = _load("deepvid_docs", DOCS / "_ext" / "deepvid_docs.py")
    assert ext.undocumented() == []


@docs_only
def test_cli_reference_lists_every_subcommand():
    from deepvid_jax.cli import build_parser

    ext = _load("deepvid_docs", DOCS / "_ext" / "deepvid_docs.py")
    titles = [title for title, _ in ext.cli_help()]
    names = list(ext.subcommands(build_parser()))
    assert titles == ["deepvid"] + [f"deepvid {n}" for n in names]
    assert {"demo", "explain", "run", "report", "bench"} <= set(names)


def test_example_checker_runs_blocks_in_order_and_fails_a_broken_one(tmp_path):
    good = tmp_path / "good.md"
    good.write_text("Text.\n\n```python\nx = 2\n```\n\n```python\nassert x + 1 == 3\n```\n"
                    "\n```text\nnot run\n```\n")
    assert run_examples(good, tmp_path, timeout=60).returncode == 0
    broken = tmp_path / "broken.md"
    broken.write_text("# An example\n\n```python\nimport math\n```\n\n"
                      "```python\nprint(math.pi, classes)\n```\n")
    proc = run_examples(broken, tmp_path, timeout=60)
    assert proc.returncode != 0
    assert "NameError" in proc.stderr and "classes" in proc.stderr
    assert "line 8 failed" in proc.stderr  # the Markdown file's line of the broken block


def test_remote_asset_check_flags_a_cdn_script():
    page = ('<link rel="stylesheet" href="_static/a.css"><script src="_static/b.js"></script>'
            '<script src="https://cdn.example.org/mathjax.js"></script>'
            '<link href="//fonts.example.org/x.css" rel="stylesheet">')
    assert len(remote_assets(page)) == 2


@docs_only
def test_built_pages_load_nothing_remote(built):
    pages = sorted(built.rglob("*.html"))
    assert pages
    offending = {str(p.relative_to(built)): remote_assets(p.read_text(errors="replace"))
                 for p in pages}
    assert {k: v for k, v in offending.items() if v} == {}


@docs_only
def test_api_reference_lists_every_public_name(built):
    import deepvid_jax as dv

    page = (built / "_generated" / "api" / "deepvid_jax.html").read_text()
    missing = [n for n in dv.__all__ if f'id="deepvid_jax.{n}"' not in page]
    assert missing == []


@docs_only
def test_notebooks_were_executed_into_the_site(built):
    cache = pytest.importorskip("jupyter_cache").get_cache(DOCS / "_build" / ".jupyter_cache")
    executed = {Path(r.uri).name for r in cache.list_cache_records()}
    assert {"quickstart.ipynb", "your_model.ipynb"} <= executed  # run by the build, cached
    for name in ("quickstart", "your_model"):
        page = (built / "notebooks" / f"{name}.html").read_text()
        assert "<img" in page, f"{name}: no figure in the executed notebook"
        assert "Traceback" not in page and 'class="output traceback' not in page


# ------------------------------------------------------- examples and browser (-m docs)


def _example_files() -> list[Path]:
    return [p for p in markdown_files() if blocks(p.read_text(), "python")]


@docs_only
@pytest.mark.parametrize("md", _example_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_run(md, tmp_path, docs_run):
    if md == README:  # the Python quickstart loads what the command-line one trains
        for command in console_commands(md.read_text()):
            argv = shlex.split(command)
            assert argv[0] == "deepvid"
            proc = subprocess.run([sys.executable, "-m", "deepvid_jax.cli", *argv[1:]],
                                  cwd=tmp_path, capture_output=True, text=True,
                                  timeout=EXAMPLE_TIMEOUT,
                                  env={**os.environ, "DEEPVID_OFFLINE": "1"})
            assert proc.returncode == 0, f"$ {command}\n{proc.stdout[-3000:]}{proc.stderr}"
    proc = run_examples(md, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site(built):
    handler = functools.partial(_Quiet, directory=str(built))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


@docs_only
def test_site_in_headless_chromium(site, built, tmp_path, docs_run):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("no /usr/bin/chromium (apt-get install chromium)")
    pages = sorted(str(p.relative_to(built)) for p in built.rglob("*.html")
                   if p.relative_to(built).parts[0] != "_static")  # the theme's templates
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    problems: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=flags)
        page = browser.new_page()
        current = {"url": ""}
        page.on("console", lambda m: problems.append(f"{current['url']}: console {m.text}")
                if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"{current['url']}: {e}"))

        def request(r):
            host = urlparse(r.url).hostname
            if r.url.startswith(("data:", "blob:", "about:")) or host == "127.0.0.1":
                return
            problems.append(f"{current['url']}: request off 127.0.0.1: {r.url}")

        page.on("request", request)
        page.on("requestfailed", lambda r: problems.append(f"{current['url']}: failed {r.url}"))
        page.on("response", lambda r: problems.append(f"{current['url']}: {r.status} {r.url}")
                if r.status >= 400 else None)
        images = 0
        for rel in pages:
            current["url"] = rel
            response = page.goto(site + rel, wait_until="load")
            assert response is not None and response.ok, rel
            broken = page.eval_on_selector_all(
                "img", "els => els.filter(e => !(e.complete && e.naturalWidth > 0))"
                       ".map(e => e.getAttribute('src'))")
            problems += [f"{rel}: image does not decode: {src}" for src in broken]
            images += page.eval_on_selector_all("img", "els => els.length")
        browser.close()
    assert len(pages) > 30 and images > 20
    assert problems == []
