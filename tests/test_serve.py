"""The explorer's JSON API over real HTTP: numbers equal the Python API's, errors are clear 4xx answers
that leave the server serving, and concurrent lesions on the one shared model do not race."""

from __future__ import annotations

import io
import json
import os
import random
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

import lesion  # noqa: E402
from lesion.serve import create_app, is_loopback, running  # noqa: E402
from tests.serve_support import digits_model, hook_count, make_explorer, weights_digest  # noqa: E402

REQUIRED_UNIT_FIELDS = {"layer", "unit", "selectivity", "preferred_class", "delta_accuracy"}


@pytest.fixture(scope="module")
def setup():
    model, data = digits_model()
    return model, data, make_explorer(model, data)


@pytest.fixture(scope="module")
def client(setup):
    with running(create_app(setup[2])) as url, httpx.Client(base_url=url, timeout=30) as c:
        yield c


def python_api(model, data, units):
    """What the library says for this lesion: lesion.evaluate inside lesion.ablate."""
    xy = (data.x_test, data.y_test)
    if not units:
        return lesion.evaluate(model, xy)
    with lesion.ablate(model, units):
        return lesion.evaluate(model, xy)


def post(client, body, **kw):
    return client.post("/api/evaluate", json=body, **kw)


def assert_serving(client):
    r = client.get("/api/model")
    assert r.status_code == 200 and r.json()["n_units"] == 56


# ------------------------------------------------------------------------------------------ numbers


@pytest.mark.parametrize(
    "units",
    [[], ["relu1:3"], ["relu1:0-9", "relu2:17"], ["relu2:*"], ["relu1:1,4,7", "relu2:0-23"]],
)
def test_evaluate_equals_the_python_api(setup, client, units):
    model, data, _ = setup
    want = python_api(model, data, units)
    got = post(client, {"units": units}).json()
    assert got["accuracy"] == want.accuracy and got["loss"] == want.loss
    assert got["correct"] == int(np.trace(want.confusion)) and got["n"] == want.n == len(data.y_test)
    assert got["per_class_accuracy"] == want.per_class_accuracy.tolist()
    assert got["confusion"] == want.confusion.tolist()
    intact = python_api(model, data, [])
    assert got["delta_accuracy"] == pytest.approx(want.accuracy - intact.accuracy, abs=1e-12)
    assert got["delta_loss"] == pytest.approx(want.loss - intact.loss, abs=1e-12)
    assert got["n_deleted"] == len(got["units"]) == setup[2].selection(units).count()


def test_evaluate_normalises_the_lesion(client):
    got = post(client, {"units": ["relu2:5", "relu1:3-5", "relu1:9", "relu1:4"]}).json()
    assert got["units"] == ["relu1:3", "relu1:4", "relu1:5", "relu1:9", "relu2:5"]
    assert got["lesion"] == ["relu1:3-5,9", "relu2:5"]


def test_units_lists_every_unit_as_the_unit_table_does(setup, client):
    model, data, _ = setup
    rows = client.get("/api/units").json()
    table = lesion.unit_table(model, (data.x_test, data.y_test))
    assert len(rows) == len(table) == 32 + 24
    assert all(set(r) >= REQUIRED_UNIT_FIELDS for r in rows)
    for row, (_, want) in zip(rows, table.iterrows(), strict=True):
        assert (row["layer"], row["unit"]) == (want.layer, want.unit)
        assert row["preferred_class"] == want.preferred_class
        assert row["delta_accuracy"] == pytest.approx(want.delta_accuracy, abs=1e-12)
        assert row["delta_loss"] == pytest.approx(want.delta_loss, abs=1e-9)
        if want.dead:
            assert row["selectivity"] is None and row["dead"] is True
        else:
            assert row["selectivity"] == pytest.approx(want.selectivity, abs=1e-12)


