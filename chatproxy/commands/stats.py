"""`python -m chatproxy stats`: what the recorded sessions hold, counted per session and in total.

It reads the journals the way export does (sessions.py), so what it counts is what an export would
start from; it takes no session's lock, so a session being recorded can be counted.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
from pathlib import Path
from typing import Any, Counter, Dict, Iterable, List, Optional, Tuple

from chatproxy.apis import route
from chatproxy.commands import sessions
from chatproxy.commands.common import (
    add_datasets_option,
    fail,
    local_time,
    new_parser,
    parse,
    print_warnings,
    tolerant_output,
)
from chatproxy.commands.profiles import PROFILES, Unusable
from chatproxy.config import ConfigError
from chatproxy.recorder.journal import parse_record_time


def main(argv: List[str]) -> int:
    tolerant_output()
    return stats_main(list(argv))


STATS_PROG = "chatproxy stats"
STATS_EPILOG = """\
A session recorded with --rotate is counted once, all its parts together ("session NAME (N parts)").
The total reads the sessions as one, as export does: several proxies behind a load balancer, each with
a session of its own, are counted as the one collection they recorded together.

counts:
  conversations  chats (a regenerated reply or an edited message starts a branch, not a new chat); in the
                 total, a chat continued in another session (or recorded whole in two) counts once
  summed         in the total: conversations, branches and turns added up session by session, where a chat
                 that went on in another session counts in each
  branches       conversations as `export --branches all` starts from: every branch of every chat
  turns          messages in those branches, system prompts not counted
  characters     text of those messages
  apis           replies per wire API (chat.completions, responses, messages, ollama.chat, …)
  tokens         prompt and completion tokens the backend reported in `usage`, over all replies
  incomplete     replies cut short (client gone, upstream reset); exported only with --keep-incomplete
  skipped        branches `export --format sharegpt` could not write (see its report for why)
  damaged lines  journal lines that could not be read
