"""Upstream faults on loopback: each checks what the client saw, that the proxy serves the next
request, that no connection leaked, and exactly which records the journal holds."""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import threading
import time

import pytest

from conftest import TEST_TIMEOUTS
from fake_upstream import SSE, Json, Raw, Reset, Stall
from support_faults import (
    SSE_HEAD,
    assert_no_leaks,
    assert_serves_next,
    chunk_payload,
    http_chunk,
    journal,
    json_head,
    post_chat,
    replies,
    sse_event,
    streamed_text,
)

SHORT_READ = dataclasses.replace(TEST_TIMEOUTS, upstream_read=0.3)
ERROR_BODY = b'{"error": {"message": "model overloaded", "type": "server_error", "param": null, "code": null}}'
STREAM_START = [chunk_payload("Hel"), chunk_payload("lo ")]
STREAM_START_BYTES = b"".join(sse_event(p) for p in STREAM_START)


def error_of(reply) -> dict:
    return json.loads(reply.body)["error"]


# -- no response at all ---------------------------------------------------------------------


def test_refused_connection_is_a_502_and_the_backend_is_used_once_it_is_back(make_proxy):
    """Nothing listening: 502 with an OpenAI-style error; once the backend listens, requests go through."""
    backend = socket.socket()
    backend.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    port = backend.getsockname()[1]
    proxy = make_proxy(f"http://127.0.0.1:{port}")
    try:
        reply = post_chat(proxy.port, "anyone there?")
        assert reply.status == 502 and reply.complete
        assert reply.header("connection") == b"close"
        assert error_of(reply)["code"] == "upstream_unreachable"
        assert "Connection refused" in error_of(reply)["message"]

        backend.listen()
        answer = b'{"ok": true}'
        served = threading.Thread(target=_answer_once, args=(backend, json_head(len(answer)) + answer))
        served.start()
        reply = post_chat(proxy.port, "and now?")
        served.join(5)
        assert (reply.status, reply.body) == (200, answer)
    finally:
        backend.close()
    assert proxy.run(lambda: proxy.proxy.pool._in_use) == 0
    assert journal(proxy) == []  # {"ok": true} holds no reply: nothing to record


def _answer_once(listener: socket.socket, response: bytes) -> None:
    conn, _ = listener.accept()
    with conn:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")))
        while len(body) < length:
            body += conn.recv(65536)
        conn.sendall(response)


def test_reset_before_headers_is_a_502(upstream, proxy):
    upstream.push(Reset())
    reply = post_chat(proxy.port, "hello")
    assert reply.status == 502
    assert error_of(reply)["code"] == "upstream_closed"
    assert_no_leaks(proxy, upstream)
    assert_serves_next(proxy)
    proxy.wait_recorded(1)
    assert replies(journal(proxy)) == ["echo: still alive?"]


def test_stale_pooled_connection_is_retried_once_on_a_new_one(upstream, proxy):
    """A kept-alive socket that dies before any response byte is not the client's problem."""
    assert post_chat(proxy.port, "first").status == 200
    upstream.push(Reset())
    reply = post_chat(proxy.port, "second")
    assert reply.status == 200 and reply.json()["choices"][0]["message"]["content"] == "echo: second"
    assert [r.json()["messages"][0]["content"] for r in upstream.requests] == ["first", "second", "second"]
    proxy.wait_recorded(2)
    assert replies(journal(proxy)) == ["echo: first", "echo: second"]
    assert_no_leaks(proxy, upstream)


def test_stall_before_headers_is_a_504(upstream, make_proxy):
    proxy = make_proxy(upstream.url, timeouts=SHORT_READ)
    upstream.push(Stall(5))
    started = time.monotonic()
    reply = post_chat(proxy.port, "think hard")
    assert time.monotonic() - started < 2
    assert reply.status == 504 and error_of(reply)["code"] == "upstream_timeout"
    upstream.wait_for_open_connections(0)  # the stalled connection was closed, not pooled
    assert_serves_next(proxy)
    assert_no_leaks(proxy, upstream)
    proxy.wait_recorded(1)
    assert len(journal(proxy)) == 1


