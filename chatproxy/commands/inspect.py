"""`python -m chatproxy stats` and `show`: what the recorded sessions hold, for a quick look.

Both read the journals the way export does (sessions.py), so what they count and print is what an
export would start from; neither takes a session's lock, so a session being recorded can be looked at.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import sys
from pathlib import Path
from typing import Any, Counter, Dict, List, Optional, Tuple

from chatproxy.commands import sessions
from chatproxy.config import ConfigError
from chatproxy.commands.profiles import PROFILES, Unusable
from chatproxy.commands.common import add_datasets_option, fail, new_parser, parse, tolerant_output

COMMANDS = ("stats", "show")
SHOWN_CHARACTERS = 2000  # per message in `show` unless --full: a pasted document should not fill the screen
LABEL_WIDTH = 10


def main(argv: List[str]) -> int:
    """argv[0] names the command: "stats" or "show"."""
    if not argv or argv[0] not in COMMANDS:
        print(f"chatproxy: error: expected one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    command, rest = argv[0], list(argv[1:])
    tolerant_output()
    return stats_main(rest) if command == "stats" else show_main(rest)


# ---------------------------------------------------------------------------------------------------------
# stats
# ---------------------------------------------------------------------------------------------------------

STATS_PROG = "chatproxy stats"
STATS_EPILOG = """\
counts:
  conversations  chats (a regenerated reply or an edited message starts a branch, not a new chat)
  branches       conversations as `export --branches all` starts from: every branch of every chat
  turns          messages in those branches, system prompts not counted
  characters     text of those messages
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
    prompt_tokens: int = 0
    completion_tokens: int = 0
    with_usage: int = 0
    incomplete: int = 0
    skipped: int = 0
    damaged: int = 0
    first: Optional[datetime.datetime] = None
    last: Optional[datetime.datetime] = None

    def add(self, other: "Stats") -> None:
        for field in dataclasses.fields(self):
            mine, theirs = getattr(self, field.name), getattr(other, field.name)
            if field.name == "first":
                setattr(self, field.name, _earliest(mine, theirs))
            elif field.name == "last":
                setattr(self, field.name, _latest(mine, theirs))
            elif field.name == "models":
                mine.update(theirs)
            else:
                setattr(self, field.name, mine + theirs)


def stats_main(argv: List[str]) -> int:
    parser = new_parser(STATS_PROG, "Summarise recorded sessions: one table per session and one in total.", STATS_EPILOG)
    parser.add_argument("sessions", nargs="*", metavar="SESSION", help="sessions to count (default: every session)")
    add_datasets_option(parser)
    args = parse(parser, argv)
    if isinstance(args, int):
        return args
    folder = Path(args.datasets)
    try:
        names = sessions.resolve(folder, args.sessions, every=not args.sessions)
    except ConfigError as exc:
        return fail(STATS_PROG, str(exc))
    total = Stats()
    for name in names:
        session = sessions.load(folder, name)
        _warn(session)
        counted = session_stats(session)
        total.add(counted)
        print(render(f"session {name}", counted))
    if len(names) > 1:
        print(render(f"total ({len(names)} sessions)", total))
    return 0


def session_stats(session: sessions.Session) -> Stats:
    stats = Stats(records=len(session.records), damaged=len(session.contents.bad_lines))
    for record in session.records:
        meta = record.get("meta")
        _count_record(stats, meta if isinstance(meta, dict) else {})
    roots = set()
    for conversation in session.conversations("all"):
        roots.add(conversation.node.root)
        stats.branches += 1
        chat = [m for m in conversation.messages if m.get("role") != "system"]
        stats.turns += len(chat)
        stats.characters += sum(len(m.get("content", "")) for m in chat if isinstance(m.get("content"), str))
        if not _exportable(conversation):
            stats.skipped += 1
    stats.conversations = len(roots)
    return stats


def _count_record(stats: Stats, meta: Dict[str, Any]) -> None:
    model = meta.get("model")
    stats.models[model if isinstance(model, str) and model else "?"] += 1
    if meta.get("complete") is False:
        stats.incomplete += 1
    usage = meta.get("usage")
    if isinstance(usage, dict):
        stats.with_usage += 1
        stats.prompt_tokens += _int(usage.get("prompt_tokens"))
        stats.completion_tokens += _int(usage.get("completion_tokens"))
    when = sessions.parse_record_time(meta.get("time"))
    stats.first, stats.last = _earliest(stats.first, when), _latest(stats.last, when)


def _exportable(conversation: sessions.Conversation) -> bool:
    if conversation.damaged:
        return False
    try:
        PROFILES["sharegpt"].record(conversation.messages, conversation.tools, "keep", Path("."))
    except Unusable:
        return False
    return True


def render(title: str, stats: Stats) -> str:
    models = ", ".join(f"{name} ({count})" for name, count in stats.models.most_common()) or "-"
    tokens = f"{stats.prompt_tokens:,} prompt + {stats.completion_tokens:,} completion"
    rows = [
        ("conversations", f"{stats.conversations:,}"),
        ("branches", f"{stats.branches:,}"),
        ("turns", f"{stats.turns:,}"),
        ("characters", f"{stats.characters:,}"),
        ("models", models),
        ("tokens", f"{tokens} (usage in {stats.with_usage:,} of {stats.records:,} replies)"),
        ("incomplete", f"{stats.incomplete:,}"),
        ("skipped", f"{stats.skipped:,}"),
        ("damaged lines", f"{stats.damaged:,}"),
        ("first", _when(stats.first)),
        ("last", _when(stats.last)),
    ]
    width = max(len(label) for label, _ in rows)
    return "\n".join([title] + [f"  {label:<{width}}  {value}" for label, value in rows]) + "\n"


