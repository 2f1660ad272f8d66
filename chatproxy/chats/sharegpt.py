"""Canonical messages -> one ShareGPT record that LLaMA-Factory loads.

The record is `{"conversations": [{"from", "value"}, ...], "tools": "<JSON text>", "images": [...]}`, with
"tools" and "images" present only when there are some. The journal keeps every chat as it was sent; only
this export reshapes it, by these rules:

1.  Turn tags: user -> "human", assistant -> "gpt" (or "function_call" when it calls tools), tool ->
    "observation", system -> "system". LLaMA-Factory wants an optional system turn first, then human or
    observation turns at odd positions (1st, 3rd, ...) and gpt or function_call turns at even ones, an even
    number of turns after the system turn, and as many "<image>" placeholders as "images" entries.
2.  Everything before the first user message is the preamble: its system messages form the system turn
    (joined by a blank line), and its assistant messages -- a character's greeting -- are appended to it
    after a blank line, creating the system turn if there was none. Tool messages there are dropped. A
    chat with no user message gives no record.
3.  A system message later in the chat is folded into the next human turn: its text is put first,
    separated by a blank line. It is dropped if no human turn follows.
4.  Consecutive assistant messages count as one: texts joined by a blank line, reasoning likewise, tool
    calls in order. If the result calls tools it becomes one function_call turn (rule 5), otherwise a gpt
    turn. An assistant message with nothing to say (no text, no tool calls, and no reasoning or
    reasoning="drop") is ignored, as if it had not been sent.
5.  function_call value: json.dumps({"name": ..., "arguments": <object>}) for one call, a JSON list of
    those for parallel calls. Arguments that are not a JSON object (cut-off streams, garbage) are kept as
    the raw string; empty arguments become {}. Reasoning beside the calls (reasoning="keep") comes first
    as "<think>\\n" + reasoning + "\\n</think>\\n\\n"; text beside them comes next, followed by "\\n" and
    the JSON wrapped as "<tool_call>" + JSON + "</tool_call>". LLaMA-Factory 0.9.5
    (src/llamafactory/data/formatter.py, FunctionFormatter.apply) first looks for the template's
    tool_call_words -- ("<tool_call>", "</tool_call>") in every template but lfm2/lfm2_vl -- parses the
    JSON between them and keeps everything around it as text before the rendered calls; without them it
    removes the template's thought_words block (default ("<think>\\n", "\\n</think>\\n\\n")) and
    parses the rest. Bare JSON, with no text and no reasoning, is read by every version.
6.  Consecutive tool messages (results of parallel calls) form one observation turn whose value is the
    results joined by "\\n</tool_response>\\n<tool_response>\\n", as LLaMA-Factory 0.9.5's own
    OpenAIDatasetConverter (data/converter.py) joins them: with a template that wraps an observation in
    <tool_response>...</tool_response> (qwen, qwen3, ...) each result gets its own block, as at inference.
    A single result is the string itself.
7.  Consecutive human-side messages form one turn, texts joined by a blank line: several user messages
    become one human turn; user and tool messages mixed (a result nobody answered, then the user) become
    one human turn, each result a paragraph of its own.
8.  Trailing human or observation turns with no answer are dropped; no gpt or function_call turn left
    means no record (None).
9.  reasoning="keep": a gpt value is "<think>\\n" + reasoning + "\\n</think>\\n\\n" + text (when there is
    reasoning); reasoning="drop" leaves the text alone.
10. Images: each turn keeps its "<image>" placeholders, and "images" lists their files in turn order; a
    dropped turn or text takes its images with it. Where a placeholder cannot be backed by a file --
    the system turn (LLaMA-Factory attaches no images to it), a message whose "<image>" count does not
    match its images (a user who typed "<image>"), reasoning text -- it is written "[image]" and the
    message's images are left out. "<audio>" and "<video>" become "[audio]" and "[video]" everywhere: no
    audio or video files are exported, and LLaMA-Factory counts those placeholders too. Inside
    function_call JSON the same tokens are escaped as "\\u003c..." instead, which decodes to the exact
    arguments.
11. tools: the request's tool list as JSON text, each {"type": "function", "function": {...}} unwrapped to
    the function itself (the flat form every LLaMA-Factory version reads), with a missing parameter
    schema filled in as an empty object schema (its default tool format reads parameters.properties).
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Iterator, List, NamedTuple

from chatproxy.chats.messages import IMAGE, UNBACKED, as_list, as_text, neutral

__all__ = ["DROP", "KEEP", "llamafactory_problems", "localise_images", "to_sharegpt"]

KEEP = "keep"
DROP = "drop"
_REASONING_MODES = (KEEP, DROP)


ASKING_TAGS = ("human", "observation")  # odd positions
ANSWERING_TAGS = ("gpt", "function_call")  # even positions
SYSTEM_TAG = "system"
TOOL_RESPONSE_SEPARATOR = "\n</tool_response>\n<tool_response>\n"
TOOL_CALL_WORDS = ("<tool_call>", "</tool_call>")  # LLaMA-Factory 0.9.5 template.py register_template default
THOUGHT_WORDS = ("<think>\n", "\n</think>\n\n")  # the same, for thought_words


class _Turn(NamedTuple):
    tag: str
    value: str
    images: List[str]


class _Piece(NamedTuple):
    """One message on its way to a turn: asking side (user/tool) or answering side (assistant)."""

    kind: str  # "human", "observation" or "assistant"
    text: str
    images: List[str]
    message: dict[str, Any]


def to_sharegpt(
    messages: list[dict[str, Any]], tools: list[Any] | None = None, reasoning: str = KEEP
) -> dict[str, Any] | None:
    """One ShareGPT record for `messages`, or None when no gpt/function_call turn would remain."""
    if reasoning not in _REASONING_MODES:
        raise ValueError(f"reasoning must be one of {_REASONING_MODES}, not {reasoning!r}")
    chat = [message for message in messages if isinstance(message, dict)]
    start = next((i for i, message in enumerate(chat) if message.get("role") == "user"), None)
    if start is None:
        return None
    turns = [_turn(group, reasoning) for group in _groups(_pieces(chat[start:], reasoning))]
    while turns and turns[-1].tag in ASKING_TAGS:
        turns.pop()
    if not turns:
        return None
    return _record(_system_text(chat[:start]), turns, tools)


def _record(system: str, turns: list[_Turn], tools: list[Any] | None) -> dict[str, Any]:
    conversations = [{"from": SYSTEM_TAG, "value": system}] if system else []
    conversations += [{"from": turn.tag, "value": turn.value} for turn in turns]
    record: dict[str, Any] = {"conversations": conversations}
    tools_text = _tools_text(tools)
    if tools_text:
        record["tools"] = tools_text
    images = [image for turn in turns for image in turn.images]
    if images:
        record["images"] = images
    return record


# ---------------------------------------------------------------------------------------------------------
# Messages -> pieces -> groups -> turns
# ---------------------------------------------------------------------------------------------------------


def _system_text(preamble: list[dict[str, Any]]) -> str:
    systems = [neutral(_content(m)) for m in preamble if m.get("role") == "system"]
    greetings = [neutral(_content(m)) for m in preamble if m.get("role") == "assistant"]
    return "\n\n".join(text for text in systems + greetings if text)


def _pieces(chat: list[dict[str, Any]], reasoning: str) -> Iterator[_Piece]:
    """The chat from its first user message on, with mid-chat system text moved into user pieces."""
    pending: list[tuple[str, list[str]]] = []
    for message in chat:
        role = message.get("role")
        if role == "system":
            pending.append(_backed(message))
        elif role == "user":
            texts = pending + [_backed(message)]
            pending = []
            text = "\n\n".join(text for text, _ in texts if text)
            yield _Piece("human", text, [image for _, images in texts for image in images], message)
        elif role == "tool":
            yield _Piece("observation", *_backed(message), message)
        elif role == "assistant" and _has_answer(message, reasoning):
            yield _Piece("assistant", *_backed(message), message)


def _has_answer(message: dict[str, Any], reasoning: str) -> bool:
    return bool(
        _content(message)
        or as_list(message.get("tool_calls"))
        or (reasoning == KEEP and as_text(message.get("reasoning")))
    )


def _groups(pieces: Iterator[_Piece]) -> Iterator[list[_Piece]]:
    """Runs of consecutive pieces on the same side (asking or answering)."""
    group: list[_Piece] = []
    for piece in pieces:
        if group and (group[-1].kind == "assistant") != (piece.kind == "assistant"):
            yield group
            group = []
        group.append(piece)
    if group:
        yield group


def _turn(group: list[_Piece], reasoning: str) -> _Turn:
    if group[0].kind == "assistant":
        return _answer_turn(group, reasoning)
    return _asking_turn(group)


def _asking_turn(group: list[_Piece]) -> _Turn:
    images = [image for piece in group for image in piece.images]
    if all(piece.kind == "observation" for piece in group):
        return _Turn("observation", _results_value(group), images)
    return _Turn("human", "\n\n".join(piece.text for piece in group if piece.text), images)


def _results_value(results: list[_Piece]) -> str:
    # LLaMA-Factory 0.9.5, data/converter.py OpenAIDatasetConverter: "\n</tool_response>\n<tool_response>\n".join
    return TOOL_RESPONSE_SEPARATOR.join(piece.text for piece in results)


def _answer_turn(group: list[_Piece], reasoning: str) -> _Turn:
    calls = [call for piece in group for call in as_list(piece.message.get("tool_calls")) if isinstance(call, dict)]
    thoughts = [neutral(as_text(piece.message.get("reasoning"))) for piece in group]
    thought = "\n\n".join(t for t in thoughts if t) if reasoning == KEEP else ""
    head = THOUGHT_WORDS[0] + thought + THOUGHT_WORDS[1] if thought else ""
    if calls:
        # No images in a function_call turn: its text is the text before the calls, never a prompt.
        text = "\n\n".join(neutral(piece.text) for piece in group if piece.text)
        value = _calls_value(calls)
        if text:
            value = head + text + "\n" + TOOL_CALL_WORDS[0] + value + TOOL_CALL_WORDS[1]
        else:
            value = head + value
        return _Turn("function_call", value, [])
    text = "\n\n".join(piece.text for piece in group if piece.text)
    return _Turn("gpt", head + text, [image for piece in group for image in piece.images])


# ---------------------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------------------


def _calls_value(calls: list[dict[str, Any]]) -> str:
    entries = [
        {"name": as_text(call.get("name")), "arguments": _parsed_arguments(call.get("arguments"))} for call in calls
    ]
    text = json.dumps(entries[0] if len(entries) == 1 else entries, ensure_ascii=False)
    # "<" only ever occurs inside JSON strings, and "\u003c" decodes back to it: the placeholder count
    # LLaMA-Factory takes on the raw value drops to zero while the arguments stay exact.
    for token in UNBACKED:
        text = text.replace(token, "\\u003c" + token[1:])
    return text


def _parsed_arguments(raw: Any) -> Any:
    if isinstance(raw, dict):
        return raw
    text = as_text(raw)
    if not text.strip():
        return {}
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        return text
    return parsed if isinstance(parsed, dict) else text


def _tools_text(tools: list[Any] | None) -> str:
    if not isinstance(tools, list):
        return ""
    functions = [_flat_tool(tool) for tool in tools if isinstance(tool, dict)]
    return json.dumps(functions, ensure_ascii=False) if functions else ""


def _flat_tool(tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") == "function" and isinstance(tool.get("function"), dict):
        tool = tool["function"]
    parameters = tool.get("parameters")
    if not isinstance(parameters, dict):
        # OpenAI: omitting parameters defines a function that takes none.
        return dict(tool, parameters={"type": "object", "properties": {}})
    if not isinstance(parameters.get("properties"), dict):
        return dict(tool, parameters=dict(parameters, properties={}))
    return tool


def localise_images(record: dict[str, Any], locate: Callable[[str], str]) -> None:
    """Replace each `images` entry by `locate(entry)`; the placeholder of one it gives "" for becomes "[image]".

    LLaMA-Factory opens every listed entry with PIL's Image.open (0.9.5, data/mm_plugin.py
    _regularize_images): a URL or a missing file stops the whole run, not just this example. The export
    passes absolute paths of files that exist, the live SESSION.json the recorded relative paths.
    """
    if not record.get("images"):
        return
    paths = iter(record["images"])
    kept: List[str] = []
    for turn in record["conversations"]:
        if turn["from"] == SYSTEM_TAG or IMAGE not in turn["value"]:
            continue
        pieces = turn["value"].split(IMAGE)
        value = pieces[0]
        for piece in pieces[1:]:
            entry = next(paths, "")
            local = locate(entry) if entry else ""
            if local:
                kept.append(local)
            value += (IMAGE if local else UNBACKED[IMAGE]) + piece
        turn["value"] = value
    if kept:
        record["images"] = kept
    else:
        del record["images"]


# ---------------------------------------------------------------------------------------------------------
# Text and placeholders
# ---------------------------------------------------------------------------------------------------------


def _backed(message: dict[str, Any]) -> tuple[str, list[str]]:
    """A message's text and images, with every placeholder that no exported file backs neutralised."""
    text = _content(message)
    images = message.get("images")
    images = [image for image in images if isinstance(image, str)] if isinstance(images, list) else []
    if text.count(IMAGE) == len(images):
        return neutral(text, keep_images=True), images
    return neutral(text), []


