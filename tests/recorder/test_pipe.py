"""recorder/pipe.py: the frames between the proxy and its recorder process, and the reader that splits them.

A frame is a 4-byte big-endian length, then that many bytes of pickle. The reader is fed whatever a
read returned, so (as h11's tests/test_io.py does for its readers) every stream here is fed whole, one
byte at a time, and split at every offset, and must give the same messages each time. Frames that hold
no message are dropped and logged, never raised: both readers run in loops an exception would end.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import struct
import tracemalloc
from pathlib import Path
from typing import Any, Iterable, List

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatproxy.config import RecordOptions
from chatproxy.recorder.capture import Exchange
from chatproxy.recorder.pipe import (
    FrameReader,
    Message,
    emit_forwarded,
    exchange_fields,
    exchange_from,
    frame,
    log_fields,
)


def full_exchange() -> Exchange:
    """Every field away from its default. Made per test: an Exchange kept alive at module level would
    show as a leak to test_load.py, which counts the live ones."""
    return Exchange(
        endpoint="chat.completions",
        path="/v1/chat/completions?x=1",
        request_body=b'{"model":"m","stream":true,"messages":[{"role":"user","content":"hi \xc3\xa9"}]}',
        started=1700000000.25,
        session="s-1",
        tags=("a", "b"),
        stream=True,
        status=200,
        response_body=b"\x00\xff raw",
        events=[b'{"choices":[]}', b"[DONE]"],
        complete=True,
        problem="unknown encoding br",
    )


# One of each message the two ends send each other.
MESSAGES: List[Message] = [
    ("open", {"folder": Path("/tmp/d"), "session": "s", "options": RecordOptions(), "owner_pid": 1, "log_level": 20}),
    ("exchange", exchange_fields(full_exchange())),
    ("sync", 3, True),
    ("spooled", 0, 4096, 3),
    ("ready", {"dataset": "/tmp/d/s.json", "journal": "/tmp/d/s.jsonl"}),
    ("failed", "os", (28, "No space left on device", "/tmp/d/s.jsonl")),
    ("status", {"counts": {"recorded": 1}, "on_disk": 1, "last_error": None}),
    ("log", {"name": "chatproxy.store", "levelno": 30, "msg": "slow disk", "args": None}),
    ("synced", 3),
]


def raw_frame(payload: bytes) -> bytes:
    """A frame built by hand from the format, not by frame(): any payload, right length."""
    return struct.pack("!I", len(payload)) + payload


def feed_all(reader: FrameReader, pieces: Iterable[bytes]) -> List[Message]:
    messages: List[Message] = []
    for piece in pieces:
        messages += reader.feed(piece)
    return messages


def t_frame_reader(data: bytes, expected: List[Message]) -> None:
    """Whole, byte by byte, and split in two at every offset: always the same messages, in order."""
    assert FrameReader().feed(data) == expected
    assert feed_all(FrameReader(), (data[i : i + 1] for i in range(len(data)))) == expected
    for i in range(len(data) + 1):
        assert feed_all(FrameReader(), [data[:i], data[i:]]) == expected, f"split at {i}"


# -- the format -------------------------------------------------------------------------------


def test_frame_is_a_big_endian_length_then_the_pickle() -> None:
    """frame() writes the payload's length in 4 big-endian bytes, then the pickled message."""
    data = frame(("synced", 7))
    (size,) = struct.unpack("!I", data[:4])
    assert size == len(data) - 4
    assert pickle.loads(data[4:]) == ("synced", 7)


def test_reader_reads_the_format_not_just_frame_output() -> None:
    """A frame written by hand, with any pickle protocol, is read: the format is the contract."""
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        data = raw_frame(pickle.dumps(("sync", 1, False), protocol=protocol))
        assert FrameReader().feed(data) == [("sync", 1, False)]


@pytest.mark.parametrize("message", MESSAGES, ids=[m[0] for m in MESSAGES])
def test_every_message_kind_round_trips(message: Message) -> None:
    """Each message the proxy and the recorder exchange comes out of the reader equal to what went in."""
    assert FrameReader().feed(frame(message)) == [message]


# -- feeding ----------------------------------------------------------------------------------


def test_one_frame_fed_whole_split_and_byte_by_byte() -> None:
    """A single frame gives its message however the reads cut it."""
    t_frame_reader(frame(("synced", 1)), [("synced", 1)])


def test_many_frames_in_one_stream() -> None:
    """Back-to-back frames give their messages in order, however the reads cut them."""
    t_frame_reader(b"".join(frame(m) for m in MESSAGES), MESSAGES)


