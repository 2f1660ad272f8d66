"""The review page over HTTP: static files, a JSON API, marks and images, under /_chatproxy/review/.

Served by the proxy's own h11 server code: `chatproxy review` runs the same ProxyServer with a relay that
only answers 404 (PageOnlyRelay), so both share one connection loop, its timeouts and limits. The running
proxy answers the page's paths itself (server.py hands them here, never upstream) by handing them to a
`chatproxy review` of its own, a child process started on the page's first request (ProxyPage): reading
journals is work the relay must not wait for, and in another process it never holds the proxy's
interpreter lock (the child also runs at a lower priority). The proxy checks the page's key itself.

Safety (no CORS anywhere):
- the Host must be a loopback name (or the address listened on), which defeats DNS rebinding; with a
  key (required off loopback) every request must carry it: `?key=` once (kept as an HttpOnly,
  SameSite=Strict cookie), the cookie, or an X-Chatproxy-Key header;
- a request that changes marks must be a same-origin JSON POST (Origin equal to the Host) carrying the
  page's token, which only a page of this origin can read (it is in the served HTML);
- recorded text reaches the DOM only as textContent (app.js), and a Content-Security-Policy allows
  scripts, styles, images and requests from this origin only;
- images come only from a session's images folder, by file name (catalogue.image_path).

This module is what the proxy process loads for the page: the catalogue and the commands are imported by
ReviewApp's methods only, which run in the child (or in `chatproxy review`).
"""

from __future__ import annotations

import asyncio
import atexit
import hmac
import json
import logging
import os
import pkgutil
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from chatproxy import headers as hdr
from chatproxy._h11 import h11
from chatproxy.config import Config, RecordOptions, parse_target
from chatproxy.relay import Downstream, Relay
from chatproxy.server import ProxyServer
from chatproxy.upstream import UpstreamPool

if TYPE_CHECKING:
    from chatproxy.review.catalogue import Catalogue

log = logging.getLogger("chatproxy.review")

PREFIX = "/_chatproxy/review"
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
CHILD_START = 30.0  # seconds the proxy waits for its page's process to listen
CHILD_ANSWER = 900.0  # seconds the proxy waits for an answer of its page's process (an export reads everything)
# Request headers not handed to the page's process: hop-by-hop, framing (set again), and the user's key
# and cookie (the proxy checked them; the child gets its own secret instead).
NOT_FORWARDED = {
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"transfer-encoding",
    b"upgrade",
    b"content-length",
    b"x-chatproxy-key",
    b"cookie",
    b"authorization",
}
NOT_RETURNED = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length"}

Headers = List[Tuple[bytes, bytes]]
Reply = Tuple[int, Headers, bytes]


class Access:
    """Who may use the page: a loopback Host (DNS rebinding), and the key when there is one."""

    def __init__(self, key: Optional[str], host: str) -> None:
        self.key = key
        self.host = host

    def check(self, params: Dict[str, str], headers: Dict[str, str]) -> Tuple[Optional[Reply], str]:
        """A refusal, or None and the Set-Cookie value to send (the key was given in the URL)."""
        if not self._host_allowed(headers.get("host", "")):
            return _text(421, "this page answers on its own address only (the Host header names another)"), ""
        if self.key is None:
            return None, ""
        given = params.get("key") or headers.get("x-chatproxy-key") or _cookie(headers.get("cookie", ""))
        if not given or not hmac.compare_digest(given.encode(), self.key.encode()):
            return _text(401, "this page needs its key: open it as .../_chatproxy/review/?key=KEY"), ""
        if params.get("key"):
            return None, f"{KEY_COOKIE}={urllib.parse.quote(self.key)}; HttpOnly; SameSite=Strict; Path={PREFIX}"
        return None, ""

    def _host_allowed(self, host: str) -> bool:
        if self.key is not None:
            return True  # a key is checked instead: off loopback the page is reached by any name
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name.lower() in LOOPBACK_NAMES or name == self.host


def _parse(request: h11.Request) -> Tuple[str, str, Dict[str, str], Dict[str, str]]:
    target = request.target.decode("latin-1")
    path, _, query = target.partition("?")
    params = {k: v[-1] for k, v in urllib.parse.parse_qs(query, keep_blank_values=True).items()}
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers.raw_items()}
    return path, query, params, headers


