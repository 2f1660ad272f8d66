"""From a captured exchange's bytes to conversations: parse, normalise, and decide what to record.

Runs in the recorder (its process, or the in-process fallback's worker thread). What the bytes mean
is the wire API's business (apis/); this module only decodes JSON, asks the exchange's API, and
says what the records' meta holds. Everything here is pure apart from the image sink.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from typing import Any, Callable, Dict, List, Optional

from chatproxy.apis import ImageSink, NotRecordable, Reply, Request, wire_api
from chatproxy.chats.housekeeping import housekeeping_kind
from chatproxy.chats.side_requests import joined, settle
from chatproxy.recorder.capture import Exchange

Message = Dict[str, Any]

__all__ = ["Answer", "Extracted", "NotRecordable", "extract"]


@dataclasses.dataclass
class Answer:
    message: Message
    meta: Dict[str, Any]


@dataclasses.dataclass
class Extracted:
    history: List[Message]
    tools: Optional[List[Any]]
    replies: List[Answer]  # one per choice
    housekeeping: Optional[str] = None


# A recorded conversation by the id of a response in it, as far as that response (None: never seen).
Recall = Callable[[str], Optional[List[Message]]]

_DECODER = json.JSONDecoder()  # what json.loads decodes text with, given no options


def extract(exchange: Exchange, save_image: ImageSink, recall: Optional[Recall] = None) -> Extracted:
    api = wire_api(exchange.endpoint)
    request = _json_object(exchange.request_body, "request body")
    asked = _with_open_turn(_with_earlier_turns(api.read_request(request, save_image), recall))
    asked = settle(asked, exchange.endpoint, exchange.stream)  # Continue, Impersonate, quiet prompts
    if exchange.stream:
        reply = api.read_stream(_decode_events(exchange.events))
    else:
        reply = api.read_reply(_json_object(exchange.response_body, "response body"))
    if not reply.choices:
        raise NotRecordable("no reply in the response")
    if reply.complete is False:
        exchange.complete = False  # the backend said so: cut by a limit, failed, or cancelled
    elif exchange.stream and all(choice.finish_reason is not None for choice in reply.choices):
        # Every choice said it was finished: the reply is whole even if the client hung up before
        # the stream's last bytes (openai-python 3 closes the connection right after `[DONE]`).
        exchange.complete = True
    answers = []
    for choice in reply.choices:
        message = joined(asked, choice.message)
        meta = _meta(exchange, asked, reply, choice.index, choice.finish_reason)
        meta["model"] = meta["model"] or request.get("model")
        answers.append(Answer(message, meta))
    return Extracted(asked.history, asked.tools, answers, asked.housekeeping or housekeeping_kind(asked.history))


def _with_earlier_turns(asked: Request, recall: Optional[Recall]) -> Request:
    """A request that continues a stored response (Responses' previous_response_id) sends only what
    is new; the conversation the proxy recorded for that response goes before it."""
    if asked.continues is None:
        return asked
    earlier = recall(asked.continues) if recall is not None else None
    if earlier is None:  # recorded before this proxy ran, or by another instance
        return dataclasses.replace(asked, meta=dict(asked.meta, partial_history=True))
    # The instructions are sent again with every request; the recorded ones stand at the start.
    new = [m for m in asked.history if not (m["role"] == "system" and m in earlier)]
    return dataclasses.replace(asked, history=earlier + new)


def _with_open_turn(asked: Request) -> Request:
    """A history that ends in the assistant's own words (a prefill) is continued by the reply, not
    answered: the record holds one assistant turn, the prefill and the reply joined exactly."""
    history = asked.history
    if asked.prefill or not history or history[-1].get("role") != "assistant":
        return asked
    last = history[-1]
    if set(last) - {"role", "content"} or not last.get("content"):
        return asked  # tool calls, reasoning or images: a finished turn the model is asked to follow
    return dataclasses.replace(asked, history=history[:-1], prefill=last["content"])


def _json_object(body: bytes, what: str) -> Dict[str, Any]:
    try:
        value = _loads(body)
    except (ValueError, RecursionError) as exc:
        raise NotRecordable(f"{what} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise NotRecordable(f"{what} is not a JSON object")
    return value


def _loads(data: bytes) -> Any:
    """json.loads(data), errors included, without its guess at the encoding where the answer is known: bytes
    that start with "{" or "[" and then no NUL byte are UTF-8 to it."""
    if type(data) is bytes and data[:1] in (b"{", b"[") and data[1:2] != b"\x00":
        return _DECODER.decode(data.decode("utf-8", "surrogatepass"))
    return json.loads(data)


def _decode_events(payloads: List[bytes]) -> List[Dict[str, Any]]:
    """All of a stream's JSON decoded in one call; a bad event is skipped, the rest kept."""
    payloads = [p for p in payloads if p.strip() != b"[DONE]"]
    try:
        chunks = _loads(b"[" + b",".join(payloads) + b"]")
    except (ValueError, RecursionError):
        chunks = []
        for payload in payloads:
            try:
                chunks.append(json.loads(payload))
            except (ValueError, RecursionError):
                continue  # one bad event (a comment, a cut line) must not cost the rest of the reply
    return [c for c in chunks if isinstance(c, dict)]


def _meta(exchange: Exchange, asked: Request, reply: Reply, index: int, finish_reason: Optional[str]) -> Dict[str, Any]:
    started = datetime.datetime.fromtimestamp(exchange.started, datetime.timezone.utc)
    meta: Dict[str, Any] = {
        "time": started.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "model": reply.model,
        "endpoint": exchange.path.split("?", 1)[0],
        "api": exchange.endpoint,
        "stream": exchange.stream,
        "finish_reason": finish_reason,
        "usage": reply.usage,
        "tags": list(exchange.tags),
        "complete": exchange.complete,
        "choice": index,
        "response_id": reply.id,
    }
    meta.update(asked.meta)
    return meta
