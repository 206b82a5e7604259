"""The downloader against a local HTTP server: verified, atomic, resumable with Range requests, and
refusing tampered or unverified files."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from lesion.data import _download as download_module
from lesion.data import download, fetch, load_dataset
from lesion.errors import DataError
from tests.fixtures.dataset_files import gz, idx_bytes, tar_gz, write_cifar10, write_mnist


@dataclass
class Server:
    """What the local server serves, how it misbehaves, and what it saw."""

    url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)  # path without the leading / -> body
    truncate: dict[str, int] = field(default_factory=dict)  # send only this many body bytes, once
    tamper: set[str] = field(default_factory=set)  # flip one byte of these bodies
    ignore_range: bool = False  # answer 200 with the whole body even to a Range request
    log: list[dict] = field(default_factory=list)  # one entry per request

    def add(self, name: str, body: bytes) -> str:
        """Serve ``body`` as ``name``; its SHA-256."""
        self.files[name] = body
        return hashlib.sha256(body).hexdigest()


def _handler(state: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            name = self.path.lstrip("/")
            entry = {"path": name, "range": self.headers.get("Range"), "status": 404, "sent": 0}
            state.log.append(entry)
            if name not in state.files:
                self.send_error(404)
                return
            body = state.files[name]
            if name in state.tamper:
                body = body[:-1] + bytes([body[-1] ^ 0xFF])
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", entry["range"] or "")
            if match and not state.ignore_range:
                start = int(match.group(1))
                if start >= len(body):
                    entry["status"] = 416
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
            entry["status"] = 206 if start else 200
            self.send_response(entry["status"])
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            payload = body[start:][
                : state.truncate.pop(name, None)
            ]  # a cut transfer, then the connection closes
            self.wfile.write(payload)
            entry["sent"] = len(payload)

        def log_message(self, format: str, *args) -> None:  # keep test output quiet
            pass

    return Handler


@pytest.fixture
def server(request, monkeypatch) -> Server:
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")  # never send local requests to a proxy
    state = Server()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()

    def stop() -> None:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)

    request.addfinalizer(stop)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    return state


@pytest.fixture
def body() -> bytes:
    """A real gzipped IDX file of 20,000+ bytes (random pixels do not compress)."""
    images = np.random.default_rng(0).integers(0, 256, (30, 28, 28), dtype=np.uint8)
    return gz(idx_bytes(images))


def test_clean_download_lands_verified_and_atomically(server, body, tmp_path):
    digest = server.add("train-images-idx3-ubyte.gz", body)
    dest = tmp_path / "sub" / "train-images-idx3-ubyte.gz"
    assert fetch(server.url + "train-images-idx3-ubyte.gz", dest, digest) == dest
    assert dest.read_bytes() == body and sorted(p.name for p in dest.parent.iterdir()) == [dest.name]
    assert [(e["range"], e["status"], e["sent"]) for e in server.log] == [(None, 200, len(body))]
    fetch(server.url + "train-images-idx3-ubyte.gz", dest, digest.upper(), progress=True)
    assert len(server.log) == 1  # already there and verified: nothing fetched


def test_tampered_file_is_refused_and_nothing_is_left(server, body, tmp_path):
    digest = server.add("f.gz", body)
    server.tamper.add("f.gz")
    actual = hashlib.sha256(body[:-1] + bytes([body[-1] ^ 0xFF])).hexdigest()
    with pytest.raises(DataError, match=rf"SHA-256 mismatch, expected {digest}, got {actual}; .* deleted"):
        fetch(server.url + "f.gz", tmp_path / "f.gz", digest)
    assert list(tmp_path.iterdir()) == []


def test_existing_file_with_wrong_digest_is_replaced(server, body, tmp_path):
    digest = server.add("f.gz", body)
    (tmp_path / "f.gz").write_bytes(b"stale")
    fetch(server.url + "f.gz", tmp_path / "f.gz", digest)
    assert (tmp_path / "f.gz").read_bytes() == body


def test_truncated_transfer_keeps_part_and_resumes_with_range(server, body, tmp_path):
    digest = server.add("f.gz", body)
    server.truncate["f.gz"] = 5000
    dest, part = tmp_path / "f.gz", tmp_path / "f.gz.part"
    with pytest.raises(
        DataError, match=rf"stopped after 5,000 of {len(body):,} bytes; .*f\.gz\.part is kept"
    ):
        fetch(server.url + "f.gz", dest, digest)
    assert not dest.exists() and part.read_bytes() == body[:5000]
    fetch(server.url + "f.gz", dest, digest)
    assert dest.read_bytes() == body and not part.exists()
    first, second = server.log
    assert (first["range"], first["status"], first["sent"]) == (None, 200, 5000)
    assert (second["range"], second["status"], second["sent"]) == ("bytes=5000-", 206, len(body) - 5000)


def test_server_ignoring_range_restarts_cleanly(server, body, tmp_path):
    digest = server.add("f.gz", body)
    server.truncate["f.gz"] = 7000
    with pytest.raises(DataError, match="stopped after 7,000"):
        fetch(server.url + "f.gz", tmp_path / "f.gz", digest)
    server.ignore_range = True
    fetch(server.url + "f.gz", tmp_path / "f.gz", digest)
    assert (tmp_path / "f.gz").read_bytes() == body and not (tmp_path / "f.gz.part").exists()
    assert (server.log[1]["range"], server.log[1]["status"], server.log[1]["sent"]) == (
        "bytes=7000-",
        200,
        len(body),
    )


def test_complete_part_file_is_verified_after_416(server, body, tmp_path):
    digest = server.add("f.gz", body)
    (tmp_path / "f.gz.part").write_bytes(body)
    fetch(server.url + "f.gz", tmp_path / "f.gz", digest)
    assert (tmp_path / "f.gz").read_bytes() == body and server.log[0]["status"] == 416


def test_resumed_part_of_another_file_is_refused_then_restarts(server, body, tmp_path):
    digest = server.add("f.gz", body)
    (tmp_path / "f.gz.part").write_bytes(b"x" * 100)  # not a prefix of the file
    with pytest.raises(DataError, match="SHA-256 mismatch"):
        fetch(server.url + "f.gz", tmp_path / "f.gz", digest)
    assert list(tmp_path.iterdir()) == []
    fetch(server.url + "f.gz", tmp_path / "f.gz", digest)
    assert (tmp_path / "f.gz").read_bytes() == body


def test_http_errors_and_bad_arguments(server, tmp_path):
    with pytest.raises(DataError, match=r"cannot download .*absent\.gz: HTTP 404"):
        fetch(server.url + "absent.gz", tmp_path / "a.gz", "0" * 64)
    with pytest.raises(DataError, match=r"no SHA-256 given for .*; expected the file's digest"):
        fetch(server.url + "absent.gz", tmp_path / "a.gz", None)
    with pytest.raises(DataError, match="sha256='abc'; expected 64 hexadecimal digits"):
        fetch(server.url + "absent.gz", tmp_path / "a.gz", "abc")
    with pytest.raises(DataError, match="expected an http:// or https:// address"):
        fetch("file:///etc/passwd", tmp_path / "a.gz", "0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_server(tmp_path):
    import socket

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataError, match=rf"cannot download http://127\.0\.0\.1:{port}/x"):
        fetch(f"http://127.0.0.1:{port}/x", tmp_path / "x", "0" * 64)


def _official(monkeypatch, name: str, digests: dict[str, str]) -> None:
    """Point the official table's digests for ``name`` at the fixture files."""
    source = download_module.SOURCES[name]
    files = tuple((f, digests[f]) for f, _ in source.files)
    monkeypatch.setitem(download_module.SOURCES, name, dataclasses.replace(source, files=files))


