"""From a captured exchange's bytes to conversations: parse, normalise, and decide what to record.

Runs in the recorder's worker thread; everything here is pure apart from the image sink.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from typing import Any, Dict, List, Optional, Tuple

from chatproxy.apis.openai_completions import (
    ImageSink,
    StreamAccumulator,
    chat_choices,
    completion_choices,
    normalize_messages,
)
from chatproxy.apis.templates import parse_prompt
from chatproxy.chats.housekeeping import housekeeping_kind
from chatproxy.recorder.capture import CHAT, Exchange

Message = Dict[str, Any]


class NotRecordable(Exception):
    """The exchange cannot become a record; the message says why, in one line."""


@dataclasses.dataclass
class Reply:
    message: Message
    meta: Dict[str, Any]


@dataclasses.dataclass
class Extracted:
    history: List[Message]
    tools: Optional[List[Any]]
    replies: List[Reply]  # one per choice
    housekeeping: Optional[str] = None


def extract(exchange: Exchange, save_image: ImageSink) -> Extracted:
    request = _json_object(exchange.request_body, "request body")
    if exchange.endpoint == CHAT:
        if not isinstance(request.get("messages"), list):
            raise NotRecordable("request has no messages list")
        history = normalize_messages(request["messages"], save_image)
        tools = request.get("tools") or request.get("functions") or None
        template, prefill = None, ""
    else:
        prompt = _single_prompt(request.get("prompt"))
        parsed = parse_prompt(prompt)
        history, template, prefill = parsed.messages, parsed.template, parsed.prefill
        tools = None
    choices, info = _choices(exchange)
    if not choices:
        raise NotRecordable("no reply in the response")
    if exchange.stream and all(reason is not None for _, _, reason in choices):
        # Every choice said it was finished: the reply is whole even if the client hung up before
        # the stream's last bytes (openai-python 3 closes the connection right after `[DONE]`).
        exchange.complete = True
    replies = []
    for index, message, finish_reason in choices:
        if prefill:
            message = dict(message, content=prefill + message.get("content", ""))
        meta = _meta(exchange, request, info, index, finish_reason, template)
        replies.append(Reply(message, meta))
    return Extracted(history, tools if isinstance(tools, list) else None, replies, housekeeping_kind(history))


def _json_object(body: bytes, what: str) -> Dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise NotRecordable(f"{what} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise NotRecordable(f"{what} is not a JSON object")
    return value


def _single_prompt(prompt: Any) -> str:
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise NotRecordable("prompt is not a single string (batched or token prompts are not recorded)")
    return prompt


def _choices(exchange: Exchange) -> Tuple[List[Tuple[int, Message, Optional[str]]], Dict[str, Any]]:
    if exchange.stream:
        accumulator = StreamAccumulator()
        for chunk in _decode_events(exchange.events):
            accumulator.add(chunk)
        info = {"model": accumulator.model, "id": accumulator.response_id, "usage": accumulator.usage}
        return accumulator.choices(), info
    body = _json_object(exchange.response_body, "response body")
    info = {"model": body.get("model"), "id": body.get("id"), "usage": body.get("usage")}
    if exchange.endpoint == CHAT:
        return chat_choices(body), info
    texts = completion_choices(body)
    return [(i, {"role": "assistant", "content": text}, reason) for i, text, reason in texts], info


def _decode_events(payloads: List[bytes]) -> List[Dict[str, Any]]:
    """All of a stream's JSON decoded in one call; a bad event is skipped, the rest kept."""
    payloads = [p for p in payloads if p.strip() != b"[DONE]"]
    try:
        chunks = json.loads(b"[" + b",".join(payloads) + b"]")
    except (ValueError, RecursionError):
        chunks = []
        for payload in payloads:
            try:
                chunks.append(json.loads(payload))
            except (ValueError, RecursionError):
                continue  # one bad event (a comment, a cut line) must not cost the rest of the reply
    return [c for c in chunks if isinstance(c, dict)]


def _meta(
    exchange: Exchange,
    request: Dict[str, Any],
    info: Dict[str, Any],
    index: int,
    finish_reason: Optional[str],
    template: Optional[str],
) -> Dict[str, Any]:
    started = datetime.datetime.fromtimestamp(exchange.started, datetime.timezone.utc)
    meta: Dict[str, Any] = {
        "time": started.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "model": info.get("model") or request.get("model"),
        "endpoint": exchange.path.split("?", 1)[0],
        "stream": exchange.stream,
        "finish_reason": finish_reason,
        "usage": info.get("usage") if isinstance(info.get("usage"), dict) else None,
        "tags": list(exchange.tags),
        "complete": exchange.complete,
        "choice": index,
        "response_id": info.get("id"),
    }
    if template is not None:
        meta["template"] = template
        if template == "none":
            meta["note"] = "prompt in no known chat template: recorded as one user turn"
    return meta
