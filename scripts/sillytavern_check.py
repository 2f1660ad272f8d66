"""SillyTavern, driven through its own web UI in headless Chromium, in front of chatproxy.

    python scripts/sillytavern_check.py ~/.cache/chatproxy-frontends/SillyTavern   # start that checkout
    python scripts/sillytavern_check.py --url http://127.0.0.1:8000                 # one already running

The checkout is not built here: clone SillyTavern, check out a release tag, `npm ci` (and set
`enableDownloadableTokenizers: false`, `enableExtensionsAutoUpdate: false` in its config.yaml, so it
fetches nothing). The script starts its server on a free loopback port with a fresh data folder of
its own (`--dataRoot`, so the checkout's chats are never touched), a fake OpenAI-compatible backend
(deterministic replies; chat and text completions, streamed and not; `/v1/models`) and
`python -m chatproxy --target <backend> --session st` between the two. Then it clicks through the
chats a SillyTavern user has every day:

1. Chat Completion, streamed: a reply, Continue, Impersonate, a `/gen` quiet prompt, the impersonated
   text sent; then Post-History Instructions set in the Prompt Manager, a reply, and a send with an
   empty box (the request ends in the assistant's turn and that instruction);
2. not streamed: a reply and a swipe, then the chat goes on from the swipe;
3. two turns, Summarize (the Summarize extension on the main API), an edited message regenerated;
4. API Connections -> Test Message;
5. a chat long enough that SillyTavern trims the context;
6. Text Completion, ChatML preset with names: replies, Continue, Impersonate, the text sent;
7. Text Completion, Llama 3 Instruct preset;
8. a new chat with the same character.

Then it stops the proxy, exports the session (`chatproxy export st --format sharegpt`) and compares
every record with the chats SillyTavern saved (read back through its own API), turn by turn, apart
from whitespace at the ends of a message: each saved chat must be one record, each swipe and edit one
more (the branch the user left), and nothing else may be recorded. It prints one row per chat and
exits 1 if anything differs. tests/test_sillytavern.py runs it when a checkout exists.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "review"))
from cdp import CHROMIUM  # noqa: E402
from cdp import Browser as DevTools  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CHECKOUT = Path.home() / ".cache" / "chatproxy-frontends" / "SillyTavern"
MODEL = "fake-model"
USER = "Alex"
CHARACTER = "Seraphina"
PHI = "[Stay in character as {{char}}; keep replies under three sentences.]"
SUMMARY_TEXT = "Alex asked two sums and Seraphina answered."


class CheckFailed(Exception):
    pass


# -- the fake backend ------------------------------------------------------------------------------


class Backend:
    """An OpenAI-compatible backend on loopback whose replies the driver chooses before each action."""

    def __init__(self) -> None:
        self.replies: List[str] = []
        self.seen: List[Tuple[str, Dict[str, Any]]] = []
        self.counter = 0
        self.lock = threading.Lock()
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._json({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "fake"}]})
                else:
                    self._json({"error": "not found"}, 404)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                path = self.path.split("?", 1)[0]
                if not path.endswith("/completions"):
                    self._json({"error": "not found"}, 404)
                    return
                chat = path.endswith("/chat/completions")
                text = backend.reply_for(path, body)
                if body.get("stream"):
                    self._stream(text, chat)
                elif chat:
                    message = {"role": "assistant", "content": text}
                    self._json(_completion("chat.completion", [{"index": 0, "message": message}]))
                else:
                    self._json(_completion("text_completion", [{"index": 0, "text": text}]))

            def _json(self, value: Any, status: int = 200) -> None:
                data = json.dumps(value).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, text: str, chat: bool) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                pieces = [text[i : i + 7] for i in range(0, len(text), 7)] or [""]
                for index, piece in enumerate(pieces):
                    last = index == len(pieces) - 1
                    choice: Dict[str, Any] = {"index": 0, "finish_reason": "stop" if last else None}
                    if chat:
                        choice["delta"] = {"role": "assistant", "content": piece} if index == 0 else {"content": piece}
                    else:
                        choice["text"] = piece
                    self._chunk(_completion("chat.completion.chunk" if chat else "text_completion", [choice]))
                self._chunk("[DONE]")
                self.wfile.write(b"0\r\n\r\n")

            def _chunk(self, value: Any) -> None:
                data = b"data: " + (value if isinstance(value, str) else json.dumps(value)).encode() + b"\n\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def reply_for(self, path: str, body: Dict[str, Any]) -> str:
        with self.lock:
            self.seen.append((path, body))
            self.counter += 1
            return self.replies.pop(0) if self.replies else f"Reply {self.counter}."

    def requests(self) -> int:
        with self.lock:
            return len(self.seen)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _completion(kind: str, choices: List[Dict[str, Any]]) -> Dict[str, Any]:
    return {"id": "fake-1", "object": kind, "created": 1_700_000_000, "model": MODEL, "choices": choices}


# -- processes --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(what: str, ready: Any, timeout: float, proc: Optional[subprocess.Popen] = None, log: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            tail = Path(log).read_text(errors="replace")[-3000:] if log else ""
            raise CheckFailed(f"{what}: the process exited with {proc.returncode}\n{tail}")
        time.sleep(0.1)
    raise CheckFailed(f"{what}: not within {timeout:.0f}s")


def http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def stop(proc: subprocess.Popen, signum: int = signal.SIGTERM, timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(signum)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


def start_proxy(target: str, datasets: Path, log: Path) -> Tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATPROXY_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, "-m", "chatproxy", "--target", target, "--port", "0"]
    command += ["--datasets", str(datasets), "--session", "st"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)

    def listening() -> Optional[str]:
        text = log.read_text(errors="replace")
        return text.split(" listening on ", 1)[1].split()[0] if " listening on " in text else None

    return proc, wait_for("chatproxy start-up", listening, 30, proc, log)


def start_sillytavern(checkout: Path, data: Path, log: Path) -> Tuple[subprocess.Popen, str]:
    """Its server on a free loopback port, with a data folder of its own (nothing of the checkout's)."""
    if not (checkout / "server.js").exists() or not (checkout / "node_modules").is_dir():
        raise CheckFailed(f"{checkout} is not a SillyTavern checkout with node_modules (run npm ci there)")
    user = data / "default-user"
    user.mkdir(parents=True)
    # The stock settings with the Chat Completion API selected: the default (AI Horde) would call out.
    settings = json.loads((checkout / "default" / "content" / "settings.json").read_text(encoding="utf-8"))
    settings["main_api"] = "openai"
    (user / "settings.json").write_text(json.dumps(settings), encoding="utf-8")
    port = free_port()
    command = ["node", "server.js", "--port", str(port), "--listen", "false", "--autorun", "false"]
    command += ["--whitelist", "false", "--dataRoot", str(data)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=checkout, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_for("SillyTavern start-up", lambda: http_ok(url + "/"), 300, proc, log)
    return proc, url


# -- the browser ----------------------------------------------------------------------------------


class Browser(DevTools):
    """tests/review/cdp.py's DevTools client, failing with CheckFailed, page script errors raised."""

    failure = CheckFailed

    def __init__(self, profile: Path, width: int = 1400, height: int = 1000) -> None:
        if CHROMIUM is None:
            raise CheckFailed("no chromium on PATH (apt-get install chromium)")
        super().__init__(profile, width, height)

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise CheckFailed(f"page script failed: {details.get('exception', {}).get('description') or details}")
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float = 30, what: str = "") -> Any:
        return wait_for(what or expression, lambda: self.js(expression), timeout)


# -- SillyTavern's UI -------------------------------------------------------------------------------


class Tavern:
    """SillyTavern's page, used as its user uses it: clicks on its buttons, text typed into its boxes."""

    def __init__(self, browser: Browser, backend: Backend, url: str) -> None:
        self.browser, self.backend, self.url = browser, backend, url

    def js(self, expression: str) -> Any:
        return self.browser.js(expression)

    def click(self, selector: str) -> None:
        found = self.js(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (e) e.click(); return !!e; }})()"
        )
        if not found:
            raise CheckFailed(f"nothing to click at {selector}")

    def fill(self, selector: str, value: str, event: str = "input") -> None:
        self.js(f"void $({json.dumps(selector)}).val({json.dumps(value)}).trigger({json.dumps(event)})")

    def open(self) -> None:
        self.browser.call("Page.navigate", url=self.url + "/")
        self.browser.wait("typeof SillyTavern !== 'undefined' && !!document.querySelector('#send_textarea')", 120)
        # First run: the welcome popup asks for the persona's name (it fills in "User" once it is shown).
        deadline = time.monotonic() + 120
        while self.js("SillyTavern.getContext().name1") != USER:
            if time.monotonic() > deadline:
                raise CheckFailed("the welcome popup did not take the persona's name")
            box = "$('.popup textarea.popup-input').filter(':visible')"
            if self.js(f"{box}.length > 0 && {box}.val() === {json.dumps(USER)}"):
                self.click(".popup-button-ok")
            elif self.js(f"{box}.length > 0"):
                self.js(f"void {box}.val({json.dumps(USER)}).trigger('input')")
            time.sleep(0.5)
        self.browser.wait("SillyTavern.getContext().characters.length > 0", 60, "the character list")

    # -- settings ---------------------------------------------------------------------------------

    def connect_chat_completion(self, proxy: str, stream: bool = True) -> None:
        """API Connections: Chat Completion, source Custom (OpenAI-compatible), the proxy's /v1."""
        self.fill("#main_api", "openai", "change")
        self.fill("#chat_completion_source", "custom", "change")
        self.fill("#custom_api_url_text", proxy + "/v1")
        self.fill("#api_key_custom", "sk-chatproxy-check")
        self.click("#api_button_openai")
        self.browser.wait("SillyTavern.getContext().onlineStatus === 'Valid'", 30, "the Chat Completion connection")
        self.set_stream(stream)

    def set_stream(self, stream: bool) -> None:
        box = "#stream_toggle" if self.js("$('#main_api').val()") == "openai" else "#streaming_textgenerationwebui"
        if bool(self.js(f"$('{box}').prop('checked')")) != stream:
            self.click(box)

    def set_post_history_instructions(self, text: str) -> None:
        """Prompt Manager: edit "Post-History Instructions" and save."""
        self.click("#completion_prompt_manager_list [data-pm-identifier=jailbreak] .prompt-manager-edit-action")
        self.browser.wait("$('#completion_prompt_manager_popup_entry_form_prompt').is(':visible')", 10)
        self.js(
            f"document.getElementById('completion_prompt_manager_popup_entry_form_prompt').value = {json.dumps(text)}"
        )
        self.click("#completion_prompt_manager_popup_entry_form_save")

    def set_context_size(self, tokens: int) -> None:
        self.js("void $('#oai_max_context_unlocked').prop('checked', true).trigger('change')")
        self.fill("#openai_max_context", str(tokens))
        self.fill("#openai_max_context_counter", str(tokens))

    def connect_text_completion(self, proxy: str, instruct: str, context: str, stream: bool = True) -> None:
        """API Connections: Text Completion, type Default (OpenAI /completions compatible); Advanced
        Formatting: instruct mode on with the given instruct and context templates."""
        self.fill("#main_api", "textgenerationwebui", "change")
        self.fill("#textgen_type", "ooba", "change")
        self.fill("#textgenerationwebui_api_url_text", proxy)
        self.click("#api_button_textgenerationwebui")
        self.browser.wait(
            f"['Valid', {json.dumps(MODEL)}].includes(SillyTavern.getContext().onlineStatus)",
            30,
            "the Text Completion connection",
        )
        if self.js("$('#instruct_bind_to_context').prop('checked')"):
            self.click("#instruct_bind_to_context")
        if not self.js("$('#instruct_enabled').prop('checked')"):
            self.click("#instruct_enabled")
        self.fill("#instruct_presets", instruct, "change")
        self.fill("#context_presets", context, "change")
        self.set_stream(stream)

    # -- chats --------------------------------------------------------------------------------------

    def open_character(self, name: str = CHARACTER) -> None:
        self.js(
            "$('#rm_print_characters_block .character_select').filter((i, e) => "
            f"$(e).find('.ch_name').text().trim() === {json.dumps(name)}).get(0).click()"
        )
        self.browser.wait(
            f"SillyTavern.getContext().name2 === {json.dumps(name)} && SillyTavern.getContext().chat.length > 0", 30
        )

    def new_chat(self) -> str:
        before = self.chat_id()
        self.click("#option_start_new_chat")
        self.browser.wait("$('.popup:visible .popup-button-ok').length > 0", 10)
        self.click(".popup-button-ok")
        self.browser.wait(f"SillyTavern.getContext().getCurrentChatId() !== {json.dumps(before)}", 30, "a new chat")
        self.idle()
        return self.chat_id()

    def chat_id(self) -> str:
        return str(self.js("SillyTavern.getContext().getCurrentChatId()"))

    def messages(self) -> List[Dict[str, Any]]:
        value = self.js(
            "JSON.stringify(SillyTavern.getContext().chat.map(m => "
            "({name: m.name, is_user: m.is_user, mes: m.mes, swipes: m.swipes || null})))"
        )
        return list(json.loads(value))

    def idle(self, requests: Optional[int] = None, timeout: float = 60) -> None:
        """Wait until the backend has had `requests` requests and SillyTavern has stopped generating."""
        if requests is not None:
            wait_for(f"request {requests} at the backend", lambda: self.backend.requests() >= requests, timeout)
        self.browser.wait(
            "!$('#mes_stop').is(':visible') && $('#send_but').is(':visible')", timeout, "SillyTavern idle"
        )
        time.sleep(0.3)  # the chat is saved right after the reply is shown

    def _generate(self, action: Any) -> None:
        expected = self.backend.requests() + 1
        action()
        self.idle(expected)

    def send(self, text: str) -> None:
        self.fill("#send_textarea", text)
        self._generate(lambda: self._press_send(text))

    def _press_send(self, text: str) -> None:
        """Send, and again if SillyTavern was still busy (an extension's own request, such as Summarize's
        automatic summary, makes it ignore the button): it empties the box when it takes the message."""
        for _ in range(3):
            self.click("#send_but")
            try:
                self.browser.wait("$('#send_textarea').val() === ''", 10, "the message taken")
                return
            except CheckFailed:
                if not text:
                    return
        raise CheckFailed(f"SillyTavern did not take the message {text[:40]!r}")

    def swipe(self) -> None:
        self._generate(lambda: self.click("#chat .last_mes .swipe_right"))

    def regenerate(self) -> None:
        self._generate(lambda: self.click("#option_regenerate"))

    def continue_(self) -> None:
        self._generate(lambda: self.click("#option_continue"))

    def impersonate(self) -> str:
        self._generate(lambda: self.click("#option_impersonate"))
        return str(self.js("$('#send_textarea').val()"))

    def quiet_gen(self, prompt: str) -> None:
        """The /gen slash command, its result echoed as a toast: a quiet prompt."""
        self.send(f"/gen {prompt} | /echo {{{{pipe}}}}")

    def edit(self, index: int, text: str) -> None:
        self.click(f"#chat .mes[mesid='{index}'] .mes_edit")
        self.browser.wait("$('#curEditTextarea').is(':visible')", 10)
        self.fill("#curEditTextarea", text)
        self.click(f"#chat .mes[mesid='{index}'] .mes_edit_done")
        self.browser.wait("!$('#curEditTextarea').length", 10)

    def test_message(self) -> None:
        self._generate(lambda: self.click("#test_api_button"))

    def summarize(self) -> None:
        """Extensions -> Summarize, source Main API, "Summarize now"."""
        self.fill("#summary_source", "main", "change")
        self._generate(lambda: self.click("#memory_force_summarize"))

    def saved_chats(self) -> Dict[str, List[Dict[str, Any]]]:
        """Every chat of the character as SillyTavern saved it, read back through its own API."""
        script = """(async () => {
            const context = SillyTavern.getContext();
            const character = context.characters[context.characterId];
            const headers = context.getRequestHeaders();
            const list = await (await fetch('/api/characters/chats', {method: 'POST', headers,
                body: JSON.stringify({avatar_url: character.avatar})})).json();
            const chats = {};
            for (const entry of Object.values(list)) {
                const name = String(entry.file_name).replace(/\\.jsonl$/, '');
                chats[name] = await (await fetch('/api/chats/get', {method: 'POST', headers,
                        body: JSON.stringify({ch_name: character.name, file_name: name,
                        avatar_url: character.avatar})})).json();
            }
            return JSON.stringify(chats);
        })()"""
        chats: Dict[str, List[Dict[str, Any]]] = json.loads(self.js(script))
        return chats


