"""The live dataset in shards: one file while small, a folder of shards once it grows, each shard rewritten
only while its chats change; always the conversations `export` makes of the journal, also after a crash
in the middle of a rewrite and after a disk that filled up.

The store is driven directly (real files, the store's own shard size lowered so a few chats fill one);
one test records past the real shard size through a running proxy."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from chatproxy.commands import export
from chatproxy.config import RecordOptions
from chatproxy.recorder import store as store_module
from chatproxy.recorder.journal import read_journal
from chatproxy.recorder.store import DatasetStore

from subproc import ROOT
from support_faults import post_chat

SYSTEM = {"role": "system", "content": "You are terse."}


def reply(text: str) -> Dict[str, Any]:
    return {"role": "assistant", "content": f"echo: {text}"}


class Chats:
    """Chats placed into a store as a frontend would send them: each turn carries the whole history."""

    def __init__(self, store: DatasetStore) -> None:
        self.store = store
        self.histories: Dict[str, List[Dict[str, Any]]] = {}

    def say(self, chat: str, text: str) -> None:
        history = self.histories.setdefault(chat, [SYSTEM])
        history.append({"role": "user", "content": f"{chat}: {text}"})
        answer = reply(text)
        assert self.store.place(list(history), answer, None, {"complete": True, "model": "m"}) is not None
        history.append(answer)

    def regenerate(self, chat: str, variant: str) -> None:
        """The last reply again, another way: a branch of the chat."""
        history = self.histories[chat][:-1]
        self.store.place(history, reply(variant), None, {"complete": True, "model": "m"})

    def commit(self) -> None:
        self.store.flush()
        self.store.write_snapshot()


def open_store(folder: Path, session: str = "s", **options: Any) -> DatasetStore:
    store = DatasetStore(folder, session, RecordOptions(**options))
    store.open()
    return store


@pytest.fixture
def small_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "SHARD_CHATS", 3)


def live_files(dataset: Path) -> List[Path]:
    return sorted(dataset.glob("*.json")) if dataset.is_dir() else [dataset]


def live_entries(dataset: Path) -> List[Dict[str, Any]]:
    """Every entry of the live dataset, shards in order; each file must be a whole JSON array."""
    entries: List[Dict[str, Any]] = []
    for path in live_files(dataset):
        entries.extend(json.loads(path.read_bytes()))
    return entries


def exported(folder: Path, session: str, *extra: str) -> List[Dict[str, Any]]:
    out = folder.parent / f"{session}-export.json"
    assert export.main([session, "--datasets", str(folder), "--format", "sharegpt", "--out", str(out), *extra]) == 0
    data: List[Dict[str, Any]] = json.loads(out.read_bytes())
    out.unlink()
    return data


def meta_of(entry: Dict[str, Any]) -> Dict[str, Any]:
    """An entry's meta: an object in the one file, a JSON string in a folder of shards."""
    meta = entry["meta"]
    return json.loads(meta) if isinstance(meta, str) else dict(meta)


def conversations(entries: List[Dict[str, Any]]) -> List[str]:
    return sorted(json.dumps(entry["conversations"], sort_keys=True) for entry in entries)


def inodes(dataset: Path) -> Dict[str, Tuple[int, int]]:
    """Each shard file's inode and mtime: a rewrite (temp, rename) gives it a new inode."""
    return {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in live_files(dataset)}


# -- layout and contents -------------------------------------------------------------------------


def test_a_small_session_is_one_file_and_a_larger_one_a_folder_of_shards(tmp_path: Path, small_shards: None) -> None:
    store = open_store(tmp_path)
    chats = Chats(store)
    for name in ("a", "b", "c"):
        chats.say(name, f"hello {name}")
    chats.commit()
    dataset = tmp_path / "s.json"
    assert dataset.is_file() and len(json.loads(dataset.read_bytes())) == 3
    chats.say("d", "hello d")  # the fourth chat begins the second shard: the file becomes a folder
    chats.commit()
    assert dataset.is_dir()
    assert sorted(p.name for p in dataset.iterdir()) == ["000001.json", "000002.json"]
    assert [len(json.loads(p.read_bytes())) for p in live_files(dataset)] == [3, 1]
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
    store.close()


