"""Reports: self-contained HTML (checked in headless Chromium as a person would open it), Markdown, plots."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from PIL import Image

from advlab.report import Figure, Report, Section, Table, render_html, render_markdown, table_markdown
from advlab.report.plots import Series, curve_png, panel_png

HOW_TO_GET_CHROMIUM = (
    "headless Chromium is missing: install Debian's chromium package (apt-get install chromium, or run "
    "scripts/install-system-deps.sh as root)"
)
# Debian's Chromium, driven by Playwright (Playwright's own browser download is not needed).
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
LOCAL_SCHEMES = ("file:", "data:")


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/lib/chromium/chromium" if os.path.exists("/usr/lib/chromium/chromium") else None


def require_chromium() -> str:
    """The browser's path; skips the test where Chromium is absent, except in CI (``CI=true``), where it fails."""
    binary = chromium_binary()
    if binary is None:
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(f"{HOW_TO_GET_CHROMIUM} (CI is set, so this fails instead of skipping)")
        pytest.skip(HOW_TO_GET_CHROMIUM)
    return binary


@dataclass
class Page:
    """What headless Chromium saw: element counts, per-image (loaded, natural width), problems, requests."""

    tables: int = 0
    images: list[tuple[bool, int]] = field(default_factory=list)
    text: str = ""
    problems: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    screenshot: bytes = b""


def render_in_chromium(path: Path, timeout: float = 90.0) -> Page:
    """Open ``path`` in headless Chromium (through Playwright) and report what a person would have seen.

    Every request the page makes is recorded; any that is not ``file:`` or ``data:`` is blocked (so nothing
    leaves the machine) and stays in ``requests`` for the caller to reject. Problems are console errors and
    warnings (Content-Security-Policy violations among them), uncaught exceptions and failed loads.
    """
    binary = require_chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "the browser check drives Chromium with Playwright: pip install 'advlab[test]'"
        ) from e
    seen = Page()

    def route(r) -> None:
        url = r.request.url
        if url not in seen.requests:
            seen.requests.append(url)
        if url.startswith(LOCAL_SCHEMES):
            r.continue_()
        else:
            r.abort("blockedbyclient")

    def on_request(request) -> None:
        if request.url not in seen.requests:
            seen.requests.append(request.url)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=binary, headless=True, args=CHROMIUM_ARGS, timeout=timeout * 1e3)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.set_default_timeout(timeout * 1e3)
            page.route("**/*", route)
            page.on("request", on_request)
            page.on("console", lambda m: m.type in ("error", "warning", "assert") and seen.problems.append(
                f"console.{m.type}: {m.text}"))  # fmt: skip
            page.on("pageerror", lambda e: seen.problems.append(f"exception: {e}"))
            page.on("requestfailed", lambda r: seen.problems.append(f"failed load: {r.url}: {r.failure}"))
            page.goto(path.resolve().as_uri(), wait_until="load")
            probe = page.evaluate(
                "() => ({tables: document.querySelectorAll('table').length, "
                "images: Array.from(document.images).map(i => [i.complete, i.naturalWidth]), "
                "text: document.body.innerText})"
            )
            seen.screenshot = page.screenshot(full_page=True)
            page.wait_for_timeout(300)  # late console messages
        finally:
            browser.close()
    seen.tables, seen.text = probe["tables"], probe["text"]
    seen.images = [(bool(ok), int(width)) for ok, width in probe["images"]]
    return seen


def assert_renders_cleanly(path: Path, *, tables: int, images: int, min_height: int = 200) -> Page:
    """The page loads without a console error, shows its tables and decodes every image, fetches nothing."""
    page = render_in_chromium(path)
    assert page.problems == [], page.problems
    assert page.tables == tables
    assert len(page.images) == images and all(ok and width > 0 for ok, width in page.images), page.images
    outside = [u for u in page.requests if not (u.startswith("data:") or u == path.resolve().as_uri())]
    assert outside == [], f"the page fetched {outside}"
    shot = Image.open(io.BytesIO(page.screenshot)).convert("RGB")
    assert shot.width >= 800 and shot.height >= min_height  # the whole page, not only the first screen
    assert len(shot.getcolors(1 << 24) or []) > 10  # something is drawn, not a blank page
    return page


