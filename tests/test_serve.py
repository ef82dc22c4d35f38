"""`aekit serve`: the Open Inference Protocol v2 endpoints and POST /score give offline scoring's numbers, every bad
request is a one-line 4xx, nothing takes the server down; a real uvicorn server answers a plain JSON POST."""

import json
import sys

import numpy as np
import pytest

pytest.importorskip("fastapi")  # the `serve` extra (part of the `test` extra)
from fastapi.testclient import TestClient  # noqa: E402

from aekit import Detector  # noqa: E402
from aekit.serve import create_app  # noqa: E402
from serving import Server, get, make_image_run, make_table_runs, outputs_of, post, table_text, v2_request  # noqa: E402


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from aekit.cli import main

    return make_table_runs(tmp_path_factory.mktemp("serve"), main)


@pytest.fixture(scope="module")
def client(runs):
    return TestClient(create_app(runs["calibrated"], name="tab", max_body_bytes=200_000))


@pytest.fixture(scope="module")
def plain_client(runs):
    return TestClient(create_app(runs["run"]))


@pytest.fixture(scope="module")
def offline(runs):
    return Detector.load(runs["calibrated"])


def one_line_error(r, status):
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert list(body) == ["error"] and "\n" not in body["error"] and "Traceback" not in r.text, body
    return body["error"]


# --- the protocol's endpoints --------------------------------------------------------------------------
def test_health_and_metadata(client, offline):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2/models/tab/ready").json() == {"name": "tab", "ready": True}
    assert client.get("/v2").json()["name"] == "aekit"
    meta = client.get("/v2/models/tab").json()
    assert meta["name"] == "tab" and meta["versions"] == ["1"]
    assert meta["inputs"][0] | {"parameters": None} == {"name": "input", "datatype": "FP32", "shape": [-1, 4],
                                                         "parameters": None}
    assert meta["inputs"][0]["parameters"]["feature_names"] == ["a", "b", "c", "d"]
    outs = {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]}
    assert outs == {"scores": ("FP64", [-1]), "p_values": ("FP64", [-1]), "is_outlier": ("BOOL", [-1]),
                    "codes": ("FP32", [-1, 2]), "reconstructions": ("FP64", [-1, 4]),
                    "contributions": ("FP64", [-1, 4])}
    assert meta["parameters"]["threshold"] == offline.threshold_
    assert client.get("/v2/models/tab/versions/1").json() == meta


@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
def test_infer_gives_the_numbers_of_offline_scoring(client, runs, offline, datatype):
    x = runs["new"].astype(np.float32 if datatype == "FP32" else np.float64)
    r = client.post("/v2/models/tab/infer", json=v2_request(x, datatype, id="req-1"))
    assert r.status_code == 200, r.text
    res = r.json()
    assert res["model_name"] == "tab" and res["id"] == "req-1"
    got = outputs_of(res)
    assert list(got) == ["scores", "p_values", "is_outlier", "codes", "reconstructions", "contributions"]
    assert np.array_equal(got["scores"], offline.decision_function(x))  # bit for bit: JSON floats round-trip
    assert np.array_equal(got["p_values"], offline.predict_pvalue(x))
    assert np.array_equal(got["is_outlier"], offline.predict(x) == 1)
    assert got["is_outlier"][20:].sum() >= 4  # the planted outliers are flagged
    model = offline.models_[0]
    assert np.array_equal(got["codes"], model.encode(offline.model_input(x)).detach().numpy())
    explained = offline.explain(x)
    assert np.array_equal(got["reconstructions"], explained["reconstruction"])
    assert np.array_equal(got["contributions"], explained["contributions"])


def test_infer_honours_the_requested_outputs(client, runs, offline):
    x = runs["new"][:3].astype(np.float32)
    res = client.post("/v2/models/tab/infer", json=v2_request(x, outputs=["is_outlier", "scores"])).json()
    assert [o["name"] for o in res["outputs"]] == ["is_outlier", "scores"] and "id" not in res
    assert np.array_equal(outputs_of(res)["scores"], offline.decision_function(x))
    nested = v2_request(x)
    nested["inputs"][0]["data"] = x.tolist()  # nested lists are read row-major as well
    assert client.post("/v2/models/tab/infer", json=nested).json()["outputs"][0] == res["outputs"][1]


def test_an_uncalibrated_run_has_no_p_values(plain_client, runs):
    meta = plain_client.get("/v2/models/run").json()
    assert "p_values" not in [o["name"] for o in meta["outputs"]] and "is_outlier" in [o["name"] for o in
                                                                                        meta["outputs"]]
    r = plain_client.post("/v2/models/run/infer", json=v2_request(runs["new"], outputs=["p_values"]))
    assert "aekit calibrate" in one_line_error(r, 400)