def _content(message: dict[str, Any]) -> str:
    return as_text(message.get("content"))


# ---------------------------------------------------------------------------------------------------------
# Validation against LLaMA-Factory's loader
# ---------------------------------------------------------------------------------------------------------


def llamafactory_problems(record: Any) -> list[str]:
    """Readable reasons LLaMA-Factory would reject or mis-train `record`; an empty list means it loads.

    Rules are those of LLaMA-Factory 0.9.5: src/llamafactory/data/converter.py (SharegptDatasetConverter),
    formatter.py (FunctionFormatter, ToolFormatter), mm_plugin.py and processor/supervised.py, with the
    default tags of data/README.md.
    """
    if not isinstance(record, dict):
        return ["record is not a JSON object"]
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        return ["conversations is missing or empty"]
    problems = _turn_shape_problems(turns)
    if problems:
        return problems
    return (
        _order_problems(turns)
        + _function_call_problems(turns)
        + _tools_problems(record.get("tools"))
        + _media_problems(record, turns)
    )


def _turn_shape_problems(turns: list[Any]) -> list[str]:
    problems = []
    for position, turn in enumerate(turns):
        # The converter reads turn[role_tag] and turn[content_tag]; formatters require string values.
        fields = (turn.get("from"), turn.get("value")) if isinstance(turn, dict) else (None, None)
        if not all(isinstance(field, str) for field in fields):
            problems.append(f"turn {position} is not an object with string 'from' and 'value'")
    return problems


