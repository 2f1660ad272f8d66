"""The review page over HTTP: static files, a JSON API, marks and images, under /_chatproxy/review/.

Served by the proxy's own h11 server code: the running proxy answers the page's paths itself (server.py
hands them here, never upstream), and `chatproxy review` runs the same ProxyServer with a relay that
only answers 404 (PageOnlyRelay), so both share one connection loop, its timeouts and limits.

Safety (no CORS anywhere):
- the Host must be a loopback name (or the address listened on), which defeats DNS rebinding; with a
  key (required off loopback) every request must carry it: `?key=` once (kept as an HttpOnly,
  SameSite=Strict cookie), the cookie, or an X-Chatproxy-Key header;
- a request that changes marks must be a same-origin JSON POST (Origin equal to the Host) carrying the
  page's token, which only a page of this origin can read (it is in the served HTML);
- recorded text reaches the DOM only as textContent (app.js), and a Content-Security-Policy allows
  scripts, styles, images and requests from this origin only;
- images come only from a session's images folder, by file name (catalogue.image_path).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import urllib.parse
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from chatproxy._h11 import h11
from chatproxy.config import Config, RecordOptions, parse_target
from chatproxy.relay import Downstream, Relay
from chatproxy.review import exporting
from chatproxy.review.catalogue import Catalogue, NotFound
from chatproxy.review.marks import MarkError
from chatproxy.server import ProxyServer
from chatproxy.upstream import UpstreamPool

log = logging.getLogger("chatproxy.review")

PREFIX = "/_chatproxy/review"
STATIC = Path(__file__).with_name("static")
STATIC_FILES = {"app.css": "text/css; charset=utf-8", "app.js": "text/javascript; charset=utf-8"}
IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
}
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "[::1]", "::1"}
KEY_COOKIE = "chatproxy_review_key"
POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
MAX_MARK_BODY = 2 << 20  # bytes: an edited reply and its JSON

Headers = List[Tuple[bytes, bytes]]
Reply = Tuple[int, Headers, bytes]


class ReviewApp:
    """Answers the page's requests from a Catalogue; `key` is required on every request when set."""

    def __init__(self, catalogue: Catalogue, key: Optional[str] = None, host: str = "127.0.0.1") -> None:
        self.catalogue = catalogue
        self.key = key
        self.host = host
        self.token = os.urandom(16).hex()

    async def answer(self, request: h11.Request, body: bytes) -> Reply:
        try:
            return await self._answer(request, body)
        except NotFound as exc:
            return _json(404, {"error": str(exc)})
        except MarkError as exc:
            return _json(400, {"error": str(exc)})

    async def _answer(self, request: h11.Request, body: bytes) -> Reply:
        target = request.target.decode("latin-1")
        path, _, query = target.partition("?")
        params = {k: v[-1] for k, v in urllib.parse.parse_qs(query, keep_blank_values=True).items()}
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers.raw_items()}
        host = headers.get("host", "")
        if not self._host_allowed(host):
            return _text(421, "this page answers on its own address only (the Host header names another)")
        cookie = ""
        if self.key is not None:
            given = params.get("key") or headers.get("x-chatproxy-key") or _cookie(headers.get("cookie", ""))
            if not given or not hmac.compare_digest(given.encode(), self.key.encode()):
                return _text(401, "this page needs its key: open it as .../_chatproxy/review/?key=KEY")
            if params.get("key"):
                cookie = f"{KEY_COOKIE}={urllib.parse.quote(self.key)}; HttpOnly; SameSite=Strict; Path={PREFIX}"
        route = path[len(PREFIX) :]
        method = request.method.decode("latin-1")
        if route == "":
            return 308, [(b"Location", (PREFIX + "/").encode())] + _common(), b""
        if method == "POST" and route in ("/api/mark", "/api/bulk"):
            return await self._post(route, headers, host, body)
        if method not in ("GET", "HEAD"):
            return _text(405, "method not allowed")
        reply = await self._get(route, params)
        if cookie:
            reply[1].append((b"Set-Cookie", cookie.encode("latin-1")))
        return reply

    def _host_allowed(self, host: str) -> bool:
        if self.key is not None:
            return True  # a key is checked instead: off loopback the page is reached by any name
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name.lower() in LOOPBACK_NAMES or name == self.host

    async def _get(self, route: str, params: Dict[str, str]) -> Reply:
        loop = asyncio.get_running_loop()
        if route == "/":
            page = (STATIC / "index.html").read_text(encoding="utf-8").replace("{{token}}", self.token)
            return 200, [(b"Content-Type", b"text/html; charset=utf-8")] + _common(), page.encode()
        if route.startswith("/") and route[1:] in STATIC_FILES:
            data = (STATIC / route[1:]).read_bytes()
            return 200, [(b"Content-Type", STATIC_FILES[route[1:]].encode())] + _common(), data
        if route == "/api/list":
            return _json(200, await loop.run_in_executor(None, self.catalogue.query, params))
        if route == "/api/facets":
            return _json(200, await loop.run_in_executor(None, self.catalogue.facets))
        if route == "/api/conversation":
            found = await loop.run_in_executor(
                None, self.catalogue.conversation, params.get("session", ""), params.get("id", "")
            )
            return _json(200, found)
        if route == "/api/stats":
            return _json(200, await loop.run_in_executor(None, self.catalogue.stats, params))
        if route in ("/api/export", "/api/export/file", "/api/export/profiles"):
            return await self._export(route, params)
        if route == "/api/image":
            path = self.catalogue.image_path(params.get("session", ""), params.get("name", ""))
            data = await loop.run_in_executor(None, path.read_bytes)
            return 200, [(b"Content-Type", IMAGE_TYPES[path.suffix.lower()].encode())] + _common(), data
        return _text(404, "not found")

    async def _post(self, route: str, headers: Dict[str, str], host: str, body: bytes) -> Reply:
        origin = headers.get("origin", "")
        if origin not in (f"http://{host}", f"https://{host}"):
            return _text(403, "marks are changed from the page itself only (Origin differs from Host)")
        if not hmac.compare_digest(headers.get("x-chatproxy-token", "").encode(), self.token.encode()):
            return _text(403, "missing or stale page token: reload the page")
        if not headers.get("content-type", "").startswith("application/json") or len(body) > MAX_MARK_BODY:
            return _text(415, "send the mark as JSON")
        try:
            data = json.loads(body)
        except ValueError:
            return _text(400, "not JSON")
        if not isinstance(data, dict):
            return _text(400, "not a JSON object")
        loop = asyncio.get_running_loop()
        if route == "/api/bulk":
            return _json(200, await loop.run_in_executor(None, self._bulk, data))
        fields = {k: v for k, v in data.items() if k in ("value", "turn", "content", "target")}
        args = (str(data.get("session", "")), str(data.get("id", "")), str(data.get("op", "")), fields)
        return _json(200, await loop.run_in_executor(None, self.catalogue.mark, *args))

    def _bulk(self, data: Dict[str, Any]) -> Dict[str, Any]:
        """{"filter": "<the list's query string>", "op": ..., "value": ...}, or {"op": "undo", "batch": id}."""
        op = str(data.get("op", ""))
        if op == "undo":
            return self.catalogue.undo_bulk(str(data.get("batch", "")))
        query = data.get("filter", "")
        if not isinstance(query, str):
            raise MarkError("filter is the list's query string")
        params = {k: v[-1] for k, v in urllib.parse.parse_qs(query.lstrip("?")).items()}
        fields = {"value": data["value"]} if "value" in data else {}
        return self.catalogue.bulk(params, op, fields)

    async def _export(self, route: str, params: Dict[str, str]) -> Reply:
        loop = asyncio.get_running_loop()
        catalogue = self.catalogue
        if route == "/api/export/profiles":
            return _json(200, {"profiles": await loop.run_in_executor(None, exporting.profiles)})
        try:
            result = await loop.run_in_executor(None, exporting.run, params, catalogue.names, catalogue.folder)
        except exporting.ExportRefused as exc:
            return _json(400, {"error": str(exc)})
        data = result.pop("data")
        if route == "/api/export/file":
            disposition = f'attachment; filename="{result["file"]}"'
            headers = [(b"Content-Type", b"application/octet-stream"), (b"Content-Disposition", disposition.encode())]
            return 200, headers + _common(), data
        return _json(200, result)