def test_a_run_without_threshold_scores_without_is_outlier(runs, tmp_path):
    from aekit.cli import main

    assert main(["train", "ae", "--dataset", str(runs["dir"] / "held_out.csv"), "--epochs", "1", "--latent-dim", "2",
                 "--hidden", "8", "--quiet", "--out", str(tmp_path / "plain")]) == 0
    c = TestClient(create_app(tmp_path / "plain"))
    assert [o["name"] for o in c.get("/v2/models/plain").json()["outputs"]] == [
        "scores", "codes", "reconstructions", "contributions"]
    x = runs["new"].astype(np.float32)
    got = outputs_of(c.post("/v2/models/plain/infer", json=v2_request(x)).json())
    assert np.array_equal(got["scores"], Detector.load(tmp_path / "plain").decision_function(x))
    r = c.post("/v2/models/plain/infer", json=v2_request(x, outputs=["is_outlier"]))
    assert "needs a threshold" in one_line_error(r, 400)
    info = c.get("/api/info").json()
    assert info["threshold"] is None and info["source"] is None and info["scores"] is None
    assert c.post("/score", content=(runs["dir"] / "new.csv").read_bytes()).text.splitlines()[0] == "id,score"


@pytest.mark.slow
def test_the_load_test_runs_quick(tmp_path):
    import subprocess

    from serving import SRC

    out = tmp_path / "RESULTS_serve.md"
    bench = SRC.parent / "benchmarks" / "serve_load.py"
    proc = subprocess.run([sys.executable, str(bench), "--quick", "--seconds", "1", "--clients", "4", "--out", out],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = out.read_text()
    assert "| 1 row, every output | 1 |" in text and "Failed requests: 0. Answers that differ from offline " \
        "scoring: 0" in text


def test_score_answers_what_aekit_score_prints(client, runs, cli):
    for run in (runs["calibrated"], runs["run"]):
        code, expected, err = cli("score", run, runs["dir"] / "new.csv")
        assert code == 0, err
        c = client if run == runs["calibrated"] else TestClient(create_app(run))
        r = c.post("/score", content=(runs["dir"] / "new.csv").read_bytes(), headers={"Content-Type": "text/csv"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        assert r.text == expected
    assert expected.splitlines()[0] == "id,score,is_outlier"
    tsv = table_text(runs["new"], "abcd", sep="\t")
    r = client.post("/score", content=tsv, headers={"Content-Type": "text/tab-separated-values"})
    assert r.status_code == 200 and r.text.splitlines()[0] == "id,score,p_value,is_outlier"
    assert r.text == client.post("/score", content=table_text(runs["new"], "abcd")).text


# --- bad requests: a 4xx with one line, never a traceback -----------------------------------------------
GOOD = {"name": "input", "shape": [2, 4], "datatype": "FP32", "data": [0.5] * 8}


def infer_body(**change):
    return {"inputs": [{**GOOD, **change}]}


BAD_INFER = {
    "wrong shape": (infer_body(shape=[2, 3], data=[0.5] * 6), 400, "takes shape [-1, 4]"),
    "one dimension": (infer_body(shape=[8]), 400, "takes shape"),
    "no rows": (infer_body(shape=[0, 4], data=[]), 400, "n >= 1"),
    "the metadata's -1": (infer_body(shape=[-1, 4]), 400, "send the number of rows"),
    "negative size": (infer_body(shape=[2, -4]), 400, "whole numbers >= 0"),
    "beyond FP32": (infer_body(data=[0.5] * 7 + [1e39]), 400, "row 1 holds a value beyond FP32's range"),
    "shape vs data": (infer_body(data=[0.5] * 7), 400, "needs 8"),
    "wrong dtype": (infer_body(datatype="INT8"), 400, "FP32 or FP64"),
    "bytes dtype": (infer_body(datatype="BYTES", data=["a"] * 8), 400, "FP32 or FP64"),
    "text data": (infer_body(data=["0.5"] * 8), 400, "holds text"),
    "null data": (infer_body(data=[None] * 8), 400, "null"),
    "booleans": (infer_body(data=[True] * 8), 400, "true/false"),
    "ragged": (infer_body(data=[[0.5] * 4, [0.5] * 3]), 400, "rectangular"),
    "unknown input": (infer_body(name="x"), 400, "takes the input 'input'"),
    "two inputs": ({"inputs": [GOOD, GOOD]}, 400, "one input"),
    "no inputs": ({"outputs": []}, 400, "one input"),
    "unknown output": ({"inputs": [GOOD], "outputs": [{"name": "logits"}]}, 400, "unknown output(s) 'logits'"),
    "bad outputs": ({"inputs": [GOOD], "outputs": "scores"}, 400, "\"outputs\" must be a list"),
    "unknown field": ({"inputs": [GOOD], "input": 1}, 400, "unknown field(s) 'input'"),
    "binary data": (infer_body(parameters={"binary_data_size": 32}), 400, "binary tensor data"),
    "id not text": ({"inputs": [GOOD], "id": 5}, 400, "\"id\" must be a string"),
    "not an object": ([GOOD], 400, "JSON object"),
}


@pytest.mark.parametrize("case", list(BAD_INFER))
def test_bad_infer_requests_get_a_one_line_4xx(client, case):
    body, status, fragment = BAD_INFER[case]
    r = client.post("/v2/models/tab/infer", json=body)
    assert fragment in one_line_error(r, status)


@pytest.mark.parametrize("text,fragment", [
    ('{"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": [NaN, 1, 1, 1, 1, 1, 1, 1]}]}',
     "row 0 holds NaN"),
    ('{"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP64", "data": [1, 1, 1, 1, 1, 1, 1, Infinity]}]}',
     "row 1 holds NaN or an infinite"),
    ('{"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP64", "data": [1, 1, 1, 1, 1, 1, 1, 1e999]}]}',
     "row 1 holds NaN or an infinite"),
    ("{not json", "not JSON"),
    ("", "empty"),
    ("[" * 100000 + "]" * 100000, "nested too deeply"),
])
def test_non_finite_and_non_json_bodies_are_refused(client, text, fragment):
    r = client.post("/v2/models/tab/infer", content=text.encode(), headers={"Content-Type": "application/json"})
    assert fragment in one_line_error(r, 400)


def test_triton_binary_tensors_are_refused(client):
    r = client.post("/v2/models/tab/infer", content=b'{"inputs": []}' + bytes(32),
                    headers={"Inference-Header-Content-Length": "14"})
    assert "binary_data=False" in one_line_error(r, 400)


def test_non_utf8_body_is_refused(client):
    r = client.post("/v2/models/tab/infer", content=b"\xff\xfe{}", headers={"Content-Type": "application/json"})
    assert "UTF-8" in one_line_error(r, 400)


def test_bodies_over_the_limit_get_413_with_and_without_content_length(client, runs):
    big = v2_request(np.zeros((30_000, 4)))
    assert "--max-body-bytes" in one_line_error(client.post("/v2/models/tab/infer", json=big), 413)

    def chunks():  # no Content-Length: counted while reading
        for _ in range(300):
            yield b" " * 1000

    assert "limit of 200000 bytes" in one_line_error(client.post("/v2/models/tab/infer", content=chunks()), 413)
    assert one_line_error(client.post("/score", content=b"a,b,c,d\n" + b"1,2,3,4\n" * 30_000), 413)
    r = client.post("/v2/models/tab/infer", content=b"{}", headers={"Content-Length": "lots"})
    assert one_line_error(r, 400)


def test_unknown_models_endpoints_and_methods(client):
    assert "unknown model 'other'" in one_line_error(client.get("/v2/models/other"), 404)
    assert "'tab'" in one_line_error(client.post("/v2/models/other/infer", json=infer_body()), 404)
    assert "no version '2'" in one_line_error(client.get("/v2/models/tab/versions/2"), 404)
    assert "no such endpoint" in one_line_error(client.get("/v3/nothing"), 404)
    assert "not allowed" in one_line_error(client.get("/v2/models/tab/infer"), 405)


@pytest.mark.parametrize("text,fragment", [
    ("a,b,c,e\n1,2,3,4\n", "not in the training table 'e'"),
    ("a,b,c\n1,2,3\n", "missing 'd'"),
    ("a,b,c,d\n1,2,nan,4\n", "NaN"),
    ("a,b,c,d\n1,2,x,4\n", ""),
    ("a,b,c,d\n", ""),
])
def test_bad_csv_gets_a_one_line_400_without_the_temporary_path(client, text, fragment):
    reason = one_line_error(client.post("/score", content=text.encode(), headers={"Content-Type": "text/csv"}), 400)
    assert fragment in reason and "aekit-serve-" not in reason and "the request body" in reason


def test_a_form_upload_to_score_is_415(client):
    r = client.post("/score", files={"file": ("new.csv", b"a,b,c,d\n1,2,3,4\n")})
    assert "--data-binary" in one_line_error(r, 415)


def test_an_unexpected_failure_is_a_clean_500_and_the_server_stays_up(runs, monkeypatch):
    app = create_app(runs["run"])
    model = app.state.model

    def broken(*a, **k):
        raise RuntimeError("boom\nwith a second line")

    monkeypatch.setattr(model, "infer", broken)
    c = TestClient(app, raise_server_exceptions=False)
    r = c.post(f"/v2/models/{model.name}/infer", json=v2_request(runs["new"]))
    assert "internal error (RuntimeError)" in one_line_error(r, 500) and "boom" not in r.text
    monkeypatch.undo()
    assert c.post(f"/v2/models/{model.name}/infer", json=v2_request(runs["new"])).status_code == 200


# --- the page's JSON ---------------------------------------------------------------------------------
def test_page_and_its_api(client, runs, offline):
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text and "http" not in page.text.replace(
        "http://www.w3.org", "")
    assert client.get("/static/app.js").status_code == 200
    info = client.get("/api/info").json()
    assert info["source"] == "calibration" and info["scores"] == sorted(offline.calibration_scores_.tolist())
    assert info["feature_names"] == ["a", "b", "c", "d"] and info["threshold"] == offline.threshold_
    latent = client.get("/api/latent").json()
    from aekit import Run

    n_train = len(Run.open(runs["calibrated"]).dataset().x_train)  # the normal rows of the training split
    assert len(latent["points"]) == n_train and f"codes of {n_train} training rows" in latent["note"]
    res = client.post("/api/analyze", content=(runs["dir"] / "new.csv").read_bytes(),
                      headers={"Content-Type": "text/csv"}).json()
    x = runs["new"]
    x_read = np.asarray(res["inputs"])
    assert np.allclose(x_read, x, atol=1e-4)  # read from the CSV (5 decimals) as aekit score reads it
    assert np.array_equal(res["scores"], offline.decision_function(x_read))
    explained = offline.explain(x_read)
    assert np.array_equal(res["contributions_user_units"], explained["contributions_user_units"])
    assert np.asarray(res["latent"]).shape == (25, 2)
    dec = client.post("/api/decode", json={"code": res["codes"][0]}).json()
    z = np.asarray(res["codes"][:1], dtype=np.float32)
    model = offline.models_[0]
    std, mean = (np.asarray(offline.data_spec_.stats[k]) for k in ("std", "mean"))
    assert np.allclose(dec["data"], model.decode(z)[0] * std + mean, rtol=1e-6)
    assert client.post("/api/decode", json={"point": [0.0, 0.0]}).json()["shape"] == [4]
    assert "not generative" in one_line_error(client.get("/api/sample"), 400)


@pytest.mark.parametrize("body,fragment", [({"point": [1]}, "[u, v]"), ({"code": [1, "x"]}, "list of numbers"),
                                           ({"code": [1, 2, 3]}, "shape [n, 2]"), ({}, "send {")])
def test_bad_decode_requests(client, body, fragment):
    assert fragment in one_line_error(client.post("/api/decode", json=body), 400)


# --- an image run: UINT8 pixels, samples, the latent view of its training codes --------------------------
@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    from aekit.cli import main

    return make_image_run(tmp_path_factory.mktemp("serve_images"), main)


def test_image_run(image_run):
    from sklearn.datasets import load_digits

    c = TestClient(create_app(image_run))
    det = Detector.load(image_run)
    pixels = np.round(load_digits().images[:5] / 16 * 255).astype(np.uint8)[:, None]  # (5, 1, 8, 8)
    res = c.post("/v2/models/vae/infer", json=v2_request(pixels, "UINT8")).json()
    got = outputs_of(res)
    # the server scores in its worker thread: on some CPUs the members' float32 convolutions sum in another order
    # there than in this thread (the same call in two threads differs in its last float32 bits), so the image
    # scores agree to float32 rounding, not bit for bit as the tables' do above
    np.testing.assert_allclose(got["scores"], det.decision_function(pixels), rtol=1e-6, atol=1e-9)
    assert got["reconstructions"].shape == (5, 1, 8, 8)
    as_float = c.post("/v2/models/vae/infer", json=v2_request(pixels / 255.0, "FP64", outputs=["scores"])).json()
    np.testing.assert_allclose(outputs_of(as_float)["scores"], det.decision_function(pixels / 255.0), rtol=1e-6,
                               atol=1e-9)
    bad = v2_request(pixels.astype(np.int64) + 200, "UINT8")
    assert "0 to 255" in one_line_error(c.post("/v2/models/vae/infer", json=bad), 400)
    above_one = v2_request(pixels * 2.0, "FP32")  # floats are images in [0, 1]
    assert one_line_error(c.post("/v2/models/vae/infer", json=above_one), 400)
    samples = c.get("/api/sample?n=4&seed=3").json()
    assert samples["shape"] == [1, 8, 8] and len(samples["data"]) == 4
    assert samples == c.get("/api/sample?n=4&seed=3").json()  # seeded
    for q, fragment in (("n=0", "1 to 64"), ("n=x", "whole numbers"), ("seed=-1", "seed=-1")):
        assert fragment in one_line_error(c.get(f"/api/sample?{q}"), 400)
    latent = c.get("/api/latent").json()
    assert len(latent["points"]) == 2000 or len(latent["points"]) > 1000  # digits: at most LATENT_POINTS
    dec = c.post("/api/decode", json={"point": latent["points"][0]}).json()
    assert dec["shape"] == [1, 8, 8] and 0 <= np.min(dec["data"]) and np.max(dec["data"]) <= 1


# --- the command line and a real server -----------------------------------------------------------------
def test_aekit_serve_answers_a_plain_json_post(runs):
    offline = Detector.load(runs["calibrated"])
    server = Server(runs["calibrated"], "--name", "tab", "--max-body-bytes", 1_000_000)
    try:
        x = runs["new"].astype(np.float32)
        status, body = post(server.url + "/v2/models/tab/infer", v2_request(x))
        assert status == 200
        got = outputs_of(json.loads(body))
        assert np.array_equal(got["scores"], offline.decision_function(x))
        assert np.array_equal(got["is_outlier"], offline.predict(x) == 1)
        status, body = post(server.url + "/v2/models/tab/infer", b"{oops")
        assert status == 400 and "not JSON" in json.loads(body)["error"]
        status, body = post(server.url + "/score", (runs["dir"] / "new.csv").read_bytes(), "text/csv")
        assert status == 200 and body.decode().count("\n") == 26
        good = json.dumps(v2_request(x)).encode()
        mixed = [(good, 200), (b"{oops", 400), (good.replace(b"FP32", b"INT8"), 400), (b"[" * 50000, 400),
                 (good.replace(b'"data": [', b'"data": [NaN, '), 400), (b"x" * 2_000_000, 413)] * 4
        from concurrent.futures import ThreadPoolExecutor

        def send(body):
            try:
                return post(server.url + "/v2/models/tab/infer", body)[0]
            except OSError:  # a client still sending a body over the limit may see the early 413 as a reset
                return 413 if len(body) > 1_000_000 else "reset"

        with ThreadPoolExecutor(8) as pool:  # good and bad requests at once
            got = list(pool.map(send, [body for body, _ in mixed]))
        assert got == [want for _, want in mixed]
        assert get(server.url + "/v2/health/live")[0] == 200  # still up
    finally:
        code, out, err = server.stop()
    assert code == 0 and "serving" in out and "Traceback" not in err, (code, out, err)


def test_serve_command_errors_are_one_line(cli, runs, tmp_path):
    import socket

    code, out, err = cli("serve", tmp_path / "nothing")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        code, out, err = cli("serve", runs["run"], "--port", s.getsockname()[1])
    assert code == 2 and "cannot listen on 127.0.0.1" in err and len(err.strip().splitlines()) == 1, err
    code, out, err = cli("serve", runs["run"], "--max-body-bytes", "0")
    assert code == 2 and "--max-body-bytes" in err
    code, out, err = cli("serve", runs["run"], "--name", "a/b")
    assert code == 2 and "--name" in err and len(err.strip().splitlines()) == 1, err
    code, out, err = cli("serve", runs["run"], "--port", "0")
    assert code == 2 and "1 to 65535" in err


def test_a_family_that_needs_labels_is_refused_in_one_line(cli, runs, tmp_path):
    from aekit.cli import main

    assert main(["train", "cvae", "--dataset", str(runs["dir"] / "train.csv"), "--label-column", "kind", "--epochs",
                 "1", "--latent-dim", "2", "--hidden", "8", "--quiet", "--out", str(tmp_path / "cvae")]) == 0
    code, out, err = cli("serve", tmp_path / "cvae")
    assert code == 2 and "needs class labels" in err and len(err.strip().splitlines()) == 1, err


def test_a_missing_extra_is_one_line_naming_it(cli, runs, monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi raises ImportError
    code, out, err = cli("serve", runs["run"])
    assert code == 2 and "pip install 'aekit[serve]'" in err and len(err.strip().splitlines()) == 1, err


def test_the_cli_does_not_import_the_server(tmp_path):
    import subprocess

    from serving import SRC

    code = ("import sys, aekit, aekit.cli; "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}).stdout
    assert out.strip() == "[]"