def _order_problems(turns: list[dict[str, Any]]) -> list[str]:
    # SharegptDatasetConverter: a system turn is recognised only as the very first message.
    offset = 1 if turns[0]["from"] == SYSTEM_TAG else 0
    body = turns[offset:]
    problems = []
    for position, turn in enumerate(body):
        # accept_tags[turn_idx % 2]: human/observation at even indexes, gpt/function_call at odd ones;
        # the first mismatch marks the whole example broken.
        expected = ASKING_TAGS if position % 2 == 0 else ANSWERING_TAGS
        if turn["from"] not in expected:
            where = position + offset
            problems.append(f"turn {where} is {turn['from']!r} where {' or '.join(expected)} must be")
            break
    # "Invalid message count": the non-system turns must pair up; supervised.py then also drops an
    # example without at least one prompt and one response.
    if len(body) % 2 != 0 or not body:
        problems.append(f"{len(body)} non-system turns; there must be a positive even number")
    return problems


def _function_call_problems(turns: list[dict[str, Any]]) -> list[str]:
    problems = []
    for position, turn in enumerate(turns):
        if turn["from"] != "function_call":
            continue
        try:
            calls = json.loads(_function_json(turn["value"]))
        except (ValueError, RecursionError):
            # FunctionFormatter raises RuntimeError("Invalid JSON format in function message"): the run stops.
            problems.append(f"turn {position}: function_call value is not JSON")
            continue
        calls = calls if isinstance(calls, list) else [calls]
        # FunctionCall(tc["name"], json.dumps(tc["arguments"])) for each call: a KeyError otherwise.
        if not calls or not all(isinstance(c, dict) and "name" in c and "arguments" in c for c in calls):
            problems.append(f"turn {position}: every call in a function_call value needs 'name' and 'arguments'")
    return problems


