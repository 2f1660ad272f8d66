"""`chatproxy mark` writes the review journal; `export` honours it; `--format dpo` pairs what it defines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import pytest
from review_sessions import make_week, week_records, write_session

from chatproxy import cli
from chatproxy.commands.trainer_rules import llamafactory_ranking_problems, trl_preference_problems


@pytest.fixture
def week(tmp_path: Path) -> Path:
    return make_week(tmp_path)


def mark(folder: Path, *argv: str) -> int:
    return cli.main(["mark", "week", *argv, "--datasets", str(folder)])


def export(folder: Path, out: Path, *argv: str) -> List[Dict[str, Any]]:
    assert cli.main(["export", "week", "--datasets", str(folder), "--out", str(out), *argv]) == 0
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def firsts(records: List[Dict[str, Any]]) -> List[str]:
    return sorted(next(m["content"] for m in r["messages"] if m["role"] == "user")[:12] for r in records)


def test_mark_never_touches_the_recorded_journal(week: Path, capsys: Any) -> None:
    before = (week / "week.jsonl").read_bytes()
    assert mark(week, "a000000000000001", "--discard", "--rating", "2", "--tag", "meh", "--note", "short") == 0
    assert "discard, rating 2, tags meh, note" in capsys.readouterr().out
    assert (week / "week.jsonl").read_bytes() == before
    assert not (week / "week.json").exists()
    assert len((week / "week.review.jsonl").read_bytes().splitlines()) == 4


def test_a_prefix_names_a_conversation_and_errors_are_one_line(week: Path, capsys: Any) -> None:
    assert mark(week, "a0000000000000", "--keep") == 2  # several start so
    assert mark(week, "ffff", "--keep") == 2
    assert mark(week, "a000000000000001") == 2  # nothing to do
    assert mark(week, "a000000000000001", "--rating", "7") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("chatproxy mark: error:") for line in err)
    assert mark(week, "week/a000000000000001", "--keep") == 0


def test_discarded_are_left_out_and_only_kept_exports_the_kept(week: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    assert len(export(week, out, "--format", "messages")) == 5
    assert mark(week, "a000000000000001", "--discard") == 0
    assert mark(week, "a000000000000004", "--keep", "--rating", "5") == 0
    assert firsts(export(week, out, "--format", "messages")) == firsts(export(week, out, "--format", "messages"))
    assert "hello there" not in firsts(export(week, out, "--format", "messages"))
    assert len(export(week, out, "--format", "messages")) == 4
    assert len(export(week, out, "--format", "messages", "--include-discarded")) == 5
    assert firsts(export(week, out, "--format", "messages", "--only", "kept")) == ["what is in t"]
    assert firsts(export(week, out, "--format", "messages", "--min-rating", "4")) == ["what is in t"]
    assert mark(week, "a000000000000001", "--undo") == 0
    assert len(export(week, out, "--format", "messages")) == 5


def test_review_tags_filter_with_recorded_tags(week: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    assert mark(week, "a000000000000002", "--tag", "poetry") == 0
    assert len(export(week, out, "--format", "messages", "--tag", "poetry")) == 1
    assert firsts(export(week, out, "--format", "messages", "--tag", "vision")) == ["what is in t"]


def test_an_edited_reply_replaces_the_recorded_one(week: Path, tmp_path: Path) -> None:
    assert mark(week, "a000000000000001", "--edit", "1", "--text", "Hello! How can I help?") == 0
    records = export(week, tmp_path / "out.jsonl", "--format", "messages")
    hello = next(r for r in records if r["messages"][1]["content"] == "hello there")
    assert hello["messages"][-1] == {"role": "assistant", "content": "Hello! How can I help?"}


def test_a_mark_survives_the_chat_going_on(week: Path, tmp_path: Path) -> None:
    """A chat marked, then continued by the frontend (a new record extending it), stays discarded."""
    assert mark(week, "a000000000000001", "--discard") == 0
    more = week_records("week") + [
        {
            "v": 1,
            "id": "a000000000000009",
            "parent": "a000000000000001",
            "base": 3,
            "messages": [{"role": "user", "content": "and again"}, {"role": "assistant", "content": "Yes."}],
            "meta": {"time": "2026-05-03T10:00:00.000Z", "model": "gpt-4o", "complete": True},
        }
    ]
    write_session(week, "week", more)
    assert "hello there" not in firsts(export(week, tmp_path / "out.jsonl", "--format", "messages"))


def _dpo(week: Path, tmp_path: Path, fmt: str) -> List[Dict[str, Any]]:
    assert mark(week, "a000000000000001", "--edit", "-1", "--text", "Hello! How can I help?") == 0
    assert mark(week, "a000000000000003", "--rating", "5") == 0
    assert mark(week, "a000000000000002", "--rating", "2") == 0
    return export(week, tmp_path / f"{fmt}.jsonl", "--format", fmt)


def test_dpo_pairs_edits_and_differently_rated_branches_for_trl(week: Path, tmp_path: Path) -> None:
    records = _dpo(week, tmp_path, "dpo")
    assert len(records) == 2
    assert all(trl_preference_problems(r) == [] for r in records)
    edit = next(r for r in records if r["prompt"][-1]["content"] == "hello there")
    assert edit["prompt"][0] == {"role": "system", "content": "You are terse."}
    assert edit["chosen"] == [{"role": "assistant", "content": "Hello! How can I help?"}]
    assert edit["rejected"] == [{"role": "assistant", "content": "Hi."}]
    rated = next(r for r in records if r["prompt"][-1]["content"] == "write a haiku about rain")
    assert rated["chosen"][0]["content"] == "Grey sky, soft drumming"
    assert rated["rejected"][0]["content"] == "Rain on the window"


def test_dpo_sharegpt_is_llamafactory_ranking(week: Path, tmp_path: Path, capsys: Any) -> None:
    records = _dpo(week, tmp_path, "dpo-sharegpt")
    assert len(records) == 2 and all(llamafactory_ranking_problems(r) == [] for r in records)
    edit = next(r for r in records if r["conversations"][-1]["value"] == "hello there")
    assert edit["conversations"][0] == {"from": "system", "value": "You are terse."}
    assert edit["chosen"] == {"from": "gpt", "value": "Hello! How can I help?"}
    assert edit["rejected"] == {"from": "gpt", "value": "Hi."}
    assert '"ranking": true' in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["dpo", "dpo-sharegpt"])
def test_dpo_loads_in_datasets(week: Path, tmp_path: Path, fmt: str) -> None:
    datasets = pytest.importorskip("datasets")
    records = _dpo(week, tmp_path, fmt)
    loaded = datasets.load_dataset("json", data_files=str(tmp_path / f"{fmt}.jsonl"), split="train")
    assert len(loaded) == 2
    assert [dict(row) for row in loaded][0].keys() == records[0].keys()


def test_no_marks_no_pairs(week: Path, tmp_path: Path, capsys: Any) -> None:
    assert (
        cli.main(["export", "week", "--datasets", str(week), "--out", str(tmp_path / "d.jsonl"), "--format", "dpo"])
        == 1
    )
    assert "nothing to export" in capsys.readouterr().err


def test_the_validators_refuse_what_their_consumer_refuses() -> None:
    good = {
        "prompt": [{"role": "user", "content": "q"}],
        "chosen": [{"role": "assistant", "content": "a"}],
        "rejected": [{"role": "assistant", "content": "b"}],
    }
    assert trl_preference_problems(good) == []
    assert trl_preference_problems({**good, "rejected": good["chosen"]}) == ["chosen and rejected are the same"]
    assert trl_preference_problems({**good, "prompt": good["chosen"]})
    ranking = {
        "conversations": [{"from": "human", "value": "q"}],
        "chosen": {"from": "gpt", "value": "a"},
        "rejected": {"from": "gpt", "value": "b"},
    }
    assert llamafactory_ranking_problems(ranking) == []
    two = [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
    assert "odd number" in llamafactory_ranking_problems({**ranking, "conversations": two})[0]
    assert llamafactory_ranking_problems({**ranking, "chosen": {"from": "human", "value": "a"}})
