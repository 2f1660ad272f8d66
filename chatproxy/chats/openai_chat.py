"""Canonical messages -> one OpenAI chat fine-tuning example: {"messages": [...], "tools": [...]}.

The same conversation as the ShareGPT record (sharegpt.py), in the shape OpenAI's fine-tuning and
Axolotl's `chat_template` datasets read: roles system/user/assistant/tool, tool calls as
{"id", "type": "function", "function": {"name", "arguments": "<JSON text>"}}. The rules, numbered as
their ShareGPT counterparts where there is one:

2.  Everything before the first user message is the preamble: its system messages and a character's
    greeting become one system message (blank-line joined); tool messages there are dropped. A chat with
    no user message gives no example.
3.  A later system message is put in front of the next user message (chat templates such as Mistral's
    and Gemma's accept a system message only first); dropped if no user message follows.
4.  Consecutive assistant messages become one: texts and reasoning joined by a blank line, tool calls in
    order; text beside tool calls is kept, and an assistant message that only calls tools has
    "content": "" (never a missing key or null). An assistant message with nothing to say is ignored.
6.  A tool message answers an open call of the assistant message before it: the one its tool_call_id
    names, or else the first unanswered one. Call ids missing or repeated in the recording are replaced
    by "call_<n>" and the answers renamed to match.
7.  Consecutive user messages become one; a tool result that answers no call is text in the user message
    around it.
8.  Trailing user and tool messages are dropped: the example ends with the assistant. No assistant
    message left means no example (None).
9.  reasoning="keep": an assistant's content is "<think>\\n" + reasoning + "\\n</think>\\n\\n" + text (Axolotl
    splits it back out with `split_thinking: true`); "drop" leaves the text alone.
10. Text only: "<image>", "<audio>" and "<video>" become "[image]", "[audio]" and "[video]"; recorded
    images are local files that neither OpenAI nor a text chat template can take.
11. tools: each function as {"type": "function", "function": {...}} (legacy `functions` entries are
    wrapped); tools of other types are left out. Arguments are written exactly as recorded, "" as "{}".
    tools_as_text=True writes the list as one JSON string instead of objects: Arrow (Hugging Face
    `datasets`) infers one struct type for a column across records, which unifies -- or fails on --
    different tool schemas, while a string reads back byte for byte.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Set

from chatproxy.chats.messages import Message, as_list, as_text, neutral

Record = Dict[str, Any]

KEEP = "keep"


def to_openai_chat(
    messages: List[Message], tools: Optional[List[Any]] = None, reasoning: str = KEEP, tools_as_text: bool = False
) -> Optional[Record]:
    chat = [m for m in messages if isinstance(m, dict)]
    start = next((i for i, m in enumerate(chat) if m.get("role") == "user"), None)
    if start is None:
        return None
    builder = _Builder(reasoning)
    for message in chat[start:]:
        builder.add(message)
    body = builder.finish()
    if body is None:
        return None
    system = _preamble_text(chat[:start])
    record: Record = {"messages": ([{"role": "system", "content": system}] if system else []) + body}
    functions = openai_tools(tools)
    if functions:
        record["tools"] = json.dumps(functions, ensure_ascii=False) if tools_as_text else functions
    return record


def _preamble_text(preamble: List[Message]) -> str:
    systems = [_text(m) for m in preamble if m.get("role") == "system"]
    greetings = [_text(m) for m in preamble if m.get("role") == "assistant"]
    return "\n\n".join(text for text in systems + greetings if text)


class _Builder:
    """Folds the chat after the preamble into OpenAI messages, one canonical message at a time."""

    def __init__(self, reasoning: str) -> None:
        self.reasoning = reasoning
        self.out: List[Message] = []
        self.pending_system: List[str] = []
        self.open_calls: List[str] = []  # ids of the last assistant's calls still waiting for a result
        self.used_ids: Set[str] = set()

    def add(self, message: Message) -> None:
        role = message.get("role")
        if role == "system":
            self.pending_system.append(_text(message))
        elif role == "user":
            self._user_text(_text(message), with_system=True)
        elif role == "assistant":
            self._assistant(message)
        elif role == "tool":
            self._tool(message)

    def _user_text(self, text: str, with_system: bool = False) -> None:
        texts = self.pending_system + [text] if with_system else [text]
        if with_system:
            self.pending_system = []
        joined = "\n\n".join(t for t in texts if t)
        self.open_calls = []
        last = self.out[-1] if self.out else None
        if last is not None and last["role"] == "user":
            last["content"] = "\n\n".join(t for t in (last["content"], joined) if t)
        else:
            self.out.append({"role": "user", "content": joined})

    def _assistant(self, message: Message) -> None:
        text, thought = _text(message), neutral(as_text(message.get("reasoning"))) if self.reasoning == KEEP else ""
        calls = [self._call(c) for c in as_list(message.get("tool_calls")) if isinstance(c, dict)]
        if not (text or thought or calls):
            return  # nothing said: as if it had not been sent
        last = self.out[-1] if self.out else None
        if last is None or last["role"] != "assistant":
            last = {"role": "assistant", "_text": [], "_thought": [], "tool_calls": []}
            self.out.append(last)
        last["_text"].append(text)
        last["_thought"].append(thought)
        last["tool_calls"].extend(calls)
        self.open_calls = [call["id"] for call in last["tool_calls"]]

    def _call(self, call: Message) -> Message:
        call_id = as_text(call.get("id"))
        if not call_id or call_id in self.used_ids:
            call_id = f"call_{len(self.used_ids) + 1}"
            while call_id in self.used_ids:
                call_id += "_"
        self.used_ids.add(call_id)
        arguments = as_text(call.get("arguments"))
        return {
            "id": call_id,
            "type": "function",
            "function": {"name": as_text(call.get("name")), "arguments": arguments if arguments.strip() else "{}"},
        }

    def _tool(self, message: Message) -> None:
        if not self.open_calls:
            self._user_text(_text(message))
            return
        wanted = as_text(message.get("tool_call_id"))
        call_id = wanted if wanted in self.open_calls else self.open_calls[0]
        self.open_calls.remove(call_id)
        self.out.append({"role": "tool", "tool_call_id": call_id, "content": _text(message)})

    def finish(self) -> Optional[List[Message]]:
        while self.out and self.out[-1]["role"] != "assistant":
            self.out.pop()
        if not self.out:
            return None
        return [self._final(message) for message in self.out]

    def _final(self, message: Message) -> Message:
        if message["role"] != "assistant":
            return message
        text = "\n\n".join(t for t in message["_text"] if t)
        thought = "\n\n".join(t for t in message["_thought"] if t)
        if thought:
            text = "<think>\n" + thought + "\n</think>" + ("\n\n" + text if text else "")
        # Always a content key, "" beside tool calls: Axolotl 0.19 with split_thinking reads
        # transformed_message["content"] (prompt_strategies/chat_template.py, transform_message), and a
        # Jinja template would render None as "None". OpenAI fine-tuning accepts "" there.
        final: Message = {"role": "assistant", "content": text}
        if message["tool_calls"]:
            final["tool_calls"] = message["tool_calls"]
        return final


def openai_tools(tools: Optional[List[Any]]) -> List[Record]:
    """A request's tool list as fine-tuning `tools`: function tools only, each wrapped as OpenAI wraps it."""
    functions = []
    for tool in tools if isinstance(tools, list) else ():
        if not isinstance(tool, dict):
            continue
        if tool.get("type") == "function" and isinstance(tool.get("function"), dict):
            function = tool["function"]
        elif "type" not in tool and isinstance(tool.get("name"), str):
            function = tool  # a legacy `functions` entry
        else:
            continue  # built-in tools (web search, code interpreter, ...) have no schema to learn
        if isinstance(function.get("name"), str) and function["name"]:
            if "parameters" in function and not isinstance(function["parameters"], dict):
                function = {k: v for k, v in function.items() if k != "parameters"}
            functions.append({"type": "function", "function": function})
    return functions


def _text(message: Message) -> str:
    return neutral(as_text(message.get("content")))


__all__ = ["openai_tools", "to_openai_chat"]
