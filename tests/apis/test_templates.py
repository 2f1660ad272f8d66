"""parse_prompt: prompts rendered by real instruct templates, back to the turns they came from.

Each case is a prompt spelled the way the template renders it: HF chat templates (Qwen/ChatML, Meta Llama 2
and 3, Gemma), the renderings in mistralai/cookbook's tokenization notes (V1, V3, Tekken, V7), FastChat's
vicuna_v1.1, Stanford Alpaca, and SillyTavern's instruct and context presets (names forced into the text).
"""

from __future__ import annotations

from typing import List, NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatproxy.apis.templates import ParsedPrompt, parse_prompt


def system(text: str) -> dict:
    return {"role": "system", "content": text}


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def bot(text: str) -> dict:
    return {"role": "assistant", "content": text}


class Case(NamedTuple):
    name: str
    prompt: str
    messages: List[dict]
    template: str
    prefill: str


SERAPHINA_CARD = (
    "Seraphina is the guardian of the Eldoria forest, kind and fiercely protective.\n"
    "Seraphina's personality: caring, gentle, fierce when needed\n"
    "Scenario: Anon wakes up in Seraphina's glade after being attacked by beasts.\n"
)
# SillyTavern's Default context: "***" before each example dialogue and again before the chat.
EXAMPLE_DIALOGUE = "***\nAnon: Who are you?\nSeraphina: I am Seraphina, the guardian of this forest."

