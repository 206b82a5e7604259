"""Every network wait has a deadline (issue 30, item 4): an address that accepts TCP but is not Ray, or
answers nothing, is refused within 30 s; a refused port fails in a couple of seconds, not the full 30."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from lesion.backends.ray import RayBackend, wait_reachable
from lesion.errors import LesionError


class FakeServer:
    """A TCP server on 127.0.0.1 that accepts and then says ``reply`` (or nothing) and holds on."""

    def __init__(self, reply: bytes = b"") -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port, self.reply, self.held = self.sock.getsockname()[1], reply, []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            if self.reply:
                conn.sendall(self.reply)

    def close(self) -> None:
        for c in self.held:
            c.close()
        self.sock.close()


@pytest.mark.parametrize("reply", [b"", b"HTTP/1.1 400 Bad Request\r\n\r\n", b"\x00" * 20],
                         ids=["silent", "http", "zeros"])  # fmt: skip
def test_an_address_that_is_not_ray_is_refused_within_seconds(reply):
    server = FakeServer(reply)
    try:
        start = time.monotonic()
        backend = RayBackend(f"127.0.0.1:{server.port}", connect_timeout=30)
        with (
            pytest.raises(LesionError, match="accepts connections but is not a Ray head"),
            backend.session(1),
        ):
            pass
        assert time.monotonic() - start < 10
    finally:
        server.close()


def test_a_refused_port_fails_fast():
    s = socket.create_server(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connections are refused
    start = time.monotonic()
    with pytest.raises(
        LesionError,
        match=rf"cannot reach the Ray cluster at 127.0.0.1:{port} within 2 s \(Connection refused",
    ):
        wait_reachable(f"127.0.0.1:{port}", 30)
    assert time.monotonic() - start < 5


def test_a_sweep_on_a_fake_ray_address_fails_within_the_deadline():
    pytest.importorskip("ray")
    import torch

    import lesion

    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    data = (torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
    server = FakeServer(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    try:
        start = time.monotonic()
        with pytest.raises(LesionError, match="not a Ray head"):
            lesion.unit_table(net, data, backend="ray", address=f"127.0.0.1:{server.port}")
        assert time.monotonic() - start < 30
    finally:
        server.close()
