"""Client faults on loopback: clients that leave, crawl, pipeline, ask for 100-continue, send too much
or send garbage. Each checks the client's answer, the proxy's next request, leaks, and the journal."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
import threading
import time

import h11
import pytest

from conftest import TEST_TIMEOUTS, raw_exchange
from fake_upstream import SSE, Json, Stall
from support_faults import (
    H11Client,
    assert_no_leaks,
    assert_serves_next,
    chat_body,
    chunk_payload,
    journal,
    post_chat,
    replies,
    streamed_text,
    wait_until,
)

CHAT_HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy.test\r\nContent-Type: application/json\r\n"
SLOW_CLIENT = dataclasses.replace(TEST_TIMEOUTS, client_header=0.5, client_body=0.3)
MB = 1024 * 1024


def proxy_tasks(proxy) -> int:
    """Tasks alive on the proxy's loop, besides the one that counts them."""
    return proxy.run(lambda: len(asyncio.all_tasks()) - 1)


def assert_back_to_start(proxy, upstream, tasks: int) -> None:
    """Every socket the fault touched is closed and no task outlived it."""
    assert_no_leaks(proxy, upstream)
    wait_until(lambda: proxy_tasks(proxy) == tasks, f"proxy tasks back to {tasks}")


def long_stream(events: int = 40, gap: float = 0.05) -> SSE:
    return SSE([chunk_payload(f"w{i} ") for i in range(events)] + [chunk_payload(None, "stop"), b"[DONE]"], gap=gap)


# -- clients that leave ---------------------------------------------------------------------


def test_disconnect_before_sending_the_body_closes_the_upstream_request(upstream, proxy):
    tasks = proxy_tasks(proxy)
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(CHAT_HEAD + b"Content-Length: 100\r\n\r\n")
        wait_until(lambda: upstream.open_connections == 1, "the proxy to open the upstream request")
    upstream.wait_for_open_connections(0)
    assert upstream.requests == []  # the backend never got a whole request
    assert_back_to_start(proxy, upstream, tasks)
    assert_serves_next(proxy)
    proxy.wait_recorded(1)
    assert replies(journal(proxy)) == ["echo: still alive?"]


def test_disconnect_mid_body_closes_the_upstream_request(upstream, proxy):
    tasks = proxy_tasks(proxy)
    body = chat_body("x" * 5000)
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(CHAT_HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body[:2000])
        wait_until(lambda: upstream.open_connections == 1, "the proxy to open the upstream request")
    upstream.wait_for_open_connections(0)
    assert upstream.requests == []
    assert_back_to_start(proxy, upstream, tasks)
    assert_serves_next(proxy)


def test_disconnect_while_waiting_for_the_response_cancels_the_upstream_request(upstream, proxy):
    tasks = proxy_tasks(proxy)
    upstream.push(Stall(10))
    with H11Client(proxy.port) as client:
        client.send_request("POST", "/v1/chat/completions", chat_body("slow"), [("Content-Type", "application/json")])
        upstream.wait_for_requests(1)
    started = time.monotonic()
    upstream.wait_for_open_connections(0)
    assert time.monotonic() - started < 1  # cancelled, not left to the 10 s stall
    assert_back_to_start(proxy, upstream, tasks)
    assert_serves_next(proxy)
    proxy.wait_recorded(1)
    assert replies(journal(proxy)) == ["echo: still alive?"]


def test_disconnect_mid_stream_cancels_the_upstream_stream(upstream, proxy):
    """The stream would run 2 s; the upstream connection closes as soon as the client has gone, and
    what the client had received is journaled as an incomplete reply."""
    tasks = proxy_tasks(proxy)
    upstream.push(long_stream())
    with H11Client(proxy.port) as client:
        client.send_request("POST", "/v1/chat/completions", chat_body("go on", stream=True))
        assert client.next_event().status_code == 200
        first = client.next_event()
        assert isinstance(first, h11.Data) and b"w0" in first.data
    started = time.monotonic()
    upstream.wait_for_open_connections(0)
    assert time.monotonic() - started < 1
    assert_back_to_start(proxy, upstream, tasks)
    proxy.wait_recorded(1)
    [record] = journal(proxy)
    assert record["meta"]["complete"] is False
    assert record["messages"][-1]["content"].startswith("w0 ")
    assert_serves_next(proxy)


