"""`deepvid explore`: the server's checks, its compiled programs, and the page in a real browser
(Playwright driving Debian's /usr/bin/chromium, headless; skipped when either is absent).

One session, one server and one browser page serve the whole file; the tiny models are the
shared session fixtures of tests/conftest.py.
"""

import argparse
import dataclasses
import json
import os
import shutil
import socket
from pathlib import Path

import jax
import numpy as np
import pytest

import deepvid_jax as dv
from deepvid_jax.cli import explore as cli
from deepvid_jax.data import sources as data
from deepvid_jax.explainers import registry
from deepvid_jax.explore import programs, server, state
from deepvid_jax.explore.state import RequestError

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
NEIGHBORS, DRAG = 64, 16
TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def models(run_checkpoints):
    return dv.Models.load(run_checkpoints)


@pytest.fixture(scope="module")
def dataset():
    return data.load("digits", "test")


@pytest.fixture(scope="module")
def config():
    return programs.with_neighbors(registry.get("deepvid").config, NEIGHBORS)


@pytest.fixture(scope="module")
def session(models, dataset, config, tmp_path_factory):
    return state.Session(dataset, models, config=config, drag_neighbors=DRAG,
                         cache_dir=tmp_path_factory.mktemp("cache"),
                         export_dir=tmp_path_factory.mktemp("exports"))


def direct(models, config, image, band, seed):
    """DeepVID's extras of one image by `dv.explain` with the band as a config ("weights"
    [1, H, W, C, K], "smooth" [1], ...)."""
    c = dataclasses.replace(config, vae=models.vae_config, neighbors=dataclasses.replace(
        config.neighbors, latent_band=tuple(tuple(map(float, b)) for b in band)))
    out = dv.explain("deepvid", image[None], key=jax.random.PRNGKey(seed), models=models,
                     config=c)
    return out.extras


# --------------------------------------------------------------------------------------------
# Without a browser
# --------------------------------------------------------------------------------------------


def test_band_program_equals_dv_explain_and_never_recompiles(session, models, config,
                                                             dataset):
    z = models.vae_config.latent_dim
    band = np.linspace(-1.5, 1.0, 2 * z).reshape(z, 2)
    band.sort(axis=1)
    r = session.handle("explain", {"index": 3, "band": band.tolist(), "key": 7, "full": True})
    extras = direct(models, config, dataset.images[3], band, 7)
    w = extras["weights"][0]
    np.testing.assert_allclose(np.asarray(r["weights"]), w.mean(axis=2).transpose(2, 0, 1),
                               atol=2e-5)  # two programs: float rounding through the FISTA steps
    # the student's choice of smoothness, shown beside the maps, is dv.explain's
    assert r["smooth_grid"] == list(config.student.lasso_smooth_grid)
    assert r["smooth"] == float(extras["smooth"][0]) and r["smooth"] in r["smooth_grid"]

    # every sampled offset lies in its band, and the band reached is the band asked for
    sampled = np.asarray(r["sampled_band"])
    assert np.all(sampled[:, 0] >= band[:, 0] - 1e-5) and np.all(sampled[:, 1] <= band[:, 1] + 1e-5)
    session.handle("explain", {"index": 0, "band": band.tolist(), "key": 0, "full": False})
    before = session.live.compilations()
    for i, scale in enumerate((0.5, 2.0, 0.1)):  # new bands, instances, keys, both counts
        for full in (False, True):
            session.handle("explain", {"index": i + 5, "band": (band * scale).tolist(),
                                       "key": i, "full": full})
    assert session.live.compilations() == before == 2


def test_numbers_say_which_smoothness_the_student_chose():
    from deepvid_jax.explainers.deepvid.core import Explanation
    from deepvid_jax.explainers.deepvid.student import StudentConfig
    from deepvid_jax.metrics.fidelity import Fidelity

    def numbers(student, smooth, penalty=0.25):
        e = Explanation(weights=np.zeros((1, 2, 2, 1, 3)), bias=np.zeros((1, 3)),
                        teacher_probs=np.full((1, 3), 1 / 3), student_probs=np.full((1, 3), 1 / 3),
                        fidelity=Fidelity(*(np.ones(1),) * 3), flip_fraction=np.array([0.5]),
                        penalty=None if penalty is None else np.array([penalty]),
                        smooth=None if smooth is None else np.array([smooth]))
        return state._numbers(e, student)

    grid = registry.get("deepvid").config.student
    assert (numbers(grid, 0.0)["smooth"], numbers(grid, 1.5)["smooth"]) == (0.0, 1.5)
    assert numbers(grid, 1.5)["smooth_grid"] == list(grid.lasso_smooth_grid)
    fixed = StudentConfig(method="lasso", lasso_smooth=0.7)  # no grid: the fixed value
    assert (numbers(fixed, None)["smooth"], numbers(fixed, None)["smooth_grid"]) == (0.7, [])
    ridge = numbers(StudentConfig(), None)
    assert ridge["smooth"] is None and ridge["penalty"] == 0.25
    assert numbers(StudentConfig(method="kd"), None, penalty=None)["penalty"] is None