def test_malformed_status_line_is_a_502(upstream, proxy):
    upstream.push(Raw(b"HTTP/1.1 OK-ish\r\nContent-Length: 2\r\n\r\nhi"))
    reply = post_chat(proxy.port, "hello")
    assert reply.status == 502 and error_of(reply)["code"] == "upstream_bad_response"
    assert_no_leaks(proxy, upstream)
    assert_serves_next(proxy)
    proxy.wait_recorded(1)
    assert len(journal(proxy)) == 1


def test_garbage_instead_of_http_is_a_502(upstream, proxy):
    upstream.push(Raw(b"\x00\x01 SSH-2.0-OpenSSH\r\n\r\n"))
    reply = post_chat(proxy.port, "hello")
    assert reply.status == 502 and error_of(reply)["code"] == "upstream_bad_response"
    assert_serves_next(proxy)
    assert_no_leaks(proxy, upstream)


# -- the response breaks off ----------------------------------------------------------------


def test_reset_mid_body_cuts_the_client_off_and_records_nothing(upstream, proxy):
    body = json.dumps({"choices": [{"message": {"role": "assistant", "content": "x" * 500}}]}).encode()
    upstream.push(Reset(after=json_head(len(body)) + body[:100]))
    reply = post_chat(proxy.port, "hello")
    assert reply.status == 200
    assert (reply.body, reply.complete) == (body[:100], False)
    assert_no_leaks(proxy, upstream)
    assert_serves_next(proxy)
    proxy.wait_recorded(1)
    assert replies(journal(proxy)) == ["echo: still alive?"]


def test_reset_mid_stream_cuts_the_client_off_and_records_an_incomplete_reply(upstream, proxy):
    """The client gets every event sent before the reset, then a cut; the journal keeps the partial
    reply marked incomplete, and the ShareGPT dataset leaves it out (no --keep-incomplete)."""
    wire = SSE_HEAD + b"".join(http_chunk(sse_event(p)) for p in STREAM_START)
    upstream.push(Reset(after=wire))
    reply = post_chat(proxy.port, "hello", stream=True)
    assert (reply.status, reply.body, reply.complete) == (200, STREAM_START_BYTES, False)
    proxy.wait_recorded(1)
    [record] = journal(proxy)
    assert record["messages"][-1]["content"] == "Hello "
    assert record["meta"]["complete"] is False
    assert proxy.dataset() == []
    assert_no_leaks(proxy, upstream)
    assert_serves_next(proxy)


def test_stall_between_events_cuts_the_stream(upstream, make_proxy):
    proxy = make_proxy(upstream.url, timeouts=SHORT_READ)
    wire = SSE_HEAD + b"".join(http_chunk(sse_event(p)) for p in STREAM_START)
    upstream.push(Stall(5, after=wire))
    started = time.monotonic()
    reply = post_chat(proxy.port, "hello", stream=True)
    assert time.monotonic() - started < 2
    assert (reply.status, reply.body, reply.complete) == (200, STREAM_START_BYTES, False)
    upstream.wait_for_open_connections(0)
    proxy.wait_recorded(1)
    assert [(r["messages"][-1]["content"], r["meta"]["complete"]) for r in journal(proxy)] == [("Hello ", False)]
    assert_serves_next(proxy)
    assert_no_leaks(proxy, upstream)


def test_slow_stream_within_the_timeout_is_not_cut(upstream, make_proxy):
    """The read timeout is per read, not per response: a long stream with short gaps is fine."""
    proxy = make_proxy(upstream.url, timeouts=SHORT_READ)
    payloads = [chunk_payload(c) for c in "abcdef"] + [chunk_payload(None, "stop"), b"[DONE]"]
    upstream.push(SSE(payloads, gap=0.1))
    reply = post_chat(proxy.port, "slowly", stream=True)
    assert reply.complete and streamed_text(reply.body) == "abcdef"
    proxy.wait_recorded(1)
    assert [r["meta"]["complete"] for r in journal(proxy)] == [True]


# -- unusual but valid responses ------------------------------------------------------------