# -- the chats ------------------------------------------------------------------------------------------


class Plan:
    """What the dataset must hold: for each chat SillyTavern saves, the branches the user left behind
    (a swipe not taken, the chat before an edit), as SillyTavern showed them."""

    def __init__(self) -> None:
        self.chats: List[Tuple[str, str, str]] = []  # (label, SillyTavern's chat id, what was done)
        self.branches: Dict[str, List[List[Dict[str, Any]]]] = {}

    def chat(self, label: str, chat_id: str, done: str) -> None:
        self.chats.append((label, chat_id, done))
        self.branches.setdefault(chat_id, [])

    def branch(self, chat_id: str, messages: List[Dict[str, Any]]) -> None:
        self.branches[chat_id].append([dict(m, swipes=None) for m in messages])


def drive(tavern: Tavern, proxy: str, report: Any) -> Plan:
    plan = Plan()
    tavern.connect_chat_completion(proxy, stream=True)
    tavern.open_character()

    # 1. Chat Completion, streamed: Continue, Impersonate, /gen, the impersonated text sent; then with
    #    Post-History Instructions set, a turn and an empty send (the request ends in that instruction).
    one = tavern.new_chat()
    tavern.send("Hi.")
    tavern.continue_()
    typed = tavern.impersonate()
    tavern.quiet_gen("Describe the weather in one sentence.")
    tavern.send(typed)
    tavern.set_post_history_instructions(PHI)
    tavern.send("Tell me about the forest.")
    tavern.send("")
    plan.chat("1 streamed: continue, impersonate, /gen, PHI, empty send", one, "cc stream")
    report("chat 1 done")

    # 2. Not streamed: a swipe, and the chat goes on from it.
    tavern.set_stream(False)
    two = tavern.new_chat()
    tavern.send("Tell me a story.")
    before_swipe = tavern.messages()
    tavern.swipe()
    tavern.send("More.")
    plan.chat("2 not streamed: swipe", two, "cc")
    plan.branch(two, before_swipe)
    report("chat 2 done")

    # 3. Two turns, Summarize, then the second question edited and the reply regenerated.
    three = tavern.new_chat()
    tavern.send("What is 2+2?")
    tavern.send("And 3+3?")
    tavern.backend.replies.append(SUMMARY_TEXT)
    tavern.summarize()
    before_edit = tavern.messages()
    tavern.edit(len(before_edit) - 2, "And 3+4?")
    tavern.regenerate()
    plan.chat("3 summarize, edit + regenerate", three, "cc")
    plan.branch(three, before_edit)
    report("chat 3 done")

    # 4. API Connections -> Test Message.
    tavern.test_message()
    report("test message done")

    # 5. A long chat with a small context: SillyTavern drops the oldest turns.
    tavern.set_stream(True)
    tavern.set_context_size(3000)
    five = tavern.new_chat()
    for turn in range(1, 9):
        tavern.send(f"Step {turn}: " + "tell me more about the glade and its old trees. " * 20)
    plan.chat("5 trimmed context", five, "cc stream")
    report("chat 5 done")

    # 6. Text Completion, ChatML instruct with the Default context (names in every turn).
    tavern.connect_text_completion(proxy, "ChatML", "Default", stream=True)
    six = tavern.new_chat()
    tavern.backend.replies.append("Hello there.")  # no leading space, as many models answer
    tavern.send("Hi.")
    tavern.backend.replies.append(" I guard this forest.")
    tavern.send("Who are you?")
    tavern.backend.replies.append(" Always have.")
    tavern.continue_()
    typed = tavern.impersonate()
    tavern.send(typed)
    plan.chat("6 text, ChatML: continue, impersonate", six, "tc stream")
    report("chat 6 done")

    # 7. Text Completion, Llama 3 Instruct, not streamed.
    tavern.connect_text_completion(proxy, "Llama 3 Instruct", "Llama 3 Instruct", stream=False)
    seven = tavern.new_chat()
    tavern.send("Where am I?")
    tavern.send("Thanks.")
    plan.chat("7 text, Llama 3", seven, "tc")
    report("chat 7 done")

    # 8. Back to Chat Completion: a new chat with the same character.
    tavern.connect_chat_completion(proxy, stream=True)
    eight = tavern.new_chat()
    tavern.send("Good morning.")
    plan.chat("8 new chat, same character", eight, "cc stream")
    report("chat 8 done")
    return plan