def test_an_export_is_whole_or_leaves_the_last_one(session, monkeypatch):
    z = session.live.latent_dim
    msg = {"index": 2, "band": [[-1.0, 1.0]] * z, "key": 5}
    paths = [Path(f) for f in session.handle("export", msg)["files"]]
    before = {f: f.read_bytes() for f in paths}
    assert json.loads(paths[1].read_text())["numbers"]["smooth"] in \
        registry.get("deepvid").config.student.lasso_smooth_grid

    def full_disk(file, **arrays):
        file.write(b"half an archive")
        raise OSError("No space left on device")

    monkeypatch.setattr(state.np, "savez", full_disk)
    with pytest.raises(OSError, match="No space"):
        session.handle("export", msg)
    assert {f: f.read_bytes() for f in paths} == before  # the same key: the same files
    assert sorted(p.name for p in session.export_dir.iterdir()) == sorted(f.name for f in paths)


def test_bad_requests_are_messages(session):
    z = session.live.latent_dim
    good = [[-1, 1]] * z
    cases = [
        ("explain", {"index": 10_000, "band": good}, "out of range"),
        ("explain", {"index": -1, "band": good}, "out of range"),
        ("explain", {"index": "../../etc/passwd", "band": good}, "whole number"),
        ("explain", {"index": 0, "band": [[float("nan"), 1]] + good[1:]}, "finite"),
        ("explain", {"index": 0, "band": [[1, -1]] + good[1:]}, "empty"),
        ("explain", {"index": 0, "band": good[1:]}, "pairs"),
        ("explain", {"index": 0, "band": good, "student": {"method": "magic"}}, "student"),
        ("edit", {"index": 0, "code": [float("inf")] * z}, "finite"),
        ("nope", {}, "unknown request"),
    ]
    for op, msg, words in cases:
        with pytest.raises(RequestError, match=words):
            session.handle(op, msg)
    with pytest.raises(RequestError, match="at most 1000"):
        session.image_batch(list(range(1001)))
    assert session.handle("probs", {"index": 0})["index"] == 0  # still serving


def test_known_answers_of_helpers():
    maps = np.random.default_rng(0).normal(size=(1, 5, 5))
    assert programs.pearson_agreement(np.concatenate([maps, 2 * maps + 1])) == pytest.approx(1)
    assert programs.pearson_agreement(np.concatenate([maps, -maps])) == pytest.approx(-1)
    probs = np.zeros((3, 4, 2))
    probs[1, :, 0] = [0, 1, 0, 1]  # axis 1 moves the teacher most, then 2, axis 0 never
    probs[2, :, 0] = [0, 0.5, 0.5, 0.5]
    assert programs.axis_order(probs).tolist() == [1, 2, 0]
    np.testing.assert_allclose(state.pca(np.c_[np.arange(5.0), np.zeros(5)])[:, 1], 0,
                               atol=1e-9)


def test_cli_errors_before_starting(run_checkpoints, tmp_path):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    p = cli.add_parser(sub)
    args = parser.parse_args(["explore", "--checkpoints", str(tmp_path / "none"), "--port", "0"])
    assert args.func is cli.run and p.prog.endswith("explore")
    with pytest.raises(ValueError, match="no teacher checkpoint"):
        cli.run(args)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        args = parser.parse_args(["explore", "--checkpoints", str(run_checkpoints),
                                  "--port", str(port)])
        with pytest.raises(server.PortError, match="in use"):
            cli.run(args)
    assert parser.parse_args(["explore", "--checkpoints", "x"]).host == "127.0.0.1"
    with pytest.raises(SystemExit):
        parser.parse_args(["explore", "--port", "70000"])


