"""OpenAI Responses (`POST …/responses`), streamed or not.

Request: `instructions` is the system turn; `input` is a string (one user turn) or a list of items.
Message items (`type: "message"`, or just a role: openai-agents sends a user item with no type)
carry `input_text` / `input_image` / `input_file` / `output_text` / `refusal` parts; the roles
`developer` and `system` are system turns (Codex sends its system prompt as developer messages).
`function_call` items (arguments a JSON string) become tool calls, `function_call_output` items tool
results; `reasoning` items (OpenAI's `summary[]`, or the `content: [{type: "reasoning_text"}]` of
vLLM and llama.cpp) become reasoning. The assistant side of one turn (reasoning, text, calls) comes as
several consecutive items: they fold into one assistant message, as a chat completion holds it.

`tools`: flat `function` tools become the Chat Completions form the exports read, a `namespace` tool
(Codex groups its sub-agent functions in one) gives its functions, and built-in tools with no name or
schema (Codex declares `web_search`) go to the record's `meta.builtin_tools` instead: a nameless tool
makes LLaMA-Factory reject the whole conversation.

`previous_response_id` means the client sent only what is new: the recorder prepends the
conversation it recorded for that response (Request.continues).

Reply: the `output` list of a response object. A stream (`response.*` events) ends in
`response.completed`, `.incomplete` or `.failed`, whose `response.output` is the authority; the
deltas rebuild the reply only when the stream was cut before that. Incomplete and failed responses
are recorded as incomplete, like a cut stream.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from chatproxy.apis import Choice, ImageSink, NotRecordable, Reply, Request
from chatproxy.apis.openai_completions import arguments_text, render_content
from chatproxy.chats.messages import Message, as_list, as_text, tool_message

_SYSTEM_ROLES = ("system", "developer")
_CALL_ITEMS = ("function_call", "custom_tool_call", "local_shell_call")
_RESULT_ITEMS = ("function_call_output", "custom_tool_call_output", "local_shell_call_output")
_ENDINGS = ("response.completed", "response.incomplete", "response.failed")


# -- requests ---------------------------------------------------------------------------------


def read_request(request: Dict[str, Any], save_image: ImageSink) -> Request:
    history: List[Message] = []
    instructions = as_text(request.get("instructions"))
    if instructions:
        history.append({"role": "system", "content": instructions})
    raw_input = request.get("input")
    if isinstance(raw_input, str):
        history.append({"role": "user", "content": raw_input})
    elif isinstance(raw_input, list):
        history.extend(items_to_messages(raw_input, save_image))
    elif raw_input is not None:
        raise NotRecordable("request input is neither a string nor a list of items")
    meta: Dict[str, Any] = {}
    continues = as_text(request.get("previous_response_id")) or None
    if request.get("conversation") is not None and continues is None:
        meta["partial_history"] = True  # a server-side Conversation: its earlier items never crossed the proxy
    builtin = builtin_tools(request.get("tools"))
    if builtin:
        meta["builtin_tools"] = builtin
    return Request(history, chat_tools(request.get("tools")), meta=meta, continues=continues)


def items_to_messages(items: List[Any], save_image: Optional[ImageSink]) -> List[Message]:
    """Input or output items -> canonical messages; an assistant turn's items fold into one message."""
    messages: List[Message] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        kind = item.get("type", "message")
        if kind == "message":
            _add_message(messages, item, save_image)
        elif kind == "reasoning":
            _add_to_assistant(messages, reasoning=reasoning_text(item))
        elif kind in _CALL_ITEMS:
            _add_to_assistant(messages, call=_call(item))
        elif kind in _RESULT_ITEMS:
            messages.append(_result(item, save_image))
    return [m for m in messages if _has_substance(m)]


def _add_message(messages: List[Message], item: Dict[str, Any], save_image: Optional[ImageSink]) -> None:
    role = item.get("role")
    text, images = render_content(item.get("content"), save_image)
    if role == "assistant":
        _add_to_assistant(messages, content=text)
        return
    message: Message = {"role": "system" if role in _SYSTEM_ROLES else "user"}
    if text:
        message["content"] = text
    if images:
        message["images"] = images
    if role not in _SYSTEM_ROLES and role != "user":
        return  # an unknown role: not a turn anyone said
    messages.append(message)


