"""Ollama's native completion (`POST /api/generate`), streamed (its default) or not.

Request: `system` and `prompt` (with `images`), which Ollama renders with the model's template; with
`raw: true` the prompt is already rendered, and it is read back with the text-completion templates
(templates.py) like a `…/completions` prompt. Reply: `response` text (and `thinking`); a stream is
NDJSON, one piece per line, the last with `done: true`, `done_reason` and the token counts.
"""

from __future__ import annotations

from typing import Any, Dict, List

from chatproxy.apis import Choice, ImageSink, NotRecordable, Reply, Request
from chatproxy.apis.ollama import image_file, usage
from chatproxy.apis.templates import parse_prompt
from chatproxy.chats.messages import IMAGE, Message, as_list, as_text


def read_request(request: Dict[str, Any], save_image: ImageSink) -> Request:
    prompt = request.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise NotRecordable("request has no prompt (a model load or unload)")
    if request.get("raw") is True:
        parsed = parse_prompt(prompt)
        return Request(parsed.messages, None, parsed.prefill, {"template": parsed.template})
    history: List[Message] = []
    if as_text(request.get("system")):
        history.append({"role": "system", "content": request["system"]})
    user: Message = {"role": "user"}
    images = [path for path in (image_file(data, save_image) for data in as_list(request.get("images"))) if path]
    if images:
        user["images"] = images
    user["content"] = "\n".join([IMAGE] * len(images) + [prompt])
    history.append(user)
    return Request(history)


def read_reply(body: Dict[str, Any]) -> Reply:
    return read_stream([body])


def read_stream(events: List[Dict[str, Any]]) -> Reply:
    text = "".join(as_text(event.get("response")) for event in events)
    thinking = "".join(as_text(event.get("thinking")) for event in events)
    last = events[-1] if events else {}
    failed = any(event.get("error") is not None for event in events)
    reason = (as_text(last.get("done_reason")) or "stop") if last.get("done") is True and not failed else None
    message: Message = {"role": "assistant"}
    if text:
        message["content"] = text
    if thinking:
        message["reasoning"] = thinking
    reply = Reply(
        [Choice(0, message, reason)] if len(message) > 1 else [], as_text(last.get("model")) or None, None, usage(last)
    )
    if reason is None:
        reply.complete = False  # failed, or the stream ended before its `done` line
    return reply
