"""SSEDecoder: table of streams, each decoded whole, byte by byte and at every split point."""

from __future__ import annotations

import re
from typing import Iterable, NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatproxy.apis.sse import SSEDecoder


class Case(NamedTuple):
    name: str
    stream: bytes
    from_feed: list[bytes]  # payloads feed() returns over the whole stream
    from_close: list[bytes]  # payloads close() returns afterwards


OPENAI_STREAM = (
    b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n'
    b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n'
    b"data: [DONE]\n\n"
)

CASES = [
    Case("one event", b"data: hello\n\n", [b"hello"], []),
    Case("many events", b"data: a\n\ndata: b\n\ndata: c\n\n", [b"a", b"b", b"c"], []),
    Case(
        "openai chat stream",
        OPENAI_STREAM,
        [
            b'{"choices":[{"delta":{"role":"assistant","content":""}}]}',
            b'{"choices":[{"delta":{"content":"Hi"}}]}',
            b"[DONE]",
        ],
        [],
    ),
    Case("crlf", b"data: a\r\n\r\ndata: b\r\n\r\n", [b"a", b"b"], []),
    Case("cr", b"data: a\r\rdata: b\r\r", [b"a", b"b"], []),
    Case("mixed line ends", b"data: a\r\n\ndata: b\n\r\ndata: c\r\rdata: d\r\n\r", [b"a", b"b", b"c", b"d"], []),
    Case("cr then lf is one line end", b"data: a\r\ndata: b\r\n\r\n", [b"a\nb"], []),
    Case("cr cr lf is two line ends", b"data: a\r\r\n", [b"a"], []),
    Case("comments", b": ping\n\n: keep-alive\ndata: x\n: between\n\n", [b"x"], []),
    Case("comment without space", b":x\ndata: y\n\n", [b"y"], []),
    Case("multi-line data", b"data: a\ndata: b\ndata: c\n\n", [b"a\nb\nc"], []),
    Case("no space after colon", b"data:x\n\n", [b"x"], []),
    Case("only one space stripped", b"data:  x \n\n", [b" x "], []),
    Case("empty value", b"data:\n\n", [b""], []),
    Case("field without colon", b"data\n\n", [b""], []),
    Case("valueless data line joins as empty line", b"data: a\ndata\ndata: b\n\n", [b"a\n\nb"], []),
    Case("colon inside value kept", b'data: {"a": "b:c"}\n\n', [b'{"a": "b:c"}'], []),
    Case("tab after colon kept", b"data:\tx\n\n", [b"\tx"], []),
    Case("other fields ignored", b"event: delta\nid: 7\nretry: 10\nfoo: bar\ndata: x\n\n", [b"x"], []),
    Case("event without data dispatches nothing", b"event: ping\nid: 1\nretry: 5\n\n", [], []),
    Case("field name is case-sensitive", b"Data: x\n\n", [], []),
    Case("data prefix of a longer name", b"datax: y\ndata : z\n\n", [], []),
    Case("done sentinel", b"data: [DONE]\n\n", [b"[DONE]"], []),
    Case("extra blank lines", b"\n\n\ndata: a\n\n\n\n", [b"a"], []),
    Case("utf-8 text", "data: héllo 😀 中文\n\n".encode(), ["héllo 😀 中文".encode()], []),
    Case("bom at stream start", b"\xef\xbb\xbfdata: a\n\n", [b"a"], []),
    Case("bom later is part of the field name", b"data: a\n\n\xef\xbb\xbfdata: b\n\n", [b"a"], []),
    Case("empty stream", b"", [], []),
    Case("trailing partial line", b"data: a\n\ndata: par", [b"a"], [b"par"]),
    Case("trailing event without blank line", b"data: a\ndata: b\n", [], [b"a\nb"]),
    Case("trailing cr ends the line", b"data: a\r", [], [b"a"]),
    Case("trailing crlf", b"data: a\r\n", [], [b"a"]),
    Case("trailing comment dispatches nothing", b"data: a\n\n: bye", [b"a"], []),
    Case("trailing field without data", b"data: a\n\nevent: x\n", [b"a"], []),
]


def decode(reads: Iterable[bytes]) -> tuple[list[bytes], list[bytes]]:
    decoder = SSEDecoder()
    fed: list[bytes] = []
    for read in reads:
        fed += decoder.feed(read)
    return fed, decoder.close()


