"""Export profiles: for each consumer, how a recorded conversation becomes a record it accepts.

A profile builds a record from canonical messages and then runs it through the validators of its
consumers (trainer_rules.py). A conversation that cannot be made valid raises `Unusable` with a one-line
reason, and is counted and explained rather than written.

- sharegpt: LLaMA-Factory's ShareGPT convention, exactly as the live SESSION.json (sharegpt.py), with
  image paths made absolute; an image that is not a local file any more (an http URL, a deleted file)
  gets the "[image]" treatment of sharegpt.py rule 10.
- sharegpt-plain: human/gpt turns of two keys each, for FastChat and Unsloth. Neither has a place for a
  system prompt that both read (FastChat's roles table knows only human and gpt; Unsloth's templates read
  a system turn but FastChat raises on it), so the system prompt is put before the first human message,
  a blank line between, as Unsloth's Mistral and Gemma templates do themselves. Tool use is rendered as
  text rather than dropped -- an answer built on a tool result it no longer shows would teach the model
  to invent results: calls become <tool_call>{"name", "arguments"}</tool_call> lines in the gpt turn,
  results <tool_response>...</tool_response> in the human turn, and for a chat that uses tools the tool
  list leads the first human message as <tools>...</tools> (the Hermes/Qwen convention). No images.
- openai: chat fine-tuning JSONL (openai_chat.py), which Axolotl's chat_template type reads by default.

Every profile refuses a conversation whose tool call arguments are not a JSON object -- a stream cut
off mid-call, or a model that wrote broken JSON: LLaMA-Factory would train on the broken call, OpenAI
rejects it, and Axolotl aborts the whole dataset on it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from chatproxy.chats.messages import IMAGE, UNBACKED, as_text
from chatproxy.chats.openai_chat import openai_tools, to_openai_chat
from chatproxy.chats.sharegpt import to_sharegpt
from chatproxy.commands.trainer_rules import (
    axolotl_problems,
    fastchat_problems,
    llamafactory_problems,
    openai_problems,
    unsloth_problems,
)

Message = Dict[str, Any]
Record = Dict[str, Any]
Builder = Callable[[List[Message], Optional[List[Any]], str, Path], Optional[Record]]
Validator = Callable[[Any], List[str]]


class Unusable(Exception):
    """This conversation cannot be made valid for the profile; str(exc) says why, in one line."""


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    summary: str
    build: Builder
    validators: Tuple[Tuple[str, Validator], ...]

    def record(self, messages: List[Message], tools: Optional[List[Any]], reasoning: str, image_root: Path) -> Record:
        """The record to write, or Unusable."""
        problem = tool_call_problem(messages)
        if problem:
            raise Unusable(problem)
        record = self.build(messages, tools, reasoning, image_root)
        if record is None:
            raise Unusable(_empty_reason(messages))
        for consumer, validator in self.validators:
            problems = validator(record)
            if problems:
                raise Unusable(f"{consumer} would reject it: {problems[0]}")
        return record


# ---------------------------------------------------------------------------------------------------------
# Checks shared by every profile
# ---------------------------------------------------------------------------------------------------------


def tool_call_problem(messages: List[Message]) -> str:
    """Why the tool calls of this chat cannot be exported, or "" when they can."""
    started = False
    for message in messages:
        started = started or message.get("role") == "user"
        if not started or message.get("role") != "assistant":
            continue  # calls before the first user message are dropped with the preamble
        for call in message.get("tool_calls") or ():
            if not isinstance(call, dict):
                continue
            if not call.get("name"):
                return "assistant tool call without a function name"
            problem = _arguments_problem(call.get("arguments"))
            if problem:
                return problem
    return ""


def _arguments_problem(arguments: Any) -> str:
    text = arguments if isinstance(arguments, str) else ""
    if not text.strip():
        return ""  # no arguments: exported as {}
    try:
        value = json.loads(text)
    except ValueError:
        if _cut_short(text):
            return "assistant tool call with truncated JSON arguments"
        return "assistant tool call with arguments that are not valid JSON"
    if not isinstance(value, dict):
        return "assistant tool call with arguments that are not a JSON object"
    return ""


def _cut_short(text: str) -> bool:
    """Whether JSON text ends inside a string or an open object/array: a reply stopped mid-call
    (max_tokens, a dropped stream) rather than a model writing something that is not JSON."""
    closing = {"{": "}", "[": "]"}
    stack: List[str] = []
    in_string = escaped = False
    for char in text:
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char in closing:
            stack.append(closing[char])
        elif char in "}]":
            if not stack or stack.pop() != char:
                return False
    return in_string or bool(stack)


def _empty_reason(messages: List[Message]) -> str:
    if not any(m.get("role") == "user" for m in messages):
        return "no user message"
    return "no assistant reply after the first user message"


# ---------------------------------------------------------------------------------------------------------
# sharegpt
# ---------------------------------------------------------------------------------------------------------


def _build_sharegpt(
    messages: List[Message], tools: Optional[List[Any]], reasoning: str, image_root: Path
) -> Optional[Record]:
    record = to_sharegpt(messages, tools, reasoning)
    if record is not None and record.get("images"):
        _localise_images(record, image_root)
    return record


def _localise_images(record: Record, image_root: Path) -> None:
    """Absolute paths for image files that exist; "[image]" for the placeholders of any that do not.

    LLaMA-Factory opens each entry with PIL's Image.open (mm_plugin._regularize_images): a URL or a missing
    file would stop training, not just this example.
    """
    paths = iter(record["images"])
    kept: List[str] = []
    for turn in record["conversations"]:
        if turn["from"] == "system" or IMAGE not in turn["value"]:
            continue
        pieces = turn["value"].split(IMAGE)
        value = pieces[0]
        for piece in pieces[1:]:
            local = _local_image(next(paths, ""), image_root)
            if local:
                kept.append(local)
            value += (IMAGE if local else UNBACKED[IMAGE]) + piece
        turn["value"] = value
    if kept:
        record["images"] = kept
    else:
        del record["images"]


def _local_image(entry: str, image_root: Path) -> str:
    if not entry or "://" in entry or entry.startswith("data:"):
        return ""
    path = Path(entry) if Path(entry).is_absolute() else image_root / entry
    return str(path.resolve()) if path.is_file() else ""


# ---------------------------------------------------------------------------------------------------------
# sharegpt-plain
# ---------------------------------------------------------------------------------------------------------


def _build_plain(
    messages: List[Message], tools: Optional[List[Any]], reasoning: str, image_root: Path
) -> Optional[Record]:
    record = to_sharegpt(_as_text_chat(messages), None, reasoning)
    if record is None:
        return None
    turns = record["conversations"]
    preface = [turns.pop(0)["value"]] if turns[0]["from"] == "system" else []
    if _uses_tools(messages):
        preface.append(_tools_block(tools))
    texts = [text for text in preface + [turns[0]["value"]] if text]
    turns[0]["value"] = "\n\n".join(texts)
    return {"conversations": turns}


def _as_text_chat(messages: List[Message]) -> List[Message]:
    """The chat with tool use written out as text and images left out, ready for to_sharegpt."""
    chat: List[Message] = []
    started = False
    for message in messages:
        role = message.get("role")
        started = started or role == "user"
        # Without its "images", a message's placeholders are neutralised by to_sharegpt (rule 10).
        text = as_text(message.get("content"))
        if role == "tool":
            if started:
                chat.append({"role": "user", "content": "<tool_response>\n" + text + "\n</tool_response>"})
            continue
        plain: Message = {"role": role, "content": text}
        if isinstance(message.get("reasoning"), str):
            plain["reasoning"] = message["reasoning"]
        if role == "assistant" and started and message.get("tool_calls"):
            calls = [_call_text(call) for call in message["tool_calls"] if isinstance(call, dict)]
            plain["content"] = "\n".join(part for part in [text] + calls if part)
        chat.append(plain)
    return chat


def _call_text(call: Message) -> str:
    raw = as_text(call.get("arguments"))
    try:
        arguments: Any = json.loads(raw) if raw.strip() else {}
    except ValueError:
        arguments = raw  # refused earlier by tool_call_problem; kept readable all the same
    body = json.dumps({"name": call.get("name", ""), "arguments": arguments}, ensure_ascii=False)
    return "<tool_call>\n" + body + "\n</tool_call>"


def _uses_tools(messages: List[Message]) -> bool:
    return any(m.get("role") == "tool" or m.get("tool_calls") for m in messages)


def _tools_block(tools: Optional[List[Any]]) -> str:
    functions = openai_tools(tools)
    if not functions:
        return ""
    lines = [json.dumps(function, ensure_ascii=False) for function in functions]
    return "<tools>\n" + "\n".join(lines) + "\n</tools>"


# ---------------------------------------------------------------------------------------------------------
# openai
# ---------------------------------------------------------------------------------------------------------


def _build_openai(
    messages: List[Message], tools: Optional[List[Any]], reasoning: str, image_root: Path
) -> Optional[Record]:
    return to_openai_chat(messages, tools, reasoning)


PROFILES: Dict[str, Profile] = {
    profile.name: profile
    for profile in (
        Profile(
            "sharegpt",
            "LLaMA-Factory ShareGPT: system, human/gpt, function_call/observation, tools, images",
            _build_sharegpt,
            (("LLaMA-Factory", llamafactory_problems),),
        ),
        Profile(
            "sharegpt-plain",
            "human/gpt only, two keys per message, text only: FastChat, Unsloth",
            _build_plain,
            (("FastChat", fastchat_problems), ("Unsloth", unsloth_problems)),
        ),
        Profile(
            "openai",
            "OpenAI chat fine-tuning JSONL (messages, tools): OpenAI, Axolotl chat_template",
            _build_openai,
            (("OpenAI", openai_problems), ("Axolotl", axolotl_problems)),
        ),
    )
}