def test_a_message_comes_out_exactly_when_its_last_byte_arrives() -> None:
    """Nothing is returned for a partial frame; the completing byte returns the message, once."""
    data = frame(("sync", 9, True))
    reader = FrameReader()
    for i in range(len(data) - 1):
        assert reader.feed(data[i : i + 1]) == [], f"byte {i}"
    assert reader.feed(data[-1:]) == [("sync", 9, True)]
    assert reader.feed(b"") == []


def test_feeding_nothing_gives_nothing() -> None:
    """An empty read is harmless, before, between and after frames."""
    reader = FrameReader()
    assert reader.feed(b"") == []
    assert reader.feed(frame(("synced", 1)) + frame(("synced", 2))[:3]) == [("synced", 1)]
    assert reader.feed(b"") == []
    assert reader.feed(frame(("synced", 2))[3:]) == [("synced", 2)]


def test_a_large_frame_read_in_pipe_sized_pieces() -> None:
    """A multi-megabyte exchange read 64 KiB at a time (what the proxy reads) arrives intact, once."""
    big = dataclasses.replace(full_exchange(), request_body=bytes(range(256)) * 12288, events=[b"x" * 1000] * 500)
    data = frame(("exchange", exchange_fields(big))) + frame(("sync", 1, False))
    step = 1 << 16
    messages = feed_all(FrameReader(), (data[i : i + step] for i in range(0, len(data), step)))
    assert [m[0] for m in messages] == ["exchange", "sync"]
    assert exchange_from(messages[0][1]) == big


@given(st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_any_split_gives_the_same_messages(cuts: List[int]) -> None:
    """Cut anywhere, any number of times, the stream gives the messages of the whole."""
    data = b"".join(frame(m) for m in MESSAGES[2:])
    points = sorted({min(c, len(data)) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0] + points, points + [len(data)])]
    assert feed_all(FrameReader(), pieces) == MESSAGES[2:]


# -- garbage ----------------------------------------------------------------------------------


def test_a_truncated_frame_at_eof_gives_nothing_and_does_not_raise() -> None:
    """At EOF a partial frame (header or payload cut short) is simply never returned; the ones before are."""
    whole = frame(("synced", 1))
    for cut in range(1, len(whole)):
        reader = FrameReader()
        assert reader.feed(frame(("synced", 0)) + whole[:cut]) == [("synced", 0)], f"cut at {cut}"


def test_a_huge_length_prefix_waits_without_allocating_it() -> None:
    """A prefix claiming ~4 GiB makes the reader wait for that much; it holds only what was fed, never the claim."""
    reader = FrameReader()
    tracemalloc.start()
    try:
        assert reader.feed(b"\xff\xff\xff\xff" + frame(("synced", 1))) == []
        for _ in range(16):
            assert reader.feed(b"\x00" * 65536) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024


def test_a_frame_that_does_not_unpickle_is_dropped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A payload that is not a pickle is skipped: the frames around it still come out, and an error is logged."""
    data = frame(("synced", 1)) + raw_frame(b"not a pickle at all") + frame(("synced", 2))
    with caplog.at_level(logging.ERROR, logger="chatproxy.recorder"):
        assert FrameReader().feed(data) == [("synced", 1), ("synced", 2)]
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    assert "dropped a 19-byte frame" in caplog.records[0].getMessage()


@pytest.mark.parametrize(
    "payload",
    [
        b"",  # an empty frame
        b"\x80\x05\x95",  # a pickle cut short
        pickle.dumps(("synced", 1))[:-1],  # the same, one byte short of its STOP
        b"cno_such_module_here\nThing\n.",  # a pickle naming a class that cannot be imported
        b"\x00" * 64,
    ],
    ids=["empty", "cut-header", "no-stop", "missing-class", "zeros"],
)
def test_unreadable_payloads_are_skipped_in_any_split(payload: bytes, caplog: pytest.LogCaptureFixture) -> None:
    """Whatever pickle raises for a payload, the reader drops that frame, however the stream is cut."""
    data = frame(("synced", 1)) + raw_frame(payload) + frame(("synced", 2))
    with caplog.at_level(logging.ERROR, logger="chatproxy.recorder"):
        t_frame_reader(data, [("synced", 1), ("synced", 2)])
    assert caplog.records and all("dropped" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "value",
    [42, None, "exchange", (), (1, 2), ["exchange", ()], {"kind": "sync"}, (b"synced", 1)],
    ids=["int", "none", "str", "empty-tuple", "int-kind", "list", "dict", "bytes-kind"],
)
def test_a_payload_that_is_not_a_message_is_skipped(value: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Only a non-empty tuple whose first item is a str is a message; anything else is dropped, not returned."""
    data = frame(("synced", 1)) + raw_frame(pickle.dumps(value)) + frame(("synced", 2))
    with caplog.at_level(logging.ERROR, logger="chatproxy.recorder"):
        assert FrameReader().feed(data) == [("synced", 1), ("synced", 2)]
    assert len(caplog.records) == 1
    assert "not a message" in caplog.records[0].getMessage()


