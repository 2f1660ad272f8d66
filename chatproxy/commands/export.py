"""`python -m chatproxy export`: recorded sessions -> one deduplicated training dataset, written atomically.

Conversations are rebuilt from the journals (never from the live SESSION.json, whose options were fixed
when it was recorded), filtered, shaped by a profile (profiles.py) and checked against the rules of its
consumers. The sessions are read as one collection (sessions.Collection): a chat recorded in one session
and continued in another is one record, the longest, with its branches; an exact duplicate (the same
chat recorded in two sessions) is dropped. A conversation that cannot be made valid is counted and
explained, never written.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, TextIO, Tuple

from chatproxy.apis import ROUTES
from chatproxy.chats.messages import encode_json
from chatproxy.commands import sessions
from chatproxy.commands.common import Parser, UsageError, add_datasets_option, fail, new_parser, parse, tolerant_output
from chatproxy.commands.profiles import PAIR_PROFILES, PROFILES, Profile, Unusable
from chatproxy.commands.trainer_config import dataset_name, snippets
from chatproxy.commands.trainer_rules import unsloth_dataset_problems
from chatproxy.config import PART_SEPARATOR, ConfigError
from chatproxy.recorder import durable
from chatproxy.review import marks as review_marks
from chatproxy.review.selection import EMPTY, FEATURES, NO_TAGS, Selection, SelectionError, summarize, summary
from chatproxy.review.selection import check as check_selection
from chatproxy.review.selection import parse_when as selection_parse_when

PROG = "chatproxy export"
OUT_SUFFIXES = (".json", ".jsonl")
EXAMPLES_SHOWN = 3  # skipped conversations named per reason
PROGRESS_INTERVAL = 0.2  # seconds between progress redraws: often enough to look alive, cheap to draw

DESCRIPTION = """\
Write one training dataset from recorded sessions: conversations rebuilt from the journals, the sessions
read as one (a chat continued in another session is one record, the longest; exact duplicates dropped),
every record checked against the rules of the trainer it is for.
"""

EPILOG = """\
formats:
  sharegpt        LLaMA-Factory ShareGPT: optional system turn, human/gpt, function_call/observation for
                  tool use, "tools" (JSON text) and "images" (absolute paths) columns; strict alternation
  sharegpt-plain  FastChat and Unsloth: only human/gpt turns with "from" and "value"; the system prompt
                  starts the first human turn; tool calls and results are written as <tool_call> and
                  <tool_response> text; images become [image]
  messages        TRL SFTTrainer, Axolotl chat_template, Hugging Face datasets: "messages" (roles
                  system/user/assistant/tool, tool calls with JSON-string arguments) and "tools" as one
                  JSON string, which loads back unchanged whatever the tool schemas; images become [image]
  dpo             TRL DPOTrainer preference pairs: "prompt", "chosen", "rejected" as message lists
  dpo-sharegpt    LLaMA-Factory ShareGPT with "ranking": true: "conversations" up to the human turn,
                  "chosen" and "rejected" one gpt turn each, "tools" and "images" as in sharegpt
                  (both dpo formats pair an edited reply with the recorded one, and branches of one
                  chat rated differently in the review: see chatproxy mark --help)
  openai          OpenAI fine-tuning upload: the same messages, "tools" as JSON objects (OpenAI wants
                  objects; Hugging Face datasets cannot read differing tool schemas as objects faithfully,
                  so use messages for TRL and Axolotl)

Every format leaves out a conversation whose tool call arguments are not a JSON object (a reply cut off
mid-call, e.g. finish_reason "length"), as the live SESSION.json does; those, and any other conversation
a format cannot hold, are counted and explained.

special tokens:
  a reply or prompt that contains the text of a chat template's control token (<|im_end|>, <|eot_id|>,
  </s>, [INST], <end_of_turn>, ...) is tokenized as the real token by LLaMA-Factory and Hugging Face
  tokenizers. Such conversations are counted and reported; --special-tokens drop leaves them out, escape
  writes a zero-width space (U+200B) after the token's first character so no tokenizer matches it.

review marks (chatproxy review, chatproxy mark; SESSION.review.jsonl beside the journal):
  discarded conversations are left out (--include-discarded keeps them), --only kept exports only
  those kept, edited replies replace the recorded ones, --tag matches review tags as well as recorded
  ones, --min-rating N keeps conversations rated N or more.

