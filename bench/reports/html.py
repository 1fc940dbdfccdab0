"""``report.html``: one self-contained page per results folder, readable offline.

No external URL anywhere: the CSS and the script are inline and every image is embedded as a base64
``data:`` URI, so the file can be mailed, attached or opened from a laptop without the results folder.
The page holds, per profile: the caption, the main table (direction arrows in the headers, reference
rows set apart), the 95% intervals, where the spread comes from, the per-forget-class table, the
time-to-forget curves, the quality–forgetting scatter and one sample grid per table row; then the
failures, if any. A small inline script sets ``data-images-loaded="yes"`` on ``<body>`` once every image
has decoded (``"error"`` if one could not be), which headless-browser checks wait for.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any

import pandas as pd

from bench.reports.captions import BY_CLASS_EXPLAIN, INTERVALS_EXPLAIN, SPREAD_EXPLAIN

CSS = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1d1d1f;
       background: #ffffff; margin: 0 auto; padding: 16px 24px 48px; max-width: 1500px; line-height: 1.4; }
h1 { font-size: 1.6em; margin: 0.4em 0 0.2em; }
h2 { font-size: 1.3em; margin-top: 1.6em; border-bottom: 2px solid #1d1d1f; padding-bottom: 4px; }
h3 { font-size: 1.05em; margin: 1.4em 0 0.3em; }
p.caption, p.explain { font-size: 0.88em; color: #333; max-width: 1200px; }
nav { font-size: 0.9em; margin-bottom: 0.6em; }
nav a { margin-right: 1em; color: #0b57d0; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.78em; margin: 0.4em 0 0.6em; }
th, td { padding: 3px 5px; border-bottom: 1px solid #d9d9d9; white-space: nowrap; }
th { background: #eef1f5; text-align: center; font-weight: 600; vertical-align: bottom; white-space: normal;
     min-width: 5em; }
td { text-align: right; font-variant-numeric: tabular-nums; }
td:first-child, th:first-child { text-align: left; }
td.t { white-space: normal; min-width: 6em; }
tr.ref td { background: #f6f6f6; color: #444; }
tr.ref td:first-child { font-style: italic; }
tr.method td:first-child { font-weight: 600; }
tr.first td { border-top: 3px double #1d1d1f; }
tbody tr:hover td { background: #fff8dc; }
.warn { border-left: 4px solid #c5221f; background: #fdecea; padding: 6px 12px; font-size: 0.88em; margin: 0.6em 0; }
.warn ul { margin: 0.2em 0; padding-left: 1.2em; }
figure { margin: 0.6em 0 1.2em; }
figure img { max-width: 100%; height: auto; border: 1px solid #e3e3e3; }
figcaption { font-size: 0.85em; color: #333; margin-top: 2px; }
.grids { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr)); gap: 12px; }
.grids figure { margin: 0; }
.grids figcaption { font-weight: 600; }
footer { margin-top: 3em; font-size: 0.8em; color: #555; }
"""

SCRIPT = """
(function () {
  var body = document.body;
  function check() {
    var imgs = document.images;
    for (var i = 0; i < imgs.length; i++) {
      if (!imgs[i].complete) { return; }
      if (!(imgs[i].naturalWidth > 0)) { body.dataset.imagesLoaded = "error"; return; }
    }
    body.dataset.imagesLoaded = "yes";
  }
  for (var i = 0; i < document.images.length; i++) {
    document.images[i].addEventListener("load", check);
    document.images[i].addEventListener("error", check);
  }
  window.addEventListener("load", check);
  check();
})();
"""


_LETTERS = re.compile(r"[A-Za-z]")


def esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def img(path: Path, alt: str) -> str:
    """An ``<img>`` with the file embedded; '' if the file cannot be read."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return ""
    return f'<img src="{data_uri(data)}" alt="{esc(alt)}">'


def anchor(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-").lower() or "section"


def table_html(table: pd.DataFrame, name_col: str = "method") -> str:
    """An HTML table from a display DataFrame (columns as headers, the ``reference`` column marks reference
    rows: set apart from the method rows by a rule)."""
    cols = [c for c in table.columns if c != "reference"]
    out = ['<div class="scroll"><table>', "<thead><tr>" + "".join(f"<th>{esc(c)}</th>" for c in cols) + "</tr></thead>",
           "<tbody>"]
    prev_ref = None
    for _, r in table.iterrows():
        is_ref = bool(r["reference"]) if "reference" in r else False
        cls = ["ref" if is_ref else "method"]
        if prev_ref is True and not is_ref:
            cls.append("first")
        cells = "".join(f'<td class="t">{esc(r[c])}</td>' if _LETTERS.search(str(r[c])) else f"<td>{esc(r[c])}</td>"
                        for c in cols)
        out.append(f'<tr class="{" ".join(cls)}">{cells}</tr>')
        prev_ref = is_ref
    out.append("</tbody></table></div>")
    return "\n".join(out)


def _warnings(title: str, items: list[str]) -> str:
    if not items:
        return ""
    lis = "".join(f"<li>{esc(w)}</li>" for w in items)
    return f'<div class="warn"><strong>{esc(title)}</strong><ul>{lis}</ul></div>'


def _failures_html(failures: list[dict]) -> str:
    if not failures:
        return ""
    rows = []
    for f in failures:
        error = (str(f.get("error") or "").strip().splitlines() or ["?"])[0]
        vals = [f.get(k) for k in ("method", "forget_class", "base_seed", "seed", "profile")] + [error]
        rows.append({"cell": str(f.get("cell") or "?"), **dict(zip(
            ("method", "forget class", "base seed", "seed", "profile", "error"),
            ("?" if v is None else v for v in vals))), "reference": False})
    table = pd.DataFrame(rows)[["method", "forget class", "base seed", "seed", "profile", "error", "cell",
                                "reference"]]
    return (f'<h2 id="failures">Failures</h2><p class="explain">{len(failures)} cell(s) raised; error and traceback '
            f"in <code>failures/&lt;cell&gt;.json</code> (a later successful run of the cell removes its record).</p>"
            + table_html(table))


def report_page(task: str, views: list, failures: list[dict], figures: dict[str, list[tuple[str, Path]]],
                samples: dict[str, list[tuple[str, Path]]], md_path: str = "table.md",
                probes: dict[str, list[tuple[str, Path]]] | None = None) -> str:
    """The page. ``views`` are ``bench.reports.views.ProfileView``; ``figures[profile]``, ``samples[profile]`` and
    ``probes[profile]`` are (caption or row label, PNG path) pairs, embedded in that order."""
    cells = sum(len(v.df) for v in views)
    nav = [f'<a href="#profile-{anchor(v.profile)}">profile {esc(v.profile)}</a>' for v in views]
    if failures:
        nav.append('<a href="#failures">failures</a>')
    body = [f"<h1>{esc(task)}: unlearning results</h1>",
            f'<p class="explain">{cells} completed cell(s){f", {len(failures)} failed" if failures else ""}. The same '
            f"numbers are in <code>{esc(md_path)}</code>, <code>table.tex</code>, <code>table.csv</code>, "
            f"<code>runs.csv</code> and <code>metrics_long.csv</code> next to this page.</p>",
            f"<nav>{''.join(nav)}</nav>"]
    for v in views:
        body.append(f'<h2 id="profile-{anchor(v.profile)}">Profile <code>{esc(v.profile)}</code></h2>')
        body.append(_warnings("⚠ Mixed code versions", v.code))
        body.append(f'<p class="caption">{esc(v.caption)}</p>')
        body.append(table_html(v.table))
        if v.overrides:
            body.append('<p class="explain">Non-default settings (<code>--set</code>, <code>--steps</code>): '
                        + "; ".join(f"<strong>{esc(label)}</strong>: {esc(text)}" for label, text in v.overrides)
                        + "</p>")
        body.append(_warnings("Calibration warnings", v.calib))
        if v.has_intervals:
            body += ["<h3>95% intervals</h3>", f'<p class="explain">{esc(INTERVALS_EXPLAIN)}.</p>',
                     table_html(v.intervals)]
        if v.spread is not None:
            body += ["<h3>Where the spread comes from</h3>", f'<p class="explain">{esc(SPREAD_EXPLAIN)}.</p>',
                     table_html(v.spread)]
        if v.by_class is not None:
            body += ["<h3>Per forget class</h3>", f'<p class="explain">{esc(BY_CLASS_EXPLAIN)}.</p>',
                     table_html(v.by_class)]
        figs = figures.get(v.profile, [])
        if figs:
            body.append("<h3>Curves and trade-off</h3>")
            for caption, path in figs:
                tag = img(path, caption)
                if tag:
                    body.append(f"<figure>{tag}<figcaption>{esc(caption)}</figcaption></figure>")
        grids = [(label, img(path, f"samples: {label}")) for label, path in samples.get(v.profile, [])]
        grids = [(label, tag) for label, tag in grids if tag]
        if grids:
            body += ["<h3>Samples</h3>",
                     '<p class="explain">One cell per table row (lowest base seed, seed and forget class): the forget '
                     "class on top (marked), then the remaining classes, with the row's sampler and seed.</p>",
                     '<div class="grids">']
            body += [f"<figure>{tag}<figcaption>{esc(label)}</figcaption></figure>" for label, tag in grids]
            body.append("</div>")
        found = [(label, img(path, f"recovery probes: {label}")) for label, path in (probes or {}).get(v.profile, [])]
        found = [(label, tag) for label, tag in found if tag]
        if found:
            body += ["<h3>What the recovery probes drew</h3>",
                     '<p class="explain">The same cell per row as above, with <code>--metrics robustness</code>: the '
                     "first images of each probe setting (one row each, named by its column; UA counts the images "
                     "not read as the forget class).</p>", '<div class="grids">']
            body += [f"<figure>{tag}<figcaption>{esc(label)}</figcaption></figure>" for label, tag in found]
            body.append("</div>")
    if not views:
        body.append("<p>No completed runs yet.</p>")
    body.append(_failures_html(failures))
    body.append("<footer>Written by <code>bench</code> (bench/reports/reporter.py, bench/reports/html.py) from the "
                "stored cells; nothing here was recomputed.</footer>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{esc(task)}: unlearning results</title>\n<style>{CSS}</style>\n</head>\n"
            '<body data-images-loaded="no">\n' + "\n".join(b for b in body if b)
            + f"\n<script>{SCRIPT}</script>\n</body>\n</html>\n")
