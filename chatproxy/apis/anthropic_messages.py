"""Anthropic Messages (`POST …/messages`, also with a query string such as Claude Code's `?beta=true`).

Request: `system` (a string or text blocks) is the system turn; each message's `content` is a string
or blocks: `text`, `image` (base64, saved as a file like a data: URL; or a URL), `document`,
`tool_use` (input an object: its JSON text becomes the call's arguments), `tool_result` (a string or
blocks; each becomes a tool message, before the user's own words in the same message), `thinking`
(reasoning) and `redacted_thinking` (no text to keep). `tools` are turned into the Chat Completions
form the exports read (`input_schema` is the function's `parameters`).

A `system` message inside `messages` (the beta `mid-conversation-system-2026-04-07`: Claude Code sends
its agent list that way, after the user's prompt) is joined to the user message it follows, so the
answer's context stays before the answer; anywhere else it is a system message.

Agents' volatile stamps: Claude Code opens its system prompt with a block
`x-anthropic-billing-header: cc_version=…; cc_entrypoint=…; cch=…;` that changes between requests.
It is not part of what the model is taught and would split one session into a record per request,
so such a block is left out of the system turn. Its title request (no tools, a system prompt asking
for a concise, sentence-case title) and its one-token quota probe are side requests, not chats.

Reply: the message's content blocks, `stop_reason` its finish reason. A stream of `message_start`,
`content_block_start` / `_delta` (`text_delta`, `input_json_delta`, `thinking_delta`,
`signature_delta`) / `_stop`, `message_delta` (stop reason, usage), `message_stop`, `ping` and
`error` events is folded back into the same message; an `error`, or no stop reason, is incomplete.
"""

from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Optional, Tuple

from chatproxy.apis import Choice, ImageSink, NotRecordable, Reply, Request
from chatproxy.apis.openai_completions import render_content
from chatproxy.chats.messages import Message, as_list, as_text, tool_message

# Blocks of a system prompt that change with every request and carry no instruction.
VOLATILE_SYSTEM = re.compile(r"^\s*x-anthropic-billing-header:", re.IGNORECASE)
_TITLE_REQUEST = re.compile(r"\bgenerate a (?:concise|short)[^.]{0,60}\btitle\b", re.IGNORECASE)


# -- requests ---------------------------------------------------------------------------------


def read_request(request: Dict[str, Any], save_image: ImageSink) -> Request:
    if not isinstance(request.get("messages"), list):
        raise NotRecordable("request has no messages list")
    history: List[Message] = []
    system = _system_text(request.get("system"))
    if system:
        history.append({"role": "system", "content": system})
    for raw in request["messages"]:
        if isinstance(raw, dict):
            for message in _messages(raw, save_image):
                _append(history, message)
    return Request(history, chat_tools(request.get("tools")), housekeeping=_side_request(request, system))


def _append(history: List[Message], message: Message) -> None:
    """A `system` message right after the user's words (Claude Code's mid-conversation system message:
    context for the answer that follows) is added to them: left as a system turn of its own, the
    ShareGPT rendering would move it into the next human turn, after the answer that read it, or drop
    it when none follows. Elsewhere it stays a system message."""
    last = history[-1] if history else None
    if message["role"] == "system" and last is not None and last["role"] == "user":
        last["content"] = (as_text(last.get("content")) + "\n\n" + message["content"]).lstrip("\n")
        return
    history.append(message)


def _system_text(system: Any) -> str:
    if isinstance(system, str):
        return "" if VOLATILE_SYSTEM.match(system) else system
    texts = [as_text(block.get("text")) for block in as_list(system) if isinstance(block, dict)]
    return "\n\n".join(text for text in texts if text and not VOLATILE_SYSTEM.match(text))


def _messages(raw: Dict[str, Any], save_image: Optional[ImageSink]) -> List[Message]:
    role = raw.get("role")
    content = raw.get("content")
    if role == "system":  # not in the API, but Claude Code sends one (its reminders)
        text = _system_text(content)
        return [{"role": "system", "content": text}] if text else []
    if role == "assistant":
        answer = _assistant(content)
        return [answer] if len(answer) > 1 else []
    if role != "user":
        return []
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else as_list(content)
    results = [b for b in blocks if isinstance(b, dict) and b.get("type") == "tool_result"]
    rest = [b for b in blocks if not (isinstance(b, dict) and b.get("type") == "tool_result")]
    messages = [_tool_result(block, save_image) for block in results]
    text, images = render_content(rest, save_image)
    if text or images:
        message: Message = {"role": "user"}
        if text:
            message["content"] = text
        if images:
            message["images"] = images
        messages.append(message)
    return messages


def _tool_result(block: Dict[str, Any], save_image: Optional[ImageSink]) -> Message:
    content = block.get("content")
    text, images = render_content(content, save_image) if isinstance(content, list) else (as_text(content), [])
    return tool_message(as_text(block.get("tool_use_id")), text, images)


def _assistant(content: Any) -> Message:
    """An assistant message's blocks (a request's history, or a reply) -> one canonical message."""
    message: Message = {"role": "assistant"}
    if isinstance(content, str):
        if content:
            message["content"] = content
        return message
    texts: List[str] = []
    thoughts: List[str] = []
    calls: List[Dict[str, str]] = []
    for block in as_list(content):
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            texts.append(as_text(block.get("text")))
        elif kind == "thinking":
            thoughts.append(as_text(block.get("thinking")))
        elif kind in ("tool_use", "server_tool_use"):
            calls.append(_call(block))
    if any(texts):
        message["content"] = "\n\n".join(t for t in texts if t)
    if any(thoughts):
        message["reasoning"] = "\n\n".join(t for t in thoughts if t)
    if calls:
        message["tool_calls"] = calls
    return message


