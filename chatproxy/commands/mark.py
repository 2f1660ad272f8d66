"""`python -m chatproxy mark`: curate one recorded conversation from the shell (the review page's marks).

The marks go to the session's review journal (review/marks.py), never into the recorded journal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from chatproxy.commands import sessions
from chatproxy.commands.common import add_datasets_option, fail, new_parser, parse
from chatproxy.config import ConfigError
from chatproxy.review import marks

PROG = "chatproxy mark"
MIN_PREFIX = 4  # characters of a conversation id that may stand for it, when only one id starts so

EPILOG = """\
examples:
  chatproxy mark monday 4227afc6ac5f4a58 --discard
  chatproxy mark monday 4227 --keep --rating 5 --tag good --note "clean tool use"
  chatproxy mark monday 4227 --edit 2 --text "The corrected second answer."
  chatproxy mark monday 4227 --undo

CONVERSATION is an id as `show` and `export` print it (SESSION/ID), or its first characters when no
other conversation of the session starts with them. --edit N replaces the N-th assistant reply (1 is
the first, -1 the last); the recorded text is kept and `export --format dpo` pairs the two.
"""


def main(argv: List[str]) -> int:
    parser = new_parser(PROG, "Keep, discard, rate, tag, note or edit a recorded conversation.", EPILOG)
    parser.add_argument("session", metavar="SESSION")
    parser.add_argument("conversation", metavar="CONVERSATION")
    add_datasets_option(parser)
    status = parser.add_mutually_exclusive_group()
    status.add_argument("--keep", action="store_true", help="keep it (export --only kept exports only these)")
    status.add_argument("--discard", action="store_true", help="discard it: export leaves it out")
    status.add_argument("--unmark", action="store_true", help="neither kept nor discarded")
    parser.add_argument("--rating", type=int, metavar="N", help="rate it 1 to 5 (0 clears the rating)")
    parser.add_argument("--tag", action="append", default=[], metavar="TAG", help="add a review tag (repeatable)")
    parser.add_argument("--untag", action="append", default=[], metavar="TAG", help="remove a review tag")
    parser.add_argument("--note", metavar="TEXT", help="a note ('' clears it)")
    parser.add_argument("--edit", type=int, metavar="N", help="replace the N-th assistant reply with --text")
    parser.add_argument("--text", metavar="TEXT", help="the new text of the reply --edit names")
    parser.add_argument("--undo", action="store_true", help="take back the conversation's last mark")
    args = parse(parser, argv)
    if isinstance(args, int):
        return args
    folder = Path(args.datasets)
    try:
        name = sessions.resolve(folder, [args.session], every=False)[0]
        conversation = find(sessions.load(folder, name, keep_incomplete=True), args.conversation.split("/")[-1])
        events = _events(args, conversation)
    except (ConfigError, marks.MarkError) as exc:
        return fail(PROG, str(exc))
    if not events and not args.undo:
        return fail(PROG, "nothing to do: give --keep, --discard, --rating, --tag, --note, --edit or --undo")
    journal = marks.ReviewJournal(folder, name)
    journal.open()
    if args.undo:
        target = marks.last_undoable(journal.events, conversation.id)
        if target is None:
            return fail(PROG, f"{name}/{conversation.id} has no mark to undo")
        events.append(marks.make_event(conversation.id, "undo", target=target))
    for event in events:
        journal.append(event)
    journal.close()
    state = marks.marks_for(journal.marks(), marks.contained_ids(conversation.node))
    print(f"{name}/{conversation.id}: {describe(state)}")
    return 0


def find(session: sessions.Session, wanted: str) -> sessions.Conversation:
    leaves = list(session.conversations("all"))
    exact = [c for c in leaves if c.id == wanted]
    if exact:
        return exact[0]
    if len(wanted) < MIN_PREFIX:
        raise ConfigError(f"conversation id {wanted!r} is too short (at least {MIN_PREFIX} characters)")
    found = [c for c in leaves if c.id.startswith(wanted)]
    if len(found) == 1:
        return found[0]
    if found:
        raise ConfigError(f"{wanted!r} starts {len(found)} conversations of {session.name}; give more of the id")
    raise ConfigError(f"no conversation {wanted!r} in session {session.name} (see chatproxy show {session.name})")


def _events(args: Any, conversation: sessions.Conversation) -> List[Dict[str, Any]]:
    conv = conversation.id
    events = []
    for op in ("keep", "discard", "unmark"):
        if getattr(args, op):
            events.append(marks.make_event(conv, op))
    if args.rating is not None:
        events.append(marks.make_event(conv, "rating", value=args.rating))
    events += [marks.make_event(conv, "tag", value=tag) for tag in args.tag]
    events += [marks.make_event(conv, "untag", value=tag) for tag in args.untag]
    if args.note is not None:
        events.append(marks.make_event(conv, "note", value=args.note))
    if (args.edit is None) != (args.text is None):
        raise marks.MarkError("--edit N and --text TEXT go together")
    if args.edit is not None:
        turn = assistant_turn(conversation.messages, args.edit)
        original = conversation.messages[turn].get("content")
        events.append(marks.make_event(conv, "edit", turn=turn, content=args.text, original=original))
    return events


def assistant_turn(messages: List[Dict[str, Any]], number: int) -> int:
    """The message index of the `number`-th assistant text reply (1-based; negative counts from the end)."""
    replies = [i for i, m in enumerate(messages) if m.get("role") == "assistant" and isinstance(m.get("content"), str)]
    try:
        if number == 0:
            raise IndexError
        return replies[number - 1 if number > 0 else number]
    except IndexError:
        raise marks.MarkError(f"--edit {number}: the conversation has {len(replies)} assistant replies") from None


def describe(state: Optional[marks.Marks]) -> str:
    if state is None or state.is_empty():
        return "unmarked"
    parts = [state.status or "unmarked"]
    if state.rating:
        parts.append(f"rating {state.rating}")
    if state.tags:
        parts.append("tags " + ",".join(sorted(state.tags)))
    if state.note:
        parts.append("note")
    if state.edits:
        parts.append(f"{len(state.edits)} edited repl{'y' if len(state.edits) == 1 else 'ies'}")
    return ", ".join(parts)