def _add_to_assistant(
    messages: List[Message], content: str = "", reasoning: str = "", call: Optional[Dict[str, str]] = None
) -> None:
    """Into the assistant message being built: a new one unless the last message is the assistant's
    and nothing it holds comes after what is added (reasoning precedes text, text precedes calls)."""
    last: Message = messages[-1] if messages else {}
    open_turn = last.get("role") == "assistant"
    if open_turn and reasoning and (last.get("content") or last.get("tool_calls")):
        open_turn = False  # reasoning after an answer: the model's next step, a turn of its own
    if open_turn and content and last.get("tool_calls"):
        open_turn = False
    if not open_turn:
        last = {"role": "assistant"}
        messages.append(last)
    if reasoning:
        last["reasoning"] = (last.get("reasoning", "") + "\n\n" + reasoning).strip("\n")
    if content:
        last["content"] = last["content"] + "\n" + content if last.get("content") else content
    if call is not None:
        last.setdefault("tool_calls", []).append(call)


def reasoning_text(item: Dict[str, Any]) -> str:
    """A reasoning item's readable text: its full `content` where the server sends it, else the summary."""
    full = [as_text(part.get("text")) for part in as_list(item.get("content")) if isinstance(part, dict)]
    if any(full):
        return "\n".join(text for text in full if text)
    summary = [as_text(part.get("text")) for part in as_list(item.get("summary")) if isinstance(part, dict)]
    return "\n\n".join(text for text in summary if text)


def _call(item: Dict[str, Any]) -> Dict[str, str]:
    kind = item.get("type")
    if kind == "local_shell_call":
        arguments = json.dumps(item.get("action") or {}, ensure_ascii=False)
        name = "local_shell"
    elif kind == "custom_tool_call":
        arguments, name = as_text(item.get("input")), as_text(item.get("name"))
    else:
        arguments, name = arguments_text(item.get("arguments")), as_text(item.get("name"))
    return {"id": as_text(item.get("call_id")) or as_text(item.get("id")), "name": name, "arguments": arguments}


def _result(item: Dict[str, Any], save_image: Optional[ImageSink]) -> Message:
    output = item.get("output")
    text, images = render_content(output, save_image) if isinstance(output, list) else (_output_text(output), [])
    return tool_message(as_text(item.get("call_id")), text, images)


def _output_text(output: Any) -> str:
    if isinstance(output, str):
        return output
    return "" if output is None else json.dumps(output, ensure_ascii=False)


def _has_substance(message: Message) -> bool:
    return message["role"] == "tool" or any(key in message for key in ("content", "images", "reasoning", "tool_calls"))


def chat_tools(tools: Any) -> Optional[List[Any]]:
    """Responses' function tools in the Chat Completions form the exports read, each one in place:
    flat `function` tools, the functions grouped in a `namespace` tool, and `custom` (free-form) tools as
    sent. Built-in tools (`web_search`, `file_search`, …) define nothing to learn and have no name:
    they are left out here and kept in the record's meta (`builtin_tools`)."""
    converted = [tool for tool in _functions(tools) if isinstance(tool, dict) and _named(tool)]
    return converted or None


def builtin_tools(tools: Any) -> List[Any]:
    """The tools chat_tools leaves out, as sent: built-in tools, which carry no name and no schema."""
    return [tool for tool in _functions(tools) if not (isinstance(tool, dict) and _named(tool))]


def _functions(tools: Any) -> List[Any]:
    converted: List[Any] = []
    for tool in tools if isinstance(tools, list) else ():
        if isinstance(tool, dict) and tool.get("type") == "namespace" and isinstance(tool.get("tools"), list):
            converted.extend(_functions(tool["tools"]))  # Codex: its sub-agent tools under one name
        elif isinstance(tool, dict) and tool.get("type") == "function" and "function" not in tool:
            function = {key: tool[key] for key in ("name", "description", "parameters", "strict") if key in tool}
            converted.append({"type": "function", "function": function})
        else:
            converted.append(tool)
    return converted


def _named(tool: Dict[str, Any]) -> bool:
    function = tool.get("function")
    return bool(as_text((function if isinstance(function, dict) else tool).get("name")))


# -- replies ----------------------------------------------------------------------------------


