"""On recorded routes the proxy asks the backend only for codings its copy can decode (gzip,
deflate): a backend that honours `br` or `zstd` would be relayed but not recorded. This is the one
request header the proxy changes; other routes pass it untouched."""

from __future__ import annotations

import gzip
import http.client
import json

import pytest

from chatproxy import headers as hdr

from fake_upstream import Json

CHAT = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Hello, what is new?"}]}).encode()


@pytest.mark.parametrize(
    ("sent", "asked"),
    [
        (b"gzip, deflate, br, zstd", b"gzip, deflate"),
        (b"br;q=1.0, gzip;q=0.8, *;q=0.1", b"gzip;q=0.8, gzip;q=0.1, deflate;q=0.1"),
        (b"zstd", b"identity"),
        (b"identity", b"identity"),
        (b"GZIP", b"GZIP"),
    ],
)
def test_narrowed_to_what_zlib_reads(sent, asked):
    out = hdr.decodable_accept_encoding([(b"Host", b"x"), (b"Accept-Encoding", sent), (b"X-Other", b"br")])
    assert out == [(b"Host", b"x"), (b"Accept-Encoding", asked), (b"X-Other", b"br")]


def post(port: int, path: str, body: bytes, headers: dict) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("POST", path, body=body, headers=headers)
        return conn.getresponse().read()
    finally:
        conn.close()


def test_a_recorded_route_asks_for_gzip_and_records_the_gzipped_reply(upstream, proxy):
    reply = {"id": "c1", "model": "m", "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}}]}
    upstream.push(Json(gzip.compress(json.dumps(reply).encode()), headers=[("Content-Encoding", "gzip")]))
    body = post(proxy.port, "/v1/chat/completions", CHAT, {"Accept-Encoding": "zstd, br, gzip"})
    assert json.loads(gzip.decompress(body)) == reply  # relayed as the backend sent it
    assert upstream.requests[-1].header("accept-encoding") == "gzip"
    proxy.wait_recorded(1)
    assert proxy.dataset()[0]["conversations"][-1] == {"from": "gpt", "value": "Hello"}


def test_other_routes_keep_the_clients_header(upstream, proxy):
    upstream.push(Json({"ok": True}))
    post(proxy.port, "/v1/embeddings", b"{}", {"Accept-Encoding": "zstd, br, gzip"})
    assert upstream.requests[-1].header("accept-encoding") == "zstd, br, gzip"
