"""Which conversations a view holds: one definition of the filters for the review page's list and for `export`.

A conversation is summarised once (`Summary`: what a list row shows and every filter tests), and a
`Selection` says which summaries (and marks) it takes. The page builds its Selection from its query string
(`from_params`) and `export` from its options, so the list, the page's export and the command line it
prints select the very same conversations.

What the filters mean:
- search: every word (case-insensitive) occurs in the text of a turn, a reasoning or a tool call;
- session: the session the conversation's last reply was recorded in (the sessions are read as one
  collection: a chat continued in another session is one conversation, and it is that one's);
- model (a glob) and API: those of the last reply; dates: when the last reply was asked for;
- tags: recorded on any exchange the chat went through (X-Chatproxy-Tags), or given in the review;
- turns: messages other than the system prompt, as recorded; length: characters of every turn's text,
  reasoning and tool calls; tools / reasoning / images: any turn has them; complete: the last reply was
  not cut short;
- mark: kept, discarded, or neither; rating: at least N.
"""

from __future__ import annotations

import dataclasses
import datetime
import fnmatch
import functools
import operator
import re
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Mapping, NamedTuple, Optional, Tuple

from chatproxy.apis import route
from chatproxy.recorder.journal import parse_record_time
from chatproxy.review.marks import Marks

FIRST_CHARS = 200  # of the first user message, shown in the list
FEATURES = ("tools", "reasoning", "images")
STATUSES = {"kept": "keep", "discarded": "discard", "unmarked": None}
NO_TAGS: FrozenSet[str] = frozenset()
INFINITE = float("inf")

Message = Dict[str, Any]


class SelectionError(ValueError):
    """A filter value that cannot be read; str(exc) is one line for the user."""


# ---------------------------------------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------------------------------------


class Part(NamedTuple):
    """What a run of messages contributes to a summary; `joined` of two runs is the run of both."""

    first: Optional[str]  # the first user message's text, cut to FIRST_CHARS
    turns: int
    chars: int
    text: str  # every text, lower-cased, for search (pieces apart by newlines: no search word spans them)
    tools: bool
    reasoning: bool
    images: bool


EMPTY = Part(None, 0, 0, "", False, False, False)


def part_of(messages: Iterable[Message]) -> Part:
    first: Optional[str] = None
    turns = 0
    texts: List[str] = []
    tools = reasoning = images = False
    for message in messages:
        role = message.get("role")
        text = message.get("content")
        if not isinstance(text, str):
            text = ""
        if role != "system":
            turns += 1
            if first is None and role == "user":
                first = text[:FIRST_CHARS]
        texts.append(text)
        if len(message) != 2 or "content" not in message:  # only role and content (most turns): nothing more
            thought = message.get("reasoning")
            if isinstance(thought, str):
                texts.append(thought)
                reasoning = reasoning or bool(thought)
            calls = message.get("tool_calls")
            if calls or role == "tool":
                tools = True
            for call in calls or ():
                if isinstance(call, dict):
                    texts.append(f"{call.get('name', '')} {call.get('arguments', '')}")
            images = images or bool(message.get("images"))
        elif role == "tool":
            tools = True
    chars = sum(map(len, texts))
    return Part(first, turns, chars, "\n".join(texts).lower(), tools, reasoning, images)


def joined(before: Part, after: Part) -> Part:
    if before is EMPTY:
        return after
    return Part(
        before.first if before.first is not None else after.first,
        before.turns + after.turns,
        before.chars + after.chars,
        before.text + "\n" + after.text,
        before.tools or after.tools,
        before.reasoning or after.reasoning,
        before.images or after.images,
    )


class Head(NamedTuple):
    """What a conversation's summary takes from its records' meta (cheap: no message is looked at)."""

    model: str
    api: str
    time: str  # meta.time of the last reply, as recorded
    tags: FrozenSet[str]
    complete: bool
    tokens: Optional[int]  # from the last reply's recorded usage


