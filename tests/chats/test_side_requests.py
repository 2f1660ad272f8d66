"""settle / joined: SillyTavern's requests built from the chat plus a final system instruction (1.12.6)."""

from __future__ import annotations

from chatproxy.apis import Request
from chatproxy.chats.side_requests import joined, settle

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


def test_continue_nudge_continues_the_last_message_with_a_space() -> None:
    asked = settle(Request(CHAT + [system(CONTINUE)]))
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
    asked = settle(Request(CHAT + [system("Describe the weather in one sentence.")]))
    assert asked.housekeeping == "quiet-prompt"


def test_group_nudge_is_the_next_turn_without_the_nudge() -> None:
    asked = settle(Request(CHAT + [system("[Write the next reply only as Bob.]")]))
    assert asked.history == CHAT and asked.housekeeping is None and asked.prefill == ""


def test_post_history_instructions_after_a_user_turn_are_a_chat() -> None:
    history = CHAT + [{"role": "user", "content": "How are you?"}, system("[Stay in character.]")]
    assert settle(Request(history)).housekeeping is None


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
