"""SillyTavern's stock instruct presets in Text Completion mode: every prompt it sends, parsed back.

The prompts are rebuilt from SillyTavern 1.12.6's own code and preset files (sillytavern_prompts.py): a
chat, a Continue, an Impersonate, a quiet prompt (`/gen`), group chats with three speakers, with the
preset's names behaviour and with names forced on or off. Parsing must give the chat SillyTavern saves
(the card as the system turn, the greeting, the turns, no names the template wrote), say which requests
are side requests, and through the proxy keep each chat one record however many turns it has.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any, Dict, List, Optional, Tuple

import pytest
from sillytavern_prompts import INSTRUCT, Chat

from chatproxy.apis.templates import ParsedPrompt, parse_prompt

from fake_upstream import Completion, FakeUpstream

# Each instruct preset with the context template SillyTavern binds to it (Default where it has none).
CONTEXT = {
    "ChatML": "ChatML",
    "ChatML-Names": "ChatML",
    "Llama 3 Instruct": "Llama 3 Instruct",
    "Llama-3-Instruct-Names": "Llama 3 Instruct",
    "Mistral V1": "Mistral V1",
    "Mistral V2 & V3": "Mistral V2 & V3",
    "Mistral V3-Tekken": "Mistral V3-Tekken",
    "Llama 2 Chat": "Llama 2 Chat",
    "Gemma 2": "Gemma 2",
    "Alpaca": "Alpaca",
    "Vicuna 1.1": "Default",
}
PRESETS = [(preset, names) for preset in INSTRUCT for names in (None, "none", "always")]
IDS = [f"{preset} names={names or 'preset'}" for preset, names in PRESETS]
# Presets that write system text as a user turn (system_same_as_user) and no names: a quiet prompt's
# instruction is then a user turn like any other, and a Gemma story string a user block like any other.
UNNAMED_USER_SYSTEM = {"Llama 3 Instruct", "Mistral V1", "Mistral V2 & V3", "Mistral V3-Tekken"}
UNNAMED_USER_SYSTEM |= {"Llama 2 Chat", "Gemma 2", "Vicuna 1.1"}


def chat(preset: str, names: Optional[str]) -> Chat:
    return Chat(preset, CONTEXT[preset], names=names).say("Hi.").reply("Hello there.").say("Who are you?")


def writes_names(preset: str, names: Optional[str]) -> bool:
    behaviour = names or str(INSTRUCT[preset]["names_behavior"])
    return behaviour == "always" or preset.endswith("-Names")


def parsed(c: Chat, kind: str = "normal", **options: Any) -> ParsedPrompt:
    return parse_prompt(c.prompt(kind, quiet="Describe the weather in one sentence.", **options), c.stops(kind))


def turns(result: ParsedPrompt) -> List[Tuple[str, str]]:
    """The turns after the system turn: what the saved chat holds."""
    return [(m["role"], m["content"]) for m in result.messages if m["role"] != "system"]


SAVED = [("assistant", "*You wake in a glade.* You're awake. How do you feel?"), ("user", "Hi.")]
SAVED += [("assistant", "Hello there."), ("user", "Who are you?")]


@pytest.mark.parametrize(("preset", "names"), PRESETS, ids=IDS)
def test_a_chat_parses_to_the_saved_chat_under_the_card(preset: str, names: Optional[str]) -> None:
    """The story string (with the Mistral contexts' canned "Understood." and the alignment message the
    Mistral and Llama 2 presets put before the greeting) is the system turn, then the chat, no names."""
    result = parsed(chat(preset, names))
    if preset == "Gemma 2" and not writes_names(preset, names):
        # Gemma has no system role: its story string is a user block, told from the user's only by names.
        assert turns(result)[1:] == SAVED and turns(result)[0][0] == "user"
        return
    assert turns(result) == SAVED
    assert result.messages[0]["role"] == "system" and "guardian of the Eldoria forest" in result.messages[0]["content"]
    assert result.prefill == "" and result.side is None
    if writes_names(preset, names):
        assert result.names == {"user": "Alex", "assistant": "Seraphina"}


@pytest.mark.parametrize("preset", ["Mistral V1", "Mistral V2 & V3", "Mistral V3-Tekken"])
def test_mistral_story_string_greeting_and_its_template_turns(preset: str) -> None:
    """Point 1: "[INST] card [/INST] Understood.</s>", the user alignment message, then the greeting:
    system + assistant greeting + turns; the presets' own text is kept in template_text."""
    result = parsed(chat(preset, None))
    assert [m["role"] for m in result.messages] == ["system", "assistant", "user", "assistant", "user"]
    assert result.template_text == (
        "Understood.",
        "Let's get started. Please respond based on the information and instructions provided above.",
    )


