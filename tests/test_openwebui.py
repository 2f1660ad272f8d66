"""Open WebUI driven in a real browser through chatproxy (scripts/openwebui_check.py).

Open WebUI is no test dependency (torch and a few GB more): the real run needs it in a venv at
$CHATPROXY_OPENWEBUI (default ~/.cache/chatproxy-frontends/openwebui) and Debian's chromium, and is
skipped otherwise. The check's own readers (the wire parser, the branches of a stored chat, the
comparison) are tested here on shapes Open WebUI 0.12.4 produced, with or without it.
"""

from __future__ import annotations

import importlib.util
import io
import json
import sqlite3
import sys
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any, Dict, List

import pytest

from subproc import ROOT

_spec = importlib.util.spec_from_file_location("openwebui_check", ROOT / "scripts" / "openwebui_check.py")
assert _spec is not None and _spec.loader is not None
check = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = check  # its dataclasses look their module up there
_spec.loader.exec_module(check)


@pytest.mark.timeout(600)
def test_open_webui_branches_are_the_records(tmp_path: Path) -> None:
    """Three chats (system prompt, an edit, a regeneration, an image) give one record per stored branch,
    each equal to it; the relay is unchanged both ways and the key reaches no file."""
    venv = check.DEFAULT_VENV
    if not (venv / "bin" / "open-webui").exists():
        pytest.skip(
            f"Open WebUI is not installed in {venv} (set CHATPROXY_OPENWEBUI, or: python3.11 -m venv {venv} && "
            f"{venv}/bin/pip install torch==2.13.0 open-webui==0.12.4)"
        )
    if check.CHROMIUM is None:
        pytest.skip("no chromium on PATH (apt-get install -y chromium)")
    output = io.StringIO()
    with redirect_stdout(output):
        code = check.main(["--venv", str(venv), "--keep", str(tmp_path / "work")])
    assert code == 0, output.getvalue()


# --- the check's readers, on what Open WebUI 0.12.4 stored and sent ---------------------------------------


def stored_message(mid: str, parent: Any, children: List[str], role: str, content: str, **extra: Any) -> Dict[str, Any]:
    return dict(id=mid, parentId=parent, childrenIds=children, role=role, content=content, timestamp=len(mid), **extra)


IMAGE_FILE = {
    "type": "file",
    "file": {"meta": {"name": "picture.png", "content_type": "image/png", "file_hash": "ab" * 32}},
    "id": "5d0b34b6",
    "url": "5d0b34b6",
    "content_type": "image/png",
}


def webui_db(path: Path) -> Path:
    """A webui.db holding what 0.12.4 stored for an edited chat and an image chat."""
    edited = {
        "u1": stored_message("u1", None, ["a1"], "user", "What is Rust?"),
        "a1": stored_message("a1", "u1", ["u2", "u2bis"], "assistant", "Reply 1.\n\nThat is all."),
        "u2": stored_message("u2", "a1", ["a2"], "user", "Is it fast?"),
        "a2": stored_message("a2", "u2", [], "assistant", "Reply 2."),
        "u2bis": stored_message("u2bis", "a1", ["a3bis"], "user", "Is it safe?", files=[]),
        "a3bis": stored_message("a3bis", "u2bis", [], "assistant", "Reply 3."),
    }
    image = {
        "u1": stored_message("u1", None, ["a1"], "user", "What is in this picture?", files=[IMAGE_FILE]),
        "a1": stored_message("a1", "u1", [], "assistant", "Reply 4."),
    }
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE chat (id TEXT, user_id TEXT, title TEXT, chat JSON)")
    con.execute("CREATE TABLE user (id TEXT, settings JSON)")
    con.execute("INSERT INTO user VALUES ('me', ?)", (json.dumps({"ui": {"system": "Be  brief.\n"}}),))
    for chat_id, messages in (("edited", edited), ("image", image)):
        history = {"currentId": "a3bis" if chat_id == "edited" else "a1", "messages": messages}
        chat = {"id": chat_id, "history": history, "messages": []}
        con.execute("INSERT INTO chat VALUES (?, 'me', ?, ?)", (chat_id, chat_id.title(), json.dumps(chat)))
    con.commit()
    con.close()
    return path


def test_each_leaf_of_the_stored_tree_is_a_branch_after_the_users_system_prompt(tmp_path: Path) -> None:
    branches = check.stored_branches(webui_db(tmp_path / "webui.db"), ["edited", "image"])
    assert [b.turns for b in branches] == [
        [("system", "Be brief."), ("user", "What is Rust?"), ("assistant", "Reply 1. That is all.")]
        + [("user", "Is it fast?"), ("assistant", "Reply 2.")],
        [("system", "Be brief."), ("user", "What is Rust?"), ("assistant", "Reply 1. That is all.")]
        + [("user", "Is it safe?"), ("assistant", "Reply 3.")],
        [("system", "Be brief."), ("user", "What is in this picture?"), ("assistant", "Reply 4.")],
    ]
    assert [b.images for b in branches] == [[], [], ["ab" * 32]]
    assert [b.shown for b in branches] == [False, True, True]


def test_a_record_with_open_webuis_file_block_differs_from_the_stored_branch(tmp_path: Path) -> None:
    """What 0.12.4 sends for an image message (its <attached_files> part first) is not what it stored."""
    branch = check.stored_branches(webui_db(tmp_path / "webui.db"), ["image"])[0]
    block = '<attached_files>\n<file type="file" id="5d0b34b6" url="5d0b34b6" content_type="image/png"/>\n'
    sent = check.Record(
        [("system", "Be brief."), ("user", check._plain(block + "</attached_files>\n\n\nWhat is in this picture?"))]
        + [("assistant", "Reply 4.")],
        ["ab" * 32],
    )
    equal, differences = check.compare([branch], [sent])
    assert equal == 0
    assert differences == [
        f"chat image ('Image'), turn 2: stored ('user', 'What is in this picture?'), recorded {sent.turns[1]!r}"
    ]
    same = check.Record(branch.turns, ["ab" * 32])
    assert check.compare([branch], [same]) == (1, [])
    assert check.compare([branch], [check.Record(branch.turns, [])])[1] == [
        f"chat image ('Image'): images differ: stored {['ab' * 32]}, recorded []"
    ]


def test_wire_parser_reads_chunked_and_sized_messages_back_to_back() -> None:
    wire = (
        b"HTTP/1.1 200 \r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
        b"HTTP/1.1 200 \r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        b"6\r\ndata: \r\n3\r\n1\n\n\r\n0\r\n\r\n"
    )
    first, second = check.parse_messages(wire, responses=True)
    assert (first.body, first.begin, first.end) == (b"{}", 0, 70)
    assert (second.body, second.begin, second.end) == (b"data: 1\n\n", 70, len(wire))
    requests = check.parse_messages(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n" * 2, responses=False)
    assert [r.start for r in requests] == ["GET /v1/models HTTP/1.1"] * 2


def test_task_prompts_are_told_apart_from_chats() -> None:
    def kind(text: str) -> str:
        return str(check.task_kind([{"role": "user", "content": text}]))

    assert kind('### Task:\nGenerate a concise title\nJSON format: { "title": "your concise title here" }') == "title"
    assert kind('### Task:\nPredict 3-5 useful messages\nJSON format: { "follow_ups": ["..."] }') == "follow_ups"
    assert kind('### Task:\nGenerate 1-3 broad tags\nJSON format: { "tags": ["tag1"] }') == "tags"
    assert kind("What is Rust?") == ""
