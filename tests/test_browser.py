"""A real browser opens report.html and comparison.html: no console error, every image decoded and drawn.

Debian's chromium runs headless and is driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: JSON messages ending in NUL on file descriptors 3 and 4), so the test sees
what the DevTools console would show: uncaught exceptions, console.error calls and failed resource
loads (Log.entryAdded), and can ask the page whether each <img> decoded and take a screenshot of it.
The detector itself is tested on pages that are broken on purpose.
"""

import base64
import io
import json
import os
import select
import shutil
import subprocess
import tempfile
import time

import numpy as np
import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1200,2000"]


class Browser:
    """Headless chromium driven through the DevTools protocol over a pipe."""

    def __init__(self, timeout: float = 60):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="aekit-chromium-")
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()

        def child_fds():  # chromium reads commands on fd 3 and writes replies on fd 4
            a, b = os.dup(to_chrome_r), os.dup(from_chrome_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-pipe", "about:blank"],
            preexec_fn=child_fds, close_fds=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf, self._id, self.events = b"", 0, []
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.send(f"{domain}.enable", session=True)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": 1200, "height": 2000, "deviceScaleFactor": 1, "mobile": False}, session=True)

    def send(self, method, params=None, session=False):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            m = self._read(deadline)
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m["result"]
            self.events.append(m)

    def _read(self, deadline):
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer in time")
            if select.select([self._r], [], [], left)[0]:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise EOFError("chromium closed the DevTools pipe")
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def wait_for(self, method):
        deadline = time.monotonic() + self.timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._read(deadline))

    def open(self, path) -> dict:
        """Load a file; returns {"errors": [...], "images": [...], "screenshot": PNG bytes}."""
        self.events.clear()
        self.send("Page.navigate", {"url": f"file://{os.path.abspath(path)}"}, session=True)
        self.wait_for("Page.loadEventFired")
        self.send("Runtime.evaluate", {"expression": "new Promise(r => requestAnimationFrame(() => r(1)))",
                                       "awaitPromise": True}, session=True)  # one frame painted
        images = self.send("Runtime.evaluate", {"returnByValue": True, "expression": """
            Array.from(document.images).map(i => { const r = i.getBoundingClientRect();
              return {alt: i.alt, complete: i.complete, width: i.naturalWidth,
                      x: r.left + scrollX, y: r.top + scrollY, w: r.width, h: r.height}; })"""},
                           session=True)["result"]["value"]
        shot = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=True)
        return {"errors": self.errors(), "images": images, "screenshot": base64.b64decode(shot["data"])}

    def errors(self) -> list[str]:
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out.append("exception: " + d.get("exception", {}).get("description", d.get("text", "")))
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console.error: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}")
        return out

    def close(self):
        try:
            self.send("Browser.close")
        except (RuntimeError, TimeoutError, EOFError, OSError):
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)
        shutil.rmtree(self.profile, ignore_errors=True)


def image_problems(result: dict, min_colours: int = 8) -> list[str]:
    """Images that did not decode, or whose area in the screenshot is blank (few colours / no ink)."""
    shot = np.asarray(Image.open(io.BytesIO(result["screenshot"])).convert("RGB")).astype(np.int32)
    out = []
    for im in result["images"]:
        if not (im["complete"] and im["width"] > 0):
            out.append(f"image {im['alt']!r} did not decode")
            continue
        x0, y0 = int(im["x"]), int(im["y"])
        area = shot[y0 : y0 + int(im["h"]), x0 : x0 + int(im["w"])]
        if area.size == 0:
            out.append(f"image {im['alt']!r} has no area on the page")
            continue
        colours = len(np.unique((area[..., 0] << 16) | (area[..., 1] << 8) | area[..., 2]))
        ink = float((area.min(-1) < 245).mean())
        if colours < min_colours or ink < 0.01:
            out.append(f"image {im['alt']!r} is blank on screen ({colours} colours, {ink:.1%} non-white)")
    return out


@pytest.fixture(scope="module")
def browser():
    b = Browser()
    yield b
    b.close()


@pytest.fixture(scope="module")
def pages(tmp_path_factory, digits):
    from aekit import compare

    out = tmp_path_factory.mktemp("browser") / "c"
    compare.compare(digits, out, models=["ae", "vae"], epochs=1, latent_dim=3)
    return out


def test_detector_catches_broken_pages(browser, tmp_path):
    """The checks below would fail on a page with a script error, a console error, a missing or corrupt
    image, or an image that decodes but shows nothing."""
    white = io.BytesIO()
    Image.new("RGB", (60, 40), "white").save(white, "PNG")
    white_uri = "data:image/png;base64," + base64.b64encode(white.getvalue()).decode()
    page = tmp_path / "bad.html"
    page.write_text(f"""<!DOCTYPE html><html><body><p>broken on purpose</p>
        <img alt="missing" src="missing.png"><img alt="corrupt" src="data:image/png;base64,iVBORw0KGgoAAAAbad">
        <img alt="white" src="{white_uri}">
        <script>notAFunction();</script><script>console.error("explicit error")</script></body></html>""")
    res = browser.open(page)
    errors = "\n".join(res["errors"])
    assert "notAFunction" in errors and "explicit error" in errors and "missing.png" in errors
    problems = "\n".join(image_problems(res))
    assert "'missing' did not decode" in problems and "'corrupt' did not decode" in problems
    assert "'white' is blank" in problems


def test_report_renders_in_chromium(browser, pages):
    res = browser.open(pages / "vae" / "report.html")
    assert res["errors"] == []
    assert len(res["images"]) == 5  # curves, reconstructions, samples, latent, interpolation
    assert image_problems(res) == []


def test_comparison_renders_in_chromium(browser, pages):
    res = browser.open(pages / "comparison.html")
    assert res["errors"] == []
    assert len(res["images"]) == 3  # ae: reconstructions; vae: reconstructions and samples
    assert image_problems(res) == []
    Image.open(io.BytesIO(res["screenshot"])).verify()