def splits(stream: bytes) -> Iterable[tuple[str, list[bytes]]]:
    yield "whole", [stream]
    yield "byte by byte", [stream[i : i + 1] for i in range(len(stream))]
    yield "with empty reads", [b"", *(stream[i : i + 1] for i in range(len(stream))), b""]
    for i in range(len(stream) + 1):
        yield f"split at {i}", [stream[:i], stream[i:]]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_decode(case: Case) -> None:
    for how, reads in splits(case.stream):
        assert decode(reads) == (case.from_feed, case.from_close), how


def test_feed_returns_events_as_soon_as_they_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.feed(b"\ndata: b\n\nda") == [b"a", b"b"]
    assert decoder.feed(b"ta: c\n\n") == [b"c"]
    assert decoder.close() == []


def test_lf_after_split_crlf_is_not_an_event_end() -> None:
    """A CR ending one read and the LF opening the next are one line end."""
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"data: b\r") == []
    assert decoder.feed(b"\ndata: c\r\n\r") == [b"a\nb\nc"]
    assert decoder.feed(b"\n") == []
    assert decoder.close() == []


def test_payloads_are_bytes() -> None:
    payloads, _ = decode([b"data: a\ndata: b\n\ndata: c\n\n"])
    assert [type(p) for p in payloads] == [bytes, bytes]


def test_close_resets_for_a_new_stream() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\ndata: b") == []
    assert decoder.close() == [b"a\nb"]
    assert decoder.close() == []
    assert decoder.feed(b"\xef\xbb\xbfdata: c\n\n") == [b"c"]


def test_long_line_over_many_reads() -> None:
    value = b"x" * 100_000
    reads = [b"data: "] + [value[i : i + 1000] for i in range(0, len(value), 1000)] + [b"\n\n"]
    assert decode(reads) == ([value], [])


# -- properties -------------------------------------------------------------------------

LINE_ENDS = [b"\n", b"\r\n", b"\r"]
# Any text that is not itself a line end; surrogates cannot be encoded to UTF-8.
line_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=12)
field_line = st.one_of(
    line_text.map(lambda t: "data: " + t),
    line_text.map(lambda t: "data:" + t),
    st.just("data"),
    line_text.map(lambda t: ":" + t),
    st.tuples(st.sampled_from(["event", "id", "retry", "x"]), line_text).map(lambda p: f"{p[0]}: {p[1]}"),
)
event_lines = st.lists(field_line, max_size=4)


def reference(stream: bytes) -> list[bytes]:
    """A slow, obviously-correct decoder of a whole stream (feed and close together)."""
    payloads: list[bytes] = []
    data: list[bytes] = []
    for line in re.split(rb"\r\n|\r|\n", stream.removeprefix(b"\xef\xbb\xbf")) + [b""]:
        if not line:
            if data:
                payloads.append(b"\n".join(data))
            data = []
            continue
        name, colon, value = line.partition(b":")
        if name == b"data":
            data.append(value[1:] if value.startswith(b" ") else value)
    return payloads


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    """Random events with a random line end per line; maybe a trailing unterminated event."""
    out = b""
    for lines in draw(st.lists(event_lines, max_size=5)):
        for line in lines + [""]:
            out += line.encode() + draw(st.sampled_from(LINE_ENDS))
    for line in draw(event_lines):
        out += line.encode() + draw(st.sampled_from(LINE_ENDS + [b""]))
    return out


@st.composite
def split_reads(draw: st.DrawFn, stream: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in zip(bounds, bounds[1:])]


@given(st.data())
def test_any_split_decodes_like_the_whole_stream(data: st.DataObject) -> None:
    stream = data.draw(streams())
    reads = data.draw(split_reads(stream))
    whole = decode([stream])
    assert decode(reads) == whole
    assert whole[0] + whole[1] == reference(stream)


@given(st.data())
def test_payloads_equal_the_data_lines_sent(data: st.DataObject) -> None:
    """With one line-end style per stream no CR can pair with the next line's LF."""
    events = data.draw(st.lists(st.lists(line_text, min_size=1, max_size=3), max_size=5))
    end = data.draw(st.sampled_from(LINE_ENDS))
    stream = b"".join(b"".join(b"data: " + t.encode() + end for t in event) + end for event in events)
    reads = data.draw(split_reads(stream))
    expected = [b"\n".join(t.encode() for t in event) for event in events]
    assert decode(reads) == (expected, [])
