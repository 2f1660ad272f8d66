"""Text-completion prompt -> the chat turns it was rendered from.

Frontends in text-completion mode (SillyTavern, KoboldAI Lite, scripts calling /v1/completions) render the
whole conversation through an instruct template before sending it. `parse_prompt` undoes that rendering so
the completion can be recorded as the conversation it is:

    <|im_start|>system\\nBe brief.<|im_end|>\\n<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHel
    -> messages [system "Be brief.", user "Hi"], template "chatml", prefill "Hel"

Templates, tried in this order (most specific markers first):

* Role blocks: ChatML (`<|im_start|>role\\n...<|im_end|>`), Llama 3 (`<|start_header_id|>role<|end_header_id|>
  ...<|eot_id|>`), Gemma (`<start_of_turn>role\\n...<end_of_turn>`, and Gemma 4's `<|turn>`/`<turn|>`; "model"
  is the assistant). A role that is not a known role is a speaker's name (SillyTavern's "-Names" presets):
  the name on the final open block is the assistant, every other name is the user.
* Mistral / Llama 2: `[INST] user [/INST] answer</s>`, with or without the spaces; a `<<SYS>>` block or a
  `[SYSTEM_PROMPT]` block becomes a system message, a system prompt merged into an [INST] stays user text.
* Alpaca (`### Instruction:` / `### Input:` / `### Response:`), Vicuna (`USER: ... ASSISTANT: ...</s>`), and
  the plain "Name: text" transcript; their text before the first turn marker is the system prompt.

Text before the first block or marker (SillyTavern's story string when the context template does not wrap it
in a system block) is the system turn. The final open assistant turn is not a message: its text is `prefill`
("" for a bare header, and always "" for a transcript, which ends on the bare "Name:"); a final open user
block (SillyTavern's Impersonate) sets `open_role` "user". BOS/EOS tokens and surrounding whitespace are
stripped from every text, and empty turns are dropped.

Speaker names. SillyTavern's presets write the speaker's name into each turn ("Alex: Hi.", and the open
"Seraphina:" the model is to go on from); its chat-completion requests and its saved chat do not carry them.
When the open assistant turn starts with a name, that name is the template's: it is stripped from every
assistant turn that starts with it, and the one name every user turn starts with likewise, so records of
text and chat completions agree. `names` says what was stripped ({"user": ..., "assistant": ...}). In a
group chat (assistant turns spoken by more than one character) the names are what tells the speakers
apart: they are kept in the text, and `names` lists {"speakers": [...]}.

Anything unrecognised, or recognised and then inconsistent (an unterminated block, stray text between
blocks, an unmatched [/INST]), is kept whole as one user message with template "none": a wrong split would
corrupt the record, a missed one only leaves it less tidy. So the token-based templates are strict (the
prompt must start with their markers), and the loose ones ask for more than one marker before they accept.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

# (canonical role, raw text) before cleaning.
Turn = Tuple[str, str]


@dataclass(frozen=True)
class ParsedPrompt:
    messages: list[dict[str, Any]]  # canonical system/user/assistant turns from the prompt
    template: str  # "chatml", "llama3", "gemma", "mistral", "alpaca", "vicuna", "transcript" or "none"
    prefill: str  # text of an assistant turn left open at the end ("" for a bare open header)
    names: Optional[Dict[str, Any]] = None  # the speaker names the template supplied (see above)
    open_role: str = "assistant"  # whose turn the prompt leaves open: "user" for an impersonation


class _Inconsistent(Exception):
    """A template's markers are present but do not form a prompt in that template."""


def parse_prompt(prompt: str) -> ParsedPrompt:
    """Split a rendered text-completion prompt back into canonical messages; never raises."""
    try:
        for syntax in _BLOCK_SYNTAXES:
            if syntax.opener in prompt:
                return _with_names(_parse_blocks(prompt, syntax))
        if "[INST]" in prompt and "[/INST]" in prompt:
            return _with_names(_parse_mistral(prompt))
    except _Inconsistent:
        return _unparsed(prompt)
    for parser in (_parse_alpaca, _parse_vicuna):
        parsed = parser(prompt)
        if parsed is not None:
            return _with_names(parsed)
    parsed = _parse_transcript(prompt)
    return parsed if parsed is not None else _unparsed(prompt)


