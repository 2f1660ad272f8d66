"""Ollama's native chat (`POST /api/chat`), streamed (its default) or not.

Request: `messages` with `content` (text), `images` (bare base64, saved as files), `thinking`,
`tool_calls` (`function.arguments` an object) and `tool` messages (`tool_name`); `tools` in the
OpenAI form. Reply: one `message`; a stream is NDJSON, one such object per line, each holding the
next piece, the last with `done: true` and `done_reason`. `prompt_eval_count` and `eval_count` are
the token counts (usage).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Dict, List, Optional

from chatproxy.apis import Choice, ImageSink, NotRecordable, Reply, Request
from chatproxy.apis.openai_completions import save_base64_image
from chatproxy.chats.messages import IMAGE, Message, as_list, as_text

_ROLES = {"system": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
# The formats Ollama's vision models take, by their first bytes (its `images` carry no MIME type).
_SIGNATURES = (
    (b"\x89PNG", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"RIFF", "image/webp"),
)


def read_request(request: Dict[str, Any], save_image: ImageSink) -> Request:
    if not isinstance(request.get("messages"), list):
        raise NotRecordable("request has no messages list")
    history = [m for m in (_message(raw, save_image) for raw in request["messages"]) if m is not None]
    tools = request.get("tools")
    return Request(history, tools if isinstance(tools, list) and tools else None)


def _message(raw: Any, save_image: Optional[ImageSink]) -> Optional[Message]:
    if not isinstance(raw, dict) or raw.get("role") not in _ROLES:
        return None
    message: Message = {"role": _ROLES[raw["role"]]}
    text = as_text(raw.get("content"))
    images = [path for path in (image_file(data, save_image) for data in as_list(raw.get("images"))) if path]
    if images:
        text = "\n".join([IMAGE] * len(images) + ([text] if text else []))
        message["images"] = images
    if text:
        message["content"] = text
    if message["role"] == "assistant":
        _put_assistant_extras(message, raw)
    if message["role"] == "tool" and as_text(raw.get("tool_name")):
        message["name"] = raw["tool_name"]
    return message


def _put_assistant_extras(message: Message, raw: Dict[str, Any]) -> None:
    thinking = as_text(raw.get("thinking"))
    if thinking:
        message["reasoning"] = thinking
    calls = []
    for call in as_list(raw.get("tool_calls")):
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            arguments = function.get("arguments")
            text = arguments if isinstance(arguments, str) else json.dumps(arguments or {}, ensure_ascii=False)
            calls.append({"id": as_text(call.get("id")), "name": as_text(function.get("name")), "arguments": text})
    if calls:
        message["tool_calls"] = calls


def image_file(data: Any, save_image: Optional[ImageSink]) -> Optional[str]:
    """One of Ollama's bare base64 images, saved; None if it does not decode."""
    if not isinstance(data, str) or not data:
        return None
    try:
        head = base64.b64decode(data[:24] + "=" * (-len(data[:24]) % 4))
    except (binascii.Error, ValueError):
        head = b""
    mime = next((kind for signature, kind in _SIGNATURES if head.startswith(signature)), "image/png")
    return save_base64_image(data, mime, save_image)


def read_reply(body: Dict[str, Any]) -> Reply:
    return read_stream([body])


def read_stream(events: List[Dict[str, Any]]) -> Reply:
    """NDJSON lines, or one whole body: the pieces of `message` joined, the last line's counts."""
    content: List[str] = []
    thinking: List[str] = []
    calls: List[Dict[str, Any]] = []
    last: Dict[str, Any] = {}
    for event in events:
        if event.get("error") is not None:
            reply = Reply(_choices(content, thinking, calls, None), as_text(last.get("model")) or None)
            reply.complete = False
            return reply
        piece = event.get("message")
        if isinstance(piece, dict):
            content.append(as_text(piece.get("content")))
            thinking.append(as_text(piece.get("thinking")))
            calls.extend(c for c in as_list(piece.get("tool_calls")) if isinstance(c, dict))
        last = event
    reason = (as_text(last.get("done_reason")) or "stop") if last.get("done") is True else None
    reply = Reply(_choices(content, thinking, calls, reason), as_text(last.get("model")) or None, None, usage(last))
    if reason is None:
        reply.complete = False  # the stream ended before its `done` line: the answer was cut
    return reply


def _choices(
    content: List[str], thinking: List[str], calls: List[Dict[str, Any]], reason: Optional[str]
) -> List[Choice]:
    message = _message(
        {"role": "assistant", "content": "".join(content), "thinking": "".join(thinking), "tool_calls": calls}, None
    )
    return [Choice(0, message, reason)] if message is not None and len(message) > 1 else []


def usage(last: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    prompt, completion = last.get("prompt_eval_count"), last.get("eval_count")
    if not isinstance(prompt, int) and not isinstance(completion, int):
        return None
    counts = {"prompt_tokens": prompt or 0, "completion_tokens": completion or 0}
    counts["total_tokens"] = counts["prompt_tokens"] + counts["completion_tokens"]
    return counts
