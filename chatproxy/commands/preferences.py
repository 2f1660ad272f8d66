"""Preference pairs where the review marks define them, for `export --format dpo` and `dpo-sharegpt`.

- An edited assistant turn: the edit is chosen, the recorded reply rejected, after the same prompt (the
  conversation up to that turn, with earlier edits in place).
- Branches of one chat (regenerations, `n > 1`, an edited earlier reply) rated differently: where two
  branches first differ with an assistant turn each, the higher rated reply is chosen and the lower
  rejected. A discarded branch may be the rejected side, never the chosen one.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Dict, List, Optional, Tuple

from chatproxy.commands.sessions import Conversation
from chatproxy.review.marks import Marks, apply_edits

Message = Dict[str, Any]


@dataclasses.dataclass
class Pair:
    prompt: List[Message]
    chosen: Message
    rejected: Message
    tools: Optional[List[Any]]
    where: str  # SESSION/ID[...] for reports
    source: str  # "edit" or "rating"


def pairs(marked: List[Tuple[Conversation, Marks]]) -> List[Pair]:
    found: List[Pair] = []
    by_chat: Dict[Tuple[str, str], List[Tuple[Conversation, Marks, List[Message]]]] = collections.defaultdict(list)
    for conversation, mark in marked:
        messages = conversation.messages
        edited, applied = apply_edits(messages, mark)
        if mark.status != "discard":
            found += _edit_pairs(conversation, messages, edited, [edit.turn for edit in applied])
        by_chat[(conversation.session, conversation.node.root)].append((conversation, mark, edited))
    for branches in by_chat.values():
        found += _rating_pairs(branches)
    return found


def _edit_pairs(
    conversation: Conversation, recorded: List[Message], edited: List[Message], turns: List[int]
) -> List[Pair]:
    return [
        Pair(
            edited[:turn],
            edited[turn],
            recorded[turn],
            conversation.tools,
            f"{_where(conversation)} turn {turn}",
            "edit",
        )
        for turn in turns
    ]


def _rating_pairs(branches: List[Tuple[Conversation, Marks, List[Message]]]) -> List[Pair]:
    rated = [branch for branch in branches if branch[1].rating]
    found = []
    for high, high_mark, high_messages in rated:
        if high_mark.status == "discard":
            continue
        for low, low_mark, low_messages in rated:
            if not (low_mark.rating or 0) < (high_mark.rating or 0):
                continue
            turn = _first_difference(high_messages, low_messages)
            if turn is None:
                continue
            where = f"{_where(high)} over {low.id}"
            found.append(
                Pair(high_messages[:turn], high_messages[turn], low_messages[turn], high.tools, where, "rating")
            )
    return found


def _first_difference(a: List[Message], b: List[Message]) -> Optional[int]:
    """Where two branches part with an assistant turn each after the same history, or None."""
    for turn, (left, right) in enumerate(zip(a, b)):
        if left != right:
            if left.get("role") == right.get("role") == "assistant":
                return turn
            return None
    return None


def _where(conversation: Conversation) -> str:
    return f"{conversation.session}/{conversation.id}"
