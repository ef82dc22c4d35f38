"""The page of `aekit serve` in a real browser (headless chromium over the DevTools protocol, as
tests/test_browser.py drives it): it loads with no console error, uploaded and dropped files get the scores of
offline scoring, the threshold slider shows the false-positive rate of the score table, a row gets its
explanation, and a click on the latent space gets a decoded image."""

import base64
import json
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
from serving import Server, make_image_run, make_table_runs, post  # noqa: E402
from test_browser import CHROMIUM, Browser  # noqa: E402

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")


def js(b: Browser, expression: str):
    res = b.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True},
                 session=True)
    if "exceptionDetails" in res:
        raise AssertionError(f"{expression}: {res['exceptionDetails']}")
    return res["result"].get("value")


def wait(b: Browser, expression: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not js(b, expression):
        if time.monotonic() > deadline:
            page = js(b, "document.getElementById('status').textContent")
            raise TimeoutError(f"{expression} stayed false; the page says: {page}")
        time.sleep(0.1)


def open_page(b: Browser, url: str):
    b.events.clear()
    b.send("Page.navigate", {"url": url}, session=True)
    b.wait_for("Page.loadEventFired")
    wait(b, "window.aekit && window.aekit.ready === true")


def click(b: Browser, selector: str, fx: float, fy: float):
    """A real mouse click at the fraction (fx, fy) of an element's box."""
    r = js(b, f"(() => {{ const r = document.querySelector('{selector}').getBoundingClientRect(); "
              "return [r.left, r.top, r.width, r.height]; })()")
    x, y = r[0] + fx * r[2], r[1] + fy * r[3]
    for kind in ("mousePressed", "mouseReleased"):
        b.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1},
               session=True)


def drop(b: Browser, name: str, data: bytes, mime: str):
    """A file dropped on the drop zone (a DragEvent carrying a DataTransfer, as a drag from the desktop)."""
    js(b, f"""(() => {{ const bytes = Uint8Array.from(atob("{base64.b64encode(data).decode()}"), c => c.charCodeAt(0));
        const dt = new DataTransfer(); dt.items.add(new File([bytes], "{name}", {{type: "{mime}"}}));
        document.getElementById("drop").dispatchEvent(new DragEvent("drop", {{dataTransfer: dt, bubbles: true,
                                                                              cancelable: true}})); }})()""")


@pytest.fixture(scope="module")
def browser():
    b = Browser()
    yield b
    b.close()


@pytest.fixture(scope="module")
def image_server(tmp_path_factory):
    from aekit.cli import main

    server = Server(make_image_run(tmp_path_factory.mktemp("page_images"), main))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def table_server(tmp_path_factory):
    from aekit.cli import main

    runs = make_table_runs(tmp_path_factory.mktemp("page_table"), main)
    server = Server(runs["calibrated"])
    yield server, runs
    server.stop()


def digit_pngs(folder, n=4) -> tuple[list, np.ndarray]:
    from PIL import Image
    from sklearn.datasets import load_digits

    pixels = np.round(load_digits().images[-n:] / 16 * 255).astype(np.uint8)
    paths = []
    for i, p in enumerate(pixels):
        paths.append(folder / f"digit{i}.png")
        Image.fromarray(p, mode="L").save(paths[-1])
    return paths, pixels[:, None]


