"""Reports: self-contained HTML (checked in headless Chromium as a person would open it), Markdown, plots."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
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


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/lib/chromium/chromium" if os.path.exists("/usr/lib/chromium/chromium") else None


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
    """Open ``path`` in headless Chromium through the DevTools protocol (over a pipe, no port) and report.

    Problems are console errors and warnings, uncaught exceptions, browser log errors/warnings (failed
    loads, Content-Security-Policy violations) and failed network loads.
    """
    binary = chromium_binary()
    if binary is None:
        pytest.skip(HOW_TO_GET_CHROMIUM)
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()

    def wire_pipes() -> None:  # in the child: the protocol pipe is fds 3 (commands) and 4 (replies)
        a, b = os.dup(to_child_r), os.dup(from_child_w)
        os.dup2(a, 3)
        os.dup2(b, 4)

    profile = tempfile.mkdtemp(prefix="advlab-chromium-")
    proc = subprocess.Popen(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
         f"--user-data-dir={profile}", "--window-size=1200,900", "about:blank"],
        preexec_fn=wire_pipes, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(to_child_r)
    os.close(from_child_w)
    buf = b""
    next_id = 0
    events: list[dict] = []
    deadline = time.monotonic() + timeout

    def send(method: str, params: dict | None = None, session: str | None = None) -> int:
        nonlocal next_id
        next_id += 1
        msg = {"id": next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(to_child_w, json.dumps(msg).encode() + b"\0")
        return next_id

    def wait(pred, until: float) -> dict | None:
        nonlocal buf
        while time.monotonic() < until:
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "method" in msg:
                    events.append(msg)
                if pred(msg):
                    return msg
            ready, _, _ = select.select([from_child_r], [], [], 0.2)
            if ready:
                chunk = os.read(from_child_r, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium exited")
                buf += chunk
        return None

    def call(method: str, params: dict | None = None, session: str | None = None) -> dict:
        i = send(method, params, session)
        reply = wait(lambda m: m.get("id") == i, deadline)
        if reply is None or "error" in reply:
            raise RuntimeError(f"chromium: {method} failed: {reply}")
        return reply["result"]

    try:
        target = call("Target.createTarget", {"url": "about:blank"})["targetId"]
        sid = call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            call(f"{domain}.enable", session=sid)
        call("Page.navigate", {"url": path.resolve().as_uri()}, session=sid)
        if wait(lambda m: m.get("method") == "Page.loadEventFired", deadline) is None:
            raise TimeoutError(f"{path} did not finish loading in {timeout:g} s")
        probe = (
            "JSON.stringify({tables: document.querySelectorAll('table').length, "
            "images: Array.from(document.images).map(i => [i.complete, i.naturalWidth]), "
            "text: document.body.innerText})"
        )
        value = call("Runtime.evaluate", {"expression": probe, "returnByValue": True}, session=sid)["result"]["value"]
        shot = call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=sid)["data"]
        wait(lambda m: False, time.monotonic() + 0.3)  # late console messages
    finally:
        proc.kill()
        proc.wait()
        os.close(to_child_w)
        os.close(from_child_r)
        shutil.rmtree(profile, ignore_errors=True)
    seen = json.loads(value)
    page = Page(seen["tables"], [tuple(i) for i in seen["images"]], seen["text"], screenshot=base64.b64decode(shot))
    for e in events:
        method, p = e["method"], e.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
            page.problems.append(f"console.{p['type']}: {[a.get('value') for a in p.get('args', [])]}")
        elif method == "Runtime.exceptionThrown":
            page.problems.append(f"exception: {p.get('exceptionDetails', {}).get('text')}")
        elif method == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
            page.problems.append(f"log {p['entry']['level']}: {p['entry']['text']}")
        elif method == "Network.loadingFailed":
            page.problems.append(f"failed load: {p.get('errorText')}")
        elif method == "Network.requestWillBeSent":
            page.requests.append(p["request"]["url"])
    return page


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
    """The checker can fail: a missing image and a console error are both reported."""
    path = tmp_path / "bad.html"
    path.write_text(
        '<!DOCTYPE html><html><body><img src="missing.png"><script>console.error("boom")</script></body></html>'
    )
    page = render_in_chromium(path)
    assert any("boom" in p for p in page.problems) and any("failed load" in p for p in page.problems)
    assert page.images == [(True, 0)]