def test_the_live_shards_hold_the_conversations_export_makes(tmp_path: Path, small_shards: None) -> None:
    store = open_store(tmp_path)
    chats = Chats(store)
    rng = random.Random(7)
    names = [f"chat{i}" for i in range(11)]
    for step in range(60):
        name = rng.choice(names)
        if name in chats.histories and rng.random() < 0.15:
            chats.regenerate(name, f"another take {step}")
        else:
            chats.say(name, f"turn {step} of {name}")
        if step % 7 == 0:
            chats.commit()
    chats.commit()
    dataset = tmp_path / "s.json"
    assert dataset.is_dir() and len(live_files(dataset)) == 4
    assert conversations(live_entries(dataset)) == conversations(exported(tmp_path, "s"))
    ids = [json.loads(entry["meta"])["id"] for entry in live_entries(dataset)]
    assert len(ids) == len(set(ids))
    store.close()


def test_branches_last_shows_the_newest_branch_of_each_chat_in_every_shard(tmp_path: Path, small_shards: None) -> None:
    store = open_store(tmp_path, branches="last")
    chats = Chats(store)
    for i in range(7):
        chats.say(f"c{i}", f"first {i}")
        chats.regenerate(f"c{i}", "second thoughts")
    chats.commit()
    entries = live_entries(tmp_path / "s.json")
    assert len(entries) == 7 and all(e["conversations"][-1]["value"] == "echo: second thoughts" for e in entries)
    assert conversations(entries) == conversations(exported(tmp_path, "s", "--branches", "last"))
    store.close()


