"""One module per wire API: what a request and its reply mean.

The serving side imports only this registry (`route`: which recorded API a request speaks, by its
method and path). The recorder loads the API's module by name (`wire_api`) and asks it the same
questions for every API (the `WireAPI` protocol): what conversation the request carries, and what the
reply or the stream of events answered. Everything after that (threads, housekeeping, the journal,
the exports) works on the one conversation form of chats/messages.py, whatever the API.

Adding an API is one module and one line in ROUTES.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple, cast

Message = Dict[str, Any]
ImageSink = Callable[[bytes, str], str]  # (data, mime type) -> the path the image was saved as

CHAT_COMPLETIONS = "chat.completions"
COMPLETIONS = "completions"
RESPONSES = "responses"
MESSAGES = "messages"
OLLAMA_CHAT = "ollama.chat"
OLLAMA_GENERATE = "ollama.generate"

# (name, path suffix, module), tried in order on the path without its query string. A suffix only:
# the target's own prefix (/v1, /api/v1, …) comes before it. Sub-routes (…/responses/compact,
# …/messages/count_tokens) end otherwise, so they are relayed and not recorded.
ROUTES: Tuple[Tuple[str, str, str], ...] = (
    (CHAT_COMPLETIONS, "/chat/completions", "chatproxy.apis.chat_completions"),
    (COMPLETIONS, "/completions", "chatproxy.apis.completions"),
    (RESPONSES, "/responses", "chatproxy.apis.responses"),
    (MESSAGES, "/messages", "chatproxy.apis.anthropic_messages"),
    (OLLAMA_CHAT, "/api/chat", "chatproxy.apis.ollama"),
    (OLLAMA_GENERATE, "/api/generate", "chatproxy.apis.ollama_generate"),
)
# Paths that end like a recorded route but are another API's: the Assistants API's thread messages.
_NOT_RECORDED = ("/threads/",)
_MODULES = {name: module for name, _, module in ROUTES}


class NotRecordable(Exception):
    """The exchange cannot become a record; the message says why, in one line."""


@dataclasses.dataclass
class Request:
    """What the client sent, as a conversation."""

    history: List[Message]
    tools: Optional[List[Any]] = None
    prefill: str = ""  # the start of the reply, sent by the client for the model to continue
    meta: Dict[str, Any] = dataclasses.field(default_factory=dict)  # what the record's meta adds
    continues: Optional[str] = None  # a response id whose recorded conversation comes before `history`
    housekeeping: Optional[str] = None  # a side request the API itself marks (a title request, …)


@dataclasses.dataclass
class Choice:
    index: int
    message: Message
    finish_reason: Optional[str]


@dataclasses.dataclass
class Reply:
    """What the backend answered: one choice per alternative (n > 1), and what it said about itself."""

    choices: List[Choice]
    model: Optional[str] = None
    id: Optional[str] = None
    usage: Optional[Dict[str, Any]] = None
    complete: Optional[bool] = None  # False: the backend said it stopped short (None: judged by the stream)


class WireAPI(Protocol):
    """What every API module answers. Parsing only: no sockets, no event loop, no files."""

    def read_request(self, request: Dict[str, Any], save_image: ImageSink) -> Request:
        """The request body as a conversation; raises NotRecordable when it holds none."""

    def read_reply(self, body: Dict[str, Any]) -> Reply:
        """A whole (non-streamed) response body."""

    def read_stream(self, events: List[Dict[str, Any]]) -> Reply:
        """A streamed response: its events' JSON payloads, in order (SSE data or NDJSON lines)."""


def route(method: bytes, path: str) -> Optional[str]:
    """The recorded API a request speaks (a name in ROUTES), or None: relayed, not recorded."""
    if method != b"POST":
        return None
    path = path.split("?", 1)[0].rstrip("/")
    for name, suffix, _ in ROUTES:
        if path.endswith(suffix):
            return None if any(part in path for part in _NOT_RECORDED) else name
    return None


def wire_api(name: str) -> WireAPI:
    """The module that reads the API `name` (imported on first use: the serving side never needs it)."""
    api = _LOADED.get(name)
    if api is None:
        api = _LOADED[name] = cast(WireAPI, importlib.import_module(_MODULES[name]))
    return api


_LOADED: Dict[str, WireAPI] = {}  # import_module costs microseconds even for a module already imported
