"""The canonical message form every API is parsed into, and the small readers every rendering shares.

A message is a dict: `role` (system, user, assistant, tool), `content` (text, with a placeholder
where an image, audio or file stood), and where present `images` (paths or URLs, one per
IMAGE placeholder), `reasoning`, `tool_calls` ([{id, name, arguments}], arguments as JSON text) and
`tool_call_id`. Values read from recorded JSON are checked, never trusted:
`as_text` and `as_list` give "" and [] for anything of the wrong type.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List

Message = Dict[str, Any]

IMAGE = "<image>"
AUDIO = "<audio>"
VIDEO = "<video>"
FILE = "<file>"

# LLaMA-Factory's IMAGE/VIDEO/AUDIO_PLACEHOLDER (extras/constants.py) and their unbacked spellings:
# a placeholder with no file behind it would make the trainer look for one.
UNBACKED = {IMAGE: "[image]", VIDEO: "[video]", AUDIO: "[audio]"}


def as_text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def as_list(value: Any) -> List[Any]:
    return value if isinstance(value, list) else []


def neutral(value: str, keep_images: bool = False) -> str:
    """Media placeholders spelled so that no trainer takes them for one (images kept if asked)."""
    if "<" not in value:
        return value  # every placeholder starts with "<"
    for token, spelling in UNBACKED.items():
        if not (keep_images and token == IMAGE):
            value = value.replace(token, spelling)
    return value


# json.dumps with these options builds an encoder per call: several microseconds, for every record.
_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_COMPACT_ASCII = json.JSONEncoder(separators=(",", ":"))


def encode_json(value: Any) -> bytes:
    """Compact UTF-8 JSON, as the journal stores it and the thread tree hashes it."""
    try:
        return _COMPACT.encode(value).encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (from a "\\ud800" escape in the request) has no UTF-8 form: escape it.
        return _COMPACT_ASCII.encode(value).encode("ascii")


def json_text(value: Any) -> str:
    """Compact JSON as text, non-ASCII kept: a part of what encode_json gives for a value holding this one,
    as long as the whole has no lone surrogate (`.encode("utf-8")` of the whole then raises)."""
    return _COMPACT.encode(value)


# ---------------------------------------------------------------------------------------------------------
# Tool calls a trainer cannot take
# ---------------------------------------------------------------------------------------------------------


def tool_call_problem(messages: List[Any]) -> str:
    """Why the tool calls of this chat cannot be trained on, or "" when they can.

    Arguments that are not a JSON object -- a reply stopped mid-call (finish_reason "length", a dropped
    stream) or a model that wrote broken JSON: LLaMA-Factory would train on the broken call, OpenAI
    rejects it, and Axolotl aborts the whole dataset on it. The live SESSION.json and every export
    profile leave such a conversation out, for the same reason.
    """
    started = False
    for message in messages:
        if not isinstance(message, dict):
            continue
        started = started or message.get("role") == "user"
        if not started or message.get("role") != "assistant":
            continue  # calls before the first user message are dropped with the preamble
        for call in as_list(message.get("tool_calls")):
            if not isinstance(call, dict):
                continue
            if not call.get("name"):
                return "assistant tool call without a function name"
            problem = _arguments_problem(call.get("arguments"))
            if problem:
                return problem
    return ""


def _arguments_problem(arguments: Any) -> str:
    text = as_text(arguments)
    if not text.strip():
        return ""  # no arguments: exported as {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
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


def is_local_image(entry: str) -> bool:
    """An `images` entry that can name a saved file: not a URL (http(s), data:, ...), not empty."""
    return bool(entry) and "://" not in entry and not entry.startswith("data:")


def tool_message(call_id: str, text: str, images: List[str]) -> Message:
    """A tool result in the canonical form, whichever API carried it."""
    message: Message = {"role": "tool", "tool_call_id": call_id}
    if text:
        message["content"] = text
    if images:
        message["images"] = images
    return message