def test_store_mode(run_store, dataset):
    store = state.open_store(run_store)
    ds = data.load("digits", store.dataset["split"])
    s = state.Session(ds, None, store=store, tsne_in_background=False)
    pts = s.points()
    assert "deepvid/fidelity_top1" in pts["quantities"]
    np.testing.assert_allclose(pts["quantities"]["deepvid/fidelity_top1"],
                               store.quantities["deepvid/fidelity_top1"], atol=1e-5)
    assert s.meta()["store"]["methods"] == ["deepvid", "gradient"] and not s.meta()["live"]
    got = s.handle("methods", {"index": 2, "names": ["store:deepvid"]})["maps"]["store:deepvid"]
    np.testing.assert_allclose(got, np.asarray(store.attributions["deepvid"][2]).mean(-1),
                               atol=1e-5)
    with pytest.raises(RequestError, match="needs models"):
        s.handle("explain", {"index": 0, "band": []})


def test_latest_wins(session):
    pytest.importorskip("websockets")
    from websockets.sync.client import connect

    srv = server.Server(session)
    url = srv.start()
    try:
        z = session.live.latent_dim
        with connect(url.replace("http", "ws") + "ws") as ws:
            for k in range(12):
                ws.send(json.dumps({"op": "explain", "seq": k, "index": k, "key": 0,
                                    "band": [[-1, 1 + k / 10]] * z, "full": False}))
            replies = []
            while not replies or replies[-1]["seq"] != 11:
                replies.append(json.loads(ws.recv(timeout=120)))
        assert all("result" in r for r in replies)
        assert len(replies) < 12  # queued drags were replaced by newer ones
        assert replies[-1]["result"]["index"] == 11
    finally:
        srv.stop()


# --------------------------------------------------------------------------------------------
# In a browser
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:  # Playwright gives it a new empty profile
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


class Watched:
    """A page with every console error, uncaught exception and off-host request recorded."""

    def __init__(self, browser, url: str):
        self.page = browser.new_page(viewport={"width": 1500, "height": 1150})
        self.console, self.offhost = [], []
        self.page.on("console", lambda m: m.type == "error" and self.console.append(m.text))
        self.page.on("pageerror", lambda e: self.console.append(f"uncaught: {e}"))
        self.page.on("request", self._request)
        self.page.goto(url)

    def _request(self, r):
        from urllib.parse import urlparse

        host = urlparse(r.url).hostname
        if host != "127.0.0.1":
            self.offhost.append(r.url)

    def problems(self) -> list[str]:
        return self.console + [f"request off 127.0.0.1: {u}" for u in self.offhost]

    def ready(self, timeout: float = TIMEOUT_MS) -> bool:
        try:
            self.page.wait_for_function("window.__explore && __explore.ready && "
                                        "__explore.lastExplain && __explore.lastExplain.full",
                                        timeout=timeout)
            return True
        except Exception:
            return False

    def state(self, expr: str):
        return self.page.evaluate(f"() => {expr}")


@pytest.fixture(scope="module")
def served(session):
    srv = server.Server(session)
    url = srv.start()
    yield url
    srv.stop()


@pytest.fixture(scope="module")
def page(browser, served):
    w = Watched(browser, served)
    assert w.ready(), w.problems()
    return w


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    return tmp_path_factory.mktemp("screenshots")


def drawn_band(page) -> dict[int, tuple[float, float]]:
    """The band as drawn: each band rectangle's top and bottom in pixels, mapped back through
    the axis scale (value -5..5 over 260 px from y = 14) minus the instance's mean."""
    rects = page.state("[...document.querySelectorAll('#parcoords rect.band')].map(r => "
                       "[+r.dataset.dim, +r.getAttribute('y'), +r.getAttribute('height'), "
                       "+r.dataset.mean])")
    out = {}
    for d, y, h, mean in rects:
        high = 5 - (y - 14) / 260 * 10 - mean
        low = 5 - (y + h - 14) / 260 * 10 - mean
        out[d] = (low, high)
    return out


def test_page_draws_the_band_it_sampled(page, session, shots):
    last = page.state("__explore.lastExplain")
    band = drawn_band(page)
    for d, (low, high) in band.items():
        assert low == pytest.approx(last["band"][d][0], abs=1e-4)
        assert high == pytest.approx(last["band"][d][1], abs=1e-4)
        s_low, s_high = last["sampled_band"][d]
        assert low - 1e-4 <= s_low <= s_high <= high + 1e-4
    assert last["num_neighbors"] == NEIGHBORS
    page.page.screenshot(path=str(shots / "first.png"), full_page=True)