def test_mistral_v7_system_prompt_block_then_the_greeting() -> None:
    """Mistral V7's context puts the card in [SYSTEM_PROMPT] … [/SYSTEM_PROMPT]; the V2/V3 sequences follow."""
    c = Chat("Mistral V2 & V3", "Mistral V7").say("Hi.").reply("Hello there.").say("Who are you?")
    result = parsed(c)
    assert c.prompt().startswith("[SYSTEM_PROMPT] Write Seraphina's next reply")
    assert turns(result) == SAVED and result.messages[0]["role"] == "system"
    assert result.names == {"user": "Alex", "assistant": "Seraphina"}


@pytest.mark.parametrize(("preset", "names"), PRESETS, ids=IDS)
def test_impersonate_is_a_side_request(preset: str, names: Optional[str]) -> None:
    result = parsed(chat(preset, names).reply("I am Seraphina."), "impersonate")
    assert (result.side, result.open_role) == ("impersonate", "user")


@pytest.mark.parametrize(("preset", "names"), PRESETS, ids=IDS)
def test_continue_leaves_the_message_open_without_its_name(preset: str, names: Optional[str]) -> None:
    result = parsed(chat(preset, names).reply("I am Seraphina."), "continue")
    assert result.prefill == "I am Seraphina." and result.side is None
    card_as_user = preset == "Gemma 2" and not writes_names(preset, names)
    assert turns(result)[card_as_user:] == SAVED


@pytest.mark.parametrize(("preset", "names"), PRESETS, ids=IDS)
def test_quiet_prompt_is_a_side_request_where_the_prompt_tells(preset: str, names: Optional[str]) -> None:
    """A quiet prompt asks for unnamed "System" text: told by the missing name where the preset writes
    names, by a system block after the chat otherwise (the side-request rules then decide); where the
    preset writes system text as an unnamed user turn, nothing tells it from a user's message."""
    result = parsed(chat(preset, names).reply("I am Seraphina."), "quiet")
    if writes_names(preset, names):
        assert result.side == "quiet-prompt"
    elif preset in UNNAMED_USER_SYSTEM:
        assert result.messages[-1] == {"role": "user", "content": "Describe the weather in one sentence."}
    else:
        assert result.messages[-1] == {"role": "system", "content": "Describe the weather in one sentence."}


GROUP_PRESETS = ["ChatML", "Llama 3 Instruct", "Mistral V2 & V3", "Alpaca", "Vicuna 1.1", "Gemma 2"]
GROUP_PRESETS += ["ChatML-Names", "Llama-3-Instruct-Names"]


def group_chat(preset: str) -> Chat:
    """Three speakers: Alex (the user), Seraphina and Bob; names "force" writes the characters' names only."""
    c = Chat(preset, CONTEXT[preset], group=True, names=None if preset.endswith("-Names") else "force")
    c.reply("Hey, I'm Bob.", speaker="Bob").say("Hi both.").reply("Welcome.").reply("Yo.", speaker="Bob")
    return c.say("What now?")


@pytest.mark.parametrize("preset", GROUP_PRESETS)
def test_group_chat_keeps_the_characters_names_and_strips_the_users(preset: str) -> None:
    """Point 2: the characters' names tell them apart, so every character turn starts with its speaker's
    name (also where the "-Names" presets write names in the role headers); the open turn is Bob's."""
    c = group_chat(preset)
    result = parse_prompt(c.prompt(speaker="Bob"), c.stops(speaker="Bob", members=["Seraphina", "Bob"]))
    expected = [
        ("assistant", "Seraphina: *You wake in a glade.* You're awake. How do you feel?"),
        ("assistant", "Bob: Hey, I'm Bob."),
        ("user", "Hi both."),
        ("assistant", "Seraphina: Welcome."),
        ("assistant", "Bob: Yo."),
        ("user", "What now?"),
    ]
    if preset == "Gemma 2":
        expected = [("user", turns(result)[0][1])] + expected
    assert turns(result) == expected
    assert result.prefill == "Bob: " and result.names is not None
    assert result.names["speakers"] == ["Bob", "Seraphina"]


