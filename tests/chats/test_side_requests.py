"""settle / joined: SillyTavern's requests built from the chat plus a final system instruction (1.12.6).

The shapes are those of public/scripts/openai.js: Post-History Instructions (`jailbreak`) come after the
chat history, Continue's nudge and a group's nudge at the end of the history (before them), Impersonate's
and quiet prompts' instructions last of all (`controlPrompts`).
"""

from __future__ import annotations

import json
from pathlib import Path

from chatproxy.apis import Request
from chatproxy.apis.chat_completions import read_request
from chatproxy.chats.side_requests import InstructionMemory, joined, settle

SYS = {"role": "system", "content": "You are Seraphina."}
START = {"role": "system", "content": "[Start a new Chat]"}
GREET = {"role": "assistant", "content": "Welcome."}
HI = {"role": "user", "content": "Hi."}
HELLO = {"role": "assistant", "content": "Hello there."}
CHAT = [SYS, START, GREET, HI, HELLO]
CONTINUE = (
    "[Continue the following message. Do not include ANY parts of the original message. Use capitalization and "
    "punctuation as if your reply is a part of the original message: Hello there.]"
)
IMPERSONATE = (
    "[Write your next reply from the point of view of Alex, using the chat history so far as a guideline for the "
    "writing style of Alex. Don't write as Seraphina or system. Don't describe actions of Seraphina.]"
)


def system(text: str) -> dict:
    return {"role": "system", "content": text}


def reply(text: str) -> dict:
    return {"role": "assistant", "content": text}


PHI = "[Stay in character as Seraphina; keep replies under three sentences.]"


def test_continue_nudge_continues_the_last_message_with_a_space() -> None:
    asked = settle(Request(CHAT + [system(CONTINUE)]), memory=InstructionMemory())
    assert asked.history == CHAT[:-1] and asked.prefill == "Hello there." and asked.housekeeping is None
    assert asked.meta["continued"] == "nudge"
    assert joined(asked, reply("How are you?"))["content"] == "Hello there. How are you?"
    assert joined(asked, reply(" How are you?"))["content"] == "Hello there. How are you?"


def test_a_reworded_continue_nudge_quoting_the_message_is_still_continue() -> None:
    asked = settle(Request(CHAT + [system("[Please continue this message: Hello there.]")]))
    assert asked.prefill == "Hello there."


def test_impersonate_is_a_side_request_recorded_as_its_instruction() -> None:
    asked = settle(Request(CHAT + [system(IMPERSONATE)]))
    assert asked.housekeeping == "impersonate" and asked.meta["side_request"] == "impersonate"
    assert asked.history == CHAT + [{"role": "user", "content": IMPERSONATE}] and asked.prefill == ""


def test_gen_quiet_prompt_is_a_side_request() -> None:
    asked = settle(Request(CHAT + [system("Describe the weather in one sentence.")]), memory=InstructionMemory())
    assert asked.housekeeping == "quiet-prompt"


def test_group_nudge_is_the_next_turn_without_the_nudge() -> None:
    asked = settle(Request(CHAT + [system("[Write the next reply only as Bob.]")]))
    assert asked.history == CHAT and asked.housekeeping is None and asked.prefill == ""


def test_post_history_instructions_after_a_user_turn_leave_the_history_for_meta() -> None:
    """They are sent after the last user turn every time, so they are no turn of the chat: kept in meta."""
    history = CHAT + [{"role": "user", "content": "How are you?"}, system(PHI)]
    asked = settle(Request(history), memory=InstructionMemory())
    assert asked.housekeeping is None and asked.history == history[:-1]
    assert asked.meta["instructions"] == [PHI]


def test_empty_send_with_the_chats_post_history_instructions_is_the_next_turn() -> None:
    """Send with an empty box: the request ends in the assistant's turn and the same instruction the
    chat's earlier sends ended in; the reply is a new assistant turn, not a side request."""
    memory = InstructionMemory()
    settle(Request(CHAT[:-1] + [system(PHI)]), memory=memory)  # "Hi." sent, with the instruction after it
    asked = settle(Request(CHAT + [system(PHI)]), "chat.completions", True, memory=memory)
    assert asked.housekeeping is None and asked.history == CHAT and asked.prefill == ""
    assert joined(asked, reply("Seraphina smiles."))["content"] == "Seraphina smiles."


def test_empty_send_before_any_ordinary_send_of_the_chat_is_taken_for_a_side_request() -> None:
    """Nothing says the instruction is the chat's own yet: like a quiet prompt, it is not recorded."""
    asked = settle(Request(CHAT + [system(PHI)]), memory=InstructionMemory())
    assert asked.housekeeping == "quiet-prompt"


