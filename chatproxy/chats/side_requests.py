"""Requests built from a chat's history that are not its next turn: Continue, Impersonate, quiet prompts.

SillyTavern (1.12) sends instructions as system messages after the chat (public/scripts/openai.js):
Post-History Instructions and a group chat's nudge after every turn, Continue's nudge, and, last of all,
Impersonate's or a quiet prompt's instruction. Whatever follows the chat's last turn is read here:

- After a **user** turn: instructions for the reply (Post-History Instructions, the group nudge, an
  author's note at depth 0). They move to the end again with every request, so they are not turns of
  the chat: they leave the history (kept in `meta.instructions`), and the reply is the next turn.
- After an **assistant** turn, by what the instructions ask:
  - **Continue** ("[Continue the following message. Do not include ANY parts of the original message.
    Use capitalization and punctuation as if your reply is a part of the original message: <the
    message>]"): the reply goes on with that message. The nudge and the message leave the history, the
    message becomes the prefill and `meta.continued` is "nudge". SillyTavern joins the two with a
    separator of its own (a space by default), so a reply that does not start with whitespace is joined
    with one space; the next request shows the join the frontend really made, and the thread tree takes
    that text.
  - **Group nudge** ("[Write the next reply only as <character>.]"): the next turn of a group chat. The
    nudge changes with every turn, so it is left out and the reply is the next assistant turn; where the
    chat's replies carry their speakers' names ("Bob: ..."), the reply gets its speaker's, as the next
    request will show it.
  - **The chat's own instructions** (Post-History Instructions on a send with an empty input box): the
    same text was sent after a user turn of the chat before. The reply is a new assistant turn.
  - Anything else is a **side request**: Impersonate ("[Write your next reply from the point of view of
    <user>…]": the reply goes into the user's input box) and `/gen` or extensions' quiet prompts (the
    reply goes to a pipe, a variable or a toast; SillyTavern never streams them). None of them is a turn
    of the chat, so like housekeeping calls they are not recorded unless --record-all; then the
    instruction is recorded as the user turn it acts as (`meta.side_request` names the kind), on a
    branch of its own that leaves the chat's record in place.

Which instructions are the chat's own is remembered from the requests seen (`InstructionMemory`: the
text that followed a user turn, by the chat's system prompt), so a send with an empty box straight after
the proxy starts, before any ordinary send of that chat, is taken for a side request; its reply is not
lost: the next request carries it in the history.

SillyTavern's Test Message (API Connections: a lone, unstreamed user "Hi" over Chat Completions) is a
connection check, skipped the same way ("connection-test").

Open WebUI (0.12 and later) adds an `<attached_files>` block naming its stored files by id in front of a
user message that carries an upload, for its built-in file tools; it stores the message without it. The
block is left out of the user turn (the image or file itself stays), so the record equals the stored chat
and carries no internal file ids.

A history that ends in the assistant's own words with no instruction after it is a prefill (extract.py);
its record gets `meta.continued` "prefill", so it too replaces the record of the message it continued.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from chatproxy.chats.housekeeping import housekeeping_kind

CHAT_COMPLETIONS = "chat.completions"  # chatproxy.apis.CHAT_COMPLETIONS: the Chat Completions API's name

if TYPE_CHECKING:  # chats/ is the conversation as data: it does not depend on the wire APIs
    from chatproxy.apis import Request

Message = Dict[str, Any]

# Phrases of SillyTavern's default prompts (public/scripts/openai.js default_continue_nudge_prompt,
# default_impersonation_prompt, default_group_nudge_prompt), compared on lower-cased, space-collapsed text.
_CONTINUE = re.compile(r"continue the following message")
_GROUP_NUDGE = re.compile(r"^\[?write the next reply only as ([^\]]+?)\.?\]?$", re.IGNORECASE)
_IMPERSONATE = re.compile(r"write your next reply from the point of view of")
_ATTACHED_FILES = re.compile(r"\A\s*<attached_files>\s*(?:<file\b[^>]*/>\s*)*</attached_files>\s*")
_SPEAKER = re.compile(r"^([^\W\d_][\w .'\-]{0,38}[\w.'\-]|[^\W\d_]):[ \t]")


class InstructionMemory:
    """The instructions each chat sent after its users' turns, by its system prompt: the last few
    thousand, so a proxy that runs for months keeps a bounded set."""

    LIMIT = 4096

    def __init__(self) -> None:
        self._seen: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()

    def learn(self, history: List[Message], instructions: List[str]) -> None:
        for text in instructions:
            key = (_system_of(history), _squeezed(text))
            self._seen[key] = None
            self._seen.move_to_end(key)
        while len(self._seen) > self.LIMIT:
            self._seen.popitem(last=False)

    def knows(self, history: List[Message], instructions: List[str]) -> bool:
        system = _system_of(history)
        return bool(instructions) and all((system, _squeezed(text)) in self._seen for text in instructions)


# One per recorder: requests are placed one at a time, in the order they finished.
_MEMORY = InstructionMemory()


def settle(
    asked: Request, endpoint: str = "", stream: bool = False, memory: Optional[InstructionMemory] = None
) -> Request:
    """The request with a trailing instruction read for what it asks (see the module docstring)."""
    memory = _MEMORY if memory is None else memory
    if any(_has_attached_files(m) for m in asked.history):
        asked = dataclasses.replace(asked, history=[_without_attached_files(m) for m in asked.history])
    history = asked.history
    if endpoint == CHAT_COMPLETIONS and not stream and _is_connection_test(history):
        return dataclasses.replace(asked, housekeeping="connection-test")
    end = len(history)
    while end and history[end - 1].get("role") == "system":
        end -= 1
    if asked.housekeeping:
        return asked  # the API already said what it is (a text-completion impersonation, ...)
    if asked.prefill or end == len(history) or not end:
        return _marked(asked)
    trailing = [_text(m) for m in history[end:]]
    kind = housekeeping_kind(history)  # a quiet prompt of a known extension (Summarize, ...) stays one
    if history[end - 1].get("role") == "user" and kind is None:
        memory.learn(history[:end], trailing)
        return _next_turn(asked, end, trailing)
    if history[end - 1].get("role") != "assistant":
        return _marked(asked)
    last = history[end - 1]
    spoken = [" ".join(text.lower().split()) for text in trailing]
    said = " ".join(_text(last).lower().split())
    continued = any(_CONTINUE.search(s) or (said and said in s and "continue" in s) for s in spoken)
    if continued and _plain(last) and kind is None:
        meta = dict(asked.meta, continued="nudge")
        return dataclasses.replace(asked, history=history[: end - 1], prefill=_text(last), meta=meta)
    if kind is None and not any(_IMPERSONATE.search(s) for s in spoken):
        if any(_GROUP_NUDGE.match(s) for s in spoken) or memory.knows(history[:end], trailing):
            return _next_turn(asked, end, trailing)
    kind = "impersonate" if any(_IMPERSONATE.search(s) for s in spoken) else (kind or "quiet-prompt")
    ask: Message = {"role": "user", "content": " ".join(trailing)}
    meta = dict(asked.meta, side_request=kind)
    return dataclasses.replace(asked, history=history[:end] + [ask], meta=meta, housekeeping=kind)


def _has_attached_files(message: Message) -> bool:
    content = message.get("content")
    return message.get("role") == "user" and isinstance(content, str) and "<attached_files>" in content[:200]


def _without_attached_files(message: Message) -> Message:
    """The user message as the frontend stored it: Open WebUI's `<attached_files>` block left out."""
    if not _has_attached_files(message):
        return message
    return dict(message, content=_ATTACHED_FILES.sub("", message["content"], count=1))