a conversation's time, model and tags:
  time and model are those of its last reply; its tags are every tag of every exchange it went through.

examples:
  chatproxy export --all --format sharegpt --out chats.json
  chatproxy export my-session --format openai --out chats.jsonl --since 7d --split 0.9
"""


@dataclasses.dataclass
class Options:
    folder: Path
    sessions: List[str]
    profile: Profile
    out: Path
    since: Optional[datetime.datetime] = None
    until: Optional[datetime.datetime] = None
    model: Optional[str] = None
    tags: List[str] = dataclasses.field(default_factory=list)
    min_turns: int = 0
    keep_incomplete: bool = False
    branches: str = "all"
    reasoning: str = "keep"
    tools: str = "all"
    special_tokens: str = "keep"
    split: Optional[float] = None
    seed: int = 0
    only: Optional[str] = None  # "kept", "unmarked" or "discarded": by review status
    include_discarded: bool = False
    min_rating: Optional[int] = None
    selection: Selection = Selection()  # every filter above, and the review page's others


@dataclasses.dataclass
class Tally:
    sessions: int = 0
    records: int = 0
    conversations: int = 0
    filtered: int = 0
    duplicates: int = 0
    merged: int = 0  # conversations of one session continued in another: written once, the longest
    skipped: int = 0
    reasons: Dict[str, List[str]] = dataclasses.field(default_factory=lambda: collections.defaultdict(list))
    special: int = 0  # conversations holding special-token text
    special_tokens: Dict[str, int] = dataclasses.field(default_factory=lambda: collections.defaultdict(int))

    def skip(self, reason: str, where: str) -> None:
        self.skipped += 1
        self.reasons[reason].append(where)


@dataclasses.dataclass
class Collected:
    records: List[bytes]
    tally: Tally
    columns: Set[str]  # optional LLaMA-Factory columns some record has


def build_parser() -> Parser:
    parser = new_parser(PROG, DESCRIPTION, EPILOG)
    parser.add_argument("sessions", nargs="*", metavar="SESSION", help="sessions to export (names in --datasets)")
    parser.add_argument("--all", action="store_true", help="export every session in --datasets")
    add_datasets_option(parser)
    parser.add_argument(
        "--format",
        required=True,
        choices=sorted([*PROFILES, *PAIR_PROFILES]),
        help="who the dataset is for (see below)",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="PATH",
        help="file to write; .json writes a JSON array, .jsonl one record per line",
    )
    add_selection_options(parser)
    parser.add_argument(
        "--keep-incomplete",
        action="store_true",
        help="also export replies that were cut short (client gone, upstream reset)",
    )
    parser.add_argument(
        "--branches",
        choices=("all", "last"),
        default="all",
        help="regenerated replies and edited messages: every branch (default) or the newest per chat",
    )
    parser.add_argument(
        "--reasoning",
        choices=("keep", "drop"),
        default="keep",
        help="model reasoning as <think>...</think> before the answer (default), or dropped",
    )
    parser.add_argument(
        "--tools",
        choices=("all", "used"),
        default="all",
        help="tool definitions: as recorded (all, default), or only in conversations that call a tool "
        "(used: drops e.g. the built-in tool list Open WebUI sends with every request)",
    )
    parser.add_argument(
        "--special-tokens",
        choices=SPECIAL_TOKEN_MODES,
        default="keep",
        help="conversations containing special-token text such as <|im_end|> or </s>: keep them with a "
        "warning (default), drop them, or escape the text (a zero-width space after its first character)",
    )
    parser.add_argument(
        "--split",
        type=float,
        metavar="FRACTION",
        help="write a train and a test file, FRACTION of the conversations in train (e.g. 0.9): "
        "--out chats.jsonl writes chats.train.jsonl and chats.test.jsonl",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the shuffle before --split (default 0); the same seed and data give the same split",
    )
    return parser


def add_selection_options(parser: Parser) -> None:
    """Which conversations to export: the review page's filters, one option each (review/selection.py)."""
    choose = parser.add_argument_group(
        "selection", "which conversations (the review page's filters: its export prints them as these options)"
    )
    choose.add_argument(
        "--search",
        metavar="WORDS",
        help="only conversations holding every word of WORDS (case-insensitive) in the text of a turn, a "
        "reasoning or a tool call, as the review page's search",
    )
    choose.add_argument(
        "--in-session",
        metavar="SESSION",
        help="only conversations whose last reply was recorded in SESSION, one of the sessions read (they "
        "are still read as one collection: a chat continued in SESSION from another session counts, whole)",
    )
    choose.add_argument(
        "--since",
        metavar="WHEN",
        help="only conversations whose last reply is this recent: 2024-05-01, 2024-05-01T14:00, "
        "or a duration back from now (30m, 12h, 7d, 2w); dates without a zone are local",
    )
    choose.add_argument(
        "--until",
        metavar="WHEN",
        help="only conversations whose last reply is older than this; a date alone includes that day",
    )
    choose.add_argument(
        "--model",
        metavar="PATTERN",
        help="only conversations whose last reply came from a matching model (glob, case-insensitive, e.g. 'gpt-4o*')",
    )
    choose.add_argument(
        "--api",
        choices=[name for name, _, _ in ROUTES],
        metavar="API",
        help="only conversations whose last reply came over this API: "
        + ", ".join(name for name, _, _ in ROUTES)
        + " (meta.api; stats counts replies by it)",
    )
    choose.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="TAG",
        help="only conversations tagged TAG (X-Chatproxy-Tags, or in the review); repeat to require several",
    )
    choose.add_argument(
        "--with",
        dest="with_features",
        action="append",
        default=[],
        choices=FEATURES,
        metavar="FEATURE",
        help="only conversations with tools (a call or a result), reasoning or images: --with tools; repeatable",
    )
    choose.add_argument(
        "--without",
        dest="without_features",
        action="append",
        default=[],
        choices=FEATURES,
        metavar="FEATURE",
        help="only conversations without it: --without images; repeatable",
    )
    choose.add_argument(
        "--only",
        choices=("kept", "unmarked", "discarded"),
        help="only conversations kept in the review (kept), discarded in it (discarded), or neither (unmarked)",
    )
    choose.add_argument(
        "--include-discarded",
        action="store_true",
        help="also export conversations discarded in the review (left out by default)",
    )
    choose.add_argument(
        "--min-rating",
        type=int,
        metavar="N",
        help="only conversations rated at least N (1-5) in the review",
    )
    choose.add_argument(
        "--min-turns",
        type=int,
        default=0,
        metavar="N",
        help="only conversations of at least N turns: recorded messages, the system prompt not counted "
        "(a tool call and its result are a turn each), as the review page counts them",
    )
    choose.add_argument("--max-turns", type=int, metavar="N", help="only conversations of at most N turns")
    choose.add_argument(
        "--min-chars",
        type=int,
        default=0,
        metavar="N",
        help="only conversations of at least N characters: the text of every turn, reasoning and tool call, "
        "as recorded (the review page's length)",
    )
    choose.add_argument("--max-chars", type=int, metavar="N", help="only conversations of at most N characters")
    choose.add_argument(
        "--only-incomplete",
        action="store_true",
        help="only replies that were cut short (implies --keep-incomplete)",
    )