def test_dragging_a_handle_changes_the_weights_as_dv_explain(page, session, models, config,
                                                             dataset):
    before = page.state("__explore.lastExplain")
    handle = page.page.locator("#parcoords rect.handle-high").first
    box = handle.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    m = page.page.mouse
    m.move(x, y)
    m.down()
    for k in range(1, 6):
        m.move(x, y - 8 * k)
    page.page.wait_for_function("__explore.lastExplain && !__explore.lastExplain.full",
                                timeout=TIMEOUT_MS)
    assert page.state("__explore.lastExplain.num_neighbors") == DRAG
    m.up()
    page.page.wait_for_function(
        f"__explore.lastExplain.full && JSON.stringify(__explore.lastExplain.band) !== "
        f"{json.dumps(json.dumps(before['band']))}", timeout=TIMEOUT_MS)
    after = page.state("__explore.lastExplain")
    assert after["band"] != before["band"] and after["band"] == page.state("__explore.band")
    assert not np.allclose(after["weights"], before["weights"])
    w = direct(models, config, dataset.images[after["index"]], np.asarray(after["band"]),
               after["key"])["weights"][0]
    np.testing.assert_allclose(np.asarray(after["weights"]), w.mean(axis=2).transpose(2, 0, 1),
                               atol=2e-5)  # two programs: float rounding through the FISTA steps
    assert after["compilations"] == 2  # one drag program, one release program, ever
    for d, (low, high) in drawn_band(page).items():
        assert (low, high) == pytest.approx(tuple(after["band"][d]), abs=1e-4)


def test_lasso_selects_and_the_grid_filters(page):
    xy = np.asarray(page.state("__explore.scatterXY()"))
    box = page.page.locator("#scatter").bounding_box()
    cx, cy = np.median(xy, axis=0)
    poly = [(cx - 90, cy - 70), (cx + 90, cy - 70), (cx + 90, cy + 70), (cx - 90, cy + 70)]
    m = page.page.mouse
    m.move(box["x"] + poly[0][0], box["y"] + poly[0][1])
    m.down()
    for px, py in poly[1:] + poly[:1]:
        m.move(box["x"] + px, box["y"] + py, steps=4)
    m.up()
    inside = {i for i, (x, y) in enumerate(xy) if poly[0][0] < x < poly[1][0]
              and poly[0][1] < y < poly[2][1]}
    page.page.wait_for_function(f"__explore.selection && __explore.selection.size === "
                                f"{len(inside)}", timeout=TIMEOUT_MS)
    assert set(page.state("[...__explore.selection]")) == inside
    # The grid held the first images before the lasso (its indices already set): wait for it
    # to show the selection, then check that it shows nothing else.
    page.page.wait_for_function(
        "(() => { const v = document.getElementById('grid').dataset.indices;"
        " return v !== undefined && v.split(',').every(i => __explore.selection.has(+i)); })()",
        timeout=TIMEOUT_MS)
    shown = [int(v) for v in page.page.locator("#grid").get_attribute("data-indices").split(",")]
    assert 0 < len(shown) <= 48 and set(shown) <= inside


def test_confusion_click_filters(page, session):
    labels, preds = session.labels, session.preds
    r, c = next((int(a), int(b)) for a, b in zip(labels, preds, strict=True) if a != b)
    page.page.locator(f"#confusion td[data-r='{r}'][data-c='{c}']").click()
    want = sorted(np.nonzero((labels == r) & (preds == c))[0].tolist())
    page.page.wait_for_function(f"document.getElementById('grid').dataset.indices === "
                                f"'{','.join(map(str, want[:48]))}'", timeout=TIMEOUT_MS)
    assert sorted(page.state("[...__explore.selection]")) == want
    page.page.locator("#clear-selection").click()


def test_morph_slider_moves(page, session):
    page.page.fill("#morph-b", "7")
    page.page.click("#morph-run")
    page.page.wait_for_function("__explore.lastMorph && __explore.lastMorph.b === 7",
                                timeout=TIMEOUT_MS)
    morph = page.state("__explore.lastMorph")
    labels = np.argmax(morph["probs"], axis=1)
    assert morph["changes"] == (np.nonzero(labels[1:] != labels[:-1])[0] + 1).tolist()
    assert page.page.locator("#morph-chart line.change").count() == len(morph["changes"])
    x0 = page.page.locator("#morph-pos").get_attribute("x1")
    slider = page.page.locator("#morph-slider")
    slider.focus()
    for _ in range(5):
        page.page.keyboard.press("ArrowRight")
    assert page.page.locator("#morph-label").inner_text().startswith("step 5:")
    assert page.page.locator("#morph-pos").get_attribute("x1") != x0
    assert f"label {labels[5]}" in page.page.locator("#morph-label").inner_text()