def _next_turn(asked: Request, end: int, trailing: List[str]) -> Request:
    """The reply is the chat's next turn; the instructions that asked for it go to meta, the speaker a
    group nudge names to the reply (`meta.speaker`) when the chat's replies carry their names."""
    history = asked.history[:end]
    meta = dict(asked.meta, instructions=trailing)
    for text in trailing:
        nudge = _GROUP_NUDGE.match(" ".join(text.split()))
        if nudge and any(_SPEAKER.match(_text(m)) for m in history if m.get("role") == "assistant"):
            meta["speaker"] = nudge.group(1)
    return dataclasses.replace(asked, history=history, meta=meta)


def joined(asked: Request, message: Message) -> Message:
    """The reply as the frontend shows it: after the prefill it continues, after the open speaker name,
    or after the speaker's name a group chat's nudge asked for."""
    content = message.get("content")
    if not isinstance(content, str):
        return message
    names = asked.meta.get("names") or {}
    if asked.meta.get("continued") == "nudge":
        separator = "" if content[:1].isspace() or asked.prefill[-1:].isspace() else " "
        return dict(message, content=asked.prefill + separator + content)
    if asked.prefill:
        if asked.prefill[-1:].isspace():
            content = content.lstrip()  # "Bob: " + " Hi": the template's name and its space come first
        return dict(message, content=asked.prefill + content)
    speaker = asked.meta.get("speaker")
    if speaker and not content.lstrip().startswith(speaker + ":"):
        return dict(message, content=f"{speaker}: {content.lstrip()}")
    if "assistant" in names:
        return dict(message, content=content.lstrip())  # the space after the "Name:" the template stripped
    return message


def _is_connection_test(history: List[Message]) -> bool:
    """SillyTavern's API Connections -> Test Message (public/scripts/openai.js testApiConnection, a quiet
    request): one user message "Hi", not streamed, with no system prompt, character or history."""
    if len(history) != 1:
        return False
    only = history[0]
    return only.get("role") == "user" and only.get("content") == "Hi" and not set(only) - {"role", "content"}


def _marked(asked: Request) -> Request:
    if asked.prefill and "continued" not in asked.meta:
        return dataclasses.replace(asked, meta=dict(asked.meta, continued="prefill"))
    return asked


def _system_of(history: List[Message]) -> str:
    first = history[0] if history else {}
    return _squeezed(_text(first)) if first.get("role") == "system" else ""


def _squeezed(text: str) -> str:
    return "".join(text.split())


def _text(message: Message) -> str:
    content = message.get("content")
    return content if isinstance(content, str) else ""


def _plain(message: Message) -> bool:
    return not (set(message) - {"role", "content"}) and bool(_text(message))


__all__: List[str] = ["InstructionMemory", "joined", "settle"]