def _unparsed(prompt: str) -> ParsedPrompt:
    return ParsedPrompt([{"role": "user", "content": prompt}], "none", "")


# ---------------------------------------------------------------------------------------------------------
# Shared cleaning
# ---------------------------------------------------------------------------------------------------------

# BOS/EOS spellings of the template families above. Only stripped at the ends of a text: "<s>" in the middle
# of a message is as likely an HTML strikethrough the user typed.
_SPECIAL_TOKENS = ("<s>", "</s>", "<|begin_of_text|>", "<|end_of_text|>", "<bos>", "<eos>", "<|endoftext|>")


def _clean(text: str) -> str:
    previous = None
    while text != previous:
        previous = text
        text = text.strip()
        for token in _SPECIAL_TOKENS:
            if text.startswith(token):
                text = text[len(token) :]
            if text.endswith(token):
                text = text[: -len(token)]
    return text


def _check_preamble(text: str) -> None:
    """Text before a template's first marker is a story string only when it ends its own line: a marker in
    the middle of a sentence ("What does <|im_start|> do?") is prose that mentions it."""
    if _clean(text) and not text.rstrip(" \t").endswith("\n"):
        raise _Inconsistent("text before the first marker")


def _finish(template: str, turns: List[Turn], prefill: str) -> ParsedPrompt:
    messages = []
    for role, text in turns:
        content = _clean(text)
        if content:
            messages.append({"role": role, "content": content})
    return ParsedPrompt(messages, template, _clean_start(prefill))


def _clean_start(prefill: str) -> str:
    """The prefill without the whitespace and BOS before it; the whitespace it ends with stays, since the
    reply is joined to it exactly ("Sure, " + "here")."""
    cleaned = _clean(prefill)
    return prefill[prefill.index(cleaned) :] if cleaned else ""


# ---------------------------------------------------------------------------------------------------------
# Role blocks: ChatML, Llama 3, Gemma
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _BlockSyntax:
    template: str
    opener: str  # starts a block; the role follows
    header_end: str  # ends the role
    closer: str  # ends the block's text
    roles: Dict[str, str]  # lower-cased role header -> canonical role