# ---------------------------------------------------------------------------------------------------------
# show
# ---------------------------------------------------------------------------------------------------------

SHOW_PROG = "chatproxy show"


def show_main(argv: List[str]) -> int:
    parser = new_parser(SHOW_PROG, "Print a session's conversations as a readable transcript.")
    parser.add_argument("session", metavar="SESSION", help="the session to print (a name in --datasets)")
    add_datasets_option(parser)
    parser.add_argument("--last", type=int, metavar="N", help="only the N most recently continued conversations")
    parser.add_argument("--full", action="store_true",
                        help=f"print long messages whole (default: the first {SHOWN_CHARACTERS} characters)")
    args = parse(parser, argv)
    if isinstance(args, int):
        return args
    if args.last is not None and args.last < 1:
        return fail(SHOW_PROG, "--last must be at least 1")
    folder = Path(args.datasets)
    try:
        name = sessions.resolve(folder, [args.session], every=False)[0]
    except ConfigError as exc:
        return fail(SHOW_PROG, str(exc))
    session = sessions.load(folder, name, keep_incomplete=True)
    _warn(session)
    conversations = list(session.conversations("all"))
    if not conversations:
        print(f"no conversations in session {name}")
        return 0
    branch_of = _branch_numbers(conversations)
    shown = conversations[-args.last:] if args.last else conversations
    print("\n\n".join(transcript(c, branch_of[c.id], None if args.full else SHOWN_CHARACTERS) for c in shown))
    return 0


def _branch_numbers(conversations: List[sessions.Conversation]) -> Dict[str, Tuple[int, int]]:
    """(n, of) for each leaf among the leaves of its chat, oldest first."""
    by_root: Dict[str, List[str]] = collections.defaultdict(list)
    for conversation in sorted(conversations, key=lambda c: c.node.seq):
        by_root[conversation.node.root].append(conversation.id)
    return {leaf: (ids.index(leaf) + 1, len(ids)) for ids in by_root.values() for leaf in ids}


def transcript(conversation: sessions.Conversation, branch: Tuple[int, int], limit: Optional[int]) -> str:
    messages = conversation.messages
    facts = [f"{conversation.session}/{conversation.id}", _when(conversation.time), conversation.model or "?",
             f"{sum(1 for m in messages if m.get('role') != 'system')} turns"]
    if branch[1] > 1:
        facts.append(f"branch {branch[0]} of {branch[1]}")
    if not conversation.node.complete:
        facts.append("incomplete")
    if conversation.damaged:
        facts.append("beginning lost to a damaged journal line")
    lines = ["── " + " · ".join(facts) + " ──"]
    for message in messages:
        lines.extend(_message_lines(message, limit))
    return "\n".join(lines)


def _message_lines(message: Dict[str, Any], limit: Optional[int]) -> List[str]:
    role = str(message.get("role", "?"))
    lines: List[str] = []
    if isinstance(message.get("reasoning"), str) and message["reasoning"]:
        lines += _labelled("thinking", message["reasoning"], limit)
    content = message.get("content")
    content = content if isinstance(content, str) else ""
    if role == "tool" and message.get("tool_call_id"):
        content = f"[{message['tool_call_id']}] {content}"
    if content or not message.get("tool_calls"):
        lines += _labelled(role, content, limit)
    for call in message.get("tool_calls") or ():
        if isinstance(call, dict):
            named = f" [{call['id']}]" if call.get("id") else ""
            lines += _labelled("calls", f"{call.get('name', '')}({call.get('arguments', '')}){named}", limit)
    images = message.get("images")
    if isinstance(images, list) and images:
        lines += _labelled("images", ", ".join(str(image) for image in images), None)
    return lines


def _labelled(label: str, text: str, limit: Optional[int]) -> List[str]:
    if limit is not None and len(text) > limit:
        text = text[:limit] + f"… ({len(text) - limit:,} more characters; --full prints everything)"
    body = text.split("\n") or [""]
    pad = " " * (LABEL_WIDTH + 1)
    return [f"{label:<{LABEL_WIDTH}} {body[0]}"] + [pad + line for line in body[1:]]


# ---------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------


def _warn(session: sessions.Session) -> None:
    for line in session.warnings():
        print(f"chatproxy: warning: {line}", file=sys.stderr)


def _when(moment: Optional[datetime.datetime]) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S %z") if moment else "-"


def _earliest(a: Optional[datetime.datetime], b: Optional[datetime.datetime]) -> Optional[datetime.datetime]:
    return b if a is None else a if b is None else min(a, b)


def _latest(a: Optional[datetime.datetime], b: Optional[datetime.datetime]) -> Optional[datetime.datetime]:
    return b if a is None else a if b is None else max(a, b)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


__all__ = ["main", "render", "session_stats", "transcript"]