def test_unit_detail(setup, client):
    model, data, explorer = setup
    d = client.get("/api/units/relu1:3").json()
    row = explorer.units.set_index(["layer", "unit"]).loc[("relu1", 3)]
    assert d["address"] == "relu1:3" and d["layer"] == "relu1" and d["unit"] == 3
    assert d["mutual_info"] == pytest.approx(row.mutual_info)
    assert d["delta_loss"] == pytest.approx(row.delta_loss)
    drops = [row[f"delta_accuracy_class_{c}"] for c in range(10)]
    assert d["per_class_delta_accuracy"] == pytest.approx(drops)
    stats = lesion.collect_stats(model, (data.x_test, data.y_test), explorer.sites)
    means = stats["relu1"].class_means[:, 3].tolist()
    assert d["class_means"] == pytest.approx(means, rel=1e-5, abs=1e-6)
    with torch.no_grad():  # the top examples by hand: model[:3] ends at relu1
        act = model[:3](data.x_test)[:, 3]
    top = d["top_examples"]
    values = [t["activity"] for t in top]
    assert len(top) == 6 and values == sorted(values, reverse=True)
    assert values == pytest.approx(sorted(act.tolist(), reverse=True)[:6], rel=1e-5)
    assert all(float(act[t["index"]]) == pytest.approx(t["activity"], rel=1e-5) for t in top)
    assert all(t["label"] == int(data.y_test[t["index"]]) for t in top)


def test_model_and_curves(setup, client):
    model, data, _ = setup
    info = client.get("/api/model").json()
    intact = python_api(model, data, [])
    assert info["intact"]["accuracy"] == intact.accuracy and info["intact"]["loss"] == intact.loss
    assert [s["name"] for s in info["sites"]] == ["relu1", "relu2"] and info["classes"][3] == "3"
    assert info["input_shape"] == [1, 8, 8]
    curves = client.get("/api/curves").json()
    assert curves["n_candidates"] == 56 and curves["candidates"] == ["relu1", "relu2"]
    orders = {c["order"]: c for c in curves["curves"]}
    assert set(orders) == {"random", "selectivity_high", "importance_high"}
    assert orders["random"]["repeats"] == 2 and orders["random"]["n_ablated"][0] == 0
    assert orders["random"]["n_ablated"][-1] == 56
    assert curves["column"] == "accuracy" and info["metric"]["main"] == "loss"
    assert orders["random"]["value"][0] == pytest.approx(intact.accuracy)


def test_images_are_pngs_of_the_held_out_examples(client):
    from PIL import Image

    r = client.get("/api/images/0")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (8, 8)
    assert client.get("/api/images/360").status_code == 404
    r = client.get("/api/images/-1")  # issue 30: a clear 404 about the index, not a JSON body complaint
    assert r.status_code == 404 and "index" in r.json()["error"] and "-1" in r.json()["error"], r.text
    assert "JSON object" not in r.json()["error"]


def test_the_page_and_the_openapi_docs_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    for name in ("app.js", "network.js", "charts.js", "colour.js", "unit.js", "api.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200, name
    spec = client.get("/openapi.json").json()
    paths = {"/api/model", "/api/units", "/api/units/{unit}", "/api/evaluate", "/api/curves"}
    paths |= {"/api/cards/{unit}"}
    assert set(spec["paths"]) == paths | {"/api/images/{index}"}
    for name in ("card.js", "card.css"):  # the atlas's card template, shared
        assert client.get(f"/roles/{name}").status_code == 200, name
    schema = spec["components"]["schemas"]["EvaluateRequest"]
    assert schema["properties"]["units"]["type"] == "array"
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/static/api.js" in docs.text


def test_conv_channels_are_units_and_colour_images_are_served():
    from PIL import Image

    from lesion.serve import Explorer

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 36, 5)
    )  # fmt: skip
    x, y = torch.randn(40, 3, 6, 6), torch.arange(40) % 5
    explorer = Explorer(net, (x, y), curve_repeats=1, curve_points=3, top_k=3)
    with running(create_app(explorer)) as url, httpx.Client(base_url=url) as c:
        rows = c.get("/api/units").json()
        assert [(r["layer"], r["unit"]) for r in rows] == [("1", i) for i in range(4)]
        info = c.get("/api/model").json()
        assert info["sites"][0]["spatial"] and info["sites"][0]["shape"] == [4, 6, 6]
        assert info["classes"] == ["0", "1", "2", "3", "4"]
        top = c.get("/api/units/1:2").json()["top_examples"]
        with torch.no_grad():
            act = net[:2](x)[:, 2].mean((1, 2))  # a channel's activity: its map averaged over space
        assert [t["index"] for t in top] == act.argsort(descending=True)[:3].tolist()
        png = Image.open(io.BytesIO(c.get("/api/images/7").content))
        assert png.mode == "RGB" and png.size == (6, 6)
        want = python_api_of(net, (x, y), ["1:0-1"])
        got = post(c, {"units": ["1:0-1"]}).json()
        assert (got["accuracy"], got["loss"]) == (want.accuracy, want.loss)


