"""Open WebUI's task prompts in every release read (tests/chats/data: the DEFAULT_*_PROMPT_TEMPLATE texts of
open_webui/config.py in the 0.6.43, 0.10.2, 0.11.4 and 0.12.4 wheels from PyPI), filled in as Open WebUI
fills them (utils/task.py: {{MESSAGES:END:n}} as "ROLE: text" lines, {{prompt}}, MoA's quoted responses),
sent as the one user message of the request (routers/tasks.py). Recognised by structure, not one sentence.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from chatproxy.chats.housekeeping import housekeeping_kind

DATA = json.loads((Path(__file__).parent / "data" / "open_webui_task_templates.json").read_text("utf-8"))
KINDS = {
    "TITLE": "title",
    "TAGS": "tags",
    "IMAGE_PROMPT": "image-prompt",
    "FOLLOW_UP": "follow-ups",
    "QUERY": "search-query",
    "AUTOCOMPLETE": "autocomplete",
    "EMOJI": "emoji",
    "MOA": "merge-responses",
    "TOOLS_FUNCTION_CALLING": "tool-selection",
}
HISTORY = "USER: What is the best way to learn Rust?\nASSISTANT: Read the book, then build small tools."


def fill(template: str) -> str:
    text = re.sub(r"\{\{MESSAGES:END:\d+\}\}", HISTORY, template)
    values = {
        "{{CURRENT_DATE}}": "2026-03-01",
        "{{prompt}}": "What is the best way to learn Rust?",
        "{{responses}}": '"""Read the book."""\n\n"""Build things."""',
        "{{TYPE}}": "General",
        "{{PROMPT}}": "What is the best",
        "{{TOOLS}}": '[{"name": "get_weather"}]',
    }
    for key, value in values.items():
        text = text.replace(key, value)
    return text


CASES = [
    (release, name, kind)
    for release, templates in DATA["templates"].items()
    for name in templates
    for key, kind in KINDS.items()
    if name in (f"DEFAULT_{key}_GENERATION_PROMPT_TEMPLATE", f"DEFAULT_{key}_PROMPT_TEMPLATE")
]


@pytest.mark.parametrize(("release", "name", "kind"), CASES, ids=[f"{r} {n}" for r, n, _ in CASES])
def test_open_webui_task_template_is_housekeeping(release: str, name: str, kind: str) -> None:
    messages = [{"role": "user", "content": fill(DATA["templates"][release][name])}]
    if kind == "tool-selection":  # sent as the system message, the query as the user's
        messages = [{"role": "system", "content": messages[0]["content"]}, {"role": "user", "content": "Query: x"}]
    assert housekeeping_kind(messages) == kind


def test_every_release_read_has_its_task_templates() -> None:
    assert sorted(DATA["templates"]) == ["0.10.2", "0.11.4", "0.12.4", "0.6.43"]
    assert all(len(templates) == len(KINDS) for templates in DATA["templates"].values())


def test_0_12_follow_up_wording_is_recognised() -> None:
    """Issue 13: 0.12.4 rewrote the follow-up task ("Predict 3-5 useful messages…")."""
    template = DATA["templates"]["0.12.4"]["DEFAULT_FOLLOW_UP_GENERATION_PROMPT_TEMPLATE"]
    assert template.startswith("### Task:\nPredict 3-5 useful messages this user might naturally send next")
    assert housekeeping_kind([{"role": "user", "content": fill(template)}]) == "follow-ups"


def test_a_reworded_task_is_recognised_by_its_structure() -> None:
    """A future wording keeps the head, the wrapper and the JSON key the backend parses."""
    text = '### Task:\nThink of short titles.\n### Output:\nJSON format: { "title": "x" }\n'
    text += f"<chat_history>\n{HISTORY}\n</chat_history>"
    assert housekeeping_kind([{"role": "user", "content": text}]) == "title"
    unknown = text.replace('"title"', '"mood"')
    assert housekeeping_kind([{"role": "user", "content": unknown}]) == "task"


@pytest.mark.parametrize(
    "text",
    [
        "### Task:\nExplain this log.\n<chat_history>\nUSER: hi\n</chat_history>",  # no JSON answer asked for
        "Please reply in JSON. <chat_history>\nUSER: hi\n</chat_history>",  # no task head
        '### Task:\nReturn JSON format: { "title": "x" } for this text.',  # no chat history wrapper
    ],
)
def test_a_chat_that_only_resembles_a_task_is_recorded(text: str) -> None:
    assert housekeeping_kind([{"role": "system", "content": "Be helpful."}, {"role": "user", "content": text}]) is None


# --- LibreChat -----------------------------------------------------------------------------------------
# tests/chats/data/librechat_task_templates.json: the task prompts of @librechat/agents (the package
# LibreChat's agents run on) at each release that changed one, and LibreChat's own client prompts, filled
# in and sent as LibreChat sends them.

LIBRE = json.loads((Path(__file__).parent / "data" / "librechat_task_templates.json").read_text("utf-8"))
LIBRE_KINDS = {
    "defaultTitlePrompt": "title",
    "defaultCompletionPrompt": "title",
    "DEFAULT_SUMMARIZATION_PROMPT": "summary",
    "DEFAULT_UPDATE_SUMMARIZATION_PROMPT": "summary",
    "ACTIVITY_LABEL_PROMPT": "label",
    "ACTIVITY_PHASE_LABEL_PROMPT": "label",
    "REASONING_LABEL_PROMPT": "label",
}
CHAT = [
    {"role": "user", "content": "How do I reverse a list in Python?"},
    {"role": "assistant", "content": "Use reversed(xs) or xs[::-1]."},
]
# The exchange as each side quotes it: the agents' titlePromptTemplate default, the clients' quote.
AGENTS_CONVO = "User: How do I reverse a list in Python?\nAI: Use reversed(xs) or xs[::-1]."
CLIENT_CONVO = '||>User:\n"How do I reverse a list in Python?"\n||>Response:\n"\\"Use reversed(xs) or xs[::-1].\\""'


def libre_request(name: str, template: str) -> list:
    """The messages LibreChat sends for one task prompt (run.ts generateTitle, summarization/node.ts, the
    label runnables: the prompt as the system message, the activity as the user's)."""
    if name in ("defaultTitlePrompt", "defaultCompletionPrompt"):
        return [{"role": "user", "content": template.replace("{convo}", AGENTS_CONVO)}]
    if "SUMMARIZATION" in name:
        return [*CHAT, {"role": "user", "content": template}]
    return [{"role": "system", "content": template}, {"role": "user", "content": "Ran pytest; 3 tests failed."}]


LIBRE_CASES = [
    (release, name, kind)
    for release, prompts in LIBRE["templates"].items()
    for name, kind in LIBRE_KINDS.items()
    if name in prompts
]


@pytest.mark.parametrize(("release", "name", "kind"), LIBRE_CASES, ids=[f"{r} {n}" for r, n, _ in LIBRE_CASES])
def test_librechat_agents_task_prompt_is_housekeeping(release: str, name: str, kind: str) -> None:
    assert housekeeping_kind(libre_request(name, LIBRE["templates"][release][name])) == kind


def test_every_librechat_agents_release_read_has_a_title_prompt() -> None:
    assert len(LIBRE["templates"]) == 9
    assert all("defaultTitlePrompt" in prompts for prompts in LIBRE["templates"].values())


@pytest.mark.parametrize(
    "messages",
    [
        # api/app/clients/OpenAIClient.js titleConvo: titleInstruction, the quoted exchange, "||>Title:".
        [
            {
                "role": "user",
                "content": "Please generate "
                + LIBRE["librechat"]["titleInstruction"]
                + "\n\n"
                + CLIENT_CONVO
                + "\n\n||>Title:",
            }
        ],
        # titlePrompts.js createTitlePrompt: the instruction and the exchange as the system message.
        [
            {"role": "system", "content": LIBRE["librechat"]["createTitlePrompt"].replace("{convo}", CLIENT_CONVO)},
            {"role": "user", "content": "Language: English"},
        ],
        # The OpenAI endpoint's addTitle: its DEFAULT_TITLE_PROMPT (or the admin's titlePrompt), the exchange.
        [{"role": "user", "content": LIBRE["librechat"]["DEFAULT_TITLE_PROMPT"] + "\n\n" + CLIENT_CONVO}],
        [{"role": "user", "content": "Name this chat, three words, in German.\n\n" + CLIENT_CONVO}],
    ],
    ids=["titleConvo", "createTitlePrompt", "addTitle default", "addTitle with an admin's titlePrompt"],
)
def test_librechat_client_title_requests_are_housekeeping(messages: list) -> None:
    assert housekeeping_kind(messages) == "title"


@pytest.mark.parametrize("name", ["_DEFAULT_SUMMARIZER_TEMPLATE", "_CUT_OFF_SUMMARIZER"])
def test_librechat_client_summaries_are_housekeeping(name: str) -> None:
    text = LIBRE["librechat"][name].replace("{summary}", "The human asked about lists.")
    text = text.replace("{new_lines}", "Human: And tuples?\nAI: Tuples are immutable.")
    assert housekeeping_kind([{"role": "user", "content": text}]) == "summary"


def test_a_reworded_agents_title_prompt_is_recognised_by_the_exchange_it_quotes() -> None:
    text = "Give this conversation a short title in its language.\n\n" + AGENTS_CONVO
    assert housekeeping_kind([{"role": "user", "content": text}]) == "title"


@pytest.mark.parametrize(
    "text",
    [
        "User: my name is Ann. AI: nice to meet you. Why did you say that?",  # no title asked for
        "What is a good title for my essay about rivers?",  # a title, but no quoted exchange
        "Summarize this: the current summary: none.",  # the labels, not the template
    ],
)
def test_a_chat_that_only_resembles_a_librechat_task_is_recorded(text: str) -> None:
    assert housekeeping_kind([{"role": "user", "content": text}]) is None
