"""Requests built from a chat's history that are not its next turn: Continue, Impersonate, quiet prompts.

SillyTavern (1.12) sends several kinds of request as the chat plus one final system message after the last
assistant turn. What that instruction asks decides what the reply is:

- **Continue** ("[Continue the following message. Do not include ANY parts of the original message. Use
  capitalization and punctuation as if your reply is a part of the original message: <the message>]"): the
  reply goes on with the assistant's last message. The nudge and that message leave the history, the
  message becomes the prefill and `meta.continued` is "nudge". SillyTavern joins the two with a separator of
  its own (a space by default), so a reply that does not start with whitespace is joined with one space;
  the next request shows the join the frontend really made, and the thread tree takes that text.
- **Group nudge** ("[Write the next reply only as <character>.]"): the next turn of a group chat. The nudge
  changes with every turn, so it is left out and the reply is the next assistant turn.
- Anything else is a **side request**: Impersonate ("[Write your next reply from the point of view of
  <user>…]": the reply goes into the user's input box) and `/gen` or extensions' quiet prompts (the reply
  goes to a pipe, a variable or a toast). None of them is a turn of the chat, so like housekeeping calls
  they are not recorded unless --record-all; then the instruction is recorded as the user turn it acts as
  (`meta.side_request` names the kind), on a branch of its own that leaves the chat's record in place.

SillyTavern's Test Message (API Connections: a lone, unstreamed user "Hi" over Chat Completions) is a
connection check, skipped the same way ("connection-test").

A history that ends in the assistant's own words with no instruction after it is a prefill (extract.py);
its record gets `meta.continued` "prefill", so it too replaces the record of the message it continued.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING, Any, Dict, List

CHAT_COMPLETIONS = "chat.completions"  # chatproxy.apis.CHAT_COMPLETIONS: the Chat Completions API's name

if TYPE_CHECKING:  # chats/ is the conversation as data: it does not depend on the wire APIs
    from chatproxy.apis import Request

Message = Dict[str, Any]

# Phrases of SillyTavern's default prompts (public/scripts/openai.js default_continue_nudge_prompt,
# default_impersonation_prompt, default_group_nudge_prompt), compared on lower-cased, space-collapsed text.
_CONTINUE = re.compile(r"continue the following message")
_GROUP_NUDGE = re.compile(r"^\[?write the next reply only as [^\]]+\]?$")
_IMPERSONATE = re.compile(r"write your next reply from the point of view of")


def settle(asked: Request, endpoint: str = "", stream: bool = False) -> Request:
    """The request with a trailing instruction read for what it asks (see the module docstring)."""
    history = asked.history
    if endpoint == CHAT_COMPLETIONS and not stream and _is_connection_test(history):
        return dataclasses.replace(asked, housekeeping="connection-test")
    end = len(history)
    while end and history[end - 1].get("role") == "system":
        end -= 1
    if asked.prefill or end == len(history) or not end or history[end - 1].get("role") != "assistant":
        return _marked(asked)
    last = history[end - 1]
    instruction = " ".join(_text(m) for m in history[end:])
    spoken = " ".join(instruction.lower().split())
    said = " ".join(_text(last).lower().split())
    if (_CONTINUE.search(spoken) or (said and said in spoken and "continue" in spoken)) and _plain(last):
        meta = dict(asked.meta, continued="nudge")
        return dataclasses.replace(asked, history=history[: end - 1], prefill=_text(last), meta=meta)
    if _GROUP_NUDGE.match(spoken):
        return dataclasses.replace(asked, history=history[:end])
    kind = "impersonate" if _IMPERSONATE.search(spoken) else "quiet-prompt"
    ask: Message = {"role": "user", "content": instruction}
    meta = dict(asked.meta, side_request=kind)
    return dataclasses.replace(asked, history=history[:end] + [ask], meta=meta, housekeeping=kind)


def joined(asked: Request, message: Message) -> Message:
    """The reply as the frontend shows it: after the prefill it continues, or after the open speaker name."""
    content = message.get("content")
    if not isinstance(content, str):
        return message
    names = asked.meta.get("names") or {}
    if asked.meta.get("continued") == "nudge":
        separator = "" if content[:1].isspace() or asked.prefill[-1:].isspace() else " "
        return dict(message, content=asked.prefill + separator + content)
    if asked.prefill:
        return dict(message, content=asked.prefill + content)
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


def _text(message: Message) -> str:
    content = message.get("content")
    return content if isinstance(content, str) else ""


def _plain(message: Message) -> bool:
    return not (set(message) - {"role", "content"}) and bool(_text(message))


__all__: List[str] = ["joined", "settle"]