class ReviewApp:
    """Answers the page's requests from a Catalogue; `key` is required on every request when set."""

    def __init__(self, catalogue: Catalogue, key: Optional[str] = None, host: str = "127.0.0.1") -> None:
        from chatproxy.review import exporting

        self.catalogue = catalogue
        self.key = key
        self.host = host
        self.access = Access(key, host)
        self.token = os.urandom(16).hex()
        self.exporter = exporting.Exporter(catalogue)
        self.last_request = time.monotonic()  # `chatproxy review` for a proxy stops when left alone long

    async def answer(self, request: h11.Request, body: bytes) -> Reply:
        from chatproxy.review.catalogue import NotFound
        from chatproxy.review.marks import MarkError
        from chatproxy.review.selection import SelectionError

        self.last_request = time.monotonic()
        try:
            return await self._answer(request, body)
        except NotFound as exc:
            return _json(404, {"error": str(exc)})
        except (MarkError, SelectionError) as exc:
            return _json(400, {"error": str(exc)})

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.catalogue.close)

    async def _answer(self, request: h11.Request, body: bytes) -> Reply:
        path, _, params, headers = _parse(request)
        refused, cookie = self.access.check(params, headers)
        if refused is not None:
            return refused
        route = path[len(PREFIX) :]
        method = request.method.decode("latin-1")
        if route == "":
            return 308, [(b"Location", (PREFIX + "/").encode())] + _common(), b""
        if method == "POST" and route in ("/api/mark", "/api/bulk"):
            return await self._post(route, headers, headers.get("host", ""), body)
        if method not in ("GET", "HEAD"):
            return _text(405, "method not allowed")
        reply = await self._get(route, params)
        if cookie:
            reply[1].append((b"Set-Cookie", cookie.encode("latin-1")))
        return reply

    async def _get(self, route: str, params: Dict[str, str]) -> Reply:
        loop = asyncio.get_running_loop()
        if route == "/":
            page = static("index.html").decode("utf-8").replace("{{token}}", self.token)
            return 200, [(b"Content-Type", b"text/html; charset=utf-8")] + _common(), page.encode()
        if route.startswith("/") and route[1:] in STATIC_FILES:
            data = static(route[1:])
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
            locate = self.catalogue.image_path
            path = await loop.run_in_executor(None, locate, params.get("session", ""), params.get("name", ""))
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
        from chatproxy.review.marks import MarkError

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
        from chatproxy.review import exporting

        loop = asyncio.get_running_loop()
        if route == "/api/export/profiles":
            return _json(200, {"profiles": await loop.run_in_executor(None, exporting.profiles)})
        try:
            result = await loop.run_in_executor(None, self.exporter.run, params)
        except exporting.ExportRefused as exc:
            return _json(400, {"error": str(exc)})
        data = result.pop("data")
        if route == "/api/export/file":
            disposition = f'attachment; filename="{result["file"]}"'
            headers = [(b"Content-Type", b"application/octet-stream"), (b"Content-Disposition", disposition.encode())]
            return 200, headers + _common(), data
        return _json(200, result)


def static(name: str) -> bytes:
    """A file of the page (static/), read through the package's loader: from a folder, or from inside
    the single-file build (a zip archive, which no path opens)."""
    data = pkgutil.get_data(__name__.rpartition(".")[0], f"static/{name}")
    if data is None:
        raise FileNotFoundError(name)
    return data


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
    """A page request to a server: the review page's own (`chatproxy review`), or the running proxy's, which
    hands it to its page's process (ProxyPage)."""
    app = server.review
    if app is None:
        app = server.review = ProxyPage(server.config)
    assert isinstance(app, (ReviewApp, ProxyPage))
    return await app.answer(request, body)


