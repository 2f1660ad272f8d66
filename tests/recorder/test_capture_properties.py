"""Properties (hypothesis) the fault suites rely on and apis/test_sse.py does not already cover:
the journal reader against any truncation and any damage, and the capture's SSE copy (through
gzip, as compressed upstreams send it) against any way of splitting the stream into reads."""

from __future__ import annotations

import gzip
import json
import zlib
from typing import List

from hypothesis import given, settings
from hypothesis import strategies as st

from chatproxy import headers as hdr
from chatproxy.recorder.capture import ExchangeCapture
from chatproxy.recorder.journal import encode_record, parse_journal

# Any text, lone surrogates included (a "\ud800" escape in a request decodes to one), line and
# paragraph separators, NUL and the rest of the C0 controls.
any_text = st.text(max_size=20)
message = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool"]), "content": any_text})
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), any_text)
meta = st.dictionaries(
    st.text(max_size=8),
    st.recursive(
        json_leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3), max_leaves=6
    ),
    max_size=4,
)
record = st.fixed_dictionaries(
    {
        "v": st.just(1),
        "id": st.text("0123456789abcdef", min_size=16, max_size=16),
        "parent": st.none(),
        "base": st.integers(0, 5),
        "messages": st.lists(message, min_size=1, max_size=3),
        "meta": meta,
    }
)


def same(a: object, b: object) -> bool:
    """Equality through JSON, so that -0.0 and 0.0 or 1.0 and 1 do not muddy the comparison."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@given(st.lists(record, max_size=6), st.data())
def test_any_truncation_recovers_every_complete_line(records: List[dict], data: st.DataObject) -> None:
    lines = [encode_record(r) for r in records]
    journal = b"".join(lines)
    cut = data.draw(st.integers(0, len(journal)), label="cut")
    contents = parse_journal(journal[:cut])
    ends = [sum(len(line) for line in lines[: i + 1]) for i in range(len(lines))]
    whole = [r for r, end in zip(records, ends) if end <= cut]
    good = max([end for end in ends if end <= cut], default=0)
    assert same(contents.records, whole)
    assert contents.bad_lines == []
    assert contents.good_size == good
    assert contents.torn_tail == journal[good:cut]


@given(st.lists(record, min_size=1, max_size=6), st.data())
def test_damaged_lines_are_reported_and_every_other_line_kept(records: List[dict], data: st.DataObject) -> None:
    """Garbage (no newline inside) put between records costs only its own line."""
    garbage = st.one_of(
        st.binary(max_size=30).filter(lambda b: b"\n" not in b and b.strip() != b""),
        st.sampled_from([b"[1, 2]", b'{"id": 3}', b'{"messages": []}', b"null", b'"text"']),
    )
    lines: List[bytes] = []
    bad_numbers = []
    for r in records:
        if data.draw(st.booleans(), label="damage before"):
            lines.append(data.draw(garbage, label="garbage") + b"\n")
            bad_numbers.append(len(lines))
        lines.append(encode_record(r))
    contents = parse_journal(b"".join(lines))
    assert same(contents.records, records)
    assert [number for number, _ in contents.bad_lines] == bad_numbers
    assert contents.torn_tail == b""


@given(st.binary(max_size=300))
def test_any_bytes_parse_without_raising(data: bytes) -> None:
    contents = parse_journal(data)
    assert contents.good_size == data.rfind(b"\n") + 1
    assert contents.torn_tail == data[contents.good_size :]


@given(record)
def test_a_record_survives_the_round_trip(r: dict) -> None:
    line = encode_record(r)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert same(parse_journal(line).records, [r])


# -- the capture's SSE copy -----------------------------------------------------------------------

payload = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=15)


def captured_events(head: List[tuple], reads: List[bytes]) -> List[bytes]:
    capture = ExchangeCapture("chat.completions", "/v1/chat/completions", [], 10**6)
    capture.request_chunk(b"{}")
    capture.response_head(200, hdr.as_fields(head))
    for read in reads:
        capture.response_chunk(read)
    exchange = capture.finish(True)
    assert exchange is not None and exchange.problem == ""
    return exchange.events


@st.composite
def split(draw: st.DrawFn, data: bytes) -> List[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=10)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


@settings(max_examples=200)
@given(st.lists(payload, max_size=8), st.sampled_from(["gzip", "deflate", "identity"]), st.data())
def test_captured_events_do_not_depend_on_how_the_compressed_stream_is_split(
    payloads: List[str], encoding: str, data: st.DataObject
) -> None:
    stream = b"".join(b"data: " + p.encode() + b"\n\n" for p in payloads)
    if encoding == "gzip":
        wire = gzip.compress(stream)
    elif encoding == "deflate":
        wire = zlib.compress(stream)
    else:
        wire = stream
    head = [(b"Content-Type", b"text/event-stream"), (b"Content-Encoding", encoding.encode())]
    reads = data.draw(split(wire), label="reads")
    assert captured_events(head, reads) == [p.encode() for p in payloads]
