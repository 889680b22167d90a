"""`deepvid report STORE`: one self-contained HTML page about a run of the dataset runner.

What was run (data, explainers and their configs, device, throughput), the fidelity
distributions per explainer, the mean attribution per class, and a gallery of the least faithful
and of the misclassified instances with every explainer's map side by side. Figures are PNGs
embedded as data URLs: the page needs no network and no other file. The input images are read
back from the dataset the store names (its fingerprint is checked); when that data cannot be
read, the gallery shows the maps alone and the page says why. Every chunk is first checked
against its checksums (`integrity`): a damaged chunk is left out of every figure, and the page
lists it at the top.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path

import numpy as np

from deepvid_jax import files, viz
from deepvid_jax.data import sources as data
from deepvid_jax.runner import integrity
from deepvid_jax.runner.integrity import INPUTS, RunError, open_store

GALLERY = 8  # instances per gallery

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}
img{max-width:100%}.note{color:#805;font-style:italic}pre{background:#f6f6f6;padding:.6em;
overflow:auto;font-size:.85em}
"""
# Marks the page once every image has decoded: a browser test (or a person) can check it.
_SCRIPT = """
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.rendered = ok + '/' + imgs.length;
  document.title = document.title + ' [' + ok + '/' + imgs.length + ' images]';
});
"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    viz.pyplot().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _img(src: str, alt: str) -> str:
    return f'<img src="{src}" alt="{html.escape(alt)}">'


def _map(ax, a: np.ndarray) -> None:
    """One attribution [H, W, C] summed over channels, diverging, symmetric about 0."""
    m = a.sum(-1)
    lim = float(np.abs(m).max()) or 1.0
    ax.imshow(m, cmap="bwr", vmin=-lim, vmax=lim)
    ax.set_xticks([])
    ax.set_yticks([])


def _rows(array, ready: np.ndarray) -> np.ndarray:
    """``array``'s rows where ``ready`` (contiguous runs read at once: a damaged chunk, which
    may not even decode, is never read)."""
    idx = np.nonzero(ready)[0]
    if not len(idx):
        return np.asarray(array[0:0])
    breaks = np.nonzero(np.diff(idx) > 1)[0]
    starts = np.r_[idx[0], idx[breaks + 1]]
    ends = np.r_[idx[breaks] + 1, idx[-1] + 1]
    return np.concatenate([np.asarray(array[int(a):int(b)]) for a, b in zip(starts, ends,
                                                                            strict=True)])


def _fidelity_figure(root, explainers: list[str], ready: np.ndarray) -> str | None:
    panels = [(e, k) for e in explainers for k in ("fidelity_top1", "fidelity_kl",
                                                   "fidelity_r2") if k in root[e]]
    if not panels:
        return None
    fig, axes = viz.pyplot().subplots(1, len(panels), figsize=(3.2 * len(panels), 2.6),
                                      squeeze=False)
    for ax, (e, k) in zip(axes[0], panels, strict=True):
        v = _rows(root[e][k], ready).astype(np.float64)
        v = v[np.isfinite(v)]
        ax.hist(v, bins=30, color="#4a7")
        ax.set_title(f"{e}: {k[9:]} (mean {v.mean():.3f})", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def _class_means_figure(root, explainers: list[str], classes: np.ndarray, ready: np.ndarray,
                        class_names: list[str]) -> str:
    """Per explainer, the mean map of the images explained for each class (done chunks)."""
    present = sorted(set(classes[ready].tolist()))
    fig, axes = viz.pyplot().subplots(len(explainers), len(present),
                                      figsize=(1.3 * len(present) + 1, 1.4 * len(explainers)),
                                      squeeze=False)
    for r, e in enumerate(explainers):
        attr = root[e]["attributions"]
        sums = {k: 0.0 for k in present}
        for start in range(0, len(classes), 512):  # a block at a time: bounded memory
            ok = np.zeros_like(ready)
            ok[start : start + 512] = ready[start : start + 512]
            a = _rows(attr, ok)
            cl = classes[ok]
            for k in present:
                sums[k] = sums[k] + a[cl == k].sum(0)
        for c, k in enumerate(present):
            count = int((ready & (classes == k)).sum())
            _map(axes[r][c], sums[k] / count)
            if r == 0:
                axes[r][c].set_title(f"{class_names[k]} ({count})", fontsize=8)
        axes[r][0].set_ylabel(e, fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _gallery_figure(root, explainers: list[str], rows: np.ndarray, images, labels, classes,
                    probs, class_names: list[str], title: str) -> str:
    cols = (1 if images is not None else 0) + len(explainers)
    fig, axes = viz.pyplot().subplots(len(rows), cols,
                                      figsize=(1.5 * cols + 0.5, 1.6 * len(rows)), squeeze=False)
    for r, i in enumerate(rows):
        c0 = 0
        if images is not None:
            x = images[r]
            axes[r][0].imshow(x[..., 0] if x.shape[-1] == 1 else x, cmap="gray", vmin=0,
                              vmax=1)
            axes[r][0].set_xticks([])
            axes[r][0].set_yticks([])
            c0 = 1
        axes[r][0].set_ylabel(f"#{i}\nlabel {class_names[labels[i]]}\nteacher "
                              f"{class_names[probs[i].argmax()]}", fontsize=7)
        for c, e in enumerate(explainers):
            _map(axes[r][c0 + c], np.asarray(root[e]["attributions"][int(i)]))
            if r == 0:
                axes[r][c0 + c].set_title(e, fontsize=8)
    fig.suptitle(f"{title}: each map for the class explained", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def _inputs(meta: dict, rows: np.ndarray, data_dir) -> tuple[np.ndarray | None, str | None]:
    """The input images of ``rows`` from the dataset the store names, or (None, why not)."""
    ds = meta["identity"]["dataset"]
    try:
        source = data.open_source(ds["name"], ds["split"], data_dir=data_dir, download=False,
                                  **{k: tuple(v) if isinstance(v, list) else v
                                     for k, v in ds.get("options", {}).items()})
    except (data.DataNotFoundError, data.CorruptDataError, ValueError) as e:
        return None, f"the input images are not shown: {ds['name']} {ds['split']} could not " \
                     f"be read here ({str(e).splitlines()[0]})."
    if source.fingerprint() != ds["fingerprint"]:
        return None, (f"the input images are not shown: {ds['name']} {ds['split']} here is "
                      "not the data the store was made from (fingerprints differ).")
    return np.stack([source.read(int(i), int(i) + 1)[0][0] for i in rows]), None


def build(store: str | os.PathLike, data_dir=None) -> str:
    """The report page of ``store`` (HTML text). Raises RunError for a store that is not ours
    or not readable."""
    path = Path(store)
    if not path.is_dir():
        raise RunError(f"{path} is not a store (no such folder).")
    root, meta = open_store(path, mode="r")
    ident = meta["identity"]
    explainers = list(ident["run"]["explainers"])
    chunk = ident["run"]["chunk_size"]
    n = ident["dataset"]["count"]
    k = ident["models"]["num_classes"]
    done, damage = integrity.check(root, path, [INPUTS, *explainers], chunk, n)
    complete = all(d.all() for d in done.values()) and not damage
    ready = np.repeat(np.logical_and.reduce(list(done.values())), chunk)[:n]
    idx = np.nonzero(ready)[0]
    if not len(idx):
        raise RunError(f"{path}: no chunk is done and intact yet; nothing to report"
                       + (f" ({len(damage)} damaged: deepvid verify lists them)." if damage
                          else "."))
    # only rows of intact chunks are read; the others stay zero and are never drawn
    labels, classes = np.zeros(n, np.int32), np.zeros(n, np.int32)
    probs = np.zeros((n, k), np.float32)
    for name, values in (("labels", labels), ("classes", classes), ("teacher_probs", probs)):
        values[ready] = _rows(root[name], ready)
    for name, values in (("labels", labels), ("classes", classes)):
        bad = np.nonzero(ready & ((values < 0) | (values >= k)))[0]
        if len(bad):  # the checksums matched: the run itself recorded them
            raise RunError(f"{path / name}: image {int(bad[0])} has class {int(values[bad[0]])} "
                           f"of a {k}-class teacher; the store is not usable for a report.")
    class_names = [str(c) for c in range(k)]

    summary = dict(root.attrs).get("summary", {})
    pred = probs[idx].argmax(-1)
    accuracy = float((pred == labels[idx]).mean())
    rows = [("dataset", f"{ident['dataset']['name']} {ident['dataset']['split']} "
                        f"({n} images, {tuple(ident['dataset']['image_shape'])})"),
            ("explained", f"{len(idx)} of {n} images" + (
                "" if complete else " (damaged chunks left out: see above)" if damage
                else " (run incomplete: re-run to finish)")),
            ("explainers", ", ".join(explainers)),
            ("class explained", str(ident["run"]["classes"])),
            ("teacher accuracy on them", f"{accuracy:.4f}"),
            ("device", json.dumps(meta.get("device"))),
            ("library", f"deepvid_jax {meta.get('version')}, commit {meta.get('commit')}"),
            ("created", str(meta.get("created")))]
    if summary.get("images_per_second"):
        rows.append(("throughput (last session)",
                     f"{summary['images_per_second']:.2f} images/s over "
                     f"{summary['seconds']:.1f} s, {summary.get('processes', 1)} process(es)"))
    table = "".join(f"<tr><th>{html.escape(a)}</th><td>{html.escape(b)}</td></tr>"
                    for a, b in rows)
    configs = html.escape(json.dumps(ident["configs"], indent=1))

    worst_key = next(((e, "fidelity_kl") for e in explainers if "fidelity_kl" in root[e]),
                     None)
    parts = [f"<h1>deepvid_jax report: {html.escape(path.name)}</h1>"]
    if damage:
        items = "".join(f"<li>{html.escape(str(d))}</li>" for d in damage[:50])
        parts.append(f'<div class="damaged"><p class="note">{len(damage)} damaged chunk(s): '
                     "their images are left out of every figure below. "
                     "<code>deepvid run --repair</code> (same options as the run) computes "
                     f"them again.</p><ul>{items}</ul></div>")
    parts += [f"<table>{table}</table>",
             f"<details><summary>configuration of every explainer</summary><pre>{configs}"
             "</pre></details>"]
    fid = _fidelity_figure(root, explainers, ready)
    parts.append("<h2>Fidelity of the students</h2>")
    parts.append(_img(fid, "fidelity histograms") if fid else
                 '<p class="note">None of these explainers reports a fidelity.</p>')
    parts.append("<h2>Mean attribution per class</h2><p>Red: evidence for the class explained; "
                 "blue: against it (each map scaled to its own largest value).</p>")
    parts.append(_img(_class_means_figure(root, explainers, classes, ready, class_names),
                      "mean attribution per class"))

    galleries = []
    if worst_key is not None:
        e, key = worst_key
        v = _rows(root[e][key], ready)
        worst = idx[np.argsort(-v)[:GALLERY]]
        galleries.append((f"Least faithful ({e}: highest held-out KL)", worst))
    wrong = idx[pred != labels[idx]][:GALLERY]
    galleries.append(("Misclassified by the teacher", wrong))
    for title, sel in galleries:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if not len(sel):
            parts.append('<p class="note">None.</p>')
            continue
        images, why = _inputs(meta, sel, data_dir)
        if why:
            parts.append(f'<p class="note">{html.escape(why)}</p>')
        parts.append(_img(_gallery_figure(root, explainers, sel, images, labels, classes, probs,
                                          class_names, title), title))
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f'<meta name="generator" content="{files.GENERATOR} report">'
            f"<title>deepvid_jax report: {html.escape(path.name)}</title>"
            f"<style>{_CSS}</style><script>{_SCRIPT}</script></head><body>"
            + "\n".join(parts) + "</body></html>\n")


def write(store: str | os.PathLike, out: str | os.PathLike | None = None,
          data_dir=None) -> Path:
    """Writes the report of ``store`` to ``out`` (default: ``<store>.html`` beside it),
    atomically; returns its path. Refuses, before any work, an ``out`` inside the store (or
    the store itself) and an existing file that the library did not write."""
    store = Path(store).expanduser()
    target = Path(out).expanduser() if out is not None else store.with_suffix(".html")
    inside = store.resolve()
    where = target.resolve()
    if where == inside or inside in where.parents:
        raise RunError(f"the report {target} would be written inside the store {store} (and "
                       "replace or add to its files); pass an output path outside it.")
    files.check_replaceable(target, "report")
    page = build(store, data_dir=data_dir)
    return files.write_text(target, page)