def python_api_of(model, xy, units):
    with lesion.ablate(model, units):
        return lesion.evaluate(model, xy)


# ------------------------------------------------------------------------------------------ errors


def test_unknown_units_get_422_naming_what_exists(client):
    r = post(client, {"units": ["fc9:0"]})
    assert r.status_code == 422
    assert "unknown layer 'fc9'" in r.json()["error"] and "relu1 (32)" in r.json()["error"]
    r = post(client, {"units": ["relu1:32"]})
    assert r.status_code == 422 and "out of range for layer 'relu1': expected 0..31" in r.json()["error"]
    r = post(client, {"units": ["relu1"]})
    assert r.status_code == 422 and "cannot parse unit address 'relu1'" in r.json()["error"]
    r = post(client, {"units": ["relu1:0-99999999999999999999"]})  # refused before any range is expanded
    assert r.status_code == 422 and "out of range" in r.json()["error"]
    assert_serving(client)


def test_unknown_unit_detail_is_404(client):
    r = client.get("/api/units/relu7:0")
    assert r.status_code == 404 and "unknown layer 'relu7'" in r.json()["error"]
    r = client.get("/api/units/relu1:0-3")
    assert r.status_code == 404 and "expected one unit" in r.json()["error"]


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b'{"units": ["relu1:0"', 400, "malformed JSON"),
        (b"not json at all", 400, "malformed JSON"),
        (b'{"units": "relu1:0"}', 422, "units: Input should be a valid list"),
        (b'{"unit": ["relu1:0"]}', 422, "units: Field required"),
        (b"[1, 2]", 422, "invalid request"),
    ],
)
def test_malformed_bodies_get_clear_4xx(client, body, status, fragment):
    r = client.post("/api/evaluate", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status and fragment in r.json()["error"], r.text
    assert '{"units": [' in r.json()["error"]  # says what was expected
    assert_serving(client)


def test_requests_for_other_hosts_are_refused(setup, client):
    r = client.get("/api/units", headers={"host": "attacker.example"})  # DNS rebinding
    assert r.status_code == 400 and "host 'attacker.example' is not served here" in r.json()["error"]
    port = client.base_url.port
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
        assert client.get("/api/model", headers={"host": host}).status_code == 200, host
    with running(create_app(setup[2], hosts=None)) as url, httpx.Client(base_url=url) as c:
        assert c.get("/api/model", headers={"host": "explorer.lab.example"}).status_code == 200


def test_a_body_not_sent_as_json_is_415(client):
    r = client.post("/api/evaluate", content=b'{"units": []}', headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "Content-Type: application/json" in r.json()["error"]


def test_a_10_mb_body_is_413_and_the_server_keeps_serving(client):
    big = json.dumps({"units": ["relu1:0"] * 1_100_000}).encode()
    assert len(big) > 10_000_000
    r = client.post("/api/evaluate", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "too large; expected at most 1,048,576 bytes" in r.json()["error"]
    assert_serving(client)

    def chunks():  # no Content-Length: streamed, counted as it arrives
        for _ in range(100):
            yield b" " * 100_000

    r = client.post("/api/evaluate", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "10,000,000 bytes" in r.json()["error"]
    assert_serving(client)
    assert post(client, {"units": ["relu1:0"]}).status_code == 200


# ------------------------------------------------------------------------------------------ concurrency


def test_50_concurrent_lesions_equal_sequential_evaluation(setup):
    model, data, _ = setup
    explorer = make_explorer(model, data)  # a fresh cache: every request below runs the model
    rng = random.Random(0)
    lesions = []
    while len(lesions) < 50:
        units = sorted({f"relu{rng.choice((1, 2))}:{rng.randrange(24)}" for _ in range(rng.randint(1, 20))})
        if units not in lesions:
            lesions.append(units)
    want = [python_api(model, data, units) for units in lesions]
    digest = weights_digest(model)
    start = threading.Barrier(50)

    def ask(units):
        with httpx.Client(base_url=url, timeout=60) as c:
            start.wait()
            return c.post("/api/evaluate", json={"units": units}).json()

    with running(create_app(explorer)) as url, ThreadPoolExecutor(50) as pool:
        got = list(pool.map(ask, lesions))
    for g, w in zip(got, want, strict=True):
        assert (g["accuracy"], g["loss"], g["confusion"]) == (w.accuracy, w.loss, w.confusion.tolist())
    assert len({g["loss"] for g in got}) > 40  # the lesions really differ
    assert hook_count(model) == 0 and weights_digest(model) == digest


# ------------------------------------------------------------------------------------------ command line


def test_the_listening_socket_is_tcp_so_responses_are_not_delayed():
    from lesion.serve import bind

    sock = bind("127.0.0.1", 0)  # asyncio sets TCP_NODELAY only where proto says TCP: else +40 ms a request
    with sock, socket.create_connection(sock.getsockname()):
        conn, _ = sock.accept()
        with conn:
            assert sock.proto == conn.proto == socket.IPPROTO_TCP


def test_loopback_detection():
    assert all(map(is_loopback, ("127.0.0.1", "127.0.0.2", "::1", "localhost")))
    assert not any(map(is_loopback, ("0.0.0.0", "::", "192.168.1.4", "example.org")))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, setup):
    from lesion.models import save_model
    from tests.serve_support import ARCH

    path = tmp_path_factory.mktemp("serve") / "digits.safetensors"
    save_model(setup[0], path, arch=ARCH, metadata={"dataset": "digits", "data_seed": 0})
    return path


def test_lesion_serve_end_to_end(model_file, tmp_path):
    """The real command in a subprocess: it prints its URL, answers the API, and stops on SIGTERM."""
    cmd = [sys.executable, "-m", "lesion.cli", "serve", str(model_file), "--port", "0", "--examples", "100"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny model: one thread, undisturbed by other processes
    with (
        (tmp_path / "stderr.txt").open("w+") as err,
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env) as proc,
    ):
        try:
            line = proc.stdout.readline()
            assert line.startswith("lesion explorer: http://127.0.0.1:"), line + err.read()
            url = line.split()[2]
            r = httpx.get(f"{url}/api/model", timeout=30)
            assert r.status_code == 200 and r.json()["intact"]["n"] == 100 and r.json()["dataset"] == "digits"
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    assert proc.returncode in (0, -15)


def test_lesion_serve_refuses_a_taken_port_and_warns_off_loopback(model_file, monkeypatch):
    from typer.testing import CliRunner

    import lesion.serve
    from lesion.cli import app

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = CliRunner().invoke(app, ["serve", str(model_file), "--port", str(port)])
    assert r.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in r.stderr

    class NoServer:  # stands in for uvicorn, so that the command returns
        def __init__(self, app):
            self.app = app

        def run(self, sockets):
            assert self.app.state.explorer.intact.n == 50
            served.append(self.app)

    served = []

    monkeypatch.setattr(lesion.serve, "server", NoServer)
    r = CliRunner().invoke(
        app, ["serve", str(model_file), "--port", "0", "--host", "0.0.0.0", "--examples", "50"]
    )
    assert r.exit_code == 0, r.output
    assert "warning: listening on 0.0.0.0" in r.stderr and "no authentication" in r.stderr
    assert r.stdout.startswith("lesion explorer: http://0.0.0.0:") and len(served) == 1
    (host_check,) = [m for m in served[0].user_middleware if m.cls.__name__ == "HostCheck"]
    assert host_check.kwargs["allowed"] is None  # off loopback, any Host is answered


def test_classifier_explorer_shows_the_heads_of_a_vit():
    """A ViT classifier's attention heads are units of the classic explorer: one activity column per
    head (the mean of its head_dim channels), and deleting one equals lesion.sweep."""
    import torch

    import lesion
    from lesion.models import vit
    from lesion.serve import Explorer

    model = vit((1, 8, 8), 3, patch=4, d_model=16, n_layer=1, n_head=4, seed=0).eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 1, 8, 8, generator=g), torch.arange(40) % 3
    ex = Explorer(model, (x, y), curve_repeats=1, curve_points=3)
    assert ex.activity["h.0.attn"].class_means.shape == (3, 4)
    _, result = ex.evaluate(["h.0.attn:2"])
    want = lesion.sweep(model, (x, y), ["h.0.attn:2"])
    assert result.loss == pytest.approx(float(want.loss[0]), abs=1e-6)
