"""HTTP plumbing of the explorer: a request-body limit, clear JSON errors, and running uvicorn.

Every error the API answers is JSON ``{"error": "<what was wrong and what was expected>"}`` with a 4xx
status; none of them stops the server.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lesion.errors import LesionError
from lesion.serve._guard import BODY_TIMEOUT, GuardedH11

MAX_BODY = 1 << 20  # 1 MiB: far more than any lesion needs ("fc1:0-511" names 512 units)
_LARGE = 64 << 10  # bodies above 64 KiB are handled one at a time
_DRAIN_CAP = 64 << 20  # read at most this much of an oversized body before answering


class BodyLimit:
    """Answer 413 to any request whose body exceeds ``max_bytes``, declared or streamed.

    The body is read before the app sees it, so an oversized upload never reaches a handler; what the
    client already sent is drained (up to 64 MiB) so that it receives the 413 instead of a reset. A body
    not complete within ``timeout`` seconds is answered 408; bodies over 64 KiB are handled one at a
    time, so concurrent large requests cannot multiply the memory their parsing takes.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY, timeout: float = BODY_TIMEOUT):
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout
        self._large: asyncio.Semaphore | None = None  # one large body parsed at a time: bounded memory

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _drain(receive)
            await _reject(send, f"{declared:,} bytes", self.max_bytes)
            return
        chunks, total, more = [], 0, True
        deadline = asyncio.get_running_loop().time() + self.timeout
        while more:
            try:
                message = await asyncio.wait_for(receive(), deadline - asyncio.get_running_loop().time())
            except TimeoutError:
                took = f"the request body took longer than {self.timeout:g} s"
                await send_error(send, 408, f"{took}; expected the whole body at once")
                return
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            more = message.get("more_body", False)
            if total > self.max_bytes:
                seen, finished = await _drain(receive) if more else (0, True)
                size = f"{'' if finished else 'at least '}{total + seen:,} bytes"
                await _reject(send, size, self.max_bytes)
                return
            chunks.append(chunk)
        if total <= _LARGE:
            await self.app(scope, _replay(b"".join(chunks), receive), send)
            return
        self._large = self._large or asyncio.Semaphore(1)
        async with self._large:  # parsing costs ~20x a body's size; small requests never wait here
            await self.app(scope, _replay(b"".join(chunks), receive), send)


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class HostCheck:
    """Refuse requests whose Host header names another machine (400).

    A page elsewhere could point its own domain at 127.0.0.1 (DNS rebinding) and read a local server;
    its requests still carry that domain as Host, so a loopback server answers only to local names.
    ``allowed=None`` accepts any Host (a server bound to a public interface).
    """

    def __init__(self, app: ASGIApp, allowed: Sequence[str] | None = LOCAL_HOSTS):
        self.app = app
        self.allowed = None if allowed is None else {h.lower() for h in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.allowed is not None:
            host = _host_name(dict(scope.get("headers", ())).get(b"host", b"").decode("latin-1"))
            if host not in self.allowed:
                hint = "open the explorer as http://127.0.0.1:<port> or http://localhost:<port>"
                await send_error(send, 400, f"host {host!r} is not served here; {hint}")
                return
        await self.app(scope, receive, send)


def _host_name(header: str) -> str:
    """The host of a Host header, without its port.

    >>> _host_name("[::1]:8000"), _host_name("LocalHost:80"), _host_name("example.org")
    ('::1', 'localhost', 'example.org')
    """
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _drain(receive: Receive) -> tuple[int, bool]:
    """Read and drop the rest of a body, up to 64 MiB: (bytes read, whether the body ended)."""
    seen = 0
    while seen < _DRAIN_CAP:
        message = await receive()
        if message["type"] == "http.disconnect":
            return seen, False
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return seen, True
    return seen, False


async def _reject(send: Send, size: str, limit: int) -> None:
    await send_error(send, 413, f"request body of {size} is too large; expected at most {limit:,} bytes")


async def send_error(send: Send, status: int, message: str) -> None:
    """Answer ``{"error": message}`` with ``status`` and close the connection."""
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # later calls wait for the disconnect, as the server would say

    return replay


def install_error_handlers(app: FastAPI, units: Sequence[str] = ("relu1:0", "relu2:5-9")) -> None:
    """Turn bad JSON, schema mismatches, lesion errors and HTTP errors into ``{"error": ...}``; messages
    about a request body show ``units`` (addresses of the served model) as the example."""
    example = f"expected a JSON object like {json.dumps({'units': list(units)})}"

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, message = _describe(exc.errors(), request.headers.get("content-type"), example)
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(LesionError)
    async def lesion_error(request: Request, exc: LesionError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 400 and message == "There was an error parsing the body":
            message = (  # fastapi's words for a body json.loads gave up on, e.g. nested too deeply
                "the request body could not be parsed as JSON (malformed, or nested deeper than the "
                f"JSON reader allows); {example}"
            )
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)


def _describe(errors: Any, content_type: str | None, example: str) -> tuple[int, str]:
    errors = list(errors)
    for e in errors:
        where = tuple(e.get("loc", ()))
        if where[:1] in (("path",), ("query",)):  # a bad URL, not a bad body: say which part and why
            name = where[-1] if len(where) > 1 else "parameter"
            status = 404 if where[0] == "path" else 422
            return status, f"{where[0]} parameter {name} is {e.get('input')!r}: {e.get('msg', 'invalid')}"
    for e in errors:
        if e.get("type") == "json_invalid":
            where = e["loc"][-1] if len(e.get("loc", ())) > 1 else "?"
            reason = (e.get("ctx") or {}).get("error", "not JSON")
            return 400, f"malformed JSON in the request body at character {where}: {reason}; {example}"
        if e.get("loc") == ("body",) and isinstance(e.get("input"), str | bytes):
            got = content_type or "none"
            return 415, f"the request body was not sent as JSON (Content-Type: {got}); send it with " + (
                f"Content-Type: application/json, {example}"
            )
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    return 422, f"invalid request ({'; '.join(parts)}); {example}"


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free port); a clear LesionError if it is taken."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise LesionError(f"cannot resolve host {host!r}: {exc}; expected e.g. 127.0.0.1") from None
    family, kind, proto, _, address = infos[0]
    # proto must say TCP: asyncio sets TCP_NODELAY only on such sockets, and without it every response
    # (headers and body written apart) waits out the client's delayed ACK, 40 ms
    sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise LesionError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; pass another --port (0 picks a free one)"
        ) from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def server(app: ASGIApp, *, log_level: str = "warning"):
    """A uvicorn server for ``app`` (run it with ``.run(sockets=[sock])``)."""
    import uvicorn

    config = uvicorn.Config(
        app, log_level=log_level, access_log=False, timeout_graceful_shutdown=2, http=GuardedH11
    )
    return uvicorn.Server(config)


@contextmanager
def running(app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` from a background thread inside the block; yields its base URL.

    For notebooks and tests: ``with running(create_app(explorer)) as url: ...``.
    """
    sock = bind(host, port)
    srv = server(app)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not srv.started:
            if not thread.is_alive():
                raise LesionError(f"the server on {url_of(sock)} stopped while starting")
            threading.Event().wait(0.01)
        yield url_of(sock)
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
        sock.close()