# -- the comparison ---------------------------------------------------------------------------------

Turns = List[Tuple[str, str]]


def saved_turns(messages: List[Dict[str, Any]]) -> Turns:
    return [("user" if m.get("is_user") else "assistant", str(m.get("mes", "")).strip()) for m in messages]


def recorded_turns(messages: List[Dict[str, Any]]) -> Turns:
    """A record's turns after its system prompt, as comparable to a saved chat."""
    start = 0
    while start < len(messages) and messages[start]["role"] == "system":
        start += 1
    return [(m["role"], str(m.get("content", "")).strip()) for m in messages[start:]]


def difference(expected: Turns, got: Turns) -> str:
    for index, (want, have) in enumerate(zip(expected, got)):
        if want != have:
            return f"turn {index + 1}: saved {want[0]} {want[1][:60]!r}, recorded {have[0]} {have[1][:60]!r}"
    if len(expected) != len(got):
        return f"saved {len(expected)} turns, recorded {len(got)}"
    return ""


def compare(plan: Plan, saved: Dict[str, List[Dict[str, Any]]], records: List[Turns]) -> Tuple[List[List[str]], int]:
    """One row per chat: (chat, turns saved, records expected, records found, differences)."""
    left = list(records)
    rows, problems = [], 0
    for label, chat_id, mode in plan.chats:
        lines = saved.get(chat_id)
        if lines is None:
            rows.append([label, mode, "-", "-", "-", f"SillyTavern saved no chat {chat_id}"])
            problems += 1
            continue
        main = saved_turns([m for m in lines[1:] if "mes" in m])  # the first line is the chat's metadata
        wanted = [main] + [saved_turns(branch) for branch in plan.branches[chat_id]]
        found, notes = 0, []
        for want in wanted:
            if want in left:
                left.remove(want)
                found += 1
            else:
                near = min(left, key=lambda got: _distance(want, got), default=None)
                notes.append(difference(want, near) if near is not None else "no record")
        problems += len(notes)
        rows.append([label, mode, str(len(main)), str(len(wanted)), str(found), "; ".join(notes) or "equal"])
    for extra in left:
        rows.append(["(not a chat)", "", "", "0", "1", f"extra record: {extra[-1][0]} {extra[-1][1][:50]!r}"])
        problems += 1
    return rows, problems


