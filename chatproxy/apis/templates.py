"""Text-completion prompt -> the chat turns it was rendered from.

Frontends in text-completion mode (SillyTavern, KoboldAI Lite, scripts calling /v1/completions) render the
whole conversation through an instruct template before sending it. `parse_prompt` undoes that rendering so
the completion can be recorded as the conversation it is:

    <|im_start|>system\\nBe brief.<|im_end|>\\n<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHel
    -> messages [system "Be brief.", user "Hi"], template "chatml", prefill "Hel"

Templates, tried in this order (most specific markers first):

* Role blocks: ChatML (`<|im_start|>role\\n...<|im_end|>`), Llama 3 (`<|start_header_id|>role<|end_header_id|>
  ...<|eot_id|>`), Gemma (`<start_of_turn>role\\n...<end_of_turn>`, and Gemma 4's `<|turn>`/`<turn|>`; "model"
  is the assistant). A role that is not a known role is a speaker's name (SillyTavern's "-Names" presets,
  `<|im_start|>[Alex]`): one of them is the user's (the request's stop strings say which), the others are
  characters; an open block named "System" is SillyTavern's quiet prompt.
* Mistral / Llama 2: `[INST] user [/INST] answer</s>`, with or without the spaces; a `<<SYS>>` block or a
  `[SYSTEM_PROMPT]` block becomes a system message, a system prompt merged into an [INST] stays user text.
* Alpaca (`### Instruction:` / `### Input:` / `### Response:`), Vicuna (`USER: ... ASSISTANT: ...</s>`), and
  the plain "Name: text" transcript; their text before the first turn marker is the system prompt.

Text before the first block or marker (SillyTavern's story string when the context template does not wrap it
in a system block) is the system turn. The final open assistant turn is not a message: its text is `prefill`
("" for a bare header, and always "" for a transcript, which ends on the bare "Name:"); a final open user
turn (SillyTavern's Impersonate) sets `open_role` "user", and `side` says the prompt asks for no turn of the
chat ("impersonate", "quiet-prompt"). BOS/EOS tokens and surrounding whitespace are stripped from every
text, and empty turns are dropped. SillyTavern's presets add turns of their own (the Mistral contexts'
canned "Understood.", the Mistral and Llama 2 "user alignment message"): they leave the chat for
`template_text`, so the card is the system turn and the greeting the first assistant turn.

Speaker names. SillyTavern's presets write the speaker's name into each turn ("Alex: Hi.", and the open
"Seraphina:" the model is to go on from); its chat-completion requests and its saved chat do not carry them.
When the open assistant turn starts with a name, that name is the template's: it is stripped from every
assistant turn that starts with it, and the one name every user turn starts with likewise, so records of
text and chat completions agree. `names` says what was stripped ({"user": ..., "assistant": ...}). In a
group chat the characters' names are what tells the speakers apart: every character's turn keeps "Name: "
(or gets it from its role header), the user's name goes, and `names` lists {"speakers": [...], "user": ...}.
Where the template writes every reply's name but the open turn has none, the prompt is a quiet prompt.

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
from typing import Any, Dict, List, Optional, Sequence, Tuple

# (canonical role, raw text) before cleaning.
Turn = Tuple[str, str]


@dataclass(frozen=True)
class ParsedPrompt:
    messages: list[dict[str, Any]]  # canonical system/user/assistant turns from the prompt
    template: str  # "chatml", "llama3", "gemma", "mistral", "alpaca", "vicuna", "transcript" or "none"
    prefill: str  # text of an assistant turn left open at the end ("" for a bare open header)
    names: Optional[Dict[str, Any]] = None  # the speaker names the template supplied (see above)
    open_role: str = "assistant"  # whose turn the prompt leaves open: "user" for an impersonation
    side: Optional[str] = None  # "impersonate" or "quiet-prompt": not the chat's next turn (see above)
    template_text: Tuple[str, ...] = ()  # the presets' own turns left out of the chat (see above)


class _Inconsistent(Exception):
    """A template's markers are present but do not form a prompt in that template."""


def parse_prompt(prompt: str, stops: Sequence[str] = ()) -> ParsedPrompt:
    """Split a rendered text-completion prompt back into canonical messages; never raises.

    `stops` are the request's stop strings: SillyTavern's name the user ("\\nAlex:", or the input
    sequence with the user's name in it), which tells the user from the characters where the template
    writes names into its role headers."""
    try:
        for syntax in _BLOCK_SYNTAXES:
            if syntax.opener in prompt:
                return _settled(_parse_blocks(prompt, syntax, stops), stops)
        if "[INST]" in prompt and "[/INST]" in prompt:
            return _settled(_parse_mistral(prompt), stops)
    except _Inconsistent:
        return _unparsed(prompt)
    for parser in (_parse_alpaca, _parse_vicuna):
        parsed = parser(prompt)
        if parsed is not None:
            return _settled(parsed, stops)
    parsed = _parse_transcript(prompt)
    return parsed if parsed is not None else _unparsed(prompt)