class Summary(NamedTuple):
    """A whole conversation as the filters see it (the session it belongs to is the collection's say)."""

    part: Part
    model: str
    api: str
    time: str
    tags: FrozenSet[str]
    complete: bool
    tokens: Optional[int]

    @property
    def when(self) -> Optional[datetime.datetime]:
        return parse_record_time(self.time)


def head(meta: Mapping[str, Any], tags: FrozenSet[str], complete: bool) -> Head:
    """The head of a conversation's summary: its last record's meta, the tags of all its records."""
    return Head(_str(meta, "model"), api_of(meta), _str(meta, "time"), tags, complete, tokens(meta.get("usage")))


def summary(part: Part, meta: Mapping[str, Any], tags: FrozenSet[str], complete: bool) -> Summary:
    """The summary of a conversation: its messages' part, its last record's meta, the tags of its records."""
    return Summary(part, *head(meta, tags, complete))


def tokens(usage: Any) -> Optional[int]:
    """Total tokens from a recorded `usage` (OpenAI's total_tokens, or input + output as Anthropic's)."""
    if not isinstance(usage, dict):
        return None
    total = usage.get("total_tokens")
    if isinstance(total, int) and not isinstance(total, bool):
        return total
    parts = [usage.get(key) for key in ("prompt_tokens", "completion_tokens", "input_tokens", "output_tokens")]
    found = [part for part in parts if isinstance(part, int) and not isinstance(part, bool)]
    return sum(found) if found else None


def own_tags(meta: Mapping[str, Any]) -> FrozenSet[str]:
    tags = meta.get("tags")
    if not isinstance(tags, list) or not tags:
        return NO_TAGS
    return frozenset(tag for tag in tags if isinstance(tag, str))


def api_of(meta: Mapping[str, Any]) -> str:
    """The wire API a reply came over; records made before meta.api existed are named by their path."""
    api = meta.get("api")
    if isinstance(api, str) and api:
        return api
    endpoint = meta.get("endpoint")
    if not isinstance(endpoint, str):
        return ""
    found = _ROUTED.get(endpoint)
    if found is None:
        found = route(b"POST", endpoint) or ""
        if len(_ROUTED) < 1000:
            _ROUTED[endpoint] = found
    return found


_ROUTED: Dict[str, str] = {}  # endpoint -> its API: a session has a handful of endpoints


def summarize(node: Any, tags: Callable[[], Iterable[str]], chosen: Optional[Selection] = None) -> Summary:
    """A chats.tree.Node's whole conversation summarised from its records (export's way: one at a time).
    With `chosen`, only what it tests is read (`tags` gives the chat's recorded tags when asked)."""
    part = part_of(node.iter_messages()) if chosen is None or chosen.needs_part else EMPTY
    meta = node.meta if chosen is None or chosen.needs_meta else {}
    found_tags = frozenset(tags()) if chosen is None or chosen.tags else NO_TAGS
    return summary(part, meta, found_tags, bool(node.complete))


def _str(meta: Mapping[str, Any], key: str) -> str:
    value = meta.get(key)
    return value if isinstance(value, str) else ""