_CHATML_ROLES = {"system": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
_LLAMA3_ROLES = {**_CHATML_ROLES, "ipython": "tool"}
_GEMMA_ROLES = {"system": "system", "user": "user", "model": "assistant"}  # "system" is SillyTavern's own
_BLOCK_SYNTAXES = (
    _BlockSyntax("chatml", "<|im_start|>", "\n", "<|im_end|>", _CHATML_ROLES),
    _BlockSyntax("llama3", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", _LLAMA3_ROLES),
    _BlockSyntax("gemma", "<start_of_turn>", "\n", "<end_of_turn>", _GEMMA_ROLES),
    _BlockSyntax("gemma", "<|turn>", "\n", "<turn|>", _GEMMA_ROLES),  # Gemma 4
)

# A role header: a role or a speaker's name, nothing that reads like prose.
_HEADER = re.compile(r"[^\W\d_][\w .'\-]{0,63}")


def _parse_blocks(prompt: str, syntax: _BlockSyntax) -> ParsedPrompt:
    preamble, blocks = _split_blocks(prompt, syntax)
    last_header, last_body, last_closed = blocks[-1]
    # The name on the final open block is the one the frontend asks the model to speak as.
    speaker = None if last_closed or last_header.lower() in syntax.roles else last_header
    turns = [("system", preamble)] + [(_block_role(header, syntax, speaker), body) for header, body, _ in blocks]
    if not last_closed and turns[-1][0] == "assistant":
        return _finish(syntax.template, turns[:-1], turns[-1][1])
    if not last_closed and turns[-1][0] == "user":
        # The user's own turn left open: the frontend asks the model to write it (Impersonate).
        return dataclasses.replace(_finish(syntax.template, turns[:-1], turns[-1][1]), open_role="user")
    return _finish(syntax.template, turns, "")


def _split_blocks(prompt: str, syntax: _BlockSyntax) -> Tuple[str, List[Tuple[str, str, bool]]]:
    """(text before the first block, [(header, body, closed) per block]); only the last block may be open."""
    preamble, *chunks = prompt.split(syntax.opener)
    if not chunks:
        raise _Inconsistent("no block")
    _check_preamble(preamble)
    blocks = []
    for index, chunk in enumerate(chunks):
        is_last = index == len(chunks) - 1
        header, found, rest = chunk.partition(syntax.header_end)
        if not found and not is_last:
            raise _Inconsistent("block without a role header")
        body, closed, tail = rest.partition(syntax.closer)
        if (closed and _clean(tail)) or (not closed and not is_last):
            raise _Inconsistent("text outside a block")
        header = header.strip()
        if not _HEADER.fullmatch(header):
            raise _Inconsistent(f"bad role header {header!r}")
        blocks.append((header, body, bool(closed)))
    return preamble, blocks


def _block_role(header: str, syntax: _BlockSyntax, speaker: Optional[str]) -> str:
    role = syntax.roles.get(header.lower())
    if role is not None:
        return role
    return "assistant" if header == speaker else "user"


# ---------------------------------------------------------------------------------------------------------
# Mistral / Llama 2
# ---------------------------------------------------------------------------------------------------------

_MISTRAL_TOKEN = re.compile(r"\[/?INST\]|\[/?SYSTEM_PROMPT\]|<</?SYS>>")
_SYSTEM_BLOCKS = {"<<SYS>>": "<</SYS>>", "[SYSTEM_PROMPT]": "[/SYSTEM_PROMPT]"}  # opener -> closer


def _parse_mistral(prompt: str) -> ParsedPrompt:
    pieces = _mistral_pieces(prompt)
    _check_preamble(pieces[0][1])
    turns: List[Turn] = [("system", pieces[0][1])]  # a story string before the first marker
    user: Optional[List[str]] = None  # text of the [INST] span being read, None outside one
    for index in range(1, len(pieces)):
        marker, text = pieces[index]
        previous = pieces[index - 1][0]
        following = pieces[index + 1][0] if index + 1 < len(pieces) else None
        if marker == "[INST]":
            _flush_user(turns, user)
            user = [text]
        elif marker == "[/INST]":
            if user is None:
                raise _Inconsistent("[/INST] without [INST]")
            _flush_user(turns, user)
            user = None
            turns.append(("assistant", text))
        elif marker in _SYSTEM_BLOCKS:
            if following != _SYSTEM_BLOCKS[marker] or (marker == "[SYSTEM_PROMPT]" and user is not None):
                raise _Inconsistent(f"unclosed or misplaced {marker}")
            turns.append(("system", text))
        elif previous not in _SYSTEM_BLOCKS:
            raise _Inconsistent(f"{marker} without its opener")
        elif marker == "<</SYS>>" and user is not None:
            user.append(text)  # Llama 2: the first user message follows the system block inside [INST]
        elif _clean(text):
            raise _Inconsistent(f"text after {marker}")
    return _mistral_finish(turns, user, pieces[-1])


def _mistral_pieces(prompt: str) -> List[Tuple[Optional[str], str]]:
    """[(marker, text up to the next marker)], starting with (None, text before the first one)."""
    pieces: List[Tuple[Optional[str], str]] = []
    marker, start = None, 0
    for match in _MISTRAL_TOKEN.finditer(prompt):
        pieces.append((marker, prompt[start : match.start()]))
        marker, start = match.group(), match.end()
    pieces.append((marker, prompt[start:]))
    return pieces


def _flush_user(turns: List[Turn], user: Optional[List[str]]) -> None:
    # An [INST] holding nothing but a <<SYS>> block (SillyTavern's Llama 2 preset) leaves no user turn.
    if user is not None and _clean("".join(user)):
        turns.append(("user", "".join(user)))


def _mistral_finish(turns: List[Turn], user: Optional[List[str]], last: Tuple[Optional[str], str]) -> ParsedPrompt:
    _flush_user(turns, user)
    marker, text = last
    prefill = ""
    # After the last [/INST] the answer is open unless an EOS already closed it.
    if marker == "[/INST]" and not text.rstrip().endswith("</s>"):
        prefill = turns.pop()[1]
    return _finish("mistral", turns, prefill)


# ---------------------------------------------------------------------------------------------------------
# Alpaca
# ---------------------------------------------------------------------------------------------------------

_ALPACA_HEADER = re.compile(r"^### (Instruction|Input|Response):[ \t]*\n?", re.MULTILINE)


def _parse_alpaca(prompt: str) -> Optional[ParsedPrompt]:
    headers = list(_ALPACA_HEADER.finditer(prompt))
    kinds = [header.group(1) for header in headers]
    if "Instruction" not in kinds or kinds[-1] != "Response":
        return None
    turns: List[Turn] = [("system", prompt[: headers[0].start()])]
    for index, header in enumerate(headers):
        end = headers[index + 1].start() if index + 1 < len(headers) else len(prompt)
        body, kind = prompt[header.end() : end], header.group(1)
        previous = kinds[index - 1] if index else None
        if kind == "Response":
            if previous == "Response":
                return None
            turns.append(("assistant", body))
        elif kind == "Input" and previous == "Instruction":
            # The optional input belongs to the instruction it follows.
            turns[-1] = ("user", _clean(turns[-1][1]) + "\n\n" + _clean(body))
        else:
            turns.append(("user", body))
    prefill = turns.pop()[1]
    return _finish("alpaca", turns, prefill)


# ---------------------------------------------------------------------------------------------------------
# Vicuna
# ---------------------------------------------------------------------------------------------------------

# A role marker starts the prompt or follows whitespace or an EOS, as FastChat's " " and "</s>" separators do.
_VICUNA_ROLE = re.compile(r"(?:^|(?<=\s)|(?<=</s>))(USER|ASSISTANT):")
_VICUNA_SYSTEM_LABEL = re.compile(r"^\s*SYSTEM:")


def _parse_vicuna(prompt: str) -> Optional[ParsedPrompt]:
    marks = list(_VICUNA_ROLE.finditer(prompt))
    roles = [mark.group(1) for mark in marks]
    # Strict alternation to a final ASSISTANT (from USER, or from a greeting): a text that merely
    # mentions "USER:" is no chat.
    alternating = all(first != second for first, second in zip(roles, roles[1:]))
    if len(marks) < 2 or not alternating or roles[-1] != "ASSISTANT":
        return None
    preamble = _VICUNA_SYSTEM_LABEL.sub("", prompt[: marks[0].start()])
    turns: List[Turn] = [("system", preamble)]
    for index, mark in enumerate(marks):
        end = marks[index + 1].start() if index + 1 < len(marks) else len(prompt)
        turns.append(("user" if mark.group(1) == "USER" else "assistant", prompt[mark.end() : end]))
    prefill = turns.pop()[1]
    return _finish("vicuna", turns, prefill)


# ---------------------------------------------------------------------------------------------------------
# "Name: text" transcript (SillyTavern without an instruct template)
# ---------------------------------------------------------------------------------------------------------

_NAME = r"[^\W\d_](?:[\w .'\-]{0,38}[\w.'\-])?"
_SPEAKER_LINE = re.compile(rf"^({_NAME}):(?=[ \t]|$)", re.MULTILINE)
_OPEN_SPEAKER = re.compile(rf"(?:^|\n)({_NAME}):\s*\Z")
# SillyTavern's chat-start separators ("***" in the Default context, "<START>" in older ones): the last one
# ends the character card and example dialogues, whose "Name:" lines are not part of the chat.
_CHAT_START = re.compile(r"^[ \t]*(?:\*\*\*|<START>)[ \t]*$", re.MULTILINE)


def _parse_transcript(prompt: str) -> Optional[ParsedPrompt]:
    final = _OPEN_SPEAKER.search(prompt)
    if final is None:
        return None
    assistant, body = final.group(1), prompt[: final.start(1)]
    labels = [(match.group(1), match.start(), match.end()) for match in _SPEAKER_LINE.finditer(body)]
    user = _pick_user(labels, assistant)
    # Both speakers must have spoken before: "Question: ...\nAnswer:" is a completion, not a chat.
    if user is None or assistant not in [name for name, _, _ in labels]:
        return None
    chat_from, preamble_end = _chat_bounds(body, [start for name, start, _ in labels if name in (assistant, user)])
    turns = [(name, start, end) for name, start, end in labels if name in (assistant, user) and start >= chat_from]
    if user not in [name for name, _, _ in turns]:
        return None
    messages: List[Turn] = [("system", body[:preamble_end] + body[chat_from : turns[0][1]])]
    for index, (name, _, end) in enumerate(turns):
        stop = turns[index + 1][1] if index + 1 < len(turns) else len(body)
        messages.append(("assistant" if name == assistant else "user", body[end:stop]))
    return dataclasses.replace(_finish("transcript", messages, ""), names={"user": user, "assistant": assistant})


def _pick_user(labels: List[Tuple[str, int, int]], assistant: str) -> Optional[str]:
    """The other speaker: the most frequent other label, the latest one on a tie (card fields come first)."""
    others = [name for name, _, _ in labels if name != assistant]
    if not others:
        return None
    counts = Counter(others)
    latest = {name: index for index, name in enumerate(others)}
    return max(counts, key=lambda name: (counts[name], latest[name]))


def _chat_bounds(body: str, speaker_starts: List[int]) -> Tuple[int, int]:
    """(where the chat starts, where the preamble ends): split at the last separator followed by a turn."""
    for separator in reversed(list(_CHAT_START.finditer(body))):
        if any(start >= separator.end() for start in speaker_starts):
            return separator.end(), separator.start()
    return 0, 0


# ---------------------------------------------------------------------------------------------------------
# Speaker names the template wrote into the turns
# ---------------------------------------------------------------------------------------------------------

_NAME_PREFIX = re.compile(rf"({_NAME}):(?:[ \t]+|\Z)")


def _name_of(text: str) -> Optional[str]:
    match = _NAME_PREFIX.match(text)
    return match.group(1) if match else None


def _without_name(text: str, name: str) -> str:
    return text[len(name) + 1 :].lstrip(" \t") if text.startswith(name + ":") else text


def _with_names(parsed: ParsedPrompt) -> ParsedPrompt:
    """Strip the names the template put before each turn, when the open assistant turn starts with one."""
    assistant = _name_of(parsed.prefill) if parsed.open_role == "assistant" else None
    if assistant is None:
        return parsed
    answers = [m["content"] for m in parsed.messages if m["role"] == "assistant"]
    asks = [m["content"] for m in parsed.messages if m["role"] == "user"]
    characters = {assistant, *(name for name in map(_name_of, answers) if name is not None)}
    if len(characters) > 1:  # a group chat: the names tell the characters apart
        speakers = sorted(characters | {name for name in map(_name_of, asks) if name is not None})
        return dataclasses.replace(parsed, names={"speakers": speakers})
    names: Dict[str, Any] = {"assistant": assistant}
    user_names = {_name_of(text) for text in asks}
    user = user_names.pop() if len(user_names) == 1 else None
    if user is not None and user != assistant:
        names["user"] = user
    messages = []
    for message in parsed.messages:
        name = names.get(message["role"]) if message["role"] in ("user", "assistant") else None
        content = _without_name(message["content"], name) if name else message["content"]
        if content:
            messages.append(dict(message, content=content))
    return dataclasses.replace(parsed, messages=messages, prefill=_without_name(parsed.prefill, assistant), names=names)