def _call(block: Dict[str, Any]) -> Dict[str, str]:
    arguments = block.get("input")
    text = arguments if isinstance(arguments, str) else json.dumps(arguments or {}, ensure_ascii=False)
    return {"id": as_text(block.get("id")), "name": as_text(block.get("name")), "arguments": text}


def chat_tools(tools: Any) -> Optional[List[Any]]:
    """Anthropic tool definitions in the Chat Completions form; server tools (web search, …) as sent."""
    if not isinstance(tools, list) or not tools:
        return None
    converted: List[Any] = []
    for tool in tools:
        if isinstance(tool, dict) and "input_schema" in tool:
            function = {"name": tool.get("name"), "parameters": tool["input_schema"]}
            if "description" in tool:
                function["description"] = tool["description"]
            converted.append({"type": "function", "function": function})
        else:
            converted.append(tool)
    return converted


def _side_request(request: Dict[str, Any], system: str) -> Optional[str]:
    """Claude Code's requests beside the session: a title for it, and a probe of the account's quota."""
    if not request.get("tools") and _TITLE_REQUEST.search(system):
        return "title"
    messages = request.get("messages")
    if request.get("max_tokens") == 1 and isinstance(messages, list) and len(messages) == 1:
        only = messages[0]
        if isinstance(only, dict) and only.get("content") == "quota":
            return "quota probe"
    return None


# -- replies ----------------------------------------------------------------------------------


def read_reply(body: Dict[str, Any]) -> Reply:
    if body.get("type") == "error":
        return Reply([])
    message = _assistant(body.get("content"))
    reason = as_text(body.get("stop_reason")) or None
    choices = [Choice(0, message, reason)] if len(message) > 1 else []
    return Reply(choices, as_text(body.get("model")) or None, as_text(body.get("id")) or None, usage(body.get("usage")))


def usage(raw: Any) -> Optional[Dict[str, Any]]:
    """Anthropic's token counts, with the usual prompt/completion names beside them (cached input counts)."""
    if not isinstance(raw, dict):
        return None
    named = dict(raw)
    prompt = sum(
        raw.get(key, 0) or 0
        for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
        if isinstance(raw.get(key, 0), int)
    )
    named.setdefault("prompt_tokens", prompt)
    if isinstance(raw.get("output_tokens"), int):
        named.setdefault("completion_tokens", raw["output_tokens"])
    return named


def read_stream(events: List[Dict[str, Any]]) -> Reply:
    blocks: Dict[int, Dict[str, Any]] = {}
    partial_json: Dict[int, List[str]] = {}
    start: Dict[str, Any] = {}
    reason: Optional[str] = None
    usage_seen: Dict[str, Any] = {}
    failed = False
    for event in events:
        kind = event.get("type")
        if kind == "message_start" and isinstance(event.get("message"), dict):
            start = event["message"]
            usage_seen.update(start.get("usage") or {})
        elif kind == "content_block_start" and isinstance(event.get("content_block"), dict):
            blocks[_index(event)] = dict(event["content_block"])
        elif kind == "content_block_delta" and isinstance(event.get("delta"), dict):
            _add_delta(blocks.setdefault(_index(event), {}), partial_json, _index(event), event["delta"])
        elif kind == "message_delta":
            delta = event.get("delta")
            reason = (as_text(delta.get("stop_reason")) if isinstance(delta, dict) else "") or reason
            if isinstance(event.get("usage"), dict):
                usage_seen.update(event["usage"])
        elif kind == "error":
            failed = True
    for index, pieces in partial_json.items():
        blocks[index]["input"] = _parsed_input("".join(pieces))
    message = _assistant([blocks[index] for index in sorted(blocks)])
    reply = Reply(
        [Choice(0, message, reason)] if len(message) > 1 else [],
        as_text(start.get("model")) or None,
        as_text(start.get("id")) or None,
        usage(usage_seen) if usage_seen else None,
    )
    if failed or reason is None:
        reply.complete = False
    return reply


def _index(event: Dict[str, Any]) -> int:
    index = event.get("index")
    return index if isinstance(index, int) and not isinstance(index, bool) else 0


def _add_delta(block: Dict[str, Any], partial_json: Dict[int, List[str]], index: int, delta: Dict[str, Any]) -> None:
    kind = delta.get("type")
    if kind == "text_delta":
        block.setdefault("type", "text")
        block["text"] = as_text(block.get("text")) + as_text(delta.get("text"))
    elif kind == "thinking_delta":
        block.setdefault("type", "thinking")
        block["thinking"] = as_text(block.get("thinking")) + as_text(delta.get("thinking"))
    elif kind == "input_json_delta":
        partial_json.setdefault(index, []).append(as_text(delta.get("partial_json")))


def _parsed_input(text: str) -> Any:
    """A tool call's streamed input, parsed at its block's end; cut JSON is kept as the text it was."""
    if not text.strip():
        return {}
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


__all__: Tuple[str, ...] = ("chat_tools", "read_reply", "read_request", "read_stream", "usage")
