"""``report.html``: self-contained (no external URL, every image a data: URI) and, where Chromium is installed,
really rendered by a browser (headless ``--dump-dom`` and ``--screenshot``)."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from bench.core.store import write_failure
from bench.reports import render

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "results" / "digits-class" / "runs"
TASK = "digits-class"
#: committed cells copied into the test folder: 2 reference rows, GA, SalUn with 3 cells over 2 base models
CELLS = ("original-f0-b0-s0-", "retrain-f0-b0-s0-", "ga-f0-b0-s0-", "salun-f0-b0-s0-", "salun-f0-b0-s1-",
         "salun-f0-b1-s0-")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.imgs: list[dict[str, str]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        d = {k: v or "" for k, v in attrs}
        self.links += [(tag, k, v) for k, v in d.items() if k in ("src", "href", "srcset", "poster", "data", "action")]
        if tag == "img":
            self.imgs.append(d)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("html")
    t = out / TASK
    for prefix in CELLS:
        found = sorted(RUNS.glob(f"{prefix}*"))
        if not found:
            pytest.skip(f"no committed cell {prefix}* under {RUNS}")
        shutil.copytree(found[0], t / "runs" / found[0].name)
    write_failure(out, TASK, "sfd-f0-b0-s0-fast-0000000000", {
        "cell": "sfd-f0-b0-s0-fast-0000000000", "method": "sfd", "forget_class": 0, "seed": 0, "base_seed": 0,
        "profile": "fast", "error": "RuntimeError: boom <b>not markup</b>", "traceback": "..."})
    render(t, quiet=True)
    return t / "report.html"


def test_report_is_self_contained(report):
    page = report.read_text()
    assert page.startswith("<!DOCTYPE html>")
    p = _Collect()
    p.feed(page)
    for tag, attr, value in p.links:
        v = value.strip().lower()
        assert not v.startswith(("http:", "https:", "//", "file:", "ftp:")), (tag, attr, value[:80])
    assert "http://" not in page and "https://" not in page  # not even in text, CSS or script
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert len(p.imgs) == 2 + 4  # curves, quality-forgetting scatter, one sample grid per table row
    for im in p.imgs:
        assert im["src"].startswith("data:image/png;base64,"), im["src"][:60]
        data = base64.b64decode(im["src"].split(",", 1)[1], validate=True)
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and im.get("alt")
    assert "script" in p.tags and "style" in p.tags
    # the tables: main, 95% intervals (salun has 3 cells), spread (2 base models), failures (escaped)
    assert page.count('<tr class="ref') == 2 * 3 and page.count('<tr class="method first">') == 3
    for needle in ("<h3>95% intervals</h3>", "<h3>Where the spread comes from</h3>", 'id="failures"',
                   "RuntimeError: boom &lt;b&gt;not markup&lt;/b&gt;", "UA ↑", "time (s) ↓", "sklearn-digits-8x8",
                   "Sampling: ddim, 25 steps, guidance w=0.5"):
        assert needle in page, needle
    assert "<b>not markup</b>" not in page
    assert 'data-images-loaded="no"' in page and "imagesLoaded" in page


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def _run_chromium(exe: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    env = {**os.environ, "HOME": str(tmp_path)}
    return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=90, env=env)


@pytest.fixture(scope="module")
def chromium() -> str:
    exe = _chromium()
    if exe is None:
        pytest.skip("Chromium is not installed (no chromium or chromium-browser on PATH, no /usr/bin/chromium); "
                    "on Debian: apt-get install -y chromium")
    return exe


def test_chromium_dom_has_the_tables_and_every_image_loaded(report, chromium, tmp_path):
    r = _run_chromium(chromium, tmp_path, "--dump-dom", report.as_uri())
    assert r.returncode == 0, r.stderr[-2000:]
    dom = r.stdout
    body = re.search(r"<body[^>]*>", dom)
    assert body and 'data-images-loaded="yes"' in body.group(0), (body.group(0) if body else dom[:500])
    assert dom.count("<table>") == 4  # main, 95% intervals, spread, failures
    rows = re.findall(r'<tr class="(?:ref|method)[^"]*"><td class="t">([^<]*)</td>', dom)
    assert rows[:4] == ["original", "retrain", "ga", "salun"]


def test_chromium_screenshot_is_a_real_rendering(report, chromium, tmp_path):
    from PIL import Image

    shot = tmp_path / "shot.png"
    r = _run_chromium(chromium, tmp_path, f"--screenshot={shot}", "--window-size=1400,2400", "--hide-scrollbars",
                      report.as_uri())
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    im = Image.open(shot).convert("RGB")
    assert im.size == (1400, 2400)
    px = np.asarray(im).reshape(-1, 3).astype(int)
    colours = np.unique(px, axis=0)
    assert len(colours) > 500, len(colours)  # not blank, not a flat error page
    dark = int((px.max(axis=1) < 80).sum())
    assert dark > 2000, dark  # text
    # the colours of an embedded image (the probe curves, drawn at natural size) are on the screen
    page = report.read_text()
    src = re.search(r'<img src="data:image/png;base64,([^"]+)" alt="Time to forget', page).group(1)
    curves = np.asarray(Image.open(io.BytesIO(base64.b64decode(src))).convert("RGB")).reshape(-1, 3).astype(int)
    saturated = curves[curves.max(axis=1) - curves.min(axis=1) > 80]  # line and marker colours, not grey or white
    values, counts = np.unique(saturated, axis=0, return_counts=True)
    top = values[np.argsort(-counts)[:5]]
    assert len(top), "the curves image has no saturated colour"
    screen = colours[colours.max(axis=1) - colours.min(axis=1) > 80]
    found = [c for c in top if len(screen) and np.abs(screen - c).max(axis=1).min() <= 6]
    assert len(found) >= 3, (top.tolist(), len(screen))