def _settled(parsed: ParsedPrompt, stops: Sequence[str] = ()) -> ParsedPrompt:
    """The presets' own turns left out, then the names they wrote read (both below)."""
    return _with_names(_without_template_turns(parsed), stops)


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


def _open_user(parsed: ParsedPrompt) -> ParsedPrompt:
    """The prompt ends in the user's own turn, left open for the model to write (SillyTavern's Impersonate)."""
    return dataclasses.replace(parsed, open_role="user", side="impersonate")


def _is_bare_label(text: str) -> bool:
    """Nothing, or only a speaker's name ("Alex:"): how an impersonation leaves the user's turn open. A
    loose template's last user turn with text in it is a prompt that was never finished, not a chat."""
    return not text.strip() or _OPEN_LABEL.fullmatch(text.strip()) is not None


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

# A role header: a role or a speaker's name, nothing that reads like prose; SillyTavern's "-Names" presets
# write the name in brackets ("<|im_start|>[Alex]").
_HEADER = re.compile(r"[^\W\d_][\w .'\-]{0,63}|\[[^\W\d_][\w .'\-]{0,63}\]")


_QUIET_SPEAKER = "System"


def _parse_blocks(prompt: str, syntax: _BlockSyntax, stops: Sequence[str] = ()) -> ParsedPrompt:
    preamble, blocks = _split_blocks(prompt, syntax)
    last_closed = blocks[-1][2]
    named = [None if header.lower() in syntax.roles else header.strip("[]") for header, _, _ in blocks]
    # The name on the final open block is the one the frontend asks the model to speak as.
    speaker = None if last_closed else named[-1]
    user = _user_name([name for name in named if name], speaker, stops, syntax)
    characters = list(dict.fromkeys(name for name in named if name and name != user))
    group = len(characters) > 1 or bool(_stop_names(stops) - {user, speaker})
    turns: List[Turn] = [("system", preamble)]
    for (header, body, closed), name in zip(blocks, named):
        role = syntax.roles.get(header.lower()) or ("user" if name == user else "assistant")
        if name and _name_of(_clean(body)) == name:
            body = _without_name(_clean(body), name)  # the name in the header and again in the text
        if role == "assistant" and name and group and (_clean(body) or not closed):
            body = f"{name}: {_clean(body)}"  # a group chat: the transcript shows who speaks
        turns.append((role, body))
    if speaker == _QUIET_SPEAKER and user != speaker:
        # SillyTavern's quiet prompts (/gen, extensions) ask for text "as" System, a name no chat has.
        return dataclasses.replace(_finish(syntax.template, turns[:-1], ""), side="quiet-prompt")
    if last_closed or turns[-1][0] not in ("assistant", "user"):
        parsed = _finish(syntax.template, turns, "")
    else:
        parsed = _finish(syntax.template, turns[:-1], turns[-1][1])
        if turns[-1][0] == "user":
            parsed = _open_user(parsed)
    if not characters:
        return parsed
    names: Dict[str, Any] = {"speakers": sorted(characters)} if group else {"assistant": characters[0]}
    if user is not None:
        names["user"] = user
    return dataclasses.replace(parsed, names=names)


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


def _block_role(header: str, syntax: _BlockSyntax, user: Optional[str]) -> str:
    role = syntax.roles.get(header.lower())
    if role is not None:
        return role
    return "user" if header.strip("[]") == user else "assistant"


def _stop_names(stops: Sequence[str]) -> set[str]:
    """The speakers SillyTavern's stop strings name, each as exactly "\\nAlex:" (its instruct sequences, such
    as Vicuna's "USER: ", are not names): the user and, in a group, the other members."""
    return {stop[1:-1] for stop in stops if stop[:1] == "\n" and _OPEN_LABEL.fullmatch(stop[1:])}