# ---------------------------------------------------------------------------------------------------------
# Selections
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Selection:
    words: Tuple[str, ...] = ()  # lower-cased
    session: Optional[str] = None
    model: Optional[str] = None  # a glob, matched case-insensitively
    api: Optional[str] = None
    since: Optional[datetime.datetime] = None
    until: Optional[datetime.datetime] = None  # exclusive
    tags: Tuple[str, ...] = ()  # every one required, recorded or review tag
    features: Tuple[Tuple[str, bool], ...] = ()  # ("tools", True): with tools; ("images", False): without
    complete: Optional[bool] = None
    status: Optional[str] = None  # "kept", "discarded", "unmarked"
    min_rating: Optional[int] = None
    min_turns: int = 0
    max_turns: Optional[int] = None
    min_chars: int = 0
    max_chars: Optional[int] = None

    def recorded(self, session: str, found: Summary) -> bool:
        """Whether the recording matches (everything but the review's marks)."""
        return self.test(session, found)

    @functools.cached_property
    def test(self) -> Callable[[str, Summary], bool]:
        """`recorded` as one function of only the filters given: the list tests every row with it."""
        tests: List[Test] = []
        if self.session is not None:
            tests.append(_session_is(self.session))
        if self.model is not None:
            tests.append(_model_like(self.model.lower()))
        if self.api is not None:
            tests.append(_api_is(self.api))
        if self.since is not None or self.until is not None:
            tests.append(self._in_range)
        if self.complete is not None:
            tests.append(_complete_is(self.complete))
        for name, wanted in self.features:
            tests.append(_feature_is(name, wanted))
        if self.min_turns or self.max_turns is not None:
            tests.append(_within("turns", self.min_turns, self.max_turns))
        if self.min_chars or self.max_chars is not None:
            tests.append(_within("chars", self.min_chars, self.max_chars))
        if self.words:
            tests.append(_holds(self.words))
        if not tests:
            return _anything
        if len(tests) == 1:
            return tests[0]
        return lambda session, found: all(test(session, found) for test in tests)

    def _in_range(self, session: str, found: Summary) -> bool:
        when = found.when
        if when is None:
            return False
        return (self.since is None or when >= self.since) and (self.until is None or when < self.until)

    @property
    def needs_part(self) -> bool:
        """Whether `recorded` reads the messages (not only the last reply's meta)."""
        bounds = self.min_turns or self.min_chars or self.max_turns is not None or self.max_chars is not None
        return bool(self.words or self.features or bounds)

    @property
    def needs_meta(self) -> bool:
        return bool(self.model or self.api or self.since or self.until)

    @property
    def uses_marks(self) -> bool:
        return self.status is not None or self.min_rating is not None or bool(self.tags)

    def marked(self, found: Summary, mark: Marks) -> bool:
        """Whether the review's marks match: status, rating, and tags (recorded or review)."""
        if self.status is not None and STATUSES[self.status] != mark.status:
            return False
        if self.min_rating is not None and (mark.rating or 0) < self.min_rating:
            return False
        return all(tag in found.tags or tag in mark.tags for tag in self.tags)

    def matches(self, session: str, found: Summary, mark: Marks) -> bool:
        return self.recorded(session, found) and self.marked(found, mark)


Test = Callable[[str, Summary], bool]


def _anything(session: str, found: Summary) -> bool:
    return True


def _session_is(wanted: str) -> Test:
    return lambda session, found: session == wanted


def _model_like(glob: str) -> Test:
    return lambda session, found: fnmatch.fnmatchcase(found.model.lower(), glob)


def _api_is(wanted: str) -> Test:
    return lambda session, found: found.api == wanted


def _complete_is(wanted: bool) -> Test:
    return lambda session, found: found.complete == wanted


def _feature_is(name: str, wanted: bool) -> Test:
    read = operator.attrgetter(name)
    return lambda session, found: bool(read(found.part)) == wanted


def _within(name: str, least: int, most: Optional[int]) -> Test:
    high = INFINITE if most is None else most
    read = operator.attrgetter(name)
    return lambda session, found: bool(least <= read(found.part) <= high)


def _holds(words: Tuple[str, ...]) -> Test:
    if len(words) == 1:
        word = words[0]
        return lambda session, found: word in found.part.text
    return lambda session, found: all(word in found.part.text for word in words)


# The page's query string: name -> what it is (for messages).
PARAMS = {
    "q": "search",
    "session": "session",
    "model": "model",
    "api": "API",
    "since": "since",
    "until": "until",
    "tag": "tag",
    "tools": "tools",
    "reasoning": "reasoning",
    "images": "images",
    "complete": "complete",
    "status": "mark",
    "min_rating": "rating",
    "min_turns": "min turns",
    "max_turns": "max turns",
    "min_chars": "min length",
    "max_chars": "max length",
}