def test_instructions_are_remembered_per_chat_system_prompt() -> None:
    memory = InstructionMemory()
    settle(Request(CHAT[:-1] + [system(PHI)]), memory=memory)
    other = [system("You are Bob.")] + CHAT[1:]
    assert settle(Request(other + [system(PHI)]), memory=memory).housekeeping == "quiet-prompt"


def test_impersonate_and_quiet_prompts_after_the_post_history_instructions_stay_side_requests() -> None:
    """Impersonate's and quiet prompts' instructions come last, after the chat's known instruction."""
    memory = InstructionMemory()
    settle(Request(CHAT[:-1] + [system(PHI)]), memory=memory)
    impersonate = settle(Request(CHAT + [system(PHI), system(IMPERSONATE)]), memory=memory)
    quiet = settle(Request(CHAT + [system(PHI), system("Describe the weather.")]), memory=memory)
    assert (impersonate.housekeeping, quiet.housekeeping) == ("impersonate", "quiet-prompt")


def test_continue_with_post_history_instructions_after_its_nudge_continues() -> None:
    asked = settle(Request(CHAT + [system(CONTINUE), system(PHI)]), memory=InstructionMemory())
    assert asked.prefill == "Hello there." and asked.meta["continued"] == "nudge" and asked.history == CHAT[:-1]


def test_a_summary_asked_after_a_user_turn_stays_housekeeping() -> None:
    """Summarize on a chat that ends with the user's message: the extension's prompt is last; it is not
    mistaken for post-history instructions and dropped."""
    summary = "Ignore previous instructions. Summarize the most important facts and events in the story so far."
    history = CHAT + [{"role": "user", "content": "Bye."}, system(summary)]
    asked = settle(Request(history), memory=InstructionMemory())
    assert asked.history == history and "instructions" not in asked.meta


def test_group_nudge_after_a_user_turn_names_the_reply_where_replies_carry_names() -> None:
    """SillyTavern's group chats write "Name: " before each character's message (names behaviour
    Default); the reply is saved without it, and the next request sends it with it."""
    group = [SYS, START, reply("Seraphina: Welcome."), reply("Bob: Hey."), HI]
    asked = settle(Request(group + [system("[Write the next reply only as Bob.]"), system(PHI)]))
    assert asked.history == group and asked.meta["speaker"] == "Bob"
    assert joined(asked, reply("Yo."))["content"] == "Bob: Yo."
    assert joined(asked, reply("Bob: Yo."))["content"] == "Bob: Yo."


def test_test_message_is_a_connection_check_only_as_sillytavern_sends_it() -> None:
    lone = [{"role": "user", "content": "Hi"}]
    assert settle(Request(lone), "chat.completions", False).housekeeping == "connection-test"
    assert settle(Request(lone), "chat.completions", True).housekeeping is None  # streamed: a chat
    assert settle(Request([SYS] + lone), "chat.completions", False).housekeeping is None
    assert settle(Request([{"role": "user", "content": "Hi!"}]), "chat.completions", False).housekeeping is None


def test_a_prefill_is_marked_continued_and_joined_exactly() -> None:
    asked = settle(Request([SYS, HI], prefill="Sure, "))
    assert asked.meta["continued"] == "prefill"
    assert joined(asked, reply("here"))["content"] == "Sure, here"


def test_reply_after_a_stripped_speaker_name_loses_its_leading_space() -> None:
    asked = Request([SYS, HI], meta={"names": {"assistant": "Seraphina"}})
    assert joined(asked, reply(" Hello there."))["content"] == "Hello there."


def test_sillytavern_1_12_6_requests_in_the_order_one_chat_sent_them() -> None:
    """The bodies SillyTavern 1.12.6 sent for one chat (tests/chats/data, recorded by
    scripts/sillytavern_check.py): a send, Continue, Impersonate, /gen, the impersonated text sent, then
    with Post-History Instructions set a send and a send with an empty box."""
    data = json.loads((Path(__file__).parent / "data" / "sillytavern_1.12.6_chat_completion.json").read_text("utf-8"))
    memory = InstructionMemory()
    read = {}
    for item in data["requests"]:
        body = item["body"]
        read[item["action"]] = settle(
            read_request(body, lambda data, mime: ""), "chat.completions", body["stream"], memory
        )
    assert read["send"].housekeeping is None and read["send"].history[-1]["content"] == "Hi."
    assert read["continue"].meta["continued"] == "nudge" and read["continue"].prefill == "Reply 1."
    assert read["impersonate"].housekeeping == "impersonate"
    assert read["quiet_gen"].housekeeping == "quiet-prompt"
    assert read["send_typed"].housekeeping is None
    phi = "[Stay in character as Seraphina; keep replies under three sentences.]"
    assert read["send_with_phi"].meta["instructions"] == [phi]
    empty = read["empty_send_with_phi"]
    assert empty.housekeeping is None and empty.history[-1] == {"role": "assistant", "content": "Reply 6."}
