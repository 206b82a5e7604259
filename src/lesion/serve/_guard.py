"""Time limits on the explorer's connections: a client that sends headers or a body too slowly is cut off.

uvicorn's HTTP/1.1 protocol (h11) has no limit on how long a request's headers may take, and restarts its
keep-alive timer on every byte, so a client sending one byte a second holds a connection forever
(slowloris). ``GuardedH11`` gives each request ``HEADER_TIMEOUT`` seconds from the connection's start
(or the previous response's end) to finish its headers, then answers 408 and closes; ``BodyLimit``
(``_http``) gives the body ``BODY_TIMEOUT`` seconds.
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT = 10.0  # seconds for a request line and headers
BODY_TIMEOUT = 30.0  # seconds for a whole request body (1 MiB at most)


def timeout_response(what: str, seconds: float) -> bytes:
    """A complete HTTP/1.1 408 response with a JSON error, ready to write to a transport."""
    body = json.dumps({"error": f"the request {what} took longer than {seconds:g} s; send it at once"})
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return (head + body).encode()


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers (``header_timeout``)."""

    header_timeout = HEADER_TIMEOUT

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if getattr(self, "_header_timer", None) is not None:
            self._header_timer.cancel()  # type: ignore[union-attr]
            self._header_timer = None

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        if self.cycle is not before and self.cycle is not None:  # a request's headers are complete
            self._disarm()

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self._arm()  # the next request gets its own deadline (a pipelined one disarms it at once)
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        idle = self.cycle is None or self.cycle.response_complete
        if self.transport.is_closing() or not idle:  # a request in progress is not the headers' fault
            return
        self.transport.write(timeout_response("headers", self.header_timeout))
        self.transport.close()