"""


@dataclasses.dataclass
class Stats:
    records: int = 0
    conversations: int = 0
    branches: int = 0
    turns: int = 0
    characters: int = 0
    models: Counter[str] = dataclasses.field(default_factory=collections.Counter)
    apis: Counter[str] = dataclasses.field(default_factory=collections.Counter)  # replies per wire API
    prompt_tokens: int = 0
    completion_tokens: int = 0
    with_usage: int = 0
    incomplete: int = 0
    skipped: int = 0
    damaged: int = 0
    first: Optional[datetime.datetime] = None
    last: Optional[datetime.datetime] = None

    def add(self, other: Stats) -> None:
        for field in dataclasses.fields(self):
            mine, theirs = getattr(self, field.name), getattr(other, field.name)
            if field.name == "first":
                setattr(self, field.name, _earliest(mine, theirs))
            elif field.name == "last":
                setattr(self, field.name, _latest(mine, theirs))
            elif isinstance(mine, collections.Counter):
                mine.update(theirs)
            else:
                setattr(self, field.name, mine + theirs)


def stats_main(argv: List[str]) -> int:
    parser = new_parser(
        STATS_PROG, "Summarise recorded sessions: one table per session and one in total.", STATS_EPILOG
    )
    parser.add_argument("sessions", nargs="*", metavar="SESSION", help="sessions to count (default: every session)")
    parser.add_argument("--all", action="store_true", help="count every session in --datasets (the default)")
    add_datasets_option(parser)
    args = parse(parser, argv)
    if isinstance(args, int):
        return args
    folder = Path(args.datasets)
    try:
        names = sessions.resolve(folder, args.sessions, every=args.all or not args.sessions)
    except ConfigError as exc:
        return fail(STATS_PROG, str(exc))
    total = Stats()
    collection = sessions.Collection()
    for name in sessions.oldest_first(folder, names):
        session = sessions.load(folder, name)
        print_warnings(session)
        counted = session_stats(session)
        total.add(counted)
        parts = f" ({len(session.parts)} parts)" if session.parts else ""
        print(render(f"session {name}{parts}", counted))
        if len(names) > 1:
            collection.add(session)
    if len(names) > 1:
        print(render(f"total ({len(names)} sessions)", *as_one(total, collection)))
    return 0


def session_stats(session: sessions.Session) -> Stats:
    stats = Stats(records=len(session.records), damaged=len(session.contents.bad_lines))
    for record in session.records:
        meta = record.get("meta")
        _count_record(stats, meta if isinstance(meta, dict) else {})
    _count_conversations(stats, session.conversations("all"))
    return stats


def across_sessions(collection: sessions.Collection) -> Stats:
    """The conversations of the sessions read as one, as `export` writes them: a chat continued in
    another session (or recorded whole in two) counted once."""
    stats = Stats()
    _count_conversations(stats, collection.conversations("all"))
    return stats


def as_one(summed: Stats, collection: sessions.Collection) -> Tuple[Stats, Stats]:
    """The total: replies, tokens, models and times summed (each reply is recorded in one session), and
    conversations, branches, turns, characters and skipped as the sessions hold them together. Returns it
    with the sums it replaces."""
    across = across_sessions(collection)
    total = dataclasses.replace(
        summed,
        **{name: getattr(across, name) for name in ("conversations", "branches", "turns", "characters", "skipped")},
    )
    return total, summed


def _count_conversations(stats: Stats, conversations: Iterable[sessions.Conversation]) -> None:
    roots = set()
    for conversation in conversations:
        roots.add(conversation.node.root)
        stats.branches += 1
        chat = [m for m in conversation.messages if m.get("role") != "system"]
        stats.turns += len(chat)
        stats.characters += sum(len(m.get("content", "")) for m in chat if isinstance(m.get("content"), str))
        if not _exportable(conversation):
            stats.skipped += 1
    stats.conversations = len(roots)


def _count_record(stats: Stats, meta: Dict[str, Any]) -> None:
    model = meta.get("model")
    stats.models[model if isinstance(model, str) and model else "?"] += 1
    stats.apis[_api_of(meta)] += 1
    if meta.get("complete") is False:
        stats.incomplete += 1
    usage = meta.get("usage")
    if isinstance(usage, dict):
        stats.with_usage += 1
        stats.prompt_tokens += _int(usage.get("prompt_tokens"))
        stats.completion_tokens += _int(usage.get("completion_tokens"))
    when = parse_record_time(meta.get("time"))
    stats.first, stats.last = _earliest(stats.first, when), _latest(stats.last, when)


def _api_of(meta: Dict[str, Any]) -> str:
    """The wire API a reply came over; records made before meta.api existed are named by their path."""
    api = meta.get("api")
    if isinstance(api, str) and api:
        return api
    endpoint = meta.get("endpoint")
    return (route(b"POST", endpoint) if isinstance(endpoint, str) else None) or "?"


def _exportable(conversation: sessions.Conversation) -> bool:
    if conversation.damaged:
        return False
    try:
        PROFILES["sharegpt"].record(conversation.messages, conversation.tools, "keep", Path("."))
    except Unusable:
        return False
    return True


def render(title: str, stats: Stats, summed: Optional[Stats] = None) -> str:
    models = ", ".join(f"{name} ({count})" for name, count in stats.models.most_common()) or "-"
    apis = ", ".join(f"{name} ({count})" for name, count in stats.apis.most_common()) or "-"
    tokens = f"{stats.prompt_tokens:,} prompt + {stats.completion_tokens:,} completion"
    rows = [
        ("conversations", f"{stats.conversations:,}"),
        ("branches", f"{stats.branches:,}"),
        ("turns", f"{stats.turns:,}"),
        ("characters", f"{stats.characters:,}"),
        ("models", models),
        ("apis", apis),
        ("tokens", f"{tokens} (usage in {stats.with_usage:,} of {stats.records:,} replies)"),
        ("incomplete", f"{stats.incomplete:,}"),
        ("skipped", f"{stats.skipped:,}"),
        ("damaged lines", f"{stats.damaged:,}"),
        ("first", local_time(stats.first)),
        ("last", local_time(stats.last)),
    ]
    if summed is not None:
        # The rows above count a chat once, as export writes it; session by session it is counted in each.
        rows.insert(
            4,
            (
                "summed",
                f"{summed.conversations:,} conversations, {summed.branches:,} branches, {summed.turns:,} turns "
                "session by session (a chat that went on in another session counted in each)",
            ),
        )
    width = max(len(label) for label, _ in rows)
    return "\n".join([title] + [f"  {label:<{width}}  {value}" for label, value in rows]) + "\n"


# ---------------------------------------------------------------------------------------------------------
# show


def _earliest(a: Optional[datetime.datetime], b: Optional[datetime.datetime]) -> Optional[datetime.datetime]:
    return b if a is None else a if b is None else min(a, b)


def _latest(a: Optional[datetime.datetime], b: Optional[datetime.datetime]) -> Optional[datetime.datetime]:
    return b if a is None else a if b is None else max(a, b)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