def _cookie(header: str) -> str:
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == KEY_COOKIE:
            return urllib.parse.unquote(value)
    return ""


def _common() -> Headers:
    return [
        (b"Content-Security-Policy", POLICY.encode()),
        (b"X-Content-Type-Options", b"nosniff"),
        (b"Referrer-Policy", b"no-referrer"),
        (b"Cache-Control", b"no-store"),
    ]


def _json(status: int, value: Any) -> Reply:
    body = json.dumps(value, ensure_ascii=False).encode("utf-8")
    return status, [(b"Content-Type", b"application/json")] + _common(), body


def _text(status: int, message: str) -> Reply:
    return status, [(b"Content-Type", b"text/plain; charset=utf-8")] + _common(), message.encode() + b"\n"


# ---------------------------------------------------------------------------------------------------------
# Where the page is served
# ---------------------------------------------------------------------------------------------------------


async def answer_in_proxy(server: ProxyServer, request: h11.Request, body: bytes) -> Reply:
    """The running proxy's page: every session in its datasets folder, the proxy key as the page's key."""
    app = server.review
    if not isinstance(app, ReviewApp):
        config = server.config
        app = ReviewApp(Catalogue(config.datasets), config.proxy_key, config.host)
        server.review = app
    return await app.answer(request, body)


class PageOnlyRelay(Relay):
    """`chatproxy review` relays nothing: / leads to the page, anything else is 404."""

    async def exchange(self, request: h11.Request, downstream: Downstream) -> None:
        while await downstream.receive_body() is not None:
            pass
        if request.target.split(b"?", 1)[0] == b"/":
            status, headers, body = 303, [(b"Location", (PREFIX + "/").encode())], b""
        else:
            status, headers, body = _text(404, "not found: the review page is at " + PREFIX + "/")
        await downstream.start_response(status, headers + [(b"Content-Length", str(len(body)).encode())], b"")
        if body:
            await downstream.send_data(body)
        await downstream.end_response()


async def start_review_server(app: ReviewApp, host: str, port: int) -> Tuple[ProxyServer, Tuple[str, int]]:
    """The page on its own listener, driven by the proxy's server code (server.ClientConnection)."""
    config = Config(
        target=parse_target("http://127.0.0.1:9"),  # never contacted: PageOnlyRelay opens no connection
        host=host,
        port=port,
        proxy_key=app.key,
        datasets=app.catalogue.folder,
        record=RecordOptions(enabled=False),
    )
    relay = PageOnlyRelay(config, UpstreamPool(config.target, config.timeouts), None)
    server = ProxyServer(config, relay)
    server.review = app
    address = await server.start()
    return server, address
