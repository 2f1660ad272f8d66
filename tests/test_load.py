"""Load: 200 concurrent streaming chats, each on its own connection. No record lost or duplicated,
no cross-talk between streams, and the proxy's memory back at its baseline afterwards."""

from __future__ import annotations

import asyncio
import gc
import json
import time
import tracemalloc
from typing import List, Tuple

import h11

from fake_upstream import Behaviour, Chat
from support_faults import chat_body, journal, streamed_text, wait_until

CHATS = 200
WARM_UP = CHATS  # as many as the load, so the upstream pool already holds what the load will leave idle
# Allocations still held by these files after the load must be back at the baseline: they make up
# the relay path (per-connection and per-exchange state), as opposed to the dataset index, which
# rightly grows by one entry per record.
RELAY_PATH = (
    "/chatproxy/server.py",
    "/chatproxy/relay.py",
    "/chatproxy/upstream.py",
    "/chatproxy/recorder/capture.py",
    "/chatproxy/apis/sse.py",
    "/h11/",
    "/asyncio/",
)


class Interleaved(Behaviour):
    """The default echo, streamed in many small events with pauses, so 200 streams interleave."""

    async def run(self, ex) -> None:
        text = json.loads(ex.request.body)["messages"][-1]["content"]
        await Chat("echo: " + text, chunk_size=400, gap=0.002).run(ex)


def text_for(i: int) -> str:
    """A distinct long message per chat: any cross-talk shows up as someone else's words."""
    return f"chat {i:03d}: " + " ".join(f"w{i}-{n}" for n in range(250))


async def stream_chat(port: int, text: str) -> Tuple[int, bytes]:
    """One streaming chat on a fresh connection, read to the end; status and raw body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = h11.Connection(h11.CLIENT)
    body = chat_body(text, stream=True)
    head = h11.Request(
        method="POST",
        target="/v1/chat/completions",
        headers=[("Host", "proxy.test"), ("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    writer.write(conn.send(head) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
    status, received = 0, bytearray()
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                received += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, bytes(received)
            else:
                raise AssertionError(f"unexpected {event!r}")
    finally:
        writer.close()
        await writer.wait_closed()


async def wave(port: int, first: int, count: int) -> List[Tuple[int, bytes]]:
    return await asyncio.wait_for(asyncio.gather(*(stream_chat(port, text_for(first + i)) for i in range(count))), 30)


def relay_path_bytes(snapshot: tracemalloc.Snapshot) -> int:
    return sum(
        stat.size
        for stat in snapshot.statistics("filename")
        if any(p in stat.traceback[0].filename for p in RELAY_PATH)
    )


def live_objects(proxy) -> dict:
    """Connection and exchange objects alive anywhere, and tasks on the proxy's loop."""
    from chatproxy.recorder.capture import Exchange, ExchangeCapture
    from chatproxy.server import ClientConnection
    from chatproxy.upstream import UpstreamConnection

    gc.collect()
    kinds = {ClientConnection: 0, UpstreamConnection: 0, ExchangeCapture: 0, Exchange: 0}
    for obj in gc.get_objects():
        kind = type(obj)
        if kind in kinds:
            kinds[kind] += 1
    counts = {kind.__name__: n for kind, n in kinds.items()}
    recorder = proxy.proxy.recorder
    counts["tasks"] = proxy.run(lambda: len(asyncio.all_tasks() - {asyncio.current_task()} - recorder.tasks))
    counts["upstream in use"] = proxy.run(lambda: proxy.proxy.pool.in_use)
    return counts


def back_to(baseline: dict, now: dict) -> bool:
    """Every count at its baseline. Pooled upstream connections are kept idle, up to one per chat that
    ran at once (a wave may leave a few more idle than the one before), and may expire meanwhile."""
    return all(now[k] <= max(v, CHATS) if k == "UpstreamConnection" else now[k] == v for k, v in baseline.items())


def settle(proxy) -> None:
    """Until every client connection's task has ended and the recorder has nothing pending."""
    server, recorder = proxy.proxy.server, proxy.proxy.recorder
    wait_until(
        lambda: proxy.run(lambda: not server.connections and not server._tasks and not recorder.pending),
        "connections and the recorder to settle",
    )


def drop_idle_upstream(proxy, upstream) -> None:
    """Close the pool's idle connections and wait for the fake backend to let go of its side of them:
    the memory compared below is then the relay's own, not the fake backend's per-connection state
    (it runs in this process, and its share varies with how many connections the pool kept)."""
    proxy.run(proxy.proxy.pool.close)
    upstream.wait_for_open_connections(0)


def test_200_concurrent_streams_no_loss_no_duplicates_no_cross_talk(upstream, proxy):
    upstream.push(*[Interleaved() for _ in range(WARM_UP + CHATS)])
    # A first wave fills the upstream pool and every cache, so the baseline is the steady state.
    assert all(status == 200 for status, _ in asyncio.run(wave(proxy.port, CHATS, WARM_UP)))
    proxy.wait_recorded(WARM_UP, timeout=10)
    settle(proxy)
    wait_until(
        lambda: live_objects(proxy)["Exchange"] == live_objects(proxy)["tasks"] == 0, "the first wave to be let go"
    )
    baseline_objects = live_objects(proxy)
    tracemalloc.start()
    try:
        drop_idle_upstream(proxy, upstream)
        gc.collect()
        baseline = tracemalloc.take_snapshot()
        started = time.monotonic()
        results = asyncio.run(wave(proxy.port, 0, CHATS))
        elapsed = time.monotonic() - started
        proxy.wait_recorded(WARM_UP + CHATS, timeout=10)
        settle(proxy)
        # Back to the baseline once the writer has finished its batch (it holds none while idle).
        wait_until(lambda: back_to(baseline_objects, live_objects(proxy)), f"live objects back to {baseline_objects}")
        drop_idle_upstream(proxy, upstream)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()

    # Every client got its own reply, whole.
    for i, (status, body) in enumerate(results):
        assert status == 200
        assert streamed_text(body) == "echo: " + text_for(i), f"chat {i} got someone else's stream"
        assert body.endswith(b"data: [DONE]\n\n")

    # Each chat is recorded exactly once, and its recorded reply is what its client received.
    records = journal(proxy)
    assert len(records) == WARM_UP + CHATS
    by_question = {}
    for record in records:
        question = record["messages"][0]["content"]
        assert question not in by_question, "a chat was recorded twice"
        by_question[question] = record["messages"][-1]["content"]
    for i, (_, body) in enumerate(results):
        assert by_question[text_for(i)] == streamed_text(body)
    assert len(proxy.dataset()) == WARM_UP + CHATS

    # Nothing per-connection or per-exchange outlived the load (checked above), nor its bytes: were
    # the relay path to keep even half of what passed through it, that would show here.
    assert baseline_objects["ClientConnection"] == baseline_objects["tasks"] == 0
    passed = sum(len(chat_body(text_for(i), stream=True)) + len(body) for i, (_, body) in enumerate(results))
    grown = relay_path_bytes(after) - relay_path_bytes(baseline)
    assert grown < passed // 2, (
        f"the relay path holds {grown} more bytes than before the load ({passed} passed through)"
    )
    assert elapsed < 10