def main(argv: List[str]) -> int:
    tolerant_output()
    args = parse(build_parser(), list(argv))
    if isinstance(args, int):
        return args
    try:
        options = options_from(args)
    except (UsageError, ConfigError) as exc:
        return fail(PROG, str(exc))
    progress = Progress(sys.stderr)
    collected = collect(options, progress)
    progress.done()
    if not collected.records:
        print(f"chatproxy: nothing to export: {_counts(collected.tally)}", file=sys.stderr)
        print(_skip_report(collected.tally), file=sys.stderr, end="")
        return 1
    try:
        written = write(options, collected.records)
    except OSError as exc:
        print(f"chatproxy: error: cannot write {options.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    _warn_dataset(options, written["train"][1])
    _warn_special_tokens(options, collected.tally)
    print(_summary(options, written, collected))
    files = {name: path for name, (path, _) in written.items()}
    print(
        snippets(options.profile.name, files, dataset_name(options.out), sorted(collected.columns), options.reasoning),
        end="",
    )
    return 0


# ---------------------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------------------


def options_from(args: argparse.Namespace) -> Options:
    folder = Path(args.datasets)
    out = Path(args.out)
    options = Options(
        folder=folder,
        sessions=sessions.resolve(folder, args.sessions, args.all),
        profile={**PROFILES, **PAIR_PROFILES}[args.format],
        out=out,
        since=parse_when(args.since, "--since", end=False) if args.since else None,
        until=parse_when(args.until, "--until", end=True) if args.until else None,
        model=args.model,
        tags=args.tag,
        min_turns=args.min_turns,
        keep_incomplete=args.keep_incomplete or args.only_incomplete,
        branches=args.branches,
        reasoning=args.reasoning,
        tools=args.tools,
        special_tokens=args.special_tokens,
        split=args.split,
        seed=args.seed,
        only=args.only,
        include_discarded=args.include_discarded or args.only == "discarded",
        min_rating=args.min_rating,
    )
    options.selection = _selection(args, options)
    _check_out(options)
    return options


def _selection(args: argparse.Namespace, options: Options) -> Selection:
    """The options that choose conversations, as the review page's list chooses them."""
    both = sorted(set(args.with_features) & set(args.without_features))
    if both:
        raise UsageError(f"--with {both[0]} and --without {both[0]} exclude each other")
    if args.search is not None and not args.search.split():
        raise UsageError("--search needs at least one word")
    if args.in_session is not None and args.in_session not in options.sessions:
        raise UsageError(
            f"--in-session {args.in_session}: not one of the sessions read ({', '.join(options.sessions)})"
        )
    for option, value in (("--min-turns", args.min_turns), ("--max-turns", args.max_turns)):
        if value is not None and value < 0:
            raise UsageError(f"{option} must not be negative")
    for option, value in (("--min-chars", args.min_chars), ("--max-chars", args.max_chars)):
        if value is not None and value < 0:
            raise UsageError(f"{option} must not be negative")
    features = [(name, True) for name in args.with_features] + [(name, False) for name in args.without_features]
    chosen = Selection(
        words=tuple(args.search.lower().split()) if args.search else (),
        session=args.in_session,
        model=options.model,
        api=args.api,
        since=options.since,
        until=options.until,
        tags=tuple(options.tags),
        features=tuple(dict(features).items()),
        complete=False if args.only_incomplete else None,
        status=options.only,
        min_rating=options.min_rating,
        min_turns=args.min_turns,
        max_turns=args.max_turns,
        min_chars=args.min_chars,
        max_chars=args.max_chars,
    )
    try:
        check_selection(chosen, OPTION_NAMES)
    except SelectionError as exc:
        raise UsageError(str(exc)) from None
    return chosen


OPTION_NAMES = {
    "min_rating": "--min-rating",
    "min_turns": "--min-turns",
    "max_turns": "--max-turns",
    "min_chars": "--min-chars",
    "max_chars": "--max-chars",
}


def _check_out(options: Options) -> None:
    out = options.out
    if out.suffix.lower() not in OUT_SUFFIXES:
        raise UsageError(f"--out must end in .json or .jsonl (got {str(out)!r})")
    if not out.parent.is_dir():
        raise UsageError(f"--out folder {out.parent} does not exist")
    if options.split is not None and not 0 < options.split < 1:
        raise UsageError(f"--split must be a fraction between 0 and 1, e.g. 0.9 (got {options.split})")
    for path in output_paths(options).values():
        if path.resolve().parent != options.folder.resolve():
            continue
        # SESSION.json is the proxy's live dataset and SESSION.jsonl its journal: never replace either.
        if path.stem in sessions.session_names(options.folder):
            raise UsageError(f"--out {path} would replace a session's own file; choose another name")
        if PART_SEPARATOR in path.stem:  # no session's name has one: NAME@PART is a part's, now or after a roll
            raise UsageError(
                f"--out {path}: a name with {PART_SEPARATOR!r} in the datasets folder is a session part's; "
                "choose another name"
            )
        if path.suffix.lower() == sessions.JOURNAL_SUFFIX:
            raise UsageError(
                f"--out {path}: a .jsonl file in the datasets folder would be read as a session; write it elsewhere"
            )


def parse_when(text: str, option: str, end: bool, now: Optional[datetime.datetime] = None) -> datetime.datetime:
    """A --since/--until value as an aware datetime (review/selection.py reads the page's the same way)."""
    try:
        return selection_parse_when(text, option, end, now)
    except SelectionError as exc:
        raise UsageError(str(exc)) from None


# ---------------------------------------------------------------------------------------------------------
# Reading and shaping
# ---------------------------------------------------------------------------------------------------------


def collect(options: Options, progress: Progress) -> Collected:
    """The sessions read as one collection (sessions.Collection): a chat continued in another session is
    one conversation, the longest; then each conversation filtered, shaped and checked."""
    collected = Collected([], Tally(), set())
    folded: Dict[str, review_marks.Marks] = {}
    collection = sessions.Collection(options.keep_incomplete)
    for name in sessions.oldest_first(options.folder, options.sessions):
        progress.update(name, collected, force=True)  # a long journal takes a while to read
        session = sessions.load(options.folder, name, options.keep_incomplete)
        for line in session.warnings():
            progress.note(f"chatproxy: warning: {line}")
        review = review_marks.read_review(options.folder, name)
        for number, reason in review.bad_lines:
            progress.note(f"chatproxy: warning: {name}{review_marks.REVIEW_SUFFIX}: skipped line {number}: {reason}")
        folded.update(review_marks.fold(review.events))  # keyed by record ids, which no two sessions share
        collection.add(session)
        collected.tally.sessions += 1
        collected.tally.records += len(session.records)
        progress.update(name, collected, force=True)
    collected.tally.duplicates += collection.duplicates()
    collected.tally.merged = collection.merged()
    marked = [
        (
            conversation,
            review_marks.marks_for(folded, collection.with_copies(review_marks.contained_ids(conversation.node))),
        )
        for conversation in collection.conversations(options.branches)
    ]
    return take(marked, options, collected, progress)


def take(
    marked: List[Tuple[sessions.Conversation, review_marks.Marks]],
    options: Options,
    collected: Collected,
    progress: Progress,
) -> Collected:
    """The conversations (with their marks) filtered, shaped and checked: export's records, and the review
    page's (which has the conversations read already)."""
    seen: Set[bytes] = set()
    if options.profile.pairs:
        _take_pairs(marked, options, collected, seen)
        return collected
    for conversation, mark in marked:
        _take(conversation, mark, options, collected, seen)
        progress.update(conversation.session, collected)
    return collected


def _take_pairs(
    marked: List[Tuple[sessions.Conversation, review_marks.Marks]],
    options: Options,
    collected: Collected,
    seen: Set[bytes],
) -> None:
    from chatproxy.commands.preferences import pairs

    tally = collected.tally
    tally.conversations += len(marked)
    usable = [
        (c, m)
        for c, m in marked
        if selected(c, options) and not c.damaged and (not options.tags or set(options.tags) <= c.tags() | m.tags)
    ]
    tally.filtered += len(marked) - len(usable)
    for pair in pairs(usable):
        try:
            record = options.profile.pair_record(
                pair.prompt, pair.chosen, pair.rejected, pair.tools, options.reasoning, options.folder
            )
        except Unusable as exc:
            tally.skip(str(exc), pair.where)
            continue
        _add(record, pair.where, options, collected, seen)


def _take(
    conversation: sessions.Conversation,
    mark: review_marks.Marks,
    options: Options,
    collected: Collected,
    seen: Set[bytes],
) -> None:
    tally = collected.tally
    tally.conversations += 1
    if not selected(conversation, options) or not chosen_by_marks(conversation, mark, options):
        tally.filtered += 1
        return
    try:
        record = make_record(conversation, options, mark)
    except Unusable as exc:
        tally.skip(str(exc), f"{conversation.session}/{conversation.id}")
        return
    _add(record, f"{conversation.session}/{conversation.id}", options, collected, seen)


def _add(record: Dict[str, Any], where: str, options: Options, collected: Collected, seen: Set[bytes]) -> None:
    tally = collected.tally
    found = special_tokens_in(record)
    if found:
        tally.special += 1
        for token in found:
            tally.special_tokens[token] += 1
        if options.special_tokens == "drop":
            tally.skip(f"contains special-token text {found[0]}", where)
            return
        if options.special_tokens == "escape":
            record = escape_special_tokens(record)
    encoded = encode_json(record)
    key = hashlib.blake2b(encoded, digest_size=16).digest()
    if key in seen:
        tally.duplicates += 1
        return
    seen.add(key)
    collected.records.append(encoded)
    collected.columns.update(column for column in ("tools", "images") if column in record)


def selected(conversation: sessions.Conversation, options: Options) -> bool:
    """What the recording says (the review page's filters but its marks), as review/selection.py decides."""
    chosen = options.selection
    return chosen.recorded(conversation.session, summarize(conversation.node, conversation.tags, chosen))


def chosen_by_marks(conversation: sessions.Conversation, mark: review_marks.Marks, options: Options) -> bool:
    """The review's say: status (--only, --include-discarded), rating, and tags (recorded or review)."""
    if mark.status == "discard" and not options.include_discarded:
        return False
    chosen = options.selection
    tags = frozenset(conversation.tags()) if chosen.tags else NO_TAGS
    return chosen.marked(summary(EMPTY, {}, tags, conversation.node.complete), mark)


def make_record(
    conversation: sessions.Conversation, options: Options, mark: Optional[review_marks.Marks] = None
) -> Dict[str, Any]:
    if conversation.damaged:
        raise Unusable("its beginning was on a damaged journal line")
    messages = conversation.messages
    if mark is not None:
        messages, _ = review_marks.apply_edits(messages, mark)
    tools = conversation.tools
    if options.tools == "used" and not calls_tools(messages):
        tools = None
    return options.profile.record(messages, tools, options.reasoning, options.folder)


def calls_tools(messages: List[Dict[str, Any]]) -> bool:
    """Whether the conversation calls a tool (or holds a tool result)."""
    return any(isinstance(m, dict) and (m.get("tool_calls") or m.get("role") == "tool") for m in messages)


# The text of common chat-template control tokens: ChatML/Qwen, Llama 3, Llama 2/Mistral, Gemma, Phi-3,
# GPT-2/GPT-NeoX, DeepSeek. Tokenizers split added tokens out of the text before anything else, so the
# text inside a message becomes the real token (an early end of turn, a fake new turn).
SPECIAL_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|python_tag|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "[INST]",
    "[/INST]",
    "<s>",
    "</s>",
    "<\uff5cend\u2581of\u2581sentence\uff5c>",
    "<\uff5cbegin\u2581of\u2581sentence\uff5c>",
)
SPECIAL_TOKEN_MODES = ("keep", "drop", "escape")
ZERO_WIDTH_SPACE = "\u200b"