CASES = [
    # --- ChatML (Qwen / ChatML chat template; SillyTavern "ChatML" and "ChatML-Names")
    Case(
        "chatml two exchanges, open header",
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\nThe capital of France is Paris.<|im_end|>\n"
        "<|im_start|>user\nAnd of Italy?<|im_end|>\n"
        "<|im_start|>assistant\nRome.<|im_end|>\n"
        "<|im_start|>user\nThanks! One more: Spain?<|im_end|>\n"
        "<|im_start|>assistant\n",
        [
            system("You are a helpful assistant."),
            user("What is the capital of France?"),
            bot("The capital of France is Paris."),
            user("And of Italy?"),
            bot("Rome."),
            user("Thanks! One more: Spain?"),
        ],
        "chatml",
        "",
    ),
    Case(
        "chatml prefill",
        "<|im_start|>system\nAnswer in one word.<|im_end|>\n<|im_start|>user\nCapital of Spain?<|im_end|>\n"
        "<|im_start|>assistant\nMad",
        [system("Answer in one word."), user("Capital of Spain?")],
        "chatml",
        "Mad",
    ),
    Case(
        "chatml header without its newline",
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant",
        [user("Hi")],
        "chatml",
        "",
    ),
    Case(
        "sillytavern chatml with forced names",
        "<|im_start|>system\nWrite Seraphina's next reply in this fictional roleplay with Anon.\n"
        + SERAPHINA_CARD
        + "<|im_end|>\n"
        "<|im_start|>assistant\nSeraphina: *She kneels beside you.* You're awake. How do you feel?<|im_end|>\n"
        "<|im_start|>user\nAnon: My head hurts. Where am I?<|im_end|>\n"
        "<|im_start|>assistant\nSeraphina: In my glade, safe from the beasts.<|im_end|>\n"
        "<|im_start|>user\nAnon: Thank you for saving me.<|im_end|>\n"
        "<|im_start|>assistant\nSeraphina:",
        [
            system("Write Seraphina's next reply in this fictional roleplay with Anon.\n" + SERAPHINA_CARD.strip()),
            bot("*She kneels beside you.* You're awake. How do you feel?"),
            user("My head hurts. Where am I?"),
            bot("In my glade, safe from the beasts."),
            user("Thank you for saving me."),
        ],
        "chatml",
        "",
    ),
    Case(
        "chatml-names: the final open speaker is the assistant",
        "<|im_start|>system\n" + SERAPHINA_CARD + "<|im_end|>\n"
        "<|im_start|>Seraphina\n*She kneels beside you.* You're awake.<|im_end|>\n"
        "<|im_start|>Anon\nWhere am I?<|im_end|>\n"
        "<|im_start|>Seraphina\nIn my glade.<|im_end|>\n"
        "<|im_start|>Anon\nThank you.<|im_end|>\n"
        "<|im_start|>Seraphina\n",
        [
            system(SERAPHINA_CARD.strip()),
            bot("*She kneels beside you.* You're awake."),
            user("Where am I?"),
            bot("In my glade."),
            user("Thank you."),
        ],
        "chatml",
        "",
    ),
    # --- Llama 3 (meta-llama/Meta-Llama-3-8B-Instruct and 3.1's date header; SillyTavern "Llama 3 Instruct")
    Case(
        "llama3 two exchanges, open header",
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nYou are a pirate chatbot.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWho are you?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nArr, I be Captain Byte!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhere is the treasure?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nBuried on the isle.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhich isle?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        [
            system("Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nYou are a pirate chatbot."),
            user("Who are you?"),
            bot("Arr, I be Captain Byte!"),
            user("Where is the treasure?"),
            bot("Buried on the isle."),
            user("Which isle?"),
        ],
        "llama3",
        "",
    ),
    Case(
        "llama3 prefill",
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nList three colours.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n1. Red\n2.",
        [system("Be terse."), user("List three colours.")],
        "llama3",
        "1. Red\n2.",
    ),
    # --- Mistral and Llama 2 ([INST] family)
    Case(
        "mistral v1: system merged into the first [INST] stays user text",
        "<s> [INST] You are concise.\n\nWhat is 2+2? [/INST] 4</s> [INST] And 3+3? [/INST] 6</s>"
        " [INST] And 4+4? [/INST]",
        [user("You are concise.\n\nWhat is 2+2?"), bot("4"), user("And 3+3?"), bot("6"), user("And 4+4?")],
        "mistral",
        "",
    ),
    Case(
        "mistral v3: no space before [/INST], system merged into the last [INST]",
        "<s>[INST] What is 2+2?[/INST] 4</s>[INST] What is 3+3?[/INST] 6</s>[INST] You are concise.\n\nAnd 4+4?[/INST]",
        [user("What is 2+2?"), bot("4"), user("What is 3+3?"), bot("6"), user("You are concise.\n\nAnd 4+4?")],
        "mistral",
        "",
    ),
    Case(
        "mistral v3-tekken without spaces, prefill",
        "<s>[INST]What is 2+2?[/INST]4</s>[INST]What is 3+3?[/INST]6</s>[INST]Count to five.[/INST]1, 2, 3",
        [user("What is 2+2?"), bot("4"), user("What is 3+3?"), bot("6"), user("Count to five.")],
        "mistral",
        "1, 2, 3",
    ),
    Case(
        "mistral v7 [SYSTEM_PROMPT]",
        "<s>[SYSTEM_PROMPT]You are concise.[/SYSTEM_PROMPT][INST]What is 2+2?[/INST]4</s>"
        "[INST]And 3+3?[/INST]6</s>[INST]And 4+4?[/INST]",
        [system("You are concise."), user("What is 2+2?"), bot("4"), user("And 3+3?"), bot("6"), user("And 4+4?")],
        "mistral",
        "",
    ),
    Case(
        "llama 2 chat: <<SYS>> block inside the first [INST]",
        "<s>[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\nHi there [/INST] Hello! How can I help? </s>"
        "<s>[INST] Tell me a joke [/INST] Why did the chicken cross the road? </s>"
        "<s>[INST] Another one [/INST]",
        [
            system("You are a helpful assistant."),
            user("Hi there"),
            bot("Hello! How can I help?"),
            user("Tell me a joke"),
            bot("Why did the chicken cross the road?"),
            user("Another one"),
        ],
        "mistral",
        "",
    ),
    Case(
        "sillytavern llama 2 chat preset: system block in an [INST] of its own",
        "[INST] <<SYS>>\nWrite Seraphina's next reply in this fictional roleplay with Anon.\n<</SYS>>\n"
        "[INST] Anon: Where am I? [/INST] Seraphina: In my glade. [INST] Anon: Who are you? [/INST] Seraphina:",
        [
            system("Write Seraphina's next reply in this fictional roleplay with Anon."),
            user("Where am I?"),
            bot("In my glade."),
            user("Who are you?"),
        ],
        "mistral",
        "",
    ),
    Case(
        "sillytavern mistral v1 context: the story string and its canned answer are the system turn",
        " [INST] Write Seraphina's next reply.\n" + SERAPHINA_CARD + " [/INST] Understood.</s>"
        " [INST] Anon: Hello? [/INST] Seraphina: You're awake!</s> [INST] Anon: Where am I? [/INST]",
        [
            system("Write Seraphina's next reply.\n" + SERAPHINA_CARD.strip()),
            user("Anon: Hello?"),
            bot("Seraphina: You're awake!"),
            user("Anon: Where am I?"),
        ],
        "mistral",
        "",
    ),
    # --- Gemma (google/gemma-2 and -3 templates; SillyTavern "Gemma 2" and "Gemma 4")
    Case(
        "gemma: the system prompt opens the first user turn",
        "<bos><start_of_turn>user\nYou are a poet.\n\nWrite a line about rain.<end_of_turn>\n"
        "<start_of_turn>model\nRain taps the window like a patient friend.<end_of_turn>\n"
        "<start_of_turn>user\nNow one about snow.<end_of_turn>\n"
        "<start_of_turn>model\nSnow hushes the town.<end_of_turn>\n"
        "<start_of_turn>user\nAnd fog?<end_of_turn>\n"
        "<start_of_turn>model\n",
        [
            user("You are a poet.\n\nWrite a line about rain."),
            bot("Rain taps the window like a patient friend."),
            user("Now one about snow."),
            bot("Snow hushes the town."),
            user("And fog?"),
        ],
        "gemma",
        "",
    ),
    Case(
        "gemma prefill",
        "<bos><start_of_turn>user\nName a fruit.<end_of_turn>\n<start_of_turn>model\nBan",
        [user("Name a fruit.")],
        "gemma",
        "Ban",
    ),
    Case(
        "sillytavern gemma 4 preset",
        "<|turn>system\nYou are Seraphina.<turn|>\n<|turn>user\nAnon: Hi.<turn|>\n"
        "<|turn>model\nSeraphina: Hello, traveller.<turn|>\n<|turn>user\nAnon: Who are you?<turn|>\n"
        "<|turn>model\n",
        [
            system("You are Seraphina."),
            user("Anon: Hi."),
            bot("Seraphina: Hello, traveller."),
            user("Anon: Who are you?"),
        ],
        "gemma",
        "",
    ),
    # --- Alpaca (Stanford Alpaca prompt; SillyTavern "Alpaca")
    Case(
        "alpaca with input, two exchanges",
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nTranslate to French.\n\n### Input:\nGood morning\n\n### Response:\nBonjour\n\n"
        "### Instruction:\nNow say goodbye.\n\n### Response:\nAu revoir\n\n"
        "### Instruction:\nAnd thank you?\n\n### Response:\n",
        [
            system(
                "Below is an instruction that describes a task, paired with an input that provides further "
                "context. Write a response that appropriately completes the request."
            ),
            user("Translate to French.\n\nGood morning"),
            bot("Bonjour"),
            user("Now say goodbye."),
            bot("Au revoir"),
            user("And thank you?"),
        ],
        "alpaca",
        "",
    ),
    Case(
        "alpaca prefill",
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nWrite a haiku about autumn.\n\n### Response:\nCrimson leaves drift",
        [
            system(
                "Below is an instruction that describes a task. Write a response that appropriately completes "
                "the request."
            ),
            user("Write a haiku about autumn."),
        ],
        "alpaca",
        "Crimson leaves drift",
    ),
    # --- Vicuna (FastChat vicuna_v1.1: sep " ", sep2 "</s>"; SillyTavern "Vicuna 1.1")
    Case(
        "vicuna v1.1 two exchanges",
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: Hello! ASSISTANT: Hi! How can I help?</s>"
        "USER: Tell me a fact. ASSISTANT: Honey never spoils.</s>USER: Another? ASSISTANT:",
        [
            system(
                "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                "helpful, detailed, and polite answers to the user's questions."
            ),
            user("Hello!"),
            bot("Hi! How can I help?"),
            user("Tell me a fact."),
            bot("Honey never spoils."),
            user("Another?"),
        ],
        "vicuna",
        "",
    ),
    Case(
        "vicuna prefill, sillytavern line layout",
        "Write Seraphina's next reply.\n\nUSER: Anon: Hi\nASSISTANT: Seraphina: Hello.</s>\n"
        "USER: Anon: Who are you?\nASSISTANT: Seraphina: I am",
        [
            system("Write Seraphina's next reply."),
            user("Hi"),
            bot("Hello."),
            user("Who are you?"),
        ],
        "vicuna",
        "I am",
    ),
    # --- "Name: text" transcript (SillyTavern text completion with the Default context and no instruct mode)
    Case(
        "sillytavern transcript with card, example dialogue and chat start",
        SERAPHINA_CARD + EXAMPLE_DIALOGUE + "\n***\n"
        "Seraphina: *You wake up in a glade.* Are you alright?\n"
        "Anon: Where am I?\nMy head hurts.\n"
        "Seraphina: You are safe in my glade. Rest now.\n"
        "Anon: Thank you.\n"
        "Seraphina:",
        [
            system(SERAPHINA_CARD + EXAMPLE_DIALOGUE),
            bot("*You wake up in a glade.* Are you alright?"),
            user("Where am I?\nMy head hurts."),
            bot("You are safe in my glade. Rest now."),
            user("Thank you."),
        ],
        "transcript",
        "",
    ),
    Case(
        "plain transcript, trailing space after the open name",
        "Alice: Hi Bob.\nBob: Hi Alice, long time.\nAlice: How have you been?\nBob: ",
        [user("Hi Bob."), bot("Hi Alice, long time."), user("How have you been?")],
        "transcript",
        "",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_parses_rendered_template(case: Case) -> None:
    parsed = parse_prompt(case.prompt)
    assert (parsed.messages, parsed.template, parsed.prefill) == (case.messages, case.template, case.prefill)


def unparsed(prompt: str) -> ParsedPrompt:
    return ParsedPrompt([{"role": "user", "content": prompt}], "none", "")


FALLBACKS = {
    "plain text": "Once upon a time, in a land far away,",
    "empty": "",
    "a text mentioning USER: once": "Explain this log line:\nUSER: admin logged in at 09:14\nWhat does it mean?",
    "question/answer completion": "Question: What is the boiling point of water?\nAnswer:",
    "one speaker only": "Narrator: The night was dark.\nNarrator:",
    "[INST] mentioned in prose": "What do [INST] and [/INST] mean in Mistral prompts?",
    "<|im_start|> mentioned in prose": "How do I use <|im_start|> tokens?",
    "chatml text before the first block": "Hello <|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "chatml unterminated block in the middle": "<|im_start|>user\nhi\n<|im_start|>assistant\n",
    "chatml text between blocks": "<|im_start|>user\nhi<|im_end|>\nstray<|im_start|>assistant\n",
    "chatml empty role": "<|im_start|>\nhi<|im_end|>\n<|im_start|>assistant\n",
    "llama3 missing <|eot_id|>": (
        "<|start_header_id|>user<|end_header_id|>\n\nhi<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "gemma unterminated turn": "<start_of_turn>user\nhi\n<start_of_turn>model\n",
    "[/INST] before any [INST]": "[/INST] orphan [INST] question [/INST]",
    "unclosed <<SYS>>": "[INST] <<SYS>>\nYou are helpful. Hi [/INST]",
    "<</SYS>> without <<SYS>>": "[INST] Hi <</SYS>> there [/INST]",
    "[SYSTEM_PROMPT] inside [INST]": "[INST] Hi [SYSTEM_PROMPT]x[/SYSTEM_PROMPT] [/INST]",
    "alpaca without a final response": "### Instruction:\nDo it.\n\n### Response:\nDone.\n\n### Instruction:\nAgain.",
    "vicuna out of order": "USER: hi USER: again ASSISTANT:",
}


@pytest.mark.parametrize("prompt", FALLBACKS.values(), ids=FALLBACKS.keys())
def test_unrecognised_or_inconsistent_prompt_is_one_user_message(prompt: str) -> None:
    assert parse_prompt(prompt) == unparsed(prompt)


def test_special_tokens_only_stripped_at_the_ends() -> None:
    """A "<s>" inside a message is more likely an HTML strikethrough than a BOS token."""
    prompt = "<|im_start|>user\nRender <s>old</s> as struck text<|im_end|>\n<|im_start|>assistant\n"
    assert parse_prompt(prompt).messages == [user("Render <s>old</s> as struck text")]


def test_closed_final_turn_leaves_no_prefill() -> None:
    prompt = "<s>[INST] Hi [/INST] Hello!</s>"
    assert parse_prompt(prompt) == ParsedPrompt([user("Hi"), bot("Hello!")], "mistral", "")


# --- Properties: any conversation rendered by a real template parses back to itself -----------------------

# Text with no template markers: no "<", "[", "#" or ":" that could start one.
TEXT = st.text(alphabet="abcdefghij KLMNOP.,!?'\n\t", min_size=1, max_size=40).map(str.strip).filter(bool)


@st.composite
def conversations(draw: st.DrawFn, with_system: bool = True) -> List[dict]:
    # Odd length: the conversation ends with the user turn the prompt asks the model to answer.
    turns = draw(st.lists(TEXT, min_size=1, max_size=7).map(lambda texts: texts[: (len(texts) - 1) // 2 * 2 + 1]))
    messages = [user(text) if index % 2 == 0 else bot(text) for index, text in enumerate(turns)]
    if with_system and draw(st.booleans()):
        messages.insert(0, system(draw(TEXT)))
    return messages


def render_blocks(messages: List[dict], opener: str, header_end: str, closer: str, roles: dict) -> str:
    body = "".join(f"{opener}{roles[m['role']]}{header_end}{m['content']}{closer}\n" for m in messages)
    return body + f"{opener}{roles['assistant']}{header_end}"


def render_chatml(messages: List[dict]) -> str:
    roles = {r: r for r in ("system", "user", "assistant")}
    return render_blocks(messages, "<|im_start|>", "\n", "<|im_end|>", roles)


def render_llama3(messages: List[dict]) -> str:
    roles = {r: r for r in ("system", "user", "assistant")}
    blocks = render_blocks(messages, "<|start_header_id|>", "<|end_header_id|>\n\n", "<|eot_id|>", roles)
    return "<|begin_of_text|>" + blocks


def render_gemma(messages: List[dict]) -> str:
    roles = {"system": "system", "user": "user", "assistant": "model"}
    return "<bos>" + render_blocks(messages, "<start_of_turn>", "\n", "<end_of_turn>", roles)


def render_llama2(messages: List[dict]) -> str:
    system = f"<<SYS>>\n{messages[0]['content']}\n<</SYS>>\n\n" if messages[0]["role"] == "system" else ""
    chat = [m for m in messages if m["role"] != "system"]
    out = ""
    for index, message in enumerate(chat):
        if message["role"] == "user":
            out += f"<s>[INST] {system if index == 0 else ''}{message['content']} [/INST]"
        else:
            out += f" {message['content']} </s>"
    return out


def render_tekken(messages: List[dict]) -> str:
    return "<s>" + "".join(
        f"[INST]{m['content']}[/INST]" if m["role"] == "user" else f"{m['content']}</s>" for m in messages
    )


def render_alpaca(messages: List[dict]) -> str:
    out = messages[0]["content"] + "\n\n" if messages[0]["role"] == "system" else ""
    for message in messages:
        if message["role"] != "system":
            header = "### Instruction:" if message["role"] == "user" else "### Response:"
            out += f"{header}\n{message['content']}\n\n"
    return out + "### Response:\n"


def render_vicuna(messages: List[dict]) -> str:
    out = messages[0]["content"] + " " if messages[0]["role"] == "system" else ""
    for message in messages:
        if message["role"] == "user":
            out += f"USER: {message['content']} "
        elif message["role"] == "assistant":
            out += f"ASSISTANT: {message['content']}</s>"
    return out + "ASSISTANT:"


RENDERERS = {
    "chatml": (render_chatml, True),
    "llama3": (render_llama3, True),
    "gemma": (render_gemma, True),
    "mistral": (render_llama2, True),
    "mistral-tekken": (render_tekken, False),
    "alpaca": (render_alpaca, True),
    "vicuna": (render_vicuna, True),
}


@pytest.mark.parametrize("name", RENDERERS)
@given(data=st.data())
def test_rendered_conversation_round_trips(name: str, data: st.DataObject) -> None:
    render, with_system = RENDERERS[name]
    messages = data.draw(conversations(with_system=with_system))
    parsed = parse_prompt(render(messages))
    assert (parsed.messages, parsed.template, parsed.prefill) == (messages, name.split("-")[0], "")


FRAGMENTS = [
    "<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<start_of_turn>",
    "<end_of_turn>", "<|turn>", "<turn|>", "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>", "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]", "<s>", "</s>", "### Instruction:", "### Input:", "### Response:", "USER:", "ASSISTANT:",
    "***", "Anon:", "Bot:", "user", "assistant", "model", "system", "hello", " ", "\n", "\n\n",
]  # fmt: skip


@given(st.lists(st.sampled_from(FRAGMENTS), max_size=30).map("".join))
def test_never_raises_and_always_yields_canonical_turns(prompt: str) -> None:
    parsed = parse_prompt(prompt)
    assert parsed.template in {"chatml", "llama3", "gemma", "mistral", "alpaca", "vicuna", "transcript", "none"}
    assert all(message["role"] in {"system", "user", "assistant", "tool"} for message in parsed.messages)
    assert all(isinstance(message["content"], str) for message in parsed.messages)
    if parsed.template == "none":
        assert parsed == unparsed(prompt)


# --- SillyTavern 1.12 stock instruct presets with names (issue 13) ---------------------------------------
# The Default context template's story string comes first as plain text, then the chat in the instruct
# preset's sequences; with names on, every turn starts with "Name: " and the open turn with "Seraphina:".

ST_SYS = "Write Seraphina's next reply in a fictional chat between Seraphina and Alex.\n" + SERAPHINA_CARD
ST_GREET = "*You wake in a glade.* You're awake. How do you feel?"
ST_CHAT = [system(ST_SYS.strip()), bot(ST_GREET), user("Hi."), bot("Hello there."), user("Who are you?")]
ST_NAMES = {"user": "Alex", "assistant": "Seraphina"}

ST_PRESETS = {
    "chatml": ST_SYS + "\n<|im_start|>assistant\nSeraphina: " + ST_GREET + "<|im_end|>\n"
    "<|im_start|>user\nAlex: Hi.<|im_end|>\n<|im_start|>assistant\nSeraphina: Hello there.<|im_end|>\n"
    "<|im_start|>user\nAlex: Who are you?<|im_end|>\n<|im_start|>assistant\nSeraphina:",
    "llama3": "<|begin_of_text|>"
    + ST_SYS
    + "<|start_header_id|>assistant<|end_header_id|>\n\nSeraphina: "
    + ST_GREET
    + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nAlex: Hi.<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nSeraphina: Hello there.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nAlex: Who are you?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nSeraphina:",
    "gemma": "<bos>" + ST_SYS + "<start_of_turn>model\nSeraphina: " + ST_GREET + "<end_of_turn>\n"
    "<start_of_turn>user\nAlex: Hi.<end_of_turn>\n<start_of_turn>model\nSeraphina: Hello there.<end_of_turn>\n"
    "<start_of_turn>user\nAlex: Who are you?<end_of_turn>\n<start_of_turn>model\nSeraphina:",
    "alpaca": ST_SYS + "\n### Response:\nSeraphina: " + ST_GREET + "\n\n### Instruction:\nAlex: Hi.\n\n"
    "### Response:\nSeraphina: Hello there.\n\n### Instruction:\nAlex: Who are you?\n\n### Response:\nSeraphina:",
    "vicuna": ST_SYS + "\nASSISTANT: Seraphina: " + ST_GREET + "</s>\nUSER: Alex: Hi.\n"
    "ASSISTANT: Seraphina: Hello there.</s>\nUSER: Alex: Who are you?\nASSISTANT: Seraphina:",
}


@pytest.mark.parametrize("template", ST_PRESETS)
def test_sillytavern_preset_with_names_parses_to_the_saved_chat(template: str) -> None:
    """The story string is the system turn and the names the preset wrote are stripped, kept in names."""
    parsed = parse_prompt(ST_PRESETS[template])
    assert (parsed.messages, parsed.template, parsed.prefill, parsed.names) == (ST_CHAT, template, "", ST_NAMES)


MISTRAL_NAMES = (
    ST_SYS + "[INST] Alex: Hi. [/INST]Seraphina: Hello there.</s>[INST] Alex: Who are you? [/INST]Seraphina:"
)
LLAMA2_NAMES = (
    "[INST] <<SYS>>\n" + ST_SYS + "<</SYS>>\n\nAlex: Hi. [/INST] Seraphina: Hello there. </s><s>"
    "[INST] Alex: Who are you? [/INST] Seraphina:"
)


@pytest.mark.parametrize("prompt", [MISTRAL_NAMES, LLAMA2_NAMES], ids=["mistral", "llama 2"])
def test_inst_presets_with_names_strip_them(prompt: str) -> None:
    parsed = parse_prompt(prompt)
    assert parsed.messages == [system(ST_SYS.strip()), user("Hi."), bot("Hello there."), user("Who are you?")]
    assert (parsed.template, parsed.prefill, parsed.names) == ("mistral", "", ST_NAMES)


def test_issue_13_chatml_after_plain_story_string() -> None:
    """The prompt issue 13 quotes: ChatML blocks after the card as plain text, the open turn "Seraphina:"."""
    prompt = (
        ST_SYS + "\n<|im_start|>assistant\nSeraphina: " + ST_GREET + "<|im_end|>\n<|im_start|>user\nAlex: Hi."
        "<|im_end|>\n<|im_start|>assistant\nSeraphina:"
    )
    assert parse_prompt(prompt) == ParsedPrompt(ST_CHAT[:3], "chatml", "", ST_NAMES)


def test_continue_in_text_completion_keeps_the_message_as_prefill_without_its_name() -> None:
    prompt = ST_PRESETS["chatml"].rsplit("<|im_start|>user", 1)[0] + "<|im_start|>assistant\nSeraphina: Hello"
    parsed = parse_prompt(prompt.replace("Seraphina: Hello there.<|im_end|>\n<|im_start|>assistant\n", ""))
    assert parsed.prefill == "Hello" and parsed.messages == ST_CHAT[:3]


def test_group_chat_keeps_the_names_that_tell_the_characters_apart() -> None:
    """Three speakers: each assistant turn's name says which character spoke, so those names stay in the
    text; the user's, the same on every user turn, goes as in a one-to-one chat."""
    prompt = (
        "A group chat.\n<|im_start|>user\nAlex: Hi all.<|im_end|>\n<|im_start|>assistant\nSeraphina: Hello.<|im_end|>\n"
        "<|im_start|>assistant\nBob: Yo.<|im_end|>\n<|im_start|>user\nAlex: What now?<|im_end|>\n"
        "<|im_start|>assistant\nBob:"
    )
    parsed = parse_prompt(prompt)
    assert parsed.messages == [
        system("A group chat."),
        user("Hi all."),
        bot("Seraphina: Hello."),
        bot("Bob: Yo."),
        user("What now?"),
    ]
    assert (parsed.prefill, parsed.names) == ("Bob: ", {"speakers": ["Bob", "Seraphina"], "user": "Alex"})


def test_names_are_not_stripped_when_the_open_turn_has_none() -> None:
    """Without a name on the open turn, a "Note:" at the start of a message is the user's own text."""
    prompt = "<|im_start|>user\nNote: be brief.<|im_end|>\n<|im_start|>assistant\n"
    assert parse_prompt(prompt) == ParsedPrompt([user("Note: be brief.")], "chatml", "")


def test_open_user_block_is_an_impersonation() -> None:
    prompt = ST_PRESETS["chatml"].rsplit("<|im_start|>assistant", 1)[0] + "<|im_start|>user\nAlex:"
    parsed = parse_prompt(prompt)
    assert parsed.open_role == "user" and parsed.prefill == "Alex:"