def test_close_delimited_response_is_relayed_whole_and_recorded(upstream, proxy):
    """No Content-Length, no chunking: the body ends when upstream closes; the client gets it chunked."""
    body = json.dumps(
        {
            "model": "m",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "until close"}, "finish_reason": "stop"}
            ],
        }
    ).encode()
    upstream.push(Raw(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + body))
    reply = post_chat(proxy.port, "hello")
    assert (reply.status, reply.body, reply.complete) == (200, body, True)
    assert reply.header("transfer-encoding") == b"chunked"
    proxy.wait_recorded(1)
    assert [(r["messages"][-1]["content"], r["meta"]["complete"]) for r in journal(proxy)] == [("until close", True)]
    upstream.wait_for_open_connections(0)  # a close-delimited connection is never pooled
    assert_serves_next(proxy)
    assert_no_leaks(proxy, upstream)


def test_close_delimited_stream_is_relayed_whole_and_recorded(upstream, proxy):
    events = [chunk_payload("a"), chunk_payload("b"), chunk_payload(None, "stop"), b"[DONE]"]
    body = b"".join(sse_event(p) for p in events)
    upstream.push(Raw(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + body))
    reply = post_chat(proxy.port, "hello", stream=True)
    assert (reply.status, reply.body, reply.complete) == (200, body, True)
    proxy.wait_recorded(1)
    assert [(r["messages"][-1]["content"], r["meta"]["complete"]) for r in journal(proxy)] == [("ab", True)]
    assert_no_leaks(proxy, upstream)


def test_invalid_json_on_a_completion_route_is_relayed_and_not_recorded(upstream, proxy, caplog):
    caplog.set_level(logging.WARNING, logger="chatproxy")
    upstream.push(Json(b'{"choices": [{"message": oops'))
    reply = post_chat(proxy.port, "hello")
    assert (reply.status, reply.body, reply.complete) == (200, b'{"choices": [{"message": oops', True)
    assert_serves_next(proxy)
    proxy.wait_recorded(1)
    assert replies(journal(proxy)) == ["echo: still alive?"]
    assert "response body is not valid JSON" in caplog.text
    assert proxy.run(lambda: proxy.proxy.recorder.counts["unrecordable"]) == 1


@pytest.mark.parametrize("status", [400, 401, 404, 422, 500, 502, 503])
def test_error_status_with_json_body_is_relayed_unchanged_and_not_recorded(upstream, proxy, status):
    upstream.push(Json(ERROR_BODY, status=status, headers=[("x-request-id", "req-123")]))
    reply = post_chat(proxy.port, "hello")
    assert (reply.status, reply.body, reply.complete) == (status, ERROR_BODY, True)
    assert reply.header("content-type") == b"application/json"
    assert reply.header("x-request-id") == b"req-123"
    assert_serves_next(proxy)
    proxy.wait_recorded(1)
    assert replies(journal(proxy)) == ["echo: still alive?"]
    assert_no_leaks(proxy, upstream)


def test_error_status_on_a_stream_request_is_relayed_and_not_recorded(upstream, proxy):
    upstream.push(Json(ERROR_BODY, status=500, chunked=True))
    reply = post_chat(proxy.port, "hello", stream=True)
    assert (reply.status, reply.body, reply.complete) == (500, ERROR_BODY, True)
    assert_serves_next(proxy)
    proxy.wait_recorded(1)
    assert len(journal(proxy)) == 1


def test_429_with_retry_after_is_relayed_unchanged(upstream, proxy):
    body = b'{"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}'
    headers = [("Retry-After", "7"), ("x-ratelimit-remaining-requests", "0"), ("x-ratelimit-reset-requests", "6.5s")]
    upstream.push(Json(body, status=429, headers=headers))
    reply = post_chat(proxy.port, "hello")
    assert (reply.status, reply.body) == (429, body)
    sent = [(k.decode().lower(), v.decode()) for k, v in reply.headers]
    for name, value in headers:
        assert (name.lower(), value) in sent
    assert len(upstream.requests) == 1  # the proxy does not retry on the client's behalf
    assert_serves_next(proxy)
    proxy.wait_recorded(1)
    assert len(journal(proxy)) == 1
    assert_no_leaks(proxy, upstream)
