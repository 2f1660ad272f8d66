"""OpenAI API JSON -> canonical messages, the form the dataset journal stores.

A canonical message is a plain JSON-ready dict; a key is present only when it has a value:

    {"role": "system" | "user" | "assistant" | "tool",
     "content": str,          # text; each non-text part replaced in place by a placeholder
     "images": [str, ...],    # one entry per "<image>" placeholder, in order
     "reasoning": str,        # assistant only
     "tool_calls": [{"id": str, "name": str, "arguments": str}],   # assistant only
     "tool_call_id": str,     # tool only
     "name": str}             # participant name, or the tool/function name

Conversion rules:

* Roles: "developer" becomes "system"; the legacy "function" role becomes "tool" (its "name" kept); a
  message with any other role, or that is not an object, is skipped with a warning.
* Content: a string is kept as is; None, "" and [] give no "content" key; a list of parts is rendered part
  by part and the pieces are joined with "\\n" -- placeholders included, so [text "Look", image] becomes
  "Look\\n<image>". Any other JSON value is stored as its JSON text.
* Parts: "text" (and "refusal") keep their text; "image_url" (object with "url", or the URL string itself)
  becomes "<image>" plus an "images" entry: a data: URL is decoded and handed to the image sink, which
  returns the path to list; any other URL is listed as is. An image whose data: URL does not decode is
  dropped with a warning (placeholder and entry both, so the two always match). "input_audio" becomes
  "<audio>", "file" becomes "<file>"; an unknown part keeps its "text" if it has one and is ignored
  otherwise.
* Text is never rewritten: a user who types "<image>" produces a placeholder with no "images" entry. The
  ShareGPT export checks counts per message and neutralises such text there.
* Assistant: reasoning comes from "reasoning_content" or else "reasoning"; each tool call becomes
  {"id", "name", "arguments"} with arguments as the raw JSON string (an object some servers send is
  serialised); a legacy "function_call" becomes one tool call with id "".

Responses: `assistant_from_choice` reads one non-streaming `choices[i].message`; `StreamAccumulator` folds
`chat.completion.chunk` (or text-completion) events into the same shape; `chat_choices` and
`completion_choices` unpack whole non-streaming bodies.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from typing import Any, Callable, Iterable, Tuple
from urllib.parse import unquote_to_bytes

from chatproxy.chats.messages import AUDIO, FILE, IMAGE, as_text

__all__ = [
    "AUDIO",
    "FILE",
    "IMAGE",
    "ImageSink",
    "StreamAccumulator",
    "assistant_from_choice",
    "chat_choices",
    "completion_choices",
    "normalize_messages",
]

log = logging.getLogger("chatproxy.normalize")

# Saves decoded image bytes of the given MIME type and returns the path to list in "images".
ImageSink = Callable[[bytes, str], str]


_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "function": "tool",
}

# vLLM and OpenRouter name the field "reasoning", DeepSeek and most others "reasoning_content"; some
# servers send both with the same text, so only the first present one is read, never their sum.
_REASONING_KEYS = ("reasoning_content", "reasoning")


# ---------------------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------------------


def normalize_messages(messages: list[Any], save_image: ImageSink) -> list[dict[str, Any]]:
    """Convert a request's `messages` to canonical messages; only a non-list raises."""
    if not isinstance(messages, list):
        raise ValueError(f"messages must be a JSON array, not {type(messages).__name__}")
    canonical = []
    for position, raw in enumerate(messages):
        message = _normalize_message(raw, save_image)
        if message is None:
            log.warning("messages[%d] skipped: not an object with a known role", position)
        else:
            canonical.append(message)
    return canonical


def _normalize_message(raw: Any, save_image: ImageSink) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        return None
    role_name = raw.get("role")
    role = _ROLES.get(role_name) if isinstance(role_name, str) else None
    if role is None:
        return None
    content = raw.get("content")
    if len(raw) == 2 and isinstance(content, str):
        # Only a role and its text, as most of a long chat's history is: nothing else to look for.
        return {"role": role, "content": content} if content else {"role": role}
    message: dict[str, Any] = {"role": role}
    _put_content(message, content, save_image)
    if role == "assistant":
        message.update(_assistant_extras(raw))
    if role == "tool" and as_text(raw.get("tool_call_id")):
        message["tool_call_id"] = raw["tool_call_id"]
    if as_text(raw.get("name")):
        message["name"] = raw["name"]
    return message