def test_shards_whose_metas_differ_load_as_one_dataset(tmp_path: Path, small_shards: None) -> None:
    """Hugging Face `datasets` (as LLaMA-Factory calls it on a folder) types each file on its own: shards
    whose records carry other meta fields (tags, another API's usage) must still load together."""
    datasets = pytest.importorskip("datasets")
    store = open_store(tmp_path)
    metas = [
        {"complete": True, "usage": {"prompt_tokens": 3}},
        {"complete": True, "usage": {"input_tokens": 3, "output_tokens": 2}, "api": "anthropic_messages"},
        {"complete": True, "tags": ["rp"], "template": "chatml"},
    ]
    for i in range(9):
        history = [SYSTEM, {"role": "user", "content": f"question {i}"}]
        store.place(history, reply(f"answer {i}"), None, metas[i // 3])
    store.flush()
    store.write_snapshot()
    dataset = tmp_path / "s.json"
    assert len(live_files(dataset)) == 3
    loaded = datasets.load_dataset(
        "json", data_files=str(dataset / "*.json"), split="train", cache_dir=str(tmp_path / "cache")
    )
    assert sorted(row["conversations"][1]["value"] for row in loaded) == [f"question {i}" for i in range(9)]
    assert json.loads(loaded[8]["meta"])["template"] == "chatml"
    store.close()


# -- what is rewritten ------------------------------------------------------------------------------


def test_only_the_shard_whose_chats_change_is_rewritten(tmp_path: Path, small_shards: None) -> None:
    store = open_store(tmp_path)
    chats = Chats(store)
    for i in range(9):
        chats.say(f"c{i}", f"hello {i}")
    chats.commit()
    dataset = tmp_path / "s.json"
    before = inodes(dataset)
    assert list(before) == ["000001.json", "000002.json", "000003.json"]
    chats.say("c1", "more")  # a chat of the first shard goes on
    chats.commit()
    after = inodes(dataset)
    assert after["000001.json"] != before["000001.json"]
    assert {k: after[k] for k in ("000002.json", "000003.json")} == {
        k: before[k] for k in ("000002.json", "000003.json")
    }
    chats.say("c9", "a new chat")  # goes to a new, fourth shard: nothing else is touched
    chats.commit()
    newest = inodes(dataset)
    assert sorted(newest) == ["000001.json", "000002.json", "000003.json", "000004.json"]
    assert {k: newest[k] for k in after} == after
    store.close()


def test_resuming_after_a_clean_exit_rewrites_no_shard(tmp_path: Path, small_shards: None) -> None:
    store = open_store(tmp_path)
    chats = Chats(store)
    for i in range(8):
        chats.say(f"c{i}", f"hello {i}")
    chats.commit()
    store.close()
    dataset = tmp_path / "s.json"
    before = inodes(dataset)
    resumed = open_store(tmp_path)
    assert not resumed.dirty  # nothing due: the recorder writes nothing
    chats = Chats(resumed)
    chats.say("c8", "a new chat")  # into the third shard, which holds two
    chats.commit()
    after = inodes(dataset)
    assert {k: after[k] for k in ("000001.json", "000002.json")} == {
        k: before[k] for k in ("000001.json", "000002.json")
    }
    assert after["000003.json"] != before["000003.json"]
    resumed.close()


def test_a_shard_changed_behind_the_stores_back_is_written_again_on_resume(tmp_path: Path, small_shards: None) -> None:
    store = open_store(tmp_path)
    chats = Chats(store)
    for i in range(7):
        chats.say(f"c{i}", f"hello {i}")
    chats.commit()
    store.close()
    dataset = tmp_path / "s.json"
    (dataset / "000002.json").unlink()  # lost
    (dataset / "000009.json").write_bytes(b"[]\n")  # not ours
    before = inodes(dataset)
    resumed = open_store(tmp_path)
    assert resumed.dirty
    resumed.write_snapshot()
    after = inodes(dataset)
    assert sorted(after) == ["000001.json", "000002.json", "000003.json"]
    assert after["000001.json"] == before["000001.json"] and after["000003.json"] == before["000003.json"]
    assert conversations(live_entries(dataset)) == conversations(exported(tmp_path, "s"))
    resumed.close()


def test_an_older_single_file_becomes_shards_once_the_session_needs_two(tmp_path: Path, small_shards: None) -> None:
    """What an older chatproxy left (a SESSION.json file, no index) is read and carried on."""
    store = open_store(tmp_path)
    chats = Chats(store)
    chats.say("a", "hello")
    chats.commit()
    store.close()
    (tmp_path / ".s.json.index").unlink()
    resumed = open_store(tmp_path)
    assert resumed.dirty  # no index: the file cannot be known to be current
    chats.store = resumed
    for name in ("b", "c", "d", "e"):
        chats.say(name, f"hello {name}")
    chats.commit()
    assert (tmp_path / "s.json").is_dir()
    assert conversations(live_entries(tmp_path / "s.json")) == conversations(exported(tmp_path, "s"))
    resumed.close()


# -- faults -----------------------------------------------------------------------------------------

CRASH_WRITER = """
import random, sys, time
from pathlib import Path
from chatproxy.config import RecordOptions
from chatproxy.recorder import store as store_module
from chatproxy.recorder.journal import read_journal
from chatproxy.recorder.store import DatasetStore

store_module.SHARD_CHATS = 5
store = DatasetStore(Path(sys.argv[1]), "s", RecordOptions())
store.open()
rng = random.Random(int(sys.argv[2]))
system = {"role": "system", "content": "You are terse."}
histories = {}
step = 0
print("ready", flush=True)
while True:
    step += 1
    chat = rng.randrange(40)
    history = histories.setdefault(chat, [system])
    history.append({"role": "user", "content": f"seed {sys.argv[2]} turn {step} " + "x" * rng.randrange(2000)})
    answer = {"role": "assistant", "content": "echo " + str(step)}
    store.place(list(history), answer, None, {"complete": True})
    history.append(answer)
    store.flush()
    store.write_snapshot()
"""


def test_kill_9_in_the_middle_of_rewrites_leaves_whole_shards_and_resume_repairs_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that rewrites shards without pause is killed at random moments: every file in the live
    folder is always a whole JSON array of recorded conversations (no temp file among them), and resuming
    brings the shards back to what export makes of the journal, touching only the shards that differ."""
    monkeypatch.setattr(store_module, "SHARD_CHATS", 5)  # as the writer has it
    folder = tmp_path / "d"
    folder.mkdir()
    rng = random.Random(3)
    for seed in range(6):
        writer = subprocess.Popen(
            [sys.executable, "-c", CRASH_WRITER, str(folder), str(seed)],
            cwd=str(ROOT),
            stdout=subprocess.PIPE,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        assert writer.stdout is not None and writer.stdout.readline() == b"ready\n"
        time.sleep(0.3 + rng.random() * 0.7)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
        dataset = folder / "s.json"
        journal_ids = {record["id"] for record in read_journal(folder / "s.jsonl").records}
        for path in live_files(dataset):
            entries = json.loads(path.read_bytes())  # whole, never torn
            assert {meta_of(e)["id"] for e in entries} <= journal_ids
        if dataset.is_dir():
            assert all(p.name.endswith(".json") and not p.name.startswith(".") for p in dataset.iterdir())
        before = inodes(dataset)
        resumed = open_store(folder)
        resumed.write_snapshot()
        resumed.close()
        after = inodes(dataset)
        changed = [name for name in after if after[name] != before.get(name)]
        assert len(changed) <= 2  # the shard being rewritten, and one a continued chat had just changed
        assert conversations(live_entries(dataset)) == conversations(exported(folder, "s"))
        assert not [name for name in os.listdir(folder) if name.endswith(".tmp")]


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """tmp_path/datasets as a 1 MiB tmpfs: a disk that really fills up."""
    folder = tmp_path / "datasets"
    folder.mkdir(mode=0o700)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(folder)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as handle:
        for block in (b"\0" * 4096, b"\0"):
            try:
                while True:
                    handle.write(block)
            except OSError:
                pass
    return filler


def test_a_full_disk_loses_no_record_and_the_shards_catch_up(small_tmpfs: Path, small_shards: None) -> None:
    store = open_store(small_tmpfs)
    chats = Chats(store)
    for i in range(4):
        chats.say(f"c{i}", "before")
    chats.commit()
    filler = fill(small_tmpfs)
    for i in range(4, 9):
        chats.say(f"c{i}", "while full " + "y" * 3000)
    with pytest.raises(OSError):
        store.flush()
    assert len(store.pending) == 5
    store.write_snapshot()  # with records pending: the live dataset shows only what the journal holds
    assert len(live_entries(small_tmpfs / "s.json")) == 4
    filler.unlink()
    chats.commit()
    assert not store.pending
    journal = [json.loads(line) for line in (small_tmpfs / "s.jsonl").read_bytes().splitlines()]
    assert len(journal) == 9 and len({r["id"] for r in journal}) == 9
    assert conversations(live_entries(small_tmpfs / "s.json")) == conversations(exported(small_tmpfs, "s"))
    # The disk fills in the middle of rewriting the shards: the journal is whole, the live files too.
    chats.say("c0", "again " + "z" * 3000)
    store.flush()
    filler = fill(small_tmpfs)
    with pytest.raises(OSError):
        store.write_snapshot()
    for path in live_files(small_tmpfs / "s.json"):
        json.loads(path.read_bytes())
    filler.unlink()
    store.write_snapshot()
    assert conversations(live_entries(small_tmpfs / "s.json")) == conversations(exported(small_tmpfs, "s"))
    assert not [name for name in os.listdir(small_tmpfs) if name.endswith(".tmp")]
    store.close()


# -- through the proxy --------------------------------------------------------------------------------


def test_a_session_past_one_shard_is_a_folder_that_reads_as_the_export(upstream: Any, make_proxy: Any) -> None:
    proxy = make_proxy(upstream.url)
    chats = store_module.SHARD_CHATS + 20
    for i in range(chats):
        assert post_chat(proxy.port, f"chat number {i}").status == 200
    proxy.wait_recorded(chats, timeout=30)
    proxy.flush()
    dataset = proxy.datasets / f"{proxy.session}.json"
    assert dataset.is_dir() and [p.name for p in live_files(dataset)] == ["000001.json", "000002.json"]
    entries = live_entries(dataset)
    assert len(entries) == chats
    assert conversations(entries) == conversations(exported(proxy.datasets, proxy.session))