def _function_json(value: str) -> str:
    """The part of a function_call value that LLaMA-Factory 0.9.5 parses as JSON (formatter.py,
    FunctionFormatter.apply, with the default tool_call_words and thought_words of template.py):
    the first <tool_call>...</tool_call> if there is one, else the value without its first think block."""
    match = re.search(re.escape(TOOL_CALL_WORDS[0]) + "(.*?)" + re.escape(TOOL_CALL_WORDS[1]), value, re.DOTALL)
    if match:
        return match.group(1)
    thought = re.search(re.escape(THOUGHT_WORDS[0]) + "(.*?)" + re.escape(THOUGHT_WORDS[1]), value, re.DOTALL)
    return value.replace(thought.group(0), "") if thought else value


def _tools_problems(tools: Any) -> list[str]:
    if tools is None or tools == "":
        return []
    # ToolFormatter: json.loads(tools) and len(tools); the default tool format then reads each tool's
    # name and parameters["properties"] (after unwrapping {"type": "function", "function": ...}).
    if not isinstance(tools, str):
        return ["tools is not a JSON string"]
    try:
        parsed = json.loads(tools)
    except (ValueError, RecursionError):
        return ["tools is not valid JSON"]
    if not isinstance(parsed, list):
        return ["tools is not a JSON list"]
    problems = []
    for position, tool in enumerate(parsed):
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else tool
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            problems.append(f"tools[{position}] has no name")
        elif not isinstance(function.get("parameters"), dict) or not isinstance(
            function["parameters"].get("properties"), dict
        ):
            problems.append(f"tools[{position}] has no parameters.properties object")
    return problems


def _media_problems(record: dict[str, Any], turns: list[dict[str, Any]]) -> list[str]:
    problems = []
    images = record.get("images")
    if images is not None and not (isinstance(images, list) and all(isinstance(i, str) for i in images)):
        problems.append("images is not a list of paths")
        images = []
    # mm_plugin._validate_messages counts placeholders over prompt + response only; the system prompt is
    # passed separately, so a placeholder there would never meet its file.
    if turns[0]["from"] == SYSTEM_TAG and IMAGE in turns[0]["value"]:
        problems.append("the system turn contains <image>; LLaMA-Factory attaches no images there")
    counted = [turn["value"] for turn in turns if turn["from"] != SYSTEM_TAG]
    for token, key in (("<image>", "images"), ("<video>", "videos"), ("<audio>", "audios")):
        files = record.get(key) if key != "images" else images
        found = sum(value.count(token) for value in counted)
        expected = len(files) if isinstance(files, list) else 0
        if found != expected:
            problems.append(f"{found} {token} placeholders but {expected} {key}")
    return problems