def _put_content(message: dict[str, Any], content: Any, save_image: ImageSink | None) -> None:
    text, images = render_content(content, save_image)
    if text:
        message["content"] = text
    if images:
        message["images"] = images


def render_content(content: Any, save_image: ImageSink | None) -> tuple[str, list[str]]:
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        return json.dumps(content, ensure_ascii=False, default=str), []
    pieces: list[str] = []
    images: list[str] = []
    for part in content:
        piece, image = _render_part(part, save_image)
        if piece:
            pieces.append(piece)
        if image is not None:
            images.append(image)
    return "\n".join(pieces), images


def _render_part(part: Any, save_image: ImageSink | None) -> tuple[str | None, str | None]:
    """One content part -> (text piece, image path or URL); the image is set only with an IMAGE piece."""
    if isinstance(part, str):
        return part, None
    if not isinstance(part, dict):
        return json.dumps(part, ensure_ascii=False, default=str), None
    kind = part.get("type")
    if kind in ("image_url", "input_image"):  # Chat Completions; Responses (the URL itself, or a file id)
        image = _image_reference(part.get("image_url"), save_image)
        return (IMAGE, image) if image is not None else (None, None)
    if kind == "image":  # Anthropic Messages: {"source": {"type": "base64" | "url", ...}}
        image = _anthropic_image(part.get("source"), save_image)
        return (IMAGE, image) if image is not None else (None, None)
    if kind == "input_audio":
        return AUDIO, None
    if kind in ("file", "input_file", "document"):
        return FILE, None
    if kind == "refusal":
        return as_text(part.get("refusal")), None
    # "text", "input_text", "output_text" and any unknown part that carries text.
    return as_text(part.get("text")), None


def _anthropic_image(source: Any, save_image: ImageSink | None) -> str | None:
    if not isinstance(source, dict):
        return None
    if source.get("type") == "url":
        return _image_reference(source.get("url"), save_image)
    return save_base64_image(as_text(source.get("data")), as_text(source.get("media_type")), save_image)


def save_base64_image(data: str, mime: str, save_image: ImageSink | None) -> str | None:
    """Bare base64 image data (Anthropic's `source.data`, Ollama's `images`) saved like a data: URL."""
    if not data:
        return None
    return _image_reference(f"data:{mime or 'application/octet-stream'};base64,{data}", save_image)


def _image_reference(value: Any, save_image: ImageSink | None) -> str | None:
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url:
        log.warning("image part without a URL dropped")
        return None
    if url[:5].lower() != "data:":
        return url
    decoded = _decode_data_url(url)
    if decoded is None:
        # Never log the URL itself: it is the whole image, possibly megabytes of base64.
        log.warning("image dropped: its data: URL (%d characters) does not decode", len(url))
        return None
    if save_image is None:
        return None
    try:
        return save_image(*decoded)
    except OSError as exc:
        # A full disk must cost the image, not the conversation around it.
        log.warning("image dropped: saving it failed: %s", exc)
        return None


def _decode_data_url(url: str) -> tuple[bytes, str] | None:
    """RFC 2397 `data:[<mediatype>][;base64],<data>` -> (bytes, lower-case MIME type), or None."""
    header, comma, payload = url[5:].partition(",")
    if not comma:
        return None
    params = header.split(";")
    mime = params[0].strip().lower() or "application/octet-stream"
    if any(param.strip().lower() == "base64" for param in params[1:]):
        compact = "".join(payload.split())
        # Some clients strip the "=" padding; restoring it is unambiguous.
        compact += "=" * (-len(compact) % 4)
        try:
            data = base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError):
            return None
    else:
        data = unquote_to_bytes(payload)
    return (data, mime) if data else None


# ---------------------------------------------------------------------------------------------------------
# Assistant messages (requests and responses share these fields)
# ---------------------------------------------------------------------------------------------------------