def _strings(value: Any) -> List[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return []


def special_tokens_in(record: Dict[str, Any]) -> List[str]:
    """The special-token strings that occur anywhere in the record's text, in SPECIAL_TOKENS order."""
    texts = _strings(record)
    return [token for token in SPECIAL_TOKENS if any(token in text for text in texts)]


def escape_special_tokens(value: Any) -> Any:
    """The record with every special-token string broken by a zero-width space after its first character."""
    if isinstance(value, str):
        for token in SPECIAL_TOKENS:
            value = value.replace(token, token[0] + ZERO_WIDTH_SPACE + token[1:])
        return value
    if isinstance(value, dict):
        return {key: escape_special_tokens(item) for key, item in value.items()}
    if isinstance(value, list):
        return [escape_special_tokens(item) for item in value]
    return value


# ---------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------


def output_paths(options: Options) -> Dict[str, Path]:
    out = options.out
    if options.split is None:
        return {"train": out}
    return {split: out.with_name(f"{out.stem}.{split}{out.suffix}") for split in ("train", "test")}


def write(options: Options, records: List[bytes]) -> Dict[str, Tuple[Path, List[bytes]]]:
    """Each file written (temp file, fsync, rename): {"train": (path, its records)[, "test": ...]}."""
    paths = output_paths(options)
    parts = {"train": records} if options.split is None else split(records, options.split, options.seed)
    for name, path in paths.items():
        durable.atomic_write(path, encode_dataset(parts[name], path.suffix.lower() == ".jsonl"))
    return {name: (path, parts[name]) for name, path in paths.items()}


def split(records: List[bytes], fraction: float, seed: int) -> Dict[str, List[bytes]]:
    """A seeded shuffle, then the first `fraction` for training.

    Each record's place is a keyed hash of its own bytes, so the order depends on the seed and the data
    only -- not on the order the sessions were named in.
    """
    key = seed.to_bytes(8, "big", signed=True)
    shuffled = sorted(records, key=lambda record: hashlib.blake2b(record, key=key, digest_size=16).digest())
    count = round(len(shuffled) * fraction)
    if len(shuffled) >= 2:
        count = min(max(count, 1), len(shuffled) - 1)  # neither file empty: an empty JSONL does not load
    return {"train": shuffled[:count], "test": shuffled[count:]}


def encode_dataset(records: List[bytes], jsonl: bool) -> bytes:
    if jsonl:
        return b"".join(record + b"\n" for record in records)
    return b"[\n" + b",\n".join(records) + b"\n]\n" if records else b"[]\n"


# ---------------------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------------------


class Progress:
    """One self-overwriting status line on a terminal; nothing at all when stderr is piped."""

    def __init__(self, stream: TextIO, interval: Optional[float] = None) -> None:
        self.stream = stream
        self.interval = PROGRESS_INTERVAL if interval is None else interval
        self.enabled = bool(getattr(stream, "isatty", lambda: False)())
        self.shown = False
        self.last = 0.0

    def update(self, session: str, collected: Collected, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < self.interval):
            return
        self.last = now
        tally = collected.tally
        self.stream.write(
            f"\rreading {session}: {tally.records} records read, {len(collected.records)} written, "
            f"{tally.skipped} skipped\x1b[K"
        )
        self.stream.flush()
        self.shown = True

    def note(self, line: str) -> None:
        """A warning line, printed above the status line (or plainly when there is none)."""
        self.done()
        print(line, file=self.stream)

    def done(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False


def _counts(tally: Tally) -> str:
    parts = [
        f"{tally.sessions} session{_s(tally.sessions)}",
        f"{tally.records} record{_s(tally.records)}",
        f"{tally.conversations} conversation{_s(tally.conversations)}",
    ]
    dropped = [
        f"{tally.filtered} filtered out",
        f"{tally.duplicates} duplicate{_s(tally.duplicates)}",
        f"{tally.skipped} skipped",
    ]
    if tally.merged:
        dropped.insert(2, f"{tally.merged} continued in another session")
    return "read " + ", ".join(parts) + "; " + ", ".join(dropped)


def _skip_report(tally: Tally) -> str:
    if not tally.skipped:
        return ""
    lines = [f"{tally.skipped} skipped:"]
    for reason, where in sorted(tally.reasons.items(), key=lambda item: -len(item[1])):
        examples = ", ".join(where[:EXAMPLES_SHOWN]) + (", ..." if len(where) > EXAMPLES_SHOWN else "")
        lines.append(f"  {len(where)} × {reason} ({examples})")
    return "\n".join(lines) + "\n"


def _summary(options: Options, written: Dict[str, Tuple[Path, List[bytes]]], collected: Collected) -> str:
    wrote = " and ".join(f"{len(records)} to {path}" for path, records in written.values())
    lines = [
        f"wrote {len(collected.records)} conversation{_s(len(collected.records))} ({options.profile.name}): {wrote}",
        _counts(collected.tally),
    ]
    return "\n".join(lines) + "\n" + _skip_report(collected.tally)


def _warn_dataset(options: Options, records: List[bytes]) -> None:
    if options.profile.name != "sharegpt-plain":
        return
    first = [json.loads(record) for record in records[:10]]
    for problem in unsloth_dataset_problems(first):
        print(f"chatproxy: warning: {problem}", file=sys.stderr)


def _warn_special_tokens(options: Options, tally: Tally) -> None:
    if not tally.special:
        return
    found = ", ".join(f"{token} in {count}" for token, count in tally.special_tokens.items())
    verb = "contains" if tally.special == 1 else "contain"
    what = f"{tally.special} conversation{_s(tally.special)} {verb} special-token text ({found})"
    if options.special_tokens == "keep":
        print(
            f"chatproxy: warning: {what}; tokenizers read it as the real control token "
            "(--special-tokens drop or escape)",
            file=sys.stderr,
        )
    elif options.special_tokens == "escape":
        print(f"chatproxy: {what}; escaped with a zero-width space", file=sys.stderr)
    else:
        print(f"chatproxy: {what}; left out (--special-tokens drop)", file=sys.stderr)


def _s(count: int) -> str:
    return "" if count == 1 else "s"