# -- through the proxy: one record per chat ------------------------------------------------------------


def complete(proxy: Any, upstream: FakeUpstream, prompt: str, stops: List[str], reply: str, stream: bool) -> str:
    upstream.push(Completion(reply))
    body = {"model": "fake-model", "prompt": prompt, "stream": stream, "stop": stops, "stopping_strings": stops}
    request = urllib.request.Request(
        proxy.url + "/v1/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        raw = response.read().decode()
    if not stream:
        return str(json.loads(raw)["choices"][0]["text"])
    return "".join(
        json.loads(line[6:])["choices"][0].get("text") or "" for line in raw.splitlines() if line.startswith("data: {")
    )


def saved(c: Chat) -> List[Dict[str, str]]:
    return [{"from": "human" if m.is_user else "gpt", "value": m.text} for m in c.messages[1:]]


@pytest.mark.parametrize(("preset", "names"), PRESETS, ids=IDS)
def test_a_text_completion_chat_is_one_record_over_several_turns(
    proxy: Any, upstream: FakeUpstream, preset: str, names: Optional[str]
) -> None:
    """Point 6: three turns, a Continue, an Impersonate (its text then sent) and, where the prompt tells
    it, a quiet prompt: one record, equal to the chat SillyTavern saves."""
    c = Chat(preset, CONTEXT[preset], names=names)
    stream = False
    for question, answer in [("Hi.", "Hello there."), ("Who are you?", " I guard this forest.")]:
        c.say(question)
        stream = not stream
        c.reply(complete(proxy, upstream, c.prompt(), c.stops(), answer, stream).strip())
    continued = complete(proxy, upstream, c.prompt("continue"), c.stops("continue"), " Always have.", True)
    c.messages[-1].text += continued.rstrip()
    typed = complete(proxy, upstream, c.prompt("impersonate"), c.stops("impersonate"), " I nod.", False).strip()
    if writes_names(preset, names) or preset not in UNNAMED_USER_SYSTEM:
        complete(proxy, upstream, c.prompt("quiet", quiet="Describe the weather."), c.stops("quiet"), "Sunny.", False)
    c.say(typed)
    c.reply(complete(proxy, upstream, c.prompt(), c.stops(), "Good.", True).strip())
    records = proxy.dataset()
    assert len(records) == 1
    got = [{"from": t["from"], "value": t["value"].strip()} for t in records[0]["conversations"][1:]]
    expected = saved(c)
    if preset == "Gemma 2" and not writes_names(preset, names):
        # The card's user block opens the conversation, the greeting answers it.
        assert records[0]["conversations"][0]["from"] == "human"
        expected = [{"from": "gpt", "value": c.greeting}] + expected
    else:
        assert records[0]["conversations"][0]["value"].endswith(c.greeting)  # the greeting joins the system turn
    assert got == expected


@pytest.mark.parametrize("preset", ["ChatML", "Mistral V2 & V3", "Alpaca", "ChatML-Names", "Llama-3-Instruct-Names"])
def test_a_group_chat_is_one_record_with_each_characters_name(proxy: Any, upstream: FakeUpstream, preset: str) -> None:
    """Point 2 through the proxy: the user, then Seraphina and Bob in turn, several rounds: one record,
    every character's turn under its speaker's name, the user's without."""
    c = Chat(preset, CONTEXT[preset], group=True, names=None if preset.endswith("-Names") else "force")
    members = ["Seraphina", "Bob"]
    for round_ in range(1, 4):
        c.say(f"Round {round_}?")
        for speaker in members:
            prompt, stops = c.prompt(speaker=speaker), c.stops(speaker=speaker, members=members)
            c.reply(
                complete(proxy, upstream, prompt, stops, f" {speaker} answers {round_}.", round_ % 2 == 0).strip(),
                speaker,
            )
    records = proxy.dataset()
    assert len(records) == 1
    got = [(t["from"], t["value"].strip()) for t in records[0]["conversations"][1:]]
    expected: List[Tuple[str, str]] = []
    for m in c.messages[1:]:
        side, text = ("human", m.text) if m.is_user else ("gpt", f"{m.name}: {m.text}")
        if expected and expected[-1][0] == side:  # one side's turns in a row are one ShareGPT turn
            expected[-1] = (side, expected[-1][1] + "\n\n" + text)
        else:
            expected.append((side, text))
    assert got == expected
    assert records[0]["meta"]["names"]["speakers"] == ["Bob", "Seraphina"]