class ProxyPage:
    """The running proxy's page: every session in its datasets folder, the proxy key as the page's key.

    The proxy checks the Host and the key, then hands the request to `chatproxy review --for-proxy`, its
    child (started on the first request, again if it ended), over loopback with a secret of their own; the
    answer comes back whole. The child ends with the proxy (its stdin closes) or when left alone long.
    Where no child can be started (an interpreter that cannot run the package from the command line, or a
    page that will not start), the page is served in this process instead, as the recorder falls back."""

    def __init__(self, config: Config) -> None:
        self.access = Access(config.proxy_key, config.host)
        self.folder = config.datasets
        self.secret = os.urandom(16).hex()
        self._child: Optional[subprocess.Popen] = None  # type: ignore[type-arg]
        self._port = 0
        self._starting: Optional[asyncio.Lock] = None
        self._here: Optional[ReviewApp] = None  # the page in this process, when no child could be started

    async def answer(self, request: h11.Request, body: bytes) -> Reply:
        if self._here is not None:
            return await self._here.answer(request, body)
        path, query, params, headers = _parse(request)
        refused, cookie = self.access.check(params, headers)
        if refused is not None:
            return refused
        kept = [(name, value) for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True) if name != "key"]
        target = path + ("?" + urllib.parse.urlencode(kept) if kept else "")
        try:
            port = await self._running()
        except (OSError, ChildFailed) as exc:
            from chatproxy.review.catalogue import Catalogue

            log.warning("review page: %s; serving it in this process instead", exc)
            self._here = ReviewApp(Catalogue(self.folder), self.access.key, self.access.host)
            return await self._here.answer(request, body)
        try:
            status, reply_headers, data = await asyncio.wait_for(
                self._forward(port, request, target.encode("latin-1"), body), CHILD_ANSWER
            )
        except (OSError, asyncio.TimeoutError, h11.ProtocolError) as exc:
            log.warning("review page: %s", exc)
            return _text(503, f"the review page did not answer ({exc}): try again")
        if cookie:
            reply_headers.append((b"Set-Cookie", cookie.encode("latin-1")))
        return status, reply_headers, data

    async def _running(self) -> int:
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._child is None or self._child.poll() is not None:
                loop = asyncio.get_running_loop()
                self._child, self._port = await loop.run_in_executor(None, self._start)
            return self._port

    def _start(self) -> Tuple[subprocess.Popen, int]:  # type: ignore[type-arg]
        import chatproxy

        root = str(Path(chatproxy.__file__).parent.parent)  # a folder, or the .pyz holding the package
        flags = (["-I"] if sys.flags.isolated else []) + (["-S"] if sys.flags.no_site else [])  # as the proxy's
        argv = [sys.executable, *flags, "-c", CHILD_MAIN, root, "review", "--for-proxy", "--datasets", str(self.folder)]
        argv += ["--host", "127.0.0.1", "--port", "0"]
        child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        _CHILDREN.append(child)
        assert child.stdin is not None and child.stdout is not None
        try:
            child.stdin.write(self.secret.encode() + b"\n")  # never on a command line other users can read
            child.stdin.flush()
        except OSError:
            pass  # it ended at once: its stdout says nothing, which is reported below
        line = child.stdout.readline().decode("utf-8", "replace")  # the child prints its URL, or dies
        if not line.startswith("chatproxy review: http://"):
            child.wait(CHILD_START)
            raise ChildFailed(f"chatproxy review ended (status {child.returncode}); see the proxy's log")
        return child, int(line.rsplit(":", 1)[1].split("/", 1)[0])

    async def _forward(self, port: int, request: h11.Request, target: bytes, body: bytes) -> Reply:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), CHILD_START)
        try:
            conn = h11.Connection(h11.CLIENT)
            headers = [(n, v) for n, v in request.headers.raw_items() if n.lower() not in NOT_FORWARDED]
            headers += [(b"X-Chatproxy-Key", self.secret.encode()), (b"Content-Length", b"%d" % len(body))]
            headers.append((b"Connection", b"close"))
            writer.write(conn.send(h11.Request(method=request.method, target=target, headers=headers)) or b"")
            writer.write((conn.send(h11.Data(data=body)) or b"") if body else b"")
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()
            status, kept, chunks = 502, [], []
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(64 * 1024))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    kept = [(n, v) for n, v in event.headers.raw_items() if n.lower() not in NOT_RETURNED]
                elif isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    return status, kept, b"".join(chunks)
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass  # the child closed first: nothing is lost, the answer is in

    async def close(self) -> None:
        child = self._child
        if child is not None and child.poll() is None:
            child.terminate()
        if self._here is not None:
            self._here.catalogue.close()


class ChildFailed(Exception):
    """The page's process did not start."""


# Run as `python -c CHILD_MAIN ROOT ARGS...`: the command line of the package found in ROOT.
CHILD_MAIN = (
    "import sys; sys.path.insert(0, sys.argv[1]); from chatproxy.cli import main; raise SystemExit(main(sys.argv[2:]))"
)
_CHILDREN: List[subprocess.Popen] = []  # type: ignore[type-arg]


@atexit.register
def _end_children() -> None:
    """The proxy is exiting: its pages' processes go too (their stdin closes anyway; this waits for them)."""
    for child in _CHILDREN:
        if child.poll() is None:
            child.terminate()
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()


class PageOnlyRelay(Relay):
    """`chatproxy review` relays nothing: / leads to the page, anything else is 404."""

    async def exchange(self, request: h11.Request, downstream: Downstream) -> None:
        while await downstream.receive_body() is not None:
            pass
        if request.target.split(b"?", 1)[0] == b"/":
            status, headers, body = 303, [(b"Location", (PREFIX + "/").encode())], b""
        else:
            status, headers, body = _text(404, "not found: the review page is at " + PREFIX + "/")
        await downstream.start_response(status, hdr.as_fields(headers + [(b"Content-Length", b"%d" % len(body))]), b"")
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