def from_params(params: Mapping[str, str], now: Optional[datetime.datetime] = None) -> Selection:
    """The page's query string as a Selection; raises SelectionError naming the filter that is wrong."""

    def given(name: str) -> Optional[str]:
        value = params.get(name, "").strip()
        return value or None

    features = []
    for name in FEATURES:
        value = given(name)
        if value is not None:
            if value not in ("0", "1"):
                raise SelectionError(f"{PARAMS[name]}: 1 (with) or 0 (without), not {value!r}")
            features.append((name, value == "1"))
    complete = given("complete")
    if complete not in (None, "0", "1"):
        raise SelectionError(f"complete: 1 (complete) or 0 (cut short), not {complete!r}")
    status = given("status")
    if status is not None and status not in STATUSES:
        raise SelectionError(f"mark: one of {', '.join(STATUSES)}, not {status!r}")
    since, until = given("since"), given("until")
    tag, words = given("tag"), given("q")
    found = Selection(
        words=tuple(words.lower().split()) if words else (),
        session=given("session"),
        model=given("model"),
        api=given("api"),
        since=parse_when(since, "since", end=False, now=now) if since else None,
        until=parse_when(until, "until", end=True, now=now) if until else None,
        tags=(tag,) if tag else (),
        features=tuple(features),
        complete=None if complete is None else complete == "1",
        status=status,
        min_rating=_count(given("min_rating"), "rating"),
        min_turns=_count(given("min_turns"), "min turns") or 0,
        max_turns=_count(given("max_turns"), "max turns"),
        min_chars=_count(given("min_chars"), "min length") or 0,
        max_chars=_count(given("max_chars"), "max length"),
    )
    check(found, {"min_rating": "rating", "min_turns": "min turns", "max_turns": "max turns"})
    return found


def _count(value: Optional[str], what: str) -> Optional[int]:
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise SelectionError(f"{what}: a whole number, not {value!r}") from None
    if number < 0:
        raise SelectionError(f"{what}: must not be negative (got {number})")
    return number


def check(found: Selection, names: Mapping[str, str]) -> None:
    """Ranges that select nothing by construction are refused, named as the caller calls them."""
    from chatproxy.review.marks import MAX_RATING

    label = {key: names.get(key, key) for key in ("min_rating", "min_turns", "max_turns", "min_chars", "max_chars")}
    if found.min_rating is not None and not 1 <= found.min_rating <= MAX_RATING:
        raise SelectionError(f"{label['min_rating']} must be from 1 to {MAX_RATING}")
    if found.max_turns is not None and found.min_turns > found.max_turns:
        raise SelectionError(
            f"{label['min_turns']} {found.min_turns} is more than {label['max_turns']} {found.max_turns}"
        )
    if found.max_chars is not None and found.min_chars > found.max_chars:
        raise SelectionError(
            f"{label['min_chars']} {found.min_chars} is more than {label['max_chars']} {found.max_chars}"
        )
    if found.since and found.until and found.since >= found.until:
        raise SelectionError("since must be before until")


RELATIVE = re.compile(r"(\d+)\s*([mhdw])")
UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str, option: str, end: bool, now: Optional[datetime.datetime] = None) -> datetime.datetime:
    """A since/until value as an aware datetime: a date (2024-05-01), a date and time (2024-05-01T14:00),
    or a duration back from now (30m, 12h, 7d, 2w). A date alone is local midnight; as an until (end=True)
    it means the end of that day."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    value = text.strip()
    relative = RELATIVE.fullmatch(value.lower())
    if relative:
        return now - datetime.timedelta(seconds=int(relative.group(1)) * UNIT_SECONDS[relative.group(2)])
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            day = datetime.datetime.strptime(value, "%Y-%m-%d")
            moment = day + datetime.timedelta(days=1) if end else day
        else:
            moment = datetime.datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value)
    except ValueError:
        raise SelectionError(
            f"{option}: cannot read {text!r} as a date, a date and time, or a duration like 7d"
        ) from None
    return moment if moment.tzinfo else moment.astimezone()  # naive: the user's local time