def test_the_page_scores_uploaded_images_and_decodes_a_click(browser, image_server, tmp_path):
    from aekit import Detector

    det = Detector.load(image_server.run)
    open_page(browser, image_server.url + "/")
    assert js(browser, "document.getElementById('title').textContent") == "vae"
    assert js(browser, "window.aekit.latent.points.length") > 1000
    assert js(browser, "document.getElementById('samplebox').hidden") is False  # a generative family

    # upload through the file input
    paths, pixels = digit_pngs(tmp_path)
    doc = browser.send("DOM.getDocument", {}, session=True)["root"]["nodeId"]
    node = browser.send("DOM.querySelector", {"nodeId": doc, "selector": "#file"}, session=True)["nodeId"]
    browser.send("DOM.setFileInputFiles", {"nodeId": node, "files": [str(p) for p in paths]}, session=True)
    wait(browser, "window.aekit.result !== null && !window.aekit.busy")
    scores = js(browser, "window.aekit.result.scores")
    assert np.array_equal(scores, det.decision_function(pixels))  # the browser's pixels are the file's pixels
    assert js(browser, "document.querySelectorAll('#rows tbody tr').length") == 4
    assert js(browser, "document.querySelectorAll('#explain canvas').length") == 3  # input, reconstruction, map

    # the slider at the run's threshold: the share of the training scores above it
    t = det.threshold_
    assert js(browser, "window.aekit.threshold") == t
    fpr = float(js(browser, "document.getElementById('fpr').dataset.fpr"))
    assert fpr == pytest.approx(np.mean(det.decision_scores_ > t), abs=1e-12) and abs(fpr - 0.1) < 0.01
    assert int(js(browser, "document.getElementById('flagged').dataset.count")) == int(np.sum(np.array(scores) > t))
    js(browser, "(() => { const s = document.getElementById('slider'); s.value = 0; "
                "s.dispatchEvent(new Event('input')); })()")
    low = js(browser, "window.aekit.threshold")
    assert float(js(browser, "document.getElementById('fpr').dataset.fpr")) == pytest.approx(
        np.mean(det.decision_scores_ > low), abs=1e-12)

    # a dropped file
    with open(paths[0], "rb") as f:
        drop(browser, "dropped.png", f.read(), "image/png")
    wait(browser, "window.aekit.result.names[0] === 'dropped.png' && !window.aekit.busy")
    # (a batch of one: float sums may differ in the last bits from the same row in a batch of four)
    assert js(browser, "window.aekit.result.scores") == det.decision_function(pixels[:1]).tolist()

    # a click on the latent plane, away from the new rows: decoded there
    click(browser, "#latent", 0.07, 0.93)
    wait(browser, "window.aekit.decoded !== null")
    point = js(browser, "window.aekit.decoded.point")
    status, body = post(image_server.url + "/api/decode", {"point": point})
    assert status == 200 and js(browser, "window.aekit.decoded.data") == json.loads(body)["data"]
    drawn = js(browser, """(() => { const c = document.getElementById('decodedimage');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const v = []; for (let i = 0; i < d.length; i += 4) v.push(d[i]); return v; })()""")
    assert len(drawn) == 64 and len(set(drawn)) > 4  # an 8x8 image with ink, not a blank square
    js(browser, "document.getElementById('sample').click()")
    wait(browser, "window.aekit.samples !== null")
    assert js(browser, "document.querySelectorAll('#samples canvas').length") == 16
    assert browser.errors() == []


def test_the_page_scores_a_dropped_csv_with_explanations(browser, table_server):
    from aekit import Detector

    server, runs = table_server
    det = Detector.load(runs["calibrated"])
    open_page(browser, server.url + "/")
    drop(browser, "new.csv", (runs["dir"] / "new.csv").read_bytes(), "text/csv")
    wait(browser, "window.aekit.result !== null && !window.aekit.busy")
    x = np.asarray(js(browser, "window.aekit.result.inputs"))
    assert np.array_equal(js(browser, "window.aekit.result.scores"), det.decision_function(x))
    assert js(browser, "window.aekit.result.p_values") == det.predict_pvalue(x).tolist()
    click(browser, "#rows tbody tr:nth-child(3)", 0.5, 0.5)
    assert js(browser, "window.aekit.chosen") == 2
    assert js(browser, "document.querySelectorAll('#explain svg rect').length") == 4  # a bar per column
    cal = np.sort(det.calibration_scores_)
    t = js(browser, "window.aekit.threshold")
    assert t == det.threshold_
    fpr = float(js(browser, "document.getElementById('fpr').dataset.fpr"))  # the conformal bound
    assert fpr == pytest.approx((1 + np.sum(cal > t)) / (len(cal) + 1), abs=1e-12) and fpr <= 0.05
    click(browser, "#latent", 0.5, 0.5)
    wait(browser, "window.aekit.decoded !== null")
    assert js(browser, "document.querySelectorAll('#decoded td').length") == 4  # a decoded row of 4 columns
    assert browser.errors() == []
    drop(browser, "bad.csv", b"a,b,c,zzz\n1,2,3,4\n", "text/csv")  # the page says why, in one line
    wait(browser, "document.getElementById('status').className === 'error'")
    assert "'zzz'" in js(browser, "document.getElementById('status').textContent")
    errors = browser.errors()  # only the browser's own note of the 400 answer, no script error
    assert len(errors) == 1 and "status of 400" in errors[0] and "/api/analyze" in errors[0], errors
