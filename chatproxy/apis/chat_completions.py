"""OpenAI Chat Completions (`POST …/chat/completions`), streamed or not.

The request's `messages` are the conversation (openai_completions.py says how each becomes a
canonical message), `tools` (or the legacy `functions`) what the model was offered. A reply's
`choices[i].message`, or the `chat.completion.chunk` deltas of a stream, are the answers.
"""

from __future__ import annotations

from typing import Any, Dict, List

from chatproxy.apis import Choice, ImageSink, NotRecordable, Reply, Request
from chatproxy.apis.openai_completions import StreamAccumulator, chat_choices, normalize_messages


def read_request(request: Dict[str, Any], save_image: ImageSink) -> Request:
    if not isinstance(request.get("messages"), list):
        raise NotRecordable("request has no messages list")
    tools = request.get("tools") or request.get("functions") or None
    return Request(normalize_messages(request["messages"], save_image), tools if isinstance(tools, list) else None)


def read_reply(body: Dict[str, Any]) -> Reply:
    choices = [Choice(index, message, reason) for index, message, reason in chat_choices(body)]
    return Reply(choices, body.get("model"), body.get("id"), _usage(body.get("usage")))


def read_stream(events: List[Dict[str, Any]]) -> Reply:
    return accumulate(events)


def accumulate(events: List[Dict[str, Any]]) -> Reply:
    """Chunks of chat and text completions alike, folded into one message per choice."""
    accumulator = StreamAccumulator()
    accumulator.add_all(events)
    choices = [Choice(index, message, reason) for index, message, reason in accumulator.choices()]
    return Reply(choices, accumulator.model, accumulator.response_id, accumulator.usage)


def _usage(value: Any) -> Any:
    return value if isinstance(value, dict) else None