def read_reply(body: Dict[str, Any]) -> Reply:
    output = body.get("output")
    if not isinstance(output, list):
        return Reply([], body.get("model"), body.get("id"), _usage(body.get("usage")))
    return _reply_from(body, output)


def _reply_from(response: Dict[str, Any], output: List[Any]) -> Reply:
    messages = [m for m in items_to_messages(output, None) if m.get("role") == "assistant"]
    message: Message = {"role": "assistant"}
    for part in messages:  # one answer: a response that thought, spoke and called is one turn
        for key, value in part.items():
            if key == "tool_calls":
                message.setdefault("tool_calls", []).extend(value)
            elif key in ("content", "reasoning") and message.get(key):
                message[key] += "\n\n" + value
            else:
                message[key] = value
    status = as_text(response.get("status")) or "completed"
    reply = Reply(
        [Choice(0, message, _finish_reason(response, message, status))] if len(message) > 1 else [],
        as_text(response.get("model")) or None,
        as_text(response.get("id")) or None,
        _usage(response.get("usage")),
    )
    if status in ("incomplete", "failed", "cancelled"):
        reply.complete = False
    return reply


def _finish_reason(response: Dict[str, Any], message: Message, status: str) -> Optional[str]:
    if status == "completed":
        return "tool_calls" if message.get("tool_calls") else "stop"
    details = response.get("incomplete_details")
    reason = as_text(details.get("reason")) if isinstance(details, dict) else ""
    return reason or status


def _usage(usage: Any) -> Optional[Dict[str, Any]]:
    """Responses counts input and output tokens; the usual prompt/completion names are added beside them."""
    if not isinstance(usage, dict):
        return None
    named = dict(usage)
    if isinstance(usage.get("input_tokens"), int):
        named.setdefault("prompt_tokens", usage["input_tokens"])
    if isinstance(usage.get("output_tokens"), int):
        named.setdefault("completion_tokens", usage["output_tokens"])
    return named


def read_stream(events: List[Dict[str, Any]]) -> Reply:
    for event in reversed(events):
        if event.get("type") in _ENDINGS and isinstance(event.get("response"), dict):
            response = event["response"]
            if isinstance(response.get("output"), list) and response["output"]:
                reply = _reply_from(response, response["output"])
                if event["type"] != "response.completed":
                    reply.complete = False
                return reply
    return _rebuilt(events)


def _rebuilt(events: List[Dict[str, Any]]) -> Reply:
    """A stream cut before its last event: the items as far as their deltas went."""
    items: Dict[int, Dict[str, Any]] = {}
    response: Dict[str, Any] = {}
    for event in events:
        kind = as_text(event.get("type"))
        if isinstance(event.get("response"), dict):
            response = event["response"]
        index = event.get("output_index")
        if not isinstance(index, int):
            continue
        if kind in ("response.output_item.added", "response.output_item.done") and isinstance(event.get("item"), dict):
            items[index] = dict(event["item"])
        elif kind.endswith(".delta") and isinstance(event.get("delta"), str):
            _add_delta(items.setdefault(index, {}), kind, event["delta"])
    output = [items[index] for index in sorted(items)]
    reply = _reply_from(dict(response, status="incomplete"), output)
    reply.complete = False
    return reply


def _add_delta(item: Dict[str, Any], kind: str, delta: str) -> None:
    if kind == "response.output_text.delta":
        item.setdefault("type", "message")
        item.setdefault("role", "assistant")
        parts = item.setdefault("content", [])
        if not parts or not isinstance(parts, list):
            item["content"] = parts = [{"type": "output_text", "text": ""}]
        parts[-1]["text"] = as_text(parts[-1].get("text")) + delta
    elif kind == "response.function_call_arguments.delta":
        item.setdefault("type", "function_call")
        item["arguments"] = as_text(item.get("arguments")) + delta
    elif kind in ("response.reasoning_text.delta", "response.reasoning_summary_text.delta"):
        item.setdefault("type", "reasoning")
        key = "content" if kind == "response.reasoning_text.delta" else "summary"
        parts = item.get(key) if isinstance(item.get(key), list) else None
        if not parts:
            parts = item[key] = [{"type": "reasoning_text", "text": ""}]
        parts[-1]["text"] = as_text(parts[-1].get("text")) + delta
