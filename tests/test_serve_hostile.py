"""The explorer under hostile requests (issue 12, item 1 and the server's time limits): memory stays
bounded, other clients keep being answered, every refusal is a JSON 4xx. Loopback only, bounded loops."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from lesion.serve import create_app, running  # noqa: E402
from lesion.serve._guard import GuardedH11  # noqa: E402
from tests.serve_support import digits_model, make_explorer  # noqa: E402

HOSTILE = [
    {"units": ["relu1:0-3_000_000_0"]},  # int() reads underscores: 30 M units in the old parser
    {"units": ["relu1:0-1_000_000_000"]},
    {"units": ["relu1:٣"]},  # an Arabic-Indic three: int() says 3
    {"units": ["relu1:0-40000000"]},
    {"units": ["relu1:0-999999999999"]},
    {"units": ["relu1:" + "9" * 5000]},
    {"units": ["relu1:0-31"] * 70_000},  # just under 1 MiB of valid, overlapping ranges
]


@pytest.fixture(scope="module")
def url():
    model, data = digits_model()
    with running(create_app(make_explorer(model, data), body_timeout=1.0)) as base:
        yield base


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) / 1024


def nested_body() -> bytes:
    return b'{"units":' + b"[" * 400_000 + b"]" * 400_000 + b"}"


@pytest.mark.parametrize("body", HOSTILE[:6], ids=lambda b: b["units"][0][:24])
def test_hostile_unit_text_is_a_422_naming_the_expected_form(url, body):
    r = httpx.post(f"{url}/api/evaluate", json=body, timeout=10)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert "expected" in error and len(error) < 400, error
    assert "ASCII digits" in error or "out of range" in error or "limit" in error


def test_deeply_nested_json_is_a_400_naming_what_was_expected(url):
    r = httpx.post(f"{url}/api/evaluate", content=nested_body(), timeout=10,
                   headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == 400 and "nested" in r.json()["error"] and '{"units"' in r.json()["error"]


def test_memory_and_latency_stay_bounded_under_hostile_requests(url):
    """4 hostile clients x 12 rounds of every hostile body (and 2 MiB ones, and deep nesting) while a
    well-behaved client asks for the model and a lesion: RSS grows < 50 MB (server and clients together,
    one process), every honest pair of answers comes within 1 s."""
    bodies = [json.dumps(b).encode() for b in HOSTILE] + [nested_body(), b"[" * (2 << 20)]
    with httpx.Client(base_url=url, timeout=30) as warm:
        for body in bodies:  # warm up allocator pools and caches once before measuring
            warm.post("/api/evaluate", content=body, headers={"content-type": "application/json"})
    before, stop, statuses = rss_mb(), threading.Event(), []

    def attack() -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            for _ in range(12):
                for body in bodies:
                    r = c.post("/api/evaluate", content=body, headers={"content-type": "application/json"})
                    statuses.append(r.status_code)

    latencies: list[float] = []

    def honest() -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            while not stop.is_set() and len(latencies) < 2000:
                t = time.perf_counter()
                assert c.get("/api/model").status_code == 200
                assert c.post("/api/evaluate", json={"units": ["relu1:0-3"]}).status_code == 200
                latencies.append(time.perf_counter() - t)
                time.sleep(0.02)

    attackers = [threading.Thread(target=attack) for _ in range(4)]
    watcher = threading.Thread(target=honest)
    watcher.start()
    for t in attackers:
        t.start()
    peak = before
    while any(t.is_alive() for t in attackers):
        peak = max(peak, rss_mb())
        time.sleep(0.05)
    stop.set()
    watcher.join()
    growth = peak - before
    print(f"RSS growth {growth:.1f} MB; honest latency max {max(latencies) * 1000:.0f} ms "
          f"over {len(latencies)} requests; {len(statuses)} hostile requests")  # fmt: skip
    assert set(statuses) <= {200, 400, 413, 422}, set(statuses)
    assert growth < 50, f"RSS grew {growth:.1f} MB"
    assert latencies and max(latencies) < 1.0, max(latencies)


def test_slow_headers_are_cut_off_with_408(url, monkeypatch):
    monkeypatch.setattr(GuardedH11, "header_timeout", 0.5)
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"GET /api/model HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finishes its headers
        start = time.perf_counter()
        reply = _read_all(s)
    assert time.perf_counter() - start < 3
    assert reply.startswith(b"HTTP/1.1 408") and b'"error"' in reply and b"headers" in reply
    r = httpx.get(f"{url}/api/model", timeout=5)  # a normal request still has all the time it needs
    assert r.status_code == 200


def test_slow_body_is_cut_off_with_408(url):
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"POST /api/evaluate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"units\":")  # fmt: skip
        reply = _read_all(s)
    assert reply.startswith(b"HTTP/1.1 408") and b"body took longer than 1 s" in reply


def _read_all(s: socket.socket) -> bytes:
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)