def test_download_mnist_then_load_it(server, tmp_path, monkeypatch):
    arrays = write_mnist(tmp_path / "served", np.random.default_rng(1))
    digests = {
        p.name: server.add(f"mirror/{p.name}", p.read_bytes()) for p in (tmp_path / "served").iterdir()
    }
    _official(monkeypatch, "mnist", digests)
    root = tmp_path / "data"
    assert download("mnist", root, base_url=server.url + "mirror") == root
    assert sorted(e["path"] for e in server.log) == sorted(f"mirror/{n}" for n in digests)
    assert sorted(p.name for p in root.iterdir()) == sorted(digests)
    d = load_dataset("mnist", root=root)
    assert d.x_train.shape == (30, 1, 28, 28) and d.x_test.shape == (10, 1, 28, 28)
    assert d.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    download("mnist", root, base_url=server.url + "mirror")
    assert len(server.log) == 4  # all there and verified


def test_download_cifar10_unpacks_the_archive(server, tmp_path, monkeypatch):
    written = write_cifar10(tmp_path / "src", np.random.default_rng(2), binary=True)
    digest = server.add("cifar-10-binary.tar.gz", tar_gz(tmp_path / "src", "cifar-10-batches-bin"))
    _official(monkeypatch, "cifar10", {"cifar-10-binary.tar.gz": digest})
    root = tmp_path / "data"
    download("cifar10", root, base_url=server.url)
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-bin", "cifar-10-binary.tar.gz"]
    d = load_dataset("cifar10", root=root)
    assert d.y_test.tolist() == written["test_batch"][1].tolist() and d.x_train.shape == (20, 3, 32, 32)


def test_download_refuses_archive_escaping_its_folder(server, tmp_path, monkeypatch):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "evil.txt").write_text("outside")
    digest = server.add("cifar-100-binary.tar.gz", tar_gz(tmp_path / "src", "../escaped"))
    _official(monkeypatch, "cifar100", {"cifar-100-binary.tar.gz": digest})
    root = tmp_path / "data"
    with pytest.raises(
        DataError, match=r"member '\.\./escaped'; expected files and folders under cifar-100-binary/"
    ):
        download("cifar100", root, base_url=server.url)
    assert not (tmp_path / "escaped").exists()
    assert sorted(p.name for p in root.iterdir()) == ["cifar-100-binary.tar.gz"]  # no leftover temp folder


def test_download_refuses_unknown_and_unverified(monkeypatch, tmp_path):
    with pytest.raises(
        DataError, match="cannot download dataset 'svhn'; downloadable datasets: mnist, fashion"
    ):
        download("svhn", tmp_path)
    _official(
        monkeypatch, "fashion-mnist", dict.fromkeys(f for f, _ in download_module.SOURCES["mnist"].files)
    )
    with pytest.raises(
        DataError, match=r"fashion-mnist: no verified SHA-256 for train-images-idx3-ubyte\.gz"
    ):
        download("fashion-mnist", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_official_table_is_complete():
    for name, source in download_module.SOURCES.items():
        assert source.base_url.startswith("https://"), name
        for file, digest in source.files:
            assert digest is not None and re.fullmatch(r"[0-9a-f]{64}", digest), (name, file)


def test_progress_bar_does_not_disturb(server, body, tmp_path, capsys):
    digest = server.add("f.gz", body)
    fetch(server.url + "f.gz", tmp_path / "f.gz", digest, progress=True)
    assert Path(tmp_path / "f.gz").read_bytes() == body
    assert "f.gz" in capsys.readouterr().err  # tqdm reports on stderr
