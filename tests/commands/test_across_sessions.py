"""Sessions read as one collection: a chat recorded in one session and continued in another is one record.

Recorded through the real proxy with the openai SDK, the way users meet it: a rotation or a restart with a
new --session (the client resends the whole history to a recorder that has not seen it), another instance
sharing the datasets folder, a regenerated reply, a frontend that trims old turns to fit the context.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Dict, List

import pytest

from chatproxy import cli
from chatproxy.commands import stats

from fake_upstream import Chat
from test_export import PNG, client_for, read_dataset, run_export

SYSTEM = {"role": "system", "content": "You are a travel agent."}
Messages = List[Dict[str, Any]]


def say(client: Any, history: Messages, text: Any) -> Messages:
    """One turn: the whole history and a new user message sent, the reply appended."""
    sent = history + [{"role": "user", "content": text}]
    reply = client.chat.completions.create(model="fake-model", messages=sent)
    return sent + [{"role": "assistant", "content": reply.choices[0].message.content}]


def export(capsys: Any, datasets: Any, out: Any, *argv: str) -> Any:
    result = run_export(capsys, "--datasets", str(datasets), "--format", "openai", "--out", str(out), *argv)
    assert result.code == 0, result.err
    return result


def chats(out: Any) -> List[List[str]]:
    """Each exported record as its turns' text, system prompt left out."""
    return [[m["content"] for m in r["messages"] if m["role"] != "system"] for r in read_dataset(out)]


def counted(text: str, label: str) -> str:
    return next(line.split(label, 1)[1].strip() for line in text.splitlines() if line.startswith("  " + label))


@pytest.fixture
def three(upstream: Any, make_proxy: Any) -> Any:
    """Sessions a, b (another instance on the same folder) and c (a new --session) holding one trip chat."""
    first = make_proxy(upstream.url, session="a")
    a = client_for(first)
    trip = say(a, [SYSTEM], "Plan a trip")
    trip = say(a, trip, "To Rome")
    say(a, [], "Hello there")  # recorded the same in a and b: an exact duplicate
    say(a, [], "Only in a")
    first.wait_recorded(4)
    first.flush()

    second = make_proxy(upstream.url, session="b")
    b = client_for(second)
    trip = say(b, trip, "For three days")  # continued on another instance: the whole history resent
    upstream.push(Chat("Pick Florence instead."))
    florence = say(b, trip[:-2], "For three days")  # regenerated: a second branch
    say(b, [], "Hello there")
    second.wait_recorded(3)
    second.flush()

    c = client_for(first, session="c")
    trimmed = [SYSTEM] + florence[3:]  # the frontend dropped the oldest turns to fit the context
    say(c, trimmed, "And the food?")
    first.wait_recorded(5)
    first.flush()
    return first.datasets


def test_a_chat_continued_in_other_sessions_is_one_record_the_longest_with_its_branches(three, capsys, tmp_path):
    out = tmp_path / "chats.jsonl"
    result = export(capsys, three, out, "a", "b", "c")
    start = ["Plan a trip", "echo: Plan a trip", "To Rome", "echo: To Rome", "For three days"]
    assert sorted(chats(out)) == sorted(
        [
            start + ["echo: For three days"],  # the branch b continued
            start + ["Pick Florence instead.", "And the food?", "echo: And the food?"],  # c's, whole
            ["Hello there", "echo: Hello there"],
            ["Only in a", "echo: Only in a"],
        ]
    )
    assert all(r["messages"][0] == SYSTEM for r in read_dataset(out) if "Plan a trip" in json.dumps(r))
    assert "4 conversations" in result.out and "1 duplicate," in result.out
    assert "2 continued in another session" in result.out  # a's trip, c's trimmed one


def test_branches_last_keeps_the_newest_branch_across_sessions(three, capsys, tmp_path):
    out = tmp_path / "chats.jsonl"
    export(capsys, three, out, "--all", "--branches", "last")
    trips = [chat for chat in chats(out) if chat[0] == "Plan a trip"]
    assert [trip[-1] for trip in trips] == ["echo: And the food?"]
    assert len(chats(out)) == 3


def test_the_order_sessions_are_named_in_does_not_matter(three, capsys, tmp_path):
    one, other = tmp_path / "one.jsonl", tmp_path / "other.jsonl"
    export(capsys, three, one, "c", "b", "a")
    export(capsys, three, other, "a", "c", "b")
    assert sorted(chats(one)) == sorted(chats(other)) and len(chats(one)) == 4


