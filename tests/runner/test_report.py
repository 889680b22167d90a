"""`deepvid report`: a self-contained page, checked in a real headless browser."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import zarr

from deepvid_jax.cli import main
from deepvid_jax.runner import report, run


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs Debian's package")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return path


def _browse(page: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
         "--log-level=0", "--virtual-time-budget=5000", *flags, page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def page(run_store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    assert main(["report", str(run_store), "--out", str(out)]) == 0
    return out


def test_page_is_self_contained(page):
    text = page.read_text()
    assert "http://" not in text and "https://" not in text  # no network needed
    srcs = re.findall(r'<img src="([^"]+)"', text)
    assert len(srcs) >= 4 and all(s.startswith("data:image/png;base64,") for s in srcs)
    for section in ("Fidelity of the students", "Mean attribution per class",
                    "Least faithful", "Misclassified", "deepvid, gradient"):
        assert section in text


def test_every_image_renders_without_console_errors(page, tmp_path):
    dom = _browse(page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = re.search(r'data-rendered="(\d+)/(\d+)"', dom.stdout)
    assert rendered, dom.stdout[:500]
    ok, total = map(int, rendered.groups())
    assert total >= 4 and ok == total
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []
    shot = tmp_path / "shot.png"
    proc = _browse(page, f"--screenshot={shot}", "--window-size=1200,2400")
    assert proc.returncode == 0 and shot.stat().st_size > 20_000


def test_a_page_error_would_be_caught(tmp_path):
    # the checks above can fail: a broken image and a script error are seen
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><img src='data:image/png;base64,AAAA'><script>"
                   "undefined_function();</script><script>window.addEventListener('load',"
                   "()=>{const i=Array.from(document.images);document.body.dataset.rendered="
                   "i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length})</script>"
                   "</body></html>")
    dom = _browse(bad, "--dump-dom")
    assert 'data-rendered="0/1"' in dom.stdout
    assert any(":CONSOLE" in line and "undefined_function" in line
               for line in dom.stderr.splitlines())


def test_report_errors(tmp_path, run_store):
    with pytest.raises(run.RunError, match="no such folder"):
        report.build(tmp_path / "missing.zarr")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    with pytest.raises(run.RunError, match="not one of deepvid_jax"):
        report.build(tmp_path / "other.zarr")
    for out in (run_store, run_store / "zarr.json", run_store / "done" / "page.html"):
        with pytest.raises(run.RunError, match="inside the store"):
            report.write(run_store, out)
    assert not (run_store / "done" / "page.html").exists()
    mine = tmp_path / "notes.html"
    mine.write_text("<html>my own page</html>")
    with pytest.raises(ValueError, match="not written by deepvid_jax"):
        report.write(run_store, mine)
    assert mine.read_text() == "<html>my own page</html>"