def test_client_that_stops_reading_is_dropped_after_the_write_timeout(upstream, make_proxy):
    """A client that keeps its socket open but never reads cannot pin the upstream forever."""
    proxy = make_proxy(upstream.url, timeouts=dataclasses.replace(TEST_TIMEOUTS, client_write=0.3))
    tasks = proxy_tasks(proxy)
    big = b"x" * (4 * MB)
    upstream.push(SSE([big] * 8))
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        body = chat_body("flood me", stream=True)
        sock.sendall(CHAT_HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        upstream.wait_for_open_connections(0, timeout=3)
        wait_until(lambda: proxy.client_connections() == 0, "the stuck client to be dropped")
    assert_back_to_start(proxy, upstream, tasks)
    assert_serves_next(proxy)


# -- slow clients ---------------------------------------------------------------------------


def _trickle(sock: socket.socket, data: bytes, every: float, stop: threading.Event) -> None:
    for i in range(len(data)):
        if stop.wait(every):
            return
        try:
            sock.sendall(data[i : i + 1])
        except OSError:
            return


def _trickled_reply(port: int, before: bytes, trickled: bytes) -> tuple:
    """Send `before` at once, then `trickled` a byte per 0.1 s; the proxy's answer and its delay."""
    stop = threading.Event()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(before)
        started = time.monotonic()
        feeder = threading.Thread(target=_trickle, args=(sock, trickled, 0.1, stop))
        feeder.start()
        answer = read_until_closed(sock)
        elapsed = time.monotonic() - started
        stop.set()
        feeder.join()
    return answer, elapsed


def test_slowloris_request_head_gets_408(upstream, make_proxy):
    """The head must be complete within client_header of its first byte, however steadily it drips."""
    proxy = make_proxy(upstream.url, timeouts=SLOW_CLIENT)
    tasks = proxy_tasks(proxy)
    answer, elapsed = _trickled_reply(
        proxy.port, b"P", b"OST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 100
    )
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert 0.4 < elapsed < 1.5
    assert upstream.requests == [] and upstream.connections_opened == 0
    assert_back_to_start(proxy, upstream, tasks)
    assert_serves_next(proxy)


def test_slowloris_request_body_gets_408_and_the_upstream_request_is_closed(upstream, make_proxy):
    proxy = make_proxy(upstream.url, timeouts=SLOW_CLIENT)
    tasks = proxy_tasks(proxy)
    body = chat_body("drip")
    head = CHAT_HEAD + b"Content-Length: %d\r\n\r\n" % len(body)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(head + body[:10])  # then silence longer than client_body
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"request body not received in time" in answer
    upstream.wait_for_open_connections(0)
    assert upstream.requests == []
    assert_back_to_start(proxy, upstream, tasks)
    assert_serves_next(proxy)


def test_idle_keep_alive_connection_is_closed_quietly(upstream, make_proxy):
    """A client that says nothing after its response gets no 408, just a close."""
    proxy = make_proxy(upstream.url, timeouts=dataclasses.replace(TEST_TIMEOUTS, client_idle=0.2))
    with H11Client(proxy.port) as client:
        assert client.request("GET", "/v1/models").status == 200
        assert client.at_eof(timeout=2)
    wait_until(lambda: proxy.client_connections() == 0, "the idle connection to close")


# -- protocol features ----------------------------------------------------------------------


def test_pipelined_requests_are_answered_in_order(upstream, proxy):
    bodies = [chat_body(f"pipelined {i}", stream=(i == 1)) for i in range(3)]
    wire = (
        b"".join(CHAT_HEAD + b"Content-Length: %d\r\n\r\n" % len(b) + b for b in bodies)
        + b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    with H11Client(proxy.port) as client:
        client.sock.sendall(wire)
        got = []
        for _ in range(4):
            for event in [h11.Request(method="GET", target="/", headers=[("Host", "x")]), h11.EndOfMessage()]:
                client.conn.send(event)  # keep the client state machine in step; bytes already sent
            got.append(client.read_reply())
            client.next_cycle()
    assert [r.status for r in got] == [200, 200, 200, 200]
    assert got[0].json()["choices"][0]["message"]["content"] == "echo: pipelined 0"
    assert streamed_text(got[1].body) == "echo: pipelined 1"
    assert got[2].json()["choices"][0]["message"]["content"] == "echo: pipelined 2"
    assert got[3].json()["data"][0]["id"] == "fake-model"
    proxy.wait_recorded(3)
    assert sorted(replies(journal(proxy))) == ["echo: pipelined 0", "echo: pipelined 1", "echo: pipelined 2"]


def test_expect_100_continue_is_answered_by_the_proxy(upstream, proxy):
    body = chat_body("continue?")
    with H11Client(proxy.port) as client:
        client.send(
            h11.Request(
                method="POST",
                target="/v1/chat/completions",
                headers=[("Host", "x"), ("Content-Length", str(len(body))), ("Expect", "100-continue")],
            )
        )
        informational = client.next_event()
        assert isinstance(informational, h11.InformationalResponse) and informational.status_code == 100
        client.send(h11.Data(data=body), h11.EndOfMessage())
        reply = client.read_reply()
    assert reply.status == 200 and reply.json()["choices"][0]["message"]["content"] == "echo: continue?"
    assert upstream.requests[0].header("expect") is None
    assert upstream.requests[0].body == body


def test_expect_100_continue_with_a_body_over_the_limit_gets_413_without_100(upstream, make_proxy):
    proxy = make_proxy(upstream.url, max_body=1000)
    with H11Client(proxy.port) as client:
        client.send(
            h11.Request(
                method="POST",
                target="/v1/chat/completions",
                headers=[("Host", "x"), ("Content-Length", "5000"), ("Expect", "100-continue")],
            )
        )
        reply = client.read_reply()
        assert reply.informational == [] and reply.status == 413
        assert client.at_eof()
    assert upstream.connections_opened == 0
    assert_serves_next(proxy)


# -- too much ---------------------------------------------------------------------------------


def _send_body_and_read(port: int, head: bytes, body: bytes) -> bytes:
    """Send head and body from one thread while reading the answer in this one, as a real client
    whose upload is cut short would; the answer must arrive even though the upload failed."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head)

        def upload() -> None:
            try:
                sock.sendall(body)
            except OSError:
                pass

        sender = threading.Thread(target=upload)
        sender.start()
        answer = read_until_closed(sock)
        try:
            sock.shutdown(socket.SHUT_RDWR)  # unblocks the upload if it is still stuck
        except OSError:
            pass
        sender.join()
    return answer


def test_50_mb_body_over_max_body_gets_413_by_content_length(upstream, make_proxy):
    proxy = make_proxy(upstream.url, max_body=10 * MB)
    tasks = proxy_tasks(proxy)
    body = b"x" * (50 * MB)
    answer = _send_body_and_read(proxy.port, CHAT_HEAD + b"Content-Length: %d\r\n\r\n" % len(body), body)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"--max-body" in answer
    assert upstream.connections_opened == 0
    assert_back_to_start(proxy, upstream, tasks)
    assert_serves_next(proxy)


def test_50_mb_chunked_body_over_max_body_gets_413_mid_body(upstream, make_proxy):
    proxy = make_proxy(upstream.url, max_body=10 * MB)
    tasks = proxy_tasks(proxy)
    piece = b"x" * MB
    chunked = (b"%x\r\n%s\r\n" % (len(piece), piece)) * 50 + b"0\r\n\r\n"
    answer = _send_body_and_read(proxy.port, CHAT_HEAD + b"Transfer-Encoding: chunked\r\n\r\n", chunked)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    upstream.wait_for_open_connections(0)
    assert upstream.requests == []  # the backend never got the (partial) request as a whole
    assert_back_to_start(proxy, upstream, tasks)
    assert_serves_next(proxy)


def test_50_mb_body_under_max_body_is_relayed_intact(upstream, proxy):
    """The default --max-body is generous: a 50 MB request goes through byte for byte."""
    body = json.dumps({"input": "y" * (50 * MB)}).encode()
    upstream.push(Json({"ok": True}))
    with H11Client(proxy.port, timeout=10) as client:
        reply = client.request("POST", "/v1/embeddings", body)
    assert reply.status == 200
    assert upstream.requests[0].body == body


def test_head_over_h11_limit_gets_431(upstream, proxy):
    """Whether the oversized head arrives in one read or in many, it is refused, never relayed."""
    for wire in (
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
        b"GET /v1/models?" + b"q" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + b"X-Many: b\r\n" * 2000 + b"\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Huge: " + b"a" * 100_000 + b"\r\n\r\n",
    ):
        answer = raw_exchange(proxy.port, wire)
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    # Just under the limit is fine.
    answer = raw_exchange(
        proxy.port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: " + b"a" * 15000 + b"\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert upstream.requests[0].header("x-big") == "a" * 15000
    assert len(upstream.requests) == 1
    assert_serves_next(proxy)


def test_malformed_request_line_gets_400(upstream, proxy):
    for wire in [b"GARBAGE\r\n\r\n", b"GET /\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"]:
        answer = raw_exchange(proxy.port, wire)
        assert answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 505 ")), (wire, answer[:80])
    assert upstream.connections_opened == 0
    assert_serves_next(proxy)


# -- odd JSON ---------------------------------------------------------------------------------


def test_invalid_utf8_in_messages_is_relayed_byte_for_byte_and_not_recorded(upstream, proxy, caplog):
    caplog.set_level(logging.WARNING, logger="chatproxy")
    body = b'{"model": "m", "messages": [{"role": "user", "content": "caf\xe9 \xff\xfe"}]}'
    upstream.push(
        Json({"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]})
    )
    with H11Client(proxy.port) as client:
        reply = client.request("POST", "/v1/chat/completions", body, [("Content-Type", "application/json")])
    assert reply.status == 200
    assert upstream.requests[0].body == body
    assert_serves_next(proxy)
    proxy.wait_recorded(1)
    assert replies(journal(proxy)) == ["echo: still alive?"]
    assert "request body is not valid JSON" in caplog.text


@pytest.mark.parametrize("where", ["content", "tools", "response"])
def test_deeply_nested_json_is_relayed_and_the_recorder_keeps_working(upstream, proxy, where):
    """Nesting deeper than Python's recursion limit (or just under it) must not stop the writer."""
    for depth in (990, 100_000):
        nested = "[" * depth + "]" * depth
        reply_obj = (
            '{"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]}'
        )
        request = '{"model": "m", "messages": [{"role": "user", "content": "deep"}]}'
        if where == "content":
            request = '{"model": "m", "messages": [{"role": "user", "content": %s}]}' % nested
        elif where == "tools":
            request = '{"model": "m", "messages": [{"role": "user", "content": "deep"}], "tools": %s}' % nested
        else:
            reply_obj = reply_obj[:-1] + ', "usage": %s}' % nested
        upstream.push(Json(reply_obj.encode()))
        with H11Client(proxy.port) as client:
            reply = client.request("POST", "/v1/chat/completions", request.encode())
        assert (reply.status, reply.body) == (200, reply_obj.encode())
    assert_serves_next(proxy, "after the deep ones")
    wait_until(lambda: "echo: after the deep ones" in replies(journal(proxy)), "the next chat to be recorded")


def test_huge_message_is_relayed_and_recorded(upstream, proxy):
    text = "long " * (2 * MB)
    reply = post_chat(proxy.port, text)
    assert reply.status == 200
    assert reply.json()["choices"][0]["message"]["content"] == "echo: " + text
    proxy.wait_recorded(1)
    [record] = journal(proxy)
    assert record["messages"][0]["content"] == text.strip() or record["messages"][0]["content"] == text


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the proxy sends until it closes (or resets) the connection."""
    answer = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return answer
            answer += chunk
    except ConnectionResetError:
        return answer