def test_stability_toggle_shows_agreement(page):
    page.page.fill("#stability-runs", "3")
    page.page.check("#stability")
    page.page.wait_for_function("__explore.lastStability", timeout=TIMEOUT_MS)
    r = page.state("__explore.lastStability")
    assert len(r["keys"]) == 3 and len(set(r["keys"])) == 3
    assert r["agreement"] == pytest.approx(programs.pearson_agreement(np.asarray(r["maps"])),
                                           abs=1e-4)
    assert f"{r['agreement']:.3f}" in page.page.locator("#agreement").inner_text()
    page.page.uncheck("#stability")


def test_methods_side_by_side(page, models, dataset):
    # the registered deepvid's own program is left out (its compilation dominates)
    page.page.uncheck("#method-choice input[value='deepvid']")
    page.page.check("#method-choice input[value='grad_x_input']")
    page.page.click("#run-methods")
    page.page.wait_for_function("__explore.lastMethods", timeout=TIMEOUT_MS)
    r = page.state("__explore.lastMethods")
    assert set(r["maps"]) == {"gradient", "grad_x_input"}
    for name in ("gradient", "grad_x_input"):
        want = dv.explain(name, dataset.images[r["index"]][None], key=jax.random.PRNGKey(
            r["key"]), models=models).attributions[0].mean(-1)
        np.testing.assert_allclose(r["maps"][name], want, atol=1e-5)
    assert page.page.locator("#method-maps .cell").count() == 2


def test_bad_value_gets_a_message_and_serving_goes_on(page):
    d = page.state("__explore.order[0]")
    page.page.fill(f"#low-{d}", "3")
    page.page.fill(f"#high-{d}", "-3")
    page.page.locator(f"#high-{d}").dispatch_event("change")
    page.page.wait_for_function("document.getElementById('msg').textContent.includes('empty')",
                                timeout=TIMEOUT_MS)
    assert page.state("__explore.errors.length") >= 1
    page.state("__explore.errors.length = 0, document.getElementById('msg').textContent = ''")
    page.page.click("#reset-band")
    page.page.wait_for_function("__explore.lastExplain.full && __explore.lastExplain.band[0]"
                                "[0] === -1", timeout=TIMEOUT_MS)


def test_export_writes_png_json_npz(page, session):
    page.page.click("#export")
    page.page.wait_for_function("document.getElementById('msg').textContent.includes("
                                "'exported')", timeout=TIMEOUT_MS)
    files = [Path(f) for f in
             page.page.locator("#msg").inner_text().split("exported: ")[1].split(", ")]
    assert [f.suffix for f in files] == [".png", ".json", ".npz"]
    assert all(f.exists() and f.parent == session.export_dir for f in files)
    saved = json.loads(files[1].read_text())
    last = page.state("__explore.lastExplain")
    assert saved["settings"]["band"] == last["band"]
    assert saved["numbers"]["flip_fraction"] == pytest.approx(last["flip_fraction"])
    assert saved["numbers"]["smooth"] == last["smooth"]
    shown = page.page.locator("#smooth").inner_text()  # the student view says which map it kept
    grid = ", ".join(f"{v:g}" for v in last["smooth_grid"])
    assert shown.startswith(f"smoothness {last['smooth']:g} of {{{grid}}} · "), shown
    assert ("per-pixel map" in shown) == (last["smooth"] == 0)
    with np.load(files[2]) as z:
        np.testing.assert_allclose(z["weights"].mean(2).transpose(2, 0, 1), last["weights"],
                                   atol=1e-5)


def test_state_in_the_url(browser, served):
    w = Watched(browser, served + "#i=5&key=3&band=" + ",".join(["-0.5:0.25"] * 4))
    assert w.ready(), w.problems()
    last = w.state("__explore.lastExplain")
    assert (last["index"], last["key"]) == (5, 3)
    assert last["band"] == [[-0.5, 0.25]] * 4
    assert w.problems() == []
    w.page.close()


def test_no_console_error_and_nothing_off_host(page, shots):
    page.page.screenshot(path=str(shots / "explore.png"), full_page=True)
    if os.environ.get("DEEPVID_EXPLORE_SCREENSHOT"):
        shutil.copy(shots / "explore.png", os.environ["DEEPVID_EXPLORE_SCREENSHOT"])
    assert page.problems() == []


def test_a_broken_page_is_caught(browser, session, tmp_path):
    """The checks above can fail: a page whose script throws is caught by them."""
    broken = tmp_path / "static"
    shutil.copytree(server.STATIC, broken)
    js = broken / "app.js"
    js.write_text('throw new Error("deliberately broken");\n' + js.read_text())
    srv = server.Server(session, static_dir=broken)
    url = srv.start()
    try:
        w = Watched(browser, url)
        assert not w.ready(timeout=3000)
        assert any("deliberately broken" in p for p in w.problems())
        w.page.close()
    finally:
        srv.stop()