def _user_name(named: List[str], speaker: Optional[str], stops: Sequence[str], syntax: _BlockSyntax) -> Optional[str]:
    """Which of the names in the role headers is the user's. SillyTavern's stop strings say it: its
    instruct stops hold the user's own header (the open block is the user's in an impersonation), its
    name stops start with "\\nAlex:". Without them: the other name, or in a group the most frequent
    one that is not the open block's (the user speaks between the characters), the latest on a tie."""
    for stop in stops:
        for name in dict.fromkeys(named):
            if syntax.opener + "[" + name + "]" in stop or stop.strip() == syntax.opener + name:
                return name
    others = [name for name in named if name != speaker]
    if not others:
        return None
    for stop in stops:
        label = stop.strip()
        if label.endswith(":") and label[:-1] in others:
            return label[:-1]
    counts = Counter(others)
    latest = {name: index for index, name in enumerate(others)}
    return max(counts, key=lambda name: (counts[name], latest[name]))


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
            closed_answer = turns[-1][0] == "assistant" and turns[-1][1].rstrip().endswith("</s>")
            if user is None and not closed_answer:  # consecutive answers: a group chat's characters
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
    marker, text = last
    if marker == "[INST]" and user is not None:  # the user's own turn left open: an impersonation
        return _open_user(_finish("mistral", turns, "".join(user)))
    _flush_user(turns, user)
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
    if "Instruction" not in kinds or kinds[-1] == "Input" or (kinds[-1] == "Instruction" and "Response" not in kinds):
        return None
    turns: List[Turn] = [("system", prompt[: headers[0].start()])]
    for index, header in enumerate(headers):
        end = headers[index + 1].start() if index + 1 < len(headers) else len(prompt)
        body, kind = prompt[header.end() : end], header.group(1)
        previous = kinds[index - 1] if index else None
        if kind == "Response":
            turns.append(("assistant", body))  # one after another: a group chat's characters
        elif kind == "Input" and previous == "Instruction":
            # The optional input belongs to the instruction it follows.
            turns[-1] = ("user", _clean(turns[-1][1]) + "\n\n" + _clean(body))
        elif kind == "Input":
            turns.append(("system", body))  # SillyTavern's Alpaca writes system messages as "### Input:"
        else:
            turns.append(("user", body))
    prefill = turns.pop()[1]
    parsed = _finish("alpaca", turns, prefill)
    if kinds[-1] != "Instruction":
        return parsed
    return _open_user(parsed) if _is_bare_label(parsed.prefill) else None


# ---------------------------------------------------------------------------------------------------------
# Vicuna
# ---------------------------------------------------------------------------------------------------------

# A role marker starts the prompt or follows whitespace or an EOS, as FastChat's " " and "</s>" separators do.
_VICUNA_ROLE = re.compile(r"(?:^|(?<=\s)|(?<=</s>))(USER|ASSISTANT):")
_VICUNA_SYSTEM_LABEL = re.compile(r"^\s*SYSTEM:")


def _parse_vicuna(prompt: str) -> Optional[ParsedPrompt]:
    marks = list(_VICUNA_ROLE.finditer(prompt))
    roles = [mark.group(1) for mark in marks]
    # Strict alternation to a final ASSISTANT (from USER, or from a greeting), or to an open USER after a
    # whole exchange (an impersonation): a text that merely mentions "USER:" is no chat. Answers closed by an
    # EOS may follow one another (a group chat's characters).
    alternating = all(
        first != second or (first == "ASSISTANT" and prompt[: mark.start()].rstrip().endswith("</s>"))
        for first, second, mark in zip(roles, roles[1:], marks[1:])
    )
    if len(marks) < (2 if roles[-1:] == ["ASSISTANT"] else 3) or not alternating:
        return None
    preamble = _VICUNA_SYSTEM_LABEL.sub("", prompt[: marks[0].start()])
    turns: List[Turn] = [("system", preamble)]
    for index, mark in enumerate(marks):
        end = marks[index + 1].start() if index + 1 < len(marks) else len(prompt)
        turns.append(("user" if mark.group(1) == "USER" else "assistant", prompt[mark.end() : end]))
    prefill = turns.pop()[1]
    parsed = _finish("vicuna", turns, prefill)
    if roles[-1] != "USER":
        return parsed
    return _open_user(parsed) if _is_bare_label(parsed.prefill) else None


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
# The presets' own turns
# ---------------------------------------------------------------------------------------------------------

# SillyTavern 1.12's Mistral context templates answer their story string themselves ("[INST] card [/INST]
# Understood.</s>"), and its Mistral and Llama 2 instruct presets put a "user alignment message" before a chat
# that opens with the character's greeting (default/content/presets/*/Mistral*.json, Llama 2 Chat.json).
_ACKNOWLEDGEMENT = "Understood."
_ALIGNMENT = "Let's get started. Please respond based on the information and instructions provided above."


