"""Open WebUI, driven in a real browser through chatproxy: one record per branch it stored, the relay exact.

    python scripts/openwebui_check.py                      # the venv at $CHATPROXY_OPENWEBUI (see below)
    python scripts/openwebui_check.py --venv PATH          # Open WebUI installed in the venv at PATH
    python scripts/openwebui_check.py --url http://127.0.0.1:8080 --data-dir DIR --relay-port 12538 --key KEY

Open WebUI is not installed by this script (it pulls torch and a few GB more); put it in a venv of its own:

    python3.11 -m venv ~/.cache/chatproxy-frontends/openwebui
    ~/.cache/chatproxy-frontends/openwebui/bin/pip install torch==2.13.0 open-webui==0.12.4

With --venv the script starts Open WebUI itself, offline (no model download, no update check, no
Ollama), without login (WEBUI_AUTH=False), its data in a new folder, its OpenAI connection pointed at
chatproxy with a dummy key. With --url it uses one already running, whose OpenAI connection points at
http://127.0.0.1:RELAY_PORT/v1 with the key KEY and whose default model is the scripted backend's
(`fake-model`, the only one a fresh DATA_DIR lists), logged in as the browser finds it (WEBUI_AUTH=False)
or with --email and --password; it sets the user's system prompt, and only the chats this run creates
are compared.

The chain: Open WebUI -> a byte tap -> chatproxy -> a scripted backend (streamed chat completions whose
text depends on the request, valid JSON for Open WebUI's title, tag and follow-up tasks, /v1/models).
Headless Chromium drives Open WebUI's own page: a system prompt in the user settings, three chats, all
streamed; in the first a message is edited (a branch), in the second a reply regenerated, in the third
an image attached. Then the check compares:

- records: `chatproxy export --format sharegpt` against every branch (root-to-leaf path of
  history.messages, after the system prompt from the user's settings) Open WebUI stored in
  DATA_DIR/webui.db, turn by turn, whitespace aside, images by SHA-256;
- relay: every request and response the tap saw against what the backend received and sent, byte for
  byte (bodies, status, end-to-end headers; Host, framing and Accept-Encoding excepted, which chatproxy
  sets on purpose);
- key: the dummy key reached the backend, and no file under the datasets folder holds it.

It prints one table and exits 0 when everything matched. tests/test_openwebui.py runs it when the venv
exists and skips otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import http.client
import json
import os
import secrets
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "review"))
import h11
from cdp import CHROMIUM  # noqa: E402
from cdp import Browser as DevTools  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VENV = Path(
    os.environ.get("CHATPROXY_OPENWEBUI")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "chatproxy-frontends" / "openwebui"
)
SESSION = "owui"
MODEL = "fake-model"
START_TIMEOUT = 180.0  # Open WebUI imports torch, transformers and chromadb: 40-70 s on two cores
REPLY_TIMEOUT = 60.0
READ_SIZE = 64 * 1024
SYSTEM_PROMPT = "You are a concise assistant.\nAnswer in two sentences at most."

Headers = List[Tuple[str, str]]


class CheckFailed(Exception):
    pass


# -- the scripted backend ---------------------------------------------------------------------------------


@dataclass
class Exchange:
    """One request the backend received, and the bytes of the response it wrote (head and framing too)."""

    seq: int
    method: str
    target: str
    headers: Headers
    body: bytes
    kind: str = ""  # chat, title, tags, follow_ups, queries, task, models, other
    reply: str = ""
    response_raw: bytearray = field(default_factory=bytearray)

    def header(self, name: str) -> Optional[str]:
        return next((v for k, v in self.headers if k.lower() == name), None)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _last_text(content: Any) -> str:
    """The text the user typed: Open WebUI puts its own parts (an <attached_files> block) before it."""
    if isinstance(content, list):
        texts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        content = texts[-1] if texts else ""
    return " ".join(str(content).split())


def task_kind(messages: List[Dict[str, Any]]) -> str:
    """Which of Open WebUI's task prompts a request is ("" for a chat): each one opens with "### Task:"
    and names the JSON key it wants back."""
    last = _text_of(messages[-1].get("content")) if messages else ""
    if not last.lstrip().startswith("### Task:"):
        return ""
    return next((key for key in ("follow_ups", "title", "tags", "queries") if f'"{key}"' in last), "task")


def task_reply(kind: str, number: int) -> Dict[str, Any]:
    if kind == "follow_ups":
        return {"follow_ups": ["Tell me more.", "Can you give an example?", "What else should I know?"]}
    if kind == "title":
        return {"title": f"Checked chat {number}"}
    if kind == "tags":
        return {"tags": ["General", "Testing"]}
    if kind == "queries":
        return {"queries": []}
    return {"text": ""}


class Backend:
    """An OpenAI-compatible backend on 127.0.0.1 (asyncio + h11, on the Loop's thread).

    A chat reply names its number and the question, so a regenerated reply differs from the first and
    every reply is known; it streams in small pieces, 10 ms apart, when asked. Each response carries
    `x-backend-seq`, which pairs what the tap saw with what the backend did."""

    def __init__(self) -> None:
        self.exchanges: List[Exchange] = []
        self.counts: Dict[str, int] = {}
        self.port = 0
        self.last_request = time.monotonic()
        self._server: Optional[asyncio.AbstractServer] = None

    def replies(self) -> List[str]:
        return [ex.reply for ex in self.exchanges if ex.kind == "chat"]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                exchange = await self._read_request(conn, reader)
                if exchange is None:
                    break
                await _Answer(conn, writer, exchange).run(self._count(exchange))
                if conn.our_state is h11.MUST_CLOSE:
                    break
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError):
            pass
        finally:
            writer.close()

    async def _read_request(self, conn: h11.Connection, reader: asyncio.StreamReader) -> Optional[Exchange]:
        head: Optional[h11.Request] = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(READ_SIZE))
            elif isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage) and head is not None:
                exchange = Exchange(
                    seq=len(self.exchanges) + 1,
                    method=head.method.decode(),
                    target=head.target.decode("latin-1"),
                    headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers.raw_items()],
                    body=bytes(body),
                )
                self.exchanges.append(exchange)
                self.last_request = time.monotonic()
                return exchange
            else:
                return None

    def _count(self, ex: Exchange) -> int:
        path = ex.target.split("?", 1)[0]
        if ex.method == "GET" and path.endswith("/models"):
            ex.kind = "models"
        elif ex.method == "POST" and path.endswith("/chat/completions"):
            ex.kind = task_kind(json.loads(ex.body).get("messages") or []) or "chat"
        else:
            ex.kind = "other"
        self.counts[ex.kind] = self.counts.get(ex.kind, 0) + 1
        return self.counts[ex.kind]


class _Answer:
    """Writes one response through h11, keeping a copy of every byte."""

    def __init__(self, conn: h11.Connection, writer: asyncio.StreamWriter, ex: Exchange) -> None:
        self.conn, self.writer, self.ex = conn, writer, ex

    async def run(self, number: int) -> None:
        ex = self.ex
        if ex.kind == "models":
            models = {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "check"}]}
            await self.json(200, models)
        elif ex.kind == "other":
            await self.json(404, {"error": {"message": f"{ex.method} {ex.target} is not served here"}})
        else:
            body = json.loads(ex.body)
            if ex.kind == "chat":
                messages = body.get("messages") or []
                question = _last_text(messages[-1].get("content")) if messages else ""
                ex.reply = f"Reply {number}: you asked “{question}”.\n\nThat is all for now."
            else:
                ex.reply = json.dumps(task_reply(ex.kind, number))
            if body.get("stream"):
                await self.stream(ex.reply, body)
            else:
                await self.json(200, _completion(ex.reply))

    async def json(self, status: int, obj: Any) -> None:
        body = json.dumps(obj).encode()
        await self.head(status, [("content-type", "application/json"), ("content-length", str(len(body)))])
        await self.send(h11.Data(data=body))
        await self.send(h11.EndOfMessage())

    async def stream(self, text: str, body: Dict[str, Any]) -> None:
        await self.head(200, [("content-type", "text/event-stream"), ("cache-control", "no-cache")])
        chunks = [_chunk({"role": "assistant", "content": ""}, None)]
        chunks += [_chunk({"content": text[i : i + 5]}, None) for i in range(0, len(text), 5)]
        chunks.append(_chunk({}, "stop"))
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            words = len(text.split())
            chunks.append(dict(_chunk({}, None), choices=[], usage=_usage(words)))
        for chunk in chunks:
            await self.send(h11.Data(data=b"data: " + json.dumps(chunk).encode() + b"\n\n"))
            await asyncio.sleep(0.01)  # a live stream: the page shows the reply grow
        await self.send(h11.Data(data=b"data: [DONE]\n\n"))
        await self.send(h11.EndOfMessage())

    async def head(self, status: int, headers: Headers) -> None:
        await self.send(h11.Response(status_code=status, headers=headers + [("x-backend-seq", str(self.ex.seq))]))

    async def send(self, event: Any) -> None:
        data = self.conn.send(event) or b""
        self.ex.response_raw += data
        self.writer.write(data)
        await self.writer.drain()


def _usage(words: int) -> Dict[str, int]:
    return {"prompt_tokens": 10, "completion_tokens": words, "total_tokens": 10 + words}


def _completion(text: str) -> Dict[str, Any]:
    message = {"role": "assistant", "content": text}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    reply = {"id": "chatcmpl-check", "object": "chat.completion", "created": 1_700_000_000, "model": MODEL}
    return dict(reply, choices=[choice], usage=_usage(len(text.split())))


def _chunk(delta: Dict[str, Any], finish: Optional[str]) -> Dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {
        "id": "chatcmpl-check",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": MODEL,
        "choices": [choice],
    }


# -- the tap between Open WebUI and chatproxy --------------------------------------------------------------


@dataclass
class Tapped:
    """One connection through the tap: the bytes each way, and where each read from chatproxy ended."""

    sent: bytearray = field(default_factory=bytearray)
    received: bytearray = field(default_factory=bytearray)
    read_ends: List[int] = field(default_factory=list)


class Tap:
    """A TCP relay that keeps every byte of each connection, both ways, to be parsed afterwards."""

    def __init__(self, target_port: int, port: int = 0) -> None:
        self.target_port = target_port
        self.port = port
        self.connections: List[Tapped] = []
        self._server: Optional[asyncio.AbstractServer] = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tapped = Tapped()
        self.connections.append(tapped)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pump(reader, up_writer, tapped.sent), _pump(up_reader, writer, tapped.received, tapped))


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, copy: bytearray, reads: Optional[Tapped] = None
) -> None:
    try:
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                break
            copy += data
            if reads is not None:
                reads.read_ends.append(len(copy))
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


@dataclass
class Message:
    """One HTTP/1.1 message as it went over the wire; `body` without chunked framing."""

    start: str
    headers: Headers
    body: bytes
    begin: int = 0
    end: int = 0

    def header(self, name: str) -> Optional[str]:
        return next((v for k, v in self.headers if k.lower() == name), None)


def parse_messages(data: bytes, responses: bool) -> List[Message]:
    """The HTTP/1.1 messages one after another on a connection, each framed by Content-Length or chunked
    (a response with neither runs to the end of the connection)."""
    messages = []
    position = 0
    while data.find(b"\r\n\r\n", position) >= 0:
        begin = position
        end = data.index(b"\r\n\r\n", position)
        lines = data[position:end].decode("latin-1").split("\r\n")
        headers = [(k, v.strip()) for k, v in (line.split(":", 1) for line in lines[1:])]
        message = Message(lines[0], headers, b"", begin)
        position = end + 4
        length = message.header("content-length")
        if (message.header("transfer-encoding") or "").lower() == "chunked":
            message.body, position = _dechunk(data, position)
        elif length is not None:
            message.body = data[position : position + int(length)]
            position += int(length)
        elif responses and message.start.split()[1] not in ("204", "304"):
            message.body, position = data[position:], len(data)
        message.end = position
        messages.append(message)
    return messages


def _dechunk(data: bytes, position: int) -> Tuple[bytes, int]:
    body = bytearray()
    while True:
        line_end = data.index(b"\r\n", position)
        size = int(data[position:line_end].split(b";")[0], 16)
        position = line_end + 2
        if size == 0:
            return bytes(body), data.index(b"\r\n", position) + 2  # no trailers are sent here
        body += data[position : position + size]
        position += size + 2


class Loop:
    """An asyncio loop in a background thread, for the backend and the tap while the browser is driven."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="openwebui-check", daemon=True)
        self.thread.start()

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    def close(self) -> None:
        """End every connection still open (their tasks close their sockets), then the loop itself."""
        self.run(_cancel_others())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


async def _cancel_others() -> None:
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(0.05)  # the transports' close callbacks run on the next turns of the loop


# -- processes --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes], signum: int = signal.SIGTERM, timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(signum)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


def start_chatproxy(target: str, datasets: Path, log: Path) -> Tuple[subprocess.Popen[bytes], int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATPROXY_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, "-m", "chatproxy", "--target", target, "--port", "0", "--datasets", str(datasets)]
    command += ["--session", SESSION]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if " listening on " in text:
            url = text.split(" listening on ", 1)[1].split()[0]
            return proc, int(url.rsplit(":", 1)[1])
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    stop_process(proc)
    raise CheckFailed("chatproxy did not start:\n" + log.read_text(errors="replace"))


def openwebui_env(data_dir: Path, openai_url: str, key: str, embeddings_url: str) -> Dict[str, str]:
    """Open WebUI offline: nothing downloaded (OFFLINE_MODE, the HF hub off, embeddings from the scripted
    backend instead of a local sentence-transformers model), no Ollama, no login."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATPROXY_", "PYTHON", "OPENAI_", "VIRTUAL_ENV"))}
    env.update(
        DATA_DIR=str(data_dir),
        WEBUI_SECRET_KEY=secrets.token_hex(16),
        WEBUI_AUTH="False",
        OFFLINE_MODE="true",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        ENABLE_VERSION_UPDATE_CHECK="false",
        ANONYMIZED_TELEMETRY="false",
        DO_NOT_TRACK="true",
        SCARF_NO_ANALYTICS="true",
        ENABLE_OLLAMA_API="false",
        OPENAI_API_BASE_URL=openai_url,
        OPENAI_API_KEY=key,
        RAG_EMBEDDING_ENGINE="openai",
        RAG_OPENAI_API_BASE_URL=embeddings_url,
        RAG_OPENAI_API_KEY="not-the-checked-key",
        ENABLE_WEB_SEARCH="false",
    )
    return env


def start_openwebui(venv: Path, env: Dict[str, str], workdir: Path, log: Path) -> Tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [str(venv / "bin" / "open-webui"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CheckFailed(f"Open WebUI exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            ok = conn.getresponse().status == 200
            conn.close()
            if ok:
                return proc, url
        except OSError:
            pass
        time.sleep(0.5)
    stop_process(proc)
    raise CheckFailed(
        f"Open WebUI gave no answer within {START_TIMEOUT:.0f}s:\n{log.read_text(errors='replace')[-3000:]}"
    )


# -- the browser ------------------------------------------------------------------------------------------


class Browser(DevTools):
    """tests/review/cdp.py's DevTools client, failing with CheckFailed, page script errors raised."""

    failure = CheckFailed

    def __init__(self, profile: Path, log: Path, width: int = 1280, height: int = 900) -> None:
        if CHROMIUM is None:
            raise CheckFailed("no chromium on PATH (apt-get install -y chromium)")
        super().__init__(profile, width, height)
        self.call("DOM.enable")

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise CheckFailed(f"page script failed: {expression[:200]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_until(self, expression: str, what: str, timeout: float = REPLY_TIMEOUT) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.1)
        raise CheckFailed(f"timed out after {timeout:.0f}s waiting for {what}")

    def wait_for(self, predicate: Callable[[], bool], what: str, timeout: float = REPLY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise CheckFailed(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(0.1)


# -- driving Open WebUI's page ----------------------------------------------------------------------------

QUIET = 1.5  # seconds without a request to the backend: Open WebUI's tasks for the last answer are done


class WebUI:
    """Open WebUI's own page, used as a person does: typing, Enter, the buttons under each message."""

    def __init__(self, browser: Browser, url: str, backend: Backend) -> None:
        self.b, self.url, self.backend = browser, url.rstrip("/"), backend
        self.chat_ids: List[str] = []

    def open(self, path: str = "/") -> None:
        self.b.call("Page.navigate", url=self.url + path)
        self.b.wait_until(
            "!!document.querySelector('#chat-input') || !!document.querySelector('input[type=password]')", "the page"
        )
        self.b.wait_until("document.readyState === 'complete'", "the page to load")
        time.sleep(0.5)  # the "What's New" dialog opens a moment after the page
        self.click("Okay, Let's Go!", required=False)

    def sign_in(self, email: str, password: str) -> None:
        if not self.b.js("!!document.querySelector('input[type=password]')"):
            return  # already signed in
        self.fill("input[type=email], input[autocomplete=email]", email)
        self.fill("input[type=password]", password)
        self.click("Sign in")
        self.b.wait_until("!!document.querySelector('#chat-input')", "the chat page after signing in")

    def click(self, text: str, required: bool = True) -> bool:
        """Click the last visible button or link showing `text` or labelled with it."""
        wanted = json.dumps(text)
        script = f"""(() => {{
            const found = [...document.querySelectorAll('button, a')].filter(e => e.offsetParent !== null)
                .filter(e => e.innerText.trim() === {wanted} || e.getAttribute('aria-label') === {wanted});
            if (!found.length) return false;
            found[found.length - 1].click();
            return true;
        }})()"""
        clicked = bool(self.b.js(script))
        if required and not clicked:
            raise CheckFailed(f"no {text!r} button on the page")
        return clicked

    def fill(self, selector: str, text: str) -> None:
        """Replace a field's text as typing would (input events, so the page's bindings see it)."""
        found = self.b.js(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return false;"
            " e.focus(); if (e.select) e.select(); else getSelection().selectAllChildren(e); return true; })()"
        )
        if not found:
            raise CheckFailed(f"no {selector} on the page")
        self.b.call("Input.insertText", text=text)

    def key(self, name: str, code: int) -> None:
        text = "\r" if name == "Enter" else ""
        self.b.call(
            "Input.dispatchKeyEvent", type="keyDown", key=name, code=name, windowsVirtualKeyCode=code, text=text
        )
        self.b.call("Input.dispatchKeyEvent", type="keyUp", key=name, code=name, windowsVirtualKeyCode=code)

    def set_system_prompt(self, text: str) -> None:
        """User menu -> Settings -> General -> System Prompt -> Save."""
        self.click("User menu")
        self.b.wait_until(
            "[...document.querySelectorAll('button')].some(e => e.innerText.trim() === 'Settings')", "the menu"
        )
        self.click("Settings")
        area = "textarea[placeholder='Enter system prompt here']"
        self.b.wait_until(f"!!document.querySelector({json.dumps(area)})", "the settings dialog")
        self.fill(area, text)
        self.click("Save")
        saved = (
            "fetch('/api/v1/users/user/settings', {headers: {Authorization: 'Bearer ' + localStorage.token}})"
            ".then(r => r.json()).then(s => s.ui && s.ui.system)"
        )
        self.b.wait_until(f"{saved}.then(v => v === {json.dumps(text)})", "the system prompt to be saved", 10)
        self.key("Escape", 27)
        self.b.wait_until("!document.querySelector(" + json.dumps(area) + ")", "the settings dialog to close", 10)

    def send(self, text: str) -> None:
        replies = len(self.backend.replies())
        self.fill("#chat-input", text)
        time.sleep(0.2)
        self.key("Enter", 13)
        self.settle(replies + 1)
        chat = self.b.wait_until(
            "location.pathname.startsWith('/c/') && location.pathname.slice(3)", "the chat's address"
        )
        if chat not in self.chat_ids:
            self.chat_ids.append(chat)

    def edit_last_question(self, text: str) -> None:
        """The Edit button under the last message of the user, new text, Send: a new branch."""
        replies = len(self.backend.replies())
        self.b.js(
            "[...document.querySelectorAll('.user-message')].pop().querySelector('button[aria-label=Edit]').click()"
        )
        self.b.wait_until("!!document.querySelector('.user-message textarea[id^=message-edit-]')", "the edit box", 10)
        self.fill(".user-message textarea[id^=message-edit-]", text)
        self.b.js("document.querySelector('#confirm-edit-message-button').click()")
        self.settle(replies + 1)

    def regenerate_last_reply(self) -> None:
        replies = len(self.backend.replies())
        self.b.js("[...document.querySelectorAll('button[aria-label=Regenerate]')].pop().click()")
        self.b.wait_until(
            "[...document.querySelectorAll('button')].some(e => e.innerText.trim() === 'Try Again')", "the menu", 10
        )
        self.click("Try Again")
        self.settle(replies + 1)

    def attach(self, path: Path) -> None:
        """The message box's file input (what the + menu's "Upload Files" opens), then the upload's preview."""
        document = self.b.call("DOM.getDocument", depth=0)["root"]["nodeId"]
        node = self.b.call("DOM.querySelector", nodeId=document, selector="input[type=file]:not(#camera-input)")
        self.b.call("DOM.setFileInputFiles", nodeId=node["nodeId"], files=[str(path)])
        self.b.wait_until(
            "!!document.querySelector('#message-input-container img[src*=\"/api/v1/files/\"]')", "the upload", 30
        )

    def settle(self, replies: int) -> None:
        """Wait for reply number `replies` on the page and for the task requests after it to be answered."""
        self.b.wait_for(lambda: len(self.backend.replies()) >= replies, "the chat request")
        reply = self.backend.replies()[replies - 1]
        first_line = json.dumps(reply.split("\n", 1)[0])
        self.b.wait_until(f"document.body.innerText.includes({first_line})", f"reply {replies} on the page")
        self.b.wait_for(
            lambda: time.monotonic() - self.backend.last_request > QUIET, "the title, tag and follow-up tasks"
        )


# -- what Open WebUI stored, what chatproxy recorded ------------------------------------------------------

ROLES = {"system": "system", "human": "user", "gpt": "assistant"}
Turn = Tuple[str, str]  # role, text with whitespace runs made one space


def _plain(text: str) -> str:
    return " ".join(text.split())


@dataclass
class Branch:
    chat: str
    title: str
    turns: List[Turn]
    images: List[str]  # SHA-256 of each image file, in order
    shown: bool  # the branch the chat shows (history.currentId)


def stored_branches(db: Path, chat_ids: Sequence[str]) -> List[Branch]:
    """Every root-to-leaf path of each chat's history.messages tree, with the system prompt that Open WebUI
    sends with it (the chat's own, else the user's setting; Open WebUI stores it in the user row)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        branches = []
        for chat_id in chat_ids:
            row = con.execute("SELECT user_id, title, chat FROM chat WHERE id = ?", (chat_id,)).fetchone()
            if row is None:
                raise CheckFailed(f"chat {chat_id} is not in {db}")
            user_id, title, chat = row[0], row[1], json.loads(row[2])
            settings_row = con.execute("SELECT settings FROM user WHERE id = ?", (user_id,)).fetchone()
            settings = json.loads(settings_row[0] or "{}") if settings_row else {}
            system = (
                chat.get("system")
                or (chat.get("params") or {}).get("system")
                or (settings.get("ui") or {}).get("system")
            )
            history = chat["history"]
            branches += _branches(chat_id, title, history["messages"], history.get("currentId"), system)
        return branches
    finally:
        con.close()


def _branches(
    chat_id: str, title: str, messages: Dict[str, Any], current: Optional[str], system: Optional[str]
) -> List[Branch]:
    leaves = sorted((m for m in messages.values() if not m.get("childrenIds")), key=lambda m: m.get("timestamp", 0))
    branches = []
    for leaf in leaves:
        path: List[Dict[str, Any]] = []
        message: Optional[Dict[str, Any]] = leaf
        while message is not None:
            path.insert(0, message)
            message = messages.get(message.get("parentId") or "")
        turns = [("system", _plain(system))] if system else []
        turns += [(m["role"], _plain(m.get("content") or "")) for m in path]
        images = [
            f["file"]["meta"]["file_hash"]
            for m in path
            for f in m.get("files") or []
            if str(f.get("content_type") or f.get("file", {}).get("meta", {}).get("content_type", "")).startswith(
                "image/"
            )
        ]
        branches.append(Branch(chat_id, title, turns, images, leaf.get("id") == current))
    return branches


@dataclass
class Record:
    turns: List[Turn]
    images: List[str]  # SHA-256 of each listed file's bytes


def exported_records(datasets: Path, out: Path, branches: str = "all") -> List[Record]:
    command = [sys.executable, "-m", "chatproxy", "export", SESSION, "--datasets", str(datasets)]
    command += ["--format", "sharegpt", "--branches", branches, "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=_proxy_env())
    if done.returncode != 0:
        raise CheckFailed(f"chatproxy export failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    records = []
    for entry in json.loads(out.read_text(encoding="utf-8")):
        turns = [(ROLES[t["from"]], _plain(t["value"].replace("<image>", " "))) for t in entry["conversations"]]
        if entry.get("system"):
            turns.insert(0, ("system", _plain(entry["system"])))
        images = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in entry.get("images") or []]
        records.append(Record(turns, images))
    return records


def compare(branches: List[Branch], records: List[Record]) -> Tuple[int, List[str]]:
    """How many branches have a record equal to them, turn by turn and image by image, and a line for
    each branch or record left over, saying where it first differs from its nearest counterpart."""
    unused = list(records)
    equal, differences = 0, []
    leftover: List[Branch] = []
    for branch in branches:
        match = next((r for r in unused if r.turns == branch.turns and r.images == branch.images), None)
        if match is None:
            leftover.append(branch)
        else:
            unused.remove(match)
            equal += 1
    for branch in leftover:
        nearest = max(unused, key=lambda r: _common_prefix(r.turns, branch.turns), default=None)
        differences.append(_difference(branch, nearest))
        if nearest is not None:
            unused.remove(nearest)
    differences += [f"record with no stored branch: {_short(r.turns)}" for r in unused]
    return equal, differences


def _common_prefix(a: List[Turn], b: List[Turn]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _difference(branch: Branch, record: Optional[Record]) -> str:
    where = f"chat {branch.chat[:8]} ({branch.title!r})"
    if record is None:
        return f"{where}: no record for branch {_short(branch.turns)}"
    turn = _common_prefix(record.turns, branch.turns)
    if turn == min(len(record.turns), len(branch.turns)) and len(record.turns) == len(branch.turns):
        return f"{where}: images differ: stored {branch.images}, recorded {record.images}"
    stored = branch.turns[turn] if turn < len(branch.turns) else None
    recorded = record.turns[turn] if turn < len(record.turns) else None
    return f"{where}, turn {turn + 1}: stored {stored!r}, recorded {recorded!r}"


def _short(turns: List[Turn]) -> str:
    return " / ".join(f"{role}: {text[:40]}" for role, text in turns)


# -- the relay and the key --------------------------------------------------------------------------------

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade"}
HOP_BY_HOP |= {"proxy-authenticate", "proxy-authorization"}


def _end_to_end(headers: Headers, also: Sequence[str] = ()) -> Headers:
    left_out = HOP_BY_HOP | {"host", *also}
    return [(k, v) for k, v in headers if k.lower() not in left_out]


@dataclass
class RelayResult:
    exchanges: int = 0
    identical: int = 0
    problems: List[str] = field(default_factory=list)
    narrowed: List[str] = field(default_factory=list)  # Accept-Encoding as sent -> as relayed
    streams: List[int] = field(default_factory=list)  # reads of each event stream as Open WebUI got it


def relay_check(tap: Tap, backend: Backend) -> RelayResult:
    """Each request and response through the tap against the backend's copy, paired by x-backend-seq."""
    result = RelayResult()
    by_seq = {ex.seq: ex for ex in backend.exchanges}
    for connection in tap.connections:
        requests = parse_messages(bytes(connection.sent), responses=False)
        responses = parse_messages(bytes(connection.received), responses=True)
        for index, request in enumerate(requests):
            result.exchanges += 1
            response = responses[index] if index < len(responses) else None
            seq = response.header("x-backend-seq") if response else None
            exchange = by_seq.pop(int(seq)) if seq and int(seq) in by_seq else None
            if response is None or exchange is None:
                result.problems.append(f"{request.start}: answered by chatproxy itself, or not at all")
                continue
            problems = _compare_exchange(request, response, exchange, result)
            if response.header("content-type") == "text/event-stream":
                result.streams.append(sum(response.begin < end <= response.end for end in connection.read_ends))
            result.problems += problems
            result.identical += not problems
    result.problems += [f"{ex.method} {ex.target}: reached the backend but not the tap" for ex in by_seq.values()]
    return result


def _compare_exchange(request: Message, response: Message, ex: Exchange, result: RelayResult) -> List[str]:
    problems = []
    what = f"request {ex.seq} ({ex.kind})"
    method, target, _ = request.start.split(" ", 2)
    if (method, target) != (ex.method, ex.target):
        problems.append(f"{what}: sent as {method} {target}, relayed as {ex.method} {ex.target}")
    if _end_to_end(request.headers, ["accept-encoding"]) != _end_to_end(ex.headers, ["accept-encoding"]):
        problems.append(f"{what}: headers {_end_to_end(request.headers)} relayed as {_end_to_end(ex.headers)}")
    if request.header("accept-encoding") != ex.header("accept-encoding"):
        result.narrowed.append(f"{request.header('accept-encoding')} -> {ex.header('accept-encoding')}")
    if request.body != ex.body:
        problems.append(f"{what}: body of {len(request.body)} bytes relayed as {len(ex.body)} bytes, not the same")
    sent = parse_messages(bytes(ex.response_raw), responses=True)[0]
    if response.start != sent.start:
        problems.append(f"{what}: status {sent.start!r} relayed as {response.start!r}")
    if _end_to_end(response.headers) != _end_to_end(sent.headers):
        problems.append(
            f"{what}: response headers {_end_to_end(sent.headers)} relayed as {_end_to_end(response.headers)}"
        )
    if response.body != sent.body:
        problems.append(
            f"{what}: response body of {len(sent.body)} bytes relayed as {len(response.body)} bytes, not the same"
        )
    return problems


def files_holding(folder: Path, secret: bytes) -> Tuple[int, List[str]]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), [str(p.relative_to(folder)) for p in files if secret in p.read_bytes()]


# -- the run ----------------------------------------------------------------------------------------------


def _proxy_env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATPROXY_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def tiny_png(width: int = 24, height: int = 16) -> bytes:
    """A small RGB gradient, written with zlib alone."""
    rows = b"".join(b"\0" + b"".join(bytes((x * 10, y * 15, 128)) for x in range(width)) for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def drive(page: WebUI, picture: Path) -> None:
    """Three chats as people have them: a system prompt for all, an edit, a regeneration, an image."""
    page.set_system_prompt(SYSTEM_PROMPT)
    page.open("/")
    page.send("What is Rust?")
    page.send("Is it fast?")
    page.edit_last_question("Is it safe?")
    page.open("/")
    page.send("Capital of Peru?")
    page.regenerate_last_reply()
    page.open("/")
    page.attach(picture)
    page.send("What is in this picture?")
    page.send("Describe its colours.")


def wait_saved(db: Path, chat_ids: Sequence[str], replies: Sequence[str], timeout: float = 30) -> None:
    """Open WebUI writes a chat to its database after the page has the answer: wait for every reply."""
    deadline = time.monotonic() + timeout
    wanted = {_plain(r) for r in replies}
    while True:
        try:
            stored = {turn[1] for b in stored_branches(db, chat_ids) for turn in b.turns if turn[0] == "assistant"}
        except (CheckFailed, sqlite3.Error):
            stored = set()
        if wanted <= stored:
            return
        if time.monotonic() > deadline:
            raise CheckFailed(f"Open WebUI did not store {sorted(wanted - stored)} within {timeout:.0f}s")
        time.sleep(0.3)


def webui_version(url: str) -> str:
    host, port = url.split("//", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port.split("/")[0]), timeout=10)
    try:
        conn.request("GET", "/api/version")
        return str(json.loads(conn.getresponse().read()).get("version", "?"))
    except (OSError, ValueError):
        return "?"
    finally:
        conn.close()


@dataclass
class Outcome:
    rows: List[Tuple[str, str]] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)

    def row(self, name: str, value: object, ok: bool = True, problem: str = "") -> None:
        self.rows.append((name, f"{value}" + ("" if ok else "   <-- differs")))
        if not ok:
            self.problems.append(problem or name.strip())

    def print(self, title: str) -> None:
        width = max(len(name) for name, _ in self.rows)
        print(title)
        for name, value in self.rows:
            print(f"  {name:<{width}}  {value}")


def run(args: argparse.Namespace, work: Path) -> Outcome:
    key = args.key or "sk-owui-check-" + secrets.token_hex(12)
    datasets = work / "datasets"
    loop = Loop()
    backend = Backend()
    tap = Tap(0, args.relay_port or 0)
    processes: List[subprocess.Popen[bytes]] = []
    browser: Optional[Browser] = None
    try:
        loop.run(backend.start())
        proxy, proxy_port = start_chatproxy(f"http://127.0.0.1:{backend.port}/v1", datasets, work / "chatproxy.log")
        processes.append(proxy)
        tap.target_port = proxy_port
        loop.run(tap.start())
        if args.url:
            url, data_dir = args.url, args.data_dir
        else:
            data_dir = work / "openwebui-data"
            data_dir.mkdir()
            env = openwebui_env(data_dir, f"http://127.0.0.1:{tap.port}/v1", key, f"http://127.0.0.1:{backend.port}/v1")
            started = time.monotonic()
            webui, url = start_openwebui(args.venv, env, work, work / "openwebui.log")
            processes.append(webui)
            print(f"Open WebUI up in {time.monotonic() - started:.0f}s at {url}", flush=True)
        picture = work / "picture.png"
        picture.write_bytes(tiny_png())
        browser = Browser(work / "chromium-profile", work / "chromium.log")
        page = WebUI(browser, url, backend)
        page.open("/")
        if args.email:
            page.sign_in(args.email, args.password or "")
        try:
            drive(page, picture)
        except CheckFailed:
            browser.screenshot(work / "failure.png")
            raise
        wait_saved(data_dir / "webui.db", page.chat_ids, backend.replies())
        version = webui_version(url)
    finally:
        try:
            if browser is not None:
                browser.close()
        finally:
            for proc in reversed(processes):
                stop_process(proc)
            loop.run(backend.stop())
            loop.run(tap.stop())
            loop.close()
    return report(version, page, data_dir, datasets, work, tap, backend, key, picture)


def report(
    version: str,
    page: WebUI,
    data_dir: Path,
    datasets: Path,
    work: Path,
    tap: Tap,
    backend: Backend,
    key: str,
    picture: Path,
) -> Outcome:
    outcome = Outcome()
    outcome.rows.append(("Open WebUI", version))
    branches = stored_branches(data_dir / "webui.db", page.chat_ids)
    records = exported_records(datasets, work / "export.json")
    equal, differences = compare(branches, records)
    outcome.row("chats driven", len(page.chat_ids), len(page.chat_ids) == 3)
    outcome.row("branches stored (webui.db)", len(branches))
    outcome.row("records (export sharegpt)", len(records), len(records) == len(branches), "record count")
    outcome.row("records equal to a branch", f"{equal} of {len(branches)}", equal == len(branches) == len(records))
    outcome.rows += [("  difference", d) for d in differences]
    shown = [b for b in branches if b.shown]
    newest = exported_records(datasets, work / "export-last.json", branches="last")
    equal, differences = compare(shown, newest)
    outcome.row("records with --branches last", len(newest), len(newest) == len(shown) == len(page.chat_ids))
    outcome.row("  equal to the branch each chat shows", f"{equal} of {len(shown)}", equal == len(shown) == len(newest))
    outcome.rows += [("  difference", d) for d in differences]
    kinds: Dict[str, int] = {}
    for ex in backend.exchanges:
        kinds[ex.kind] = kinds.get(ex.kind, 0) + 1
    journal = (datasets / f"{SESSION}.jsonl").read_text(encoding="utf-8").splitlines()
    outcome.rows.append(("journal lines", f"{len(journal)} (one per chat request; tasks skipped)"))
    outcome.rows.append(("requests to the backend", ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))))
    relay = relay_check(tap, backend)
    outcome.row("relayed unchanged both ways", f"{relay.identical}/{relay.exchanges}", not relay.problems, "relay")
    outcome.rows += [("  relay", p) for p in relay.problems]
    if relay.narrowed:
        outcome.rows.append(("  Accept-Encoding narrowed", f"{len(relay.narrowed)}x: {sorted(set(relay.narrowed))}"))
    chats = [ex for ex in backend.exchanges if ex.kind == "chat"]
    streamed = sum(bool(json.loads(ex.body).get("stream")) for ex in chats)
    live = f"{streamed}/{len(chats)} chat requests streamed, each reply in {min(relay.streams, default=0)}+ reads"
    outcome.row("streaming", live, streamed == len(chats) and min(relay.streams, default=0) > 2, "streaming")
    tools = [len(json.loads(ex.body).get("tools") or []) for ex in chats]
    outcome.rows.append(("tool definitions per chat request", f"{min(tools, default=0)}-{max(tools, default=0)}"))
    reached = sum(ex.header("authorization") == f"Bearer {key}" for ex in chats)
    outcome.row("key reached the backend", f"{reached}/{len(chats)} chat requests", reached == len(chats) > 0, "key")
    count, holding = files_holding(datasets, key.encode())
    files = f"{len(holding)} of {count} files" + (f": {holding}" if holding else "")
    outcome.row("key in files under datasets", files, not holding, "key")
    uploaded = hashlib.sha256(picture.read_bytes()).hexdigest()
    saved = sorted(p.stem for p in datasets.rglob("images/*") if p.is_file())
    outcome.row(
        "image saved once", f"{len(saved)} file(s), equal to the upload: {saved == [uploaded]}", saved == [uploaded]
    )
    return outcome


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(__doc__ or "").split("\n\n", 1)[1],
    )
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help=f"Open WebUI's venv (default {DEFAULT_VENV})")
    parser.add_argument("--url", help="use this running Open WebUI instead of starting one")
    parser.add_argument("--data-dir", type=Path, help="its DATA_DIR (with --url)")
    parser.add_argument("--relay-port", type=int, help="port its OpenAI connection points at (with --url)")
    parser.add_argument("--key", help="the API key its OpenAI connection sends (with --url)")
    parser.add_argument("--email", help="sign in with this account (with --url, when it has logins)")
    parser.add_argument("--password", help="the account's password")
    parser.add_argument("--keep", type=Path, help="work in this new folder and keep it (logs, datasets, screenshots)")
    args = parser.parse_args(argv)
    if args.url and not (args.data_dir and args.relay_port and args.key):
        parser.error("--url needs --data-dir, --relay-port and --key")
    if not args.url and not (args.venv / "bin" / "open-webui").exists():
        print(f"Open WebUI is not installed in {args.venv} (see --help)")
        return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="chatproxy-openwebui-") as tmp:
        work = Path(tmp) if args.keep is None else args.keep
        work.mkdir(parents=True, exist_ok=True)
        try:
            outcome = run(args, work)
        except CheckFailed as exc:
            print(f"FAILED: {exc}\n(logs in {work}{'' if args.keep else '; run with --keep DIR to keep them'})")
            return 1
    outcome.print(f"Open WebUI through chatproxy ({time.monotonic() - started:.0f}s)")
    if outcome.problems:
        print("differs: " + ", ".join(outcome.problems))
        return 1
    print("all equal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