def test_a_dropped_frame_is_not_shown_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    """The log line names the frame's type, not its contents (a request body can hold anything)."""
    data = raw_frame(pickle.dumps(["sk-secret-in-a-body"])) + raw_frame(b"sk-secret-not-a-pickle")
    with caplog.at_level(logging.ERROR, logger="chatproxy.recorder"):
        assert FrameReader().feed(data) == []
    assert len(caplog.records) == 2
    assert "sk-secret" not in caplog.text


def test_messages_before_a_bad_frame_come_out_once() -> None:
    """A bad frame mid-read neither loses nor repeats the messages read with it, and the reader goes on."""
    reader = FrameReader()
    assert reader.feed(frame(("synced", 1)) + raw_frame(b"junk") + frame(("synced", 2))) == [
        ("synced", 1),
        ("synced", 2),
    ]
    assert reader.feed(frame(("synced", 3))) == [("synced", 3)]


def test_the_reader_trims_its_buffer_while_log_records_are_kept(caplog: pytest.LogCaptureFixture) -> None:
    """Handlers that keep records (caplog here, the recorder's held lines) must not pin the read buffer."""
    reader = FrameReader()
    with caplog.at_level(logging.ERROR, logger="chatproxy.recorder"):
        for i in range(3):
            assert reader.feed(raw_frame(b"junk") + frame(("synced", i))) == [("synced", i)]
    assert len(caplog.records) == 3


# -- exchanges --------------------------------------------------------------------------------


def test_exchange_round_trips_through_its_fields() -> None:
    """exchange_from(exchange_fields(e)) is e, every field set to a non-default value."""
    defaults = Exchange("completions", "/", b"", 0.0)
    for field in dataclasses.fields(Exchange):
        assert getattr(full_exchange(), field.name) != getattr(defaults, field.name), f"{field.name} left at default"
    assert exchange_from(exchange_fields(full_exchange())) == full_exchange()
    assert exchange_from(exchange_fields(defaults)) == defaults


def test_exchange_fields_follow_the_declared_field_order() -> None:
    """The tuple is positional: it holds the fields in the order Exchange declares them."""
    assert exchange_fields(full_exchange()) == tuple(
        getattr(full_exchange(), f.name) for f in dataclasses.fields(Exchange)
    )


def test_exchange_fields_pickle_without_the_class() -> None:
    """The fields are a plain tuple: their pickle names no class, and survives the pipe intact."""
    fields = exchange_fields(full_exchange())
    assert type(fields) is tuple
    assert b"Exchange" not in pickle.dumps(fields, protocol=pickle.HIGHEST_PROTOCOL)
    ((kind, received),) = FrameReader().feed(frame(("exchange", fields)))
    assert kind == "exchange"
    assert exchange_from(received) == full_exchange()


def test_an_exchange_after_its_pipe_trip_is_a_copy() -> None:
    """The recorder's Exchange does not share its events list with the proxy's."""
    original = full_exchange()
    ((_, received),) = FrameReader().feed(frame(("exchange", exchange_fields(original))))
    copy = exchange_from(received)
    copy.events.append(b"more")
    assert original.events == [b'{"choices":[]}', b"[DONE]"]


# -- log records ------------------------------------------------------------------------------


def test_log_fields_travel_with_an_unpicklable_argument(caplog: pytest.LogCaptureFixture) -> None:
    """A record whose argument cannot pickle is sent formatted, and logs here as the same line."""
    unpicklable = lambda: None  # noqa: E731
    record = logging.LogRecord(
        "chatproxy.store", logging.WARNING, __file__, 1, "wrote %s at %r", ("x", unpicklable), None
    )
    ((kind, fields),) = FrameReader().feed(frame(("log", log_fields(record))))
    assert kind == "log"
    with caplog.at_level(logging.WARNING, logger="chatproxy.store"):
        emit_forwarded(fields)
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("chatproxy.store", logging.WARNING, record.getMessage())
    ]