def _distance(want: Turns, got: Turns) -> int:
    shared = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
    return -shared * 2 + abs(len(want) - len(got))


def table(rows: List[List[str]]) -> str:
    head = ["chat", "mode", "saved turns", "records expected", "records equal", "differences"]
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head) - 1)]
    lines = []
    for row in [head] + rows:
        lines.append("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------------------


def export(datasets: Path, out: Path) -> List[Dict[str, Any]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, "-m", "chatproxy", "export", "st", "--datasets", str(datasets)]
    command += ["--format", "sharegpt", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    if done.returncode != 0:
        raise CheckFailed(f"export failed:\n{done.stdout}{done.stderr}")
    records: List[Dict[str, Any]] = json.loads(out.read_text(encoding="utf-8"))
    return records


def journal_records(datasets: Path) -> List[Turns]:
    sys.path.insert(0, str(ROOT))
    from chatproxy.commands.sessions import load

    return [recorded_turns(conversation.messages) for conversation in load(datasets, "st").conversations()]


def run(checkout: Optional[Path], url: Optional[str], workdir: Path, report: Any = print) -> int:
    backend = Backend()
    datasets = workdir / "datasets"
    processes: List[subprocess.Popen] = []
    browser: Optional[Browser] = None
    try:
        proxy_proc, proxy = start_proxy(backend.url, datasets, workdir / "proxy.log")
        processes.append(proxy_proc)
        if url is None:
            assert checkout is not None
            started = time.monotonic()
            tavern_proc, url = start_sillytavern(checkout, workdir / "data", workdir / "sillytavern.log")
            processes.append(tavern_proc)
            report(f"SillyTavern {version(checkout)} up in {time.monotonic() - started:.0f}s at {url}")
        (workdir / "profile").mkdir()
        browser = Browser(workdir / "profile")
        tavern = Tavern(browser, backend, url)
        try:
            tavern.open()
            plan = drive(tavern, proxy, report)
        except CheckFailed:
            browser.screenshot(workdir / "failed.png")
            toasts = browser.js("$('.toast-message').map((i, e) => e.textContent).get().join(' | ')")
            report(f"screenshot of the page: {workdir / 'failed.png'}; messages shown: {toasts or 'none'}")
            raise
        saved = tavern.saved_chats()
    finally:
        if browser is not None:
            browser.close()
        for proc in reversed(processes):
            stop(proc)
        backend.close()
    with open(workdir / "requests.jsonl", "w", encoding="utf-8") as out:  # what reached the backend
        for path, body in backend.seen:
            out.write(json.dumps({"path": path, "body": body}) + "\n")
    exported = export(datasets, workdir / "st-sharegpt.json")
    records = journal_records(datasets)
    rows, problems = compare(plan, saved, records)
    report(table(rows))
    expected = sum(1 + len(plan.branches[chat_id]) for _, chat_id, _ in plan.chats)
    report(
        f"{len(backend.seen)} requests reached the backend; {len(records)} records in the journal, "
        f"{len(exported)} in the ShareGPT export; {expected} expected"
    )
    if len(exported) != expected:
        problems += 1
    return problems


def version(checkout: Path) -> str:
    try:
        return str(json.loads((checkout / "package.json").read_text(encoding="utf-8"))["version"])
    except (OSError, ValueError, KeyError):
        return "?"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "checkout", nargs="?", type=Path, default=DEFAULT_CHECKOUT, help="a SillyTavern checkout with node_modules"
    )
    parser.add_argument("--url", help="a SillyTavern already running (its Chat Completion settings are changed)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, datasets, saved chats)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="chatproxy-sillytavern-"))
    try:
        problems = run(None if args.url else args.checkout, args.url, workdir)
    except CheckFailed as exc:
        print(f"FAILED: {exc}\n(work folder kept: {workdir})", file=sys.stderr)
        return 2
    if args.keep or problems:
        print(f"work folder: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    print("OK: every record equals the chat SillyTavern saved" if not problems else f"{problems} difference(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
