"""`python -m chatproxy show`: a session's conversations as a readable transcript.

It reads the journal the way export does (sessions.py) and takes no lock, so a session being
recorded can be looked at.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

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
from chatproxy.config import ConfigError

SHOWN_CHARACTERS = 2000  # per message unless --full: a pasted document should not fill the screen
LABEL_WIDTH = 10


def main(argv: List[str]) -> int:
    tolerant_output()
    return show_main(list(argv))


SHOW_PROG = "chatproxy show"


def show_main(argv: List[str]) -> int:
    parser = new_parser(SHOW_PROG, "Print a session's conversations as a readable transcript.")
    parser.add_argument("session", metavar="SESSION", help="the session to print (a name in --datasets)")
    add_datasets_option(parser)
    parser.add_argument("--last", type=int, metavar="N", help="only the N most recently continued conversations")
    parser.add_argument(
        "--full",
        action="store_true",
        help=f"print long messages whole (default: the first {SHOWN_CHARACTERS} characters)",
    )
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
    print_warnings(session)
    conversations = list(session.conversations("all"))
    if not conversations:
        print(f"no conversations in session {name}")
        return 0
    branch_of = _branch_numbers(conversations)
    shown = conversations[-args.last :] if args.last else conversations
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
    facts = [
        f"{conversation.session}/{conversation.id}",
        local_time(conversation.time),
        conversation.model or "?",
        f"{sum(1 for m in messages if m.get('role') != 'system')} turns",
    ]
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