def _without_template_turns(parsed: ParsedPrompt) -> ParsedPrompt:
    """The card as the system turn and the greeting as the first assistant turn, as in the chat the
    frontend saves: the canned answer and the alignment message are the presets' text, kept in
    `template_text`; a card rendered as a user turn (Llama 2's inside [INST] with <<SYS>>, Gemma's in a
    user block) becomes part of the system turn when the chat's own user turns all carry a name."""
    messages, dropped = list(parsed.messages), []
    first = next((i for i, m in enumerate(messages) if m["role"] != "system"), len(messages))
    following = messages[first + 1 : first + 3]
    if len(following) == 2 and messages[first]["role"] == "user" and following[0] == _acknowledgement():
        dropped.append(_ACKNOWLEDGEMENT)
        messages[first : first + 2] = [dict(messages[first], role="system")]
    elif (
        parsed.template == "mistral" and first and [m["role"] for m in messages[first : first + 2]] == ["user", "user"]
    ):
        # Two [INST] spans with no answer between: the first is Llama 2's story string, not a question.
        joined = messages[first - 1]["content"] + "\n" + messages[first]["content"]
        messages[first - 1 : first + 1] = [dict(messages[first - 1], content=joined)]
        first -= 1
    answer = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), None)
    if answer and messages[answer - 1]["role"] == "user" and _unnamed(messages[answer - 1]["content"]) == _ALIGNMENT:
        dropped.append(_unnamed(messages.pop(answer - 1)["content"]))
    if _is_unnamed_card(messages):
        first = next(i for i, m in enumerate(messages) if m["role"] != "system")
        messages[first] = dict(messages[first], role="system")
    if messages == parsed.messages:
        return parsed
    return dataclasses.replace(parsed, messages=messages, template_text=parsed.template_text + tuple(dropped))


def _acknowledgement() -> Dict[str, Any]:
    return {"role": "assistant", "content": _ACKNOWLEDGEMENT}


def _unnamed(text: str) -> str:
    name = _name_of(text)
    return _without_name(text, name) if name else text


def _is_unnamed_card(messages: List[Dict[str, Any]]) -> bool:
    """A first user turn with no name, answered by the greeting, in a chat whose user turns all start
    with one name: the card, in the user block of a template that has no system role."""
    first = next((i for i, m in enumerate(messages) if m["role"] != "system"), None)
    if first is None or first + 1 >= len(messages) or messages[first]["role"] != "user":
        return False
    if messages[first + 1]["role"] != "assistant" or _name_of(messages[first]["content"]) is not None:
        return False
    later = {_name_of(m["content"]) for m in messages[first + 1 :] if m["role"] == "user"}
    return len(later) == 1 and None not in later


# ---------------------------------------------------------------------------------------------------------
# Speaker names the template wrote into the turns
# ---------------------------------------------------------------------------------------------------------

_NAME_PREFIX = re.compile(rf"({_NAME}):(?:[ \t]+|\Z)")
_OPEN_LABEL = re.compile(rf"{_NAME}:")


def _name_of(text: str) -> Optional[str]:
    match = _NAME_PREFIX.match(text)
    return match.group(1) if match else None


def _without_name(text: str, name: str) -> str:
    return text[len(name) + 1 :].lstrip(" \t") if text.startswith(name + ":") else text


def _with_names(parsed: ParsedPrompt, stops: Sequence[str] = ()) -> ParsedPrompt:
    """Strip the names the template put before each turn, when the open assistant turn starts with one.

    A group chat is told by more than one character's name on the replies, by replies that carry names
    where the user's turns carry none (SillyTavern's "force" names behaviour writes them in groups only),
    or by the stop strings naming other members ("\\nBob:"), so that its first turns, before a second
    character has spoken, already keep their names."""
    if parsed.names is not None or parsed.open_role != "assistant":
        return parsed  # names the role headers carried, or an impersonation (not recorded)
    answers = [m["content"] for m in parsed.messages if m["role"] == "assistant"]
    asks = [m["content"] for m in parsed.messages if m["role"] == "user"]
    assistant = _name_of(parsed.prefill)
    if assistant is None:
        if answers and all(_name_of(text) for text in answers):
            # The template writes every reply's name, but not this one's: a quiet prompt's answer
            # (SillyTavern's /gen and extensions ask for "System" text, with no name).
            return dataclasses.replace(parsed, side="quiet-prompt")
        return parsed
    characters = {assistant, *(name for name in map(_name_of, answers) if name is not None)}
    user_names = {_name_of(text) for text in asks}
    user = next(iter(user_names)) if len(user_names) == 1 else None
    if user in characters:
        user = None
    members = _stop_names(stops) - {user, assistant}
    forced = bool(asks) and user_names == {None} and any(_name_of(text) for text in answers)
    if len(characters) > 1 or forced or (members and user is not None):
        # A group chat: the characters' names tell them apart, so they stay; the user's goes.
        names: Dict[str, Any] = {"speakers": sorted(characters)}
        strip = {"user": user}
        prefill = f"{assistant}: {_without_name(parsed.prefill, assistant)}"
    else:
        names = {"assistant": assistant}
        strip = {"user": user, "assistant": assistant}
        prefill = _without_name(parsed.prefill, assistant)
    if user is not None:
        names["user"] = user
    messages = []
    for message in parsed.messages:
        name = strip.get(message["role"])
        content = _without_name(message["content"], name) if name else message["content"]
        if content:
            messages.append(dict(message, content=content))
    return dataclasses.replace(parsed, messages=messages, prefill=prefill, names=names)