def test_two_sessions_a_continuation_and_an_exact_duplicate(three, capsys, tmp_path):
    out = tmp_path / "chats.jsonl"
    result = export(capsys, three, out, "a", "b")
    hello = [chat for chat in chats(out) if chat[0] == "Hello there"]
    assert len(hello) == 1 and "1 duplicate," in result.out
    trips = sorted(chat[-1] for chat in chats(out) if chat[0] == "Plan a trip")
    assert trips == ["Pick Florence instead.", "echo: For three days"]  # a's shorter copy is not written


def test_stats_all_counts_each_chat_once_across_sessions(three, capsys):
    assert stats.main(["--all", "--datasets", str(three)]) == 0
    out = capsys.readouterr().out
    total = out.split("total (3 sessions)\n", 1)[1]
    # As one: trip (two branches), hello, only-in-a; summed per session: a 3 chats, b 2 (trip, hello), c 1.
    assert counted(total, "conversations") == "3"
    assert counted(total, "branches") == "4"
    assert counted(total, "summed").startswith("6 conversations, 7 branches, ")
    # Each reply is recorded in one session: replies and tokens are sums.
    assert counted(total, "tokens").endswith("(usage in 8 of 8 replies)")


def test_a_mark_made_before_the_chat_went_on_in_another_session_still_applies(three, capsys, tmp_path):
    a_trip = [r for r in _journal(three / "a.jsonl") if r["messages"][-1]["content"] == "echo: To Rome"][0]
    assert cli.main(["mark", "a", a_trip["id"], "--discard", "--datasets", str(three)]) == 0
    out = tmp_path / "chats.jsonl"
    export(capsys, three, out, "--all")
    assert sorted(chat[0] for chat in chats(out)) == ["Hello there", "Only in a"]


def test_an_image_chat_continued_in_another_session_is_one_record_and_its_image_a_file(
    upstream, make_proxy, capsys, tmp_path
):
    proxy = make_proxy(upstream.url, session="monday")
    image = "data:image/png;base64," + base64.b64encode(PNG).decode()
    question = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": image}}]
    chat = say(client_for(proxy), [], question)
    say(client_for(proxy, session="tuesday"), chat, "And its colour?")  # tuesday saves the image again
    proxy.wait_recorded(2)
    proxy.flush()
    out = tmp_path / "chats.json"
    result = run_export(capsys, "--all", "--datasets", str(proxy.datasets), "--format", "sharegpt", "--out", str(out))
    assert result.code == 0, result.err
    records = read_dataset(out)
    assert len(records) == 1 and records[0]["conversations"][-1]["value"] == "echo: And its colour?"
    assert len(records[0]["images"]) == 1
    assert Path(records[0]["images"][0]).read_bytes() == PNG


# ---------------------------------------------------------------------------------------------------------
# Ten sessions
# ---------------------------------------------------------------------------------------------------------

TEN = 10


def test_a_chat_that_runs_through_ten_sessions_is_one_record(upstream, make_proxy, capsys, tmp_path):
    """Ten rotations, named so that their names do not sort in time order: the chat gains a turn in each,
    a reply is regenerated in the fifth, the last trims the context, and every session also records a chat
    of its own and the same greeting."""
    proxy = make_proxy(upstream.url, session="s-start")
    history: Messages = [SYSTEM]
    names = [f"s-{(7 * i) % TEN}" for i in range(TEN)]
    for number, name in enumerate(names):
        client = client_for(proxy, session=name)
        if number == TEN - 1:
            history = [SYSTEM] + history[-4:]  # trimmed to fit the context
        history = say(client, history, f"Day {number}")
        if number == 5:
            upstream.push(Chat("Rest instead."))
            say(client, history[:-2], f"Day {number}")
        say(client, [], f"Own chat of {name}")
        say(client, [], "Hello there")
    proxy.wait_recorded(3 * TEN + 1)
    proxy.flush()

    out = tmp_path / "chats.jsonl"
    result = export(capsys, proxy.datasets, out, *sorted(names))
    found = chats(out)
    days = [chat for chat in found if chat[0] == "Day 0"]
    whole = [text for number in range(TEN) for text in (f"Day {number}", f"echo: Day {number}")]
    assert sorted(days, key=len) == [whole[:11] + ["Rest instead."], whole]
    assert sorted(chat[0] for chat in found if chat[0] != "Day 0") == sorted(
        ["Hello there"] + [f"Own chat of {name}" for name in names]
    )
    assert f"{TEN - 1} duplicates," in result.out

    export(capsys, proxy.datasets, out, "--all", "--branches", "last")
    assert [chat for chat in chats(out) if chat[0] == "Day 0"] == [whole]

    assert stats.main(["--all", "--datasets", str(proxy.datasets)]) == 0
    total = capsys.readouterr().out.split(f"total ({TEN} sessions)\n", 1)[1]
    assert counted(total, "conversations") == f"{TEN + 2}" and counted(total, "branches") == f"{TEN + 3}"


def _journal(path: Any) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