# -------------------------------------------------------------------------------------------- fixtures


def tiny_png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buf, format="PNG")
    return buf.getvalue()


def sample_report() -> Report:
    return Report(
        "A <b>report</b> & more",
        "subtitle",
        [
            Section(
                "Results",
                ["A paragraph with <script>alert(1)</script> in it."],
                tables=[
                    Table("T1", ["attack", "top-1"], [["FGSM | x", "2.6"], ["PGD", "30.0"]], note="a note"),
                    Table("T2", ["a", "b", "c"], [["1", "2", "3"]]),
                ],
                figures=[
                    Figure("red.png", tiny_png((255, 0, 0)), "red"),
                    Figure("blue.png", tiny_png((0, 0, 255)), "b"),
                ],
            ),
            Section("Provenance", items=[("model", "m"), ("data", "d")]),
        ],
    )


# ------------------------------------------------------------------------------------------------ tests


def test_html_is_self_contained_and_escaped():
    page = render_html(sample_report())
    assert "<script>" not in page and "&lt;script&gt;" in page and "A &lt;b&gt;report&lt;/b&gt; &amp; more" in page
    assert "<link" not in page and not re.search(r"(src|href)=\"(?!data:)", page)
    assert "http://" not in page and "https://" not in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 2
    assert [Image.open(io.BytesIO(base64.b64decode(b))).getpixel((0, 0)) for b in images] == [(255, 0, 0), (0, 0, 255)]
    assert "default-src 'none'" in page  # the browser itself refuses any request the page might make


def test_markdown_tables():
    md = table_markdown(Table("T", ["a", "b"], [["x|y", "1"]], note="n"))
    assert md.splitlines() == ["### T", "", "| a | b |", "|---|---:|", "| x\\|y | 1 |", "", "n"]
    whole = render_markdown(sample_report())
    assert whole.startswith("# A <b>report</b> & more") and "![red](red.png)" in whole and "- **model**: m" in whole
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        Table("bad", ["a", "b", "c"], [["1", "2"]])


def test_plots_are_pngs():
    png = curve_png(
        [Series("FGSM", [0.01, 0.1], [0.9, None]), Series("BIM", [0.01, 0.1], [0.5, 0.0], "--s")],
        title="t",
        xlabel="eps",
        ylabel="%",
        secondary_scale=0.5,
        secondary_label="normalised",
    )
    assert Image.open(io.BytesIO(png)).format == "PNG"
    x = torch.rand(3, 32, 32)
    names = [f"class {i}" for i in range(10)]
    for x_adv in (x.clamp(0.1, 0.9), x):  # with and without a perturbation
        panel = Image.open(io.BytesIO(panel_png(x, x_adv, ([1, 2], [0.6, 0.3]), ([2, 1], [0.7, 0.2]), names,
                                                title="p", label=1, target=2)))  # fmt: skip
        assert panel.format == "PNG" and panel.width > 2 * panel.height


def test_report_renders_in_chromium(tmp_path):
    path = tmp_path / "report.html"
    path.write_text(render_html(sample_report()), encoding="utf-8")
    page = assert_renders_cleanly(path, tables=2, images=2)
    assert "FGSM | x" in page.text and "Provenance" in page.text and "<script>" in page.text  # shown, not run


def test_the_chromium_check_catches_a_broken_page(tmp_path):
    """The checker can fail: a missing image, a console error and a request off the machine are all reported."""
    path = tmp_path / "bad.html"
    path.write_text(
        '<!DOCTYPE html><html><body><img src="missing.png"><img src="https://example.invalid/x.png">'
        '<script>console.error("boom")</script></body></html>'
    )
    page = render_in_chromium(path)
    assert any("boom" in p for p in page.problems)
    assert any("failed load" in p and "missing.png" in p for p in page.problems), page.problems
    assert "https://example.invalid/x.png" in page.requests  # recorded, and blocked before it left
    assert any("failed load: https://example.invalid/x.png" in p for p in page.problems), page.problems
    assert page.images == [(True, 0), (True, 0)]