def _assistant_extras(raw: dict[str, Any]) -> dict[str, Any]:
    extras: dict[str, Any] = {}
    reasoning = _first_text(raw, _REASONING_KEYS)
    if reasoning:
        extras["reasoning"] = reasoning
    calls = _tool_calls(raw.get("tool_calls"))
    if not calls:
        legacy = _legacy_call(raw.get("function_call"))
        calls = [legacy] if legacy is not None else []
    if calls:
        extras["tool_calls"] = calls
    return extras


def _tool_calls(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        return []
    calls = []
    for item in raw:
        if isinstance(item, dict) and isinstance(item.get("function"), dict):
            function = item["function"]
            calls.append(
                {
                    "id": as_text(item.get("id")),
                    "name": as_text(function.get("name")),
                    "arguments": arguments_text(function.get("arguments")),
                }
            )
    return calls


def _legacy_call(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        return None
    return {"id": "", "name": as_text(raw.get("name")), "arguments": arguments_text(raw.get("arguments"))}


def arguments_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    # Some servers (Ollama among them) send the arguments as an object instead of its JSON text.
    return json.dumps(value, ensure_ascii=False)


def assistant_from_choice(message: Any) -> dict[str, Any]:
    """A non-streaming `choices[i].message` -> canonical assistant message."""
    canonical: dict[str, Any] = {"role": "assistant"}
    if not isinstance(message, dict):
        return canonical
    # A response carries no image sink: data: URL images in answers are not expected and are dropped.
    _put_content(canonical, message.get("content"), None)
    refusal = as_text(message.get("refusal"))
    if "content" not in canonical and refusal:
        # OpenAI puts a refusal beside a null content; it is the answer the model gave.
        canonical["content"] = refusal
    canonical.update(_assistant_extras(message))
    return canonical


def chat_choices(body: dict[str, Any]) -> list[tuple[int, dict[str, Any], str | None]]:
    """A non-streaming chat completion -> (index, canonical assistant message, finish_reason) by index."""
    choices = [
        (index, assistant_from_choice(raw.get("message")), _finish_reason(raw)) for index, raw in _choices_of(body)
    ]
    return sorted(choices, key=lambda choice: choice[0])


def completion_choices(body: dict[str, Any]) -> list[tuple[int, str, str | None]]:
    """A non-streaming /completions body -> (index, text, finish_reason) by index."""
    choices = [(index, as_text(raw.get("text")), _finish_reason(raw)) for index, raw in _choices_of(body)]
    return sorted(choices, key=lambda choice: choice[0])


def _choices_of(body: Any) -> list[tuple[int, dict[str, Any]]]:
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list):
        return []
    return [(_index(raw, position), raw) for position, raw in enumerate(choices) if isinstance(raw, dict)]


# ---------------------------------------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------------------------------------


class _CallState:
    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.arguments: list[str] = []


class _ChoiceState:
    def __init__(self) -> None:
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.calls: dict[int, _CallState] = {}
        self.unindexed_call: int | None = None
        self.finish_reason: str | None = None

    def add_fragment(self, fragment: dict[str, Any]) -> None:
        call = self.calls.setdefault(self._call_key(fragment), _CallState())
        call_id = as_text(fragment.get("id"))
        # id and name come whole in a call's first fragment; servers that repeat them later must not
        # double them, so both are set once and only arguments are concatenated.
        if call_id and not call.id:
            call.id = call_id
        function = fragment.get("function")
        if isinstance(function, dict):
            name = as_text(function.get("name"))
            if name and not call.name:
                call.name = name
            if function.get("arguments") is not None:
                call.arguments.append(arguments_text(function["arguments"]))

    def _call_key(self, fragment: dict[str, Any]) -> int:
        index = _as_index(fragment.get("index"))
        if index is not None:
            return index
        # No "index" (some OpenAI-compatible servers omit it): continue the call in progress, but a
        # fragment carrying a different id starts the next call, so whole parallel calls sent one per
        # fragment are not glued together.
        current = self.unindexed_call
        call_id = as_text(fragment.get("id"))
        if current is None or (call_id and self.calls[current].id and self.calls[current].id != call_id):
            current = max(self.calls, default=-1) + 1
            self.unindexed_call = current
        return current

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant"}
        content = "".join(self.content)
        reasoning = "".join(self.reasoning)
        if content:
            message["content"] = content
        if reasoning:
            message["reasoning"] = reasoning
        if self.calls:
            message["tool_calls"] = [
                {"id": call.id, "name": call.name, "arguments": "".join(call.arguments)}
                for _, call in sorted(self.calls.items())
            ]
        return message


class StreamAccumulator:
    """Folds parsed streaming chunks into one canonical assistant message per choice index."""

    def __init__(self) -> None:
        self._choices: dict[int, _ChoiceState] = {}
        self._model: str | None = None
        self._response_id: str | None = None
        self._usage: dict[str, Any] | None = None

    @property
    def model(self) -> str | None:
        return self._model

    @property
    def response_id(self) -> str | None:
        return self._response_id

    @property
    def usage(self) -> dict[str, Any] | None:
        return self._usage

    def add(self, chunk: Any) -> None:
        """Take one parsed `chat.completion.chunk` or text-completion chunk; anything else is ignored."""
        self.add_all((chunk,))

    def add_all(self, chunks: Iterable[Any]) -> None:
        """add() each chunk in turn. _note_metadata, _choices_of and _add_choice, written out: a stream is
        hundreds of chunks, each taken in turn."""
        states = self._choices
        for chunk in chunks:
            if not isinstance(chunk, dict):
                continue
            if self._model is None or self._response_id is None:
                self._note_names(chunk)
            # With stream_options.include_usage, OpenAI and vLLM send usage in a last chunk with empty
            # choices; some servers also send a running total on every chunk. The last one is the total.
            usage = chunk.get("usage")
            if isinstance(usage, dict):
                self._usage = usage
            choices = chunk.get("choices")
            if not isinstance(choices, list):
                continue
            for position, raw in enumerate(choices):
                if not isinstance(raw, dict):
                    continue
                index = raw.get("index")
                if not isinstance(index, int) or isinstance(index, bool):
                    index = position
                state = states.get(index)
                if state is None:
                    state = states[index] = _ChoiceState()
                text = raw.get("text")
                if isinstance(text, str):
                    state.content.append(text)
                delta = raw.get("delta")
                if isinstance(delta, dict):
                    content = delta.get("content")
                    if isinstance(content, str):
                        state.content.append(content)
                    # The common delta, {"content": ...} or {"role": ..., "content": ...}, holds nothing more.
                    if content is None or not (len(delta) == 1 or (len(delta) == 2 and "role" in delta)):
                        _add_delta_extras(state, delta)
                finish_reason = raw.get("finish_reason")
                if isinstance(finish_reason, str) and finish_reason:
                    state.finish_reason = finish_reason

    def choices(self) -> list[tuple[int, dict[str, Any], str | None]]:
        """(index, canonical assistant message, finish_reason) for every choice seen, by index."""
        ordered = sorted(self._choices.items())
        return [(index, state.message(), state.finish_reason) for index, state in ordered]

    def _note_names(self, chunk: dict[str, Any]) -> None:
        """The model and the response id: from the first chunk that names each."""
        if self._model is None and as_text(chunk.get("model")):
            self._model = chunk["model"]
        if self._response_id is None and as_text(chunk.get("id")):
            self._response_id = chunk["id"]


def _add_delta_extras(state: _ChoiceState, delta: dict[str, Any]) -> None:
    """What a delta holds besides its content: reasoning, tool call fragments, a legacy function call."""
    reasoning = _first_text(delta, _REASONING_KEYS)
    if reasoning:
        state.reasoning.append(reasoning)
    fragments = delta.get("tool_calls")
    if isinstance(fragments, list):
        for fragment in fragments:
            if isinstance(fragment, dict):
                state.add_fragment(fragment)
    legacy = delta.get("function_call")
    if isinstance(legacy, dict):
        state.add_fragment({"index": 0, "function": legacy})


# ---------------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------------


def _first_text(raw: dict[str, Any], keys: Tuple[str, ...]) -> str:
    for key in keys:
        value = raw.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def _as_index(value: Any) -> int | None:
    # bool is an int subclass; a JSON true is not an index.
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _index(raw: dict[str, Any], position: int) -> int:
    index = _as_index(raw.get("index"))
    return position if index is None else index


def _finish_reason(raw: dict[str, Any]) -> str | None:
    reason = raw.get("finish_reason")
    return reason if isinstance(reason, str) and reason else None
