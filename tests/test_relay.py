"""Every route passes through unchanged: status, headers, bodies, framing, keep-alive, TLS."""

from __future__ import annotations

import http.client
import json
import ssl

import pytest

from conftest import raw_exchange
from fake_upstream import FakeUpstream, Json, Raw


def request(proxy, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response, data


def test_headers_pass_through_and_host_is_rewritten(upstream, proxy):
    response, _ = request(
        proxy,
        "GET",
        "/v1/models?limit=5",
        headers={
            "Authorization": "Bearer sk-abc",
            "x-api-key": "k",
            "OpenAI-Organization": "org-1",
            "X-Custom-Thing": "Keep Me",
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "drop me",
            "x-echo": "round trip",
        },
    )
    seen = upstream.requests[-1]
    assert seen.target == "/v1/models?limit=5"
    assert seen.header("host") == f"127.0.0.1:{upstream.port}"
    assert seen.header("authorization") == "Bearer sk-abc"
    assert seen.header("x-api-key") == "k"
    assert seen.header("openai-organization") == "org-1"
    assert ("X-Custom-Thing", "Keep Me") in seen.headers  # original case kept
    assert seen.header("x-hop") is None  # named in Connection: hop-by-hop
    assert response.getheader("x-echo") == "round trip"
    assert response.getheader("x-fake-upstream") == "1"


def test_status_reason_and_body_come_back_unchanged(upstream, proxy):
    body = json.dumps({"error": {"message": "nope", "type": "invalid_request_error"}}).encode()
    upstream.push(
        Raw(
            b"HTTP/1.1 418 I'm A Teapot\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\nX-Ratelimit-Remaining: 7\r\n\r\n"
            + body,
            close=False,
        )
    )
    response, data = request(proxy, "POST", "/v1/anything", body=b"{}", headers={"Content-Type": "application/json"})
    assert (response.status, response.reason) == (418, "I'm A Teapot")
    assert response.getheader("x-ratelimit-remaining") == "7"
    assert data == body


def test_options_preflight_and_unknown_routes_are_forwarded(upstream, proxy):
    upstream.push(
        Raw(
            b"HTTP/1.1 204 No Content\r\nAccess-Control-Allow-Origin: *\r\n"
            b"Access-Control-Allow-Headers: authorization, content-type\r\n\r\n",
            close=False,
        )
    )
    response, data = request(
        proxy,
        "OPTIONS",
        "/v1/chat/completions",
        headers={"Origin": "http://localhost:8000", "Access-Control-Request-Method": "POST"},
    )
    assert response.status == 204 and response.getheader("access-control-allow-origin") == "*"
    assert upstream.requests[-1].method == "OPTIONS"
    response, data = request(proxy, "DELETE", "/some/unknown/route")
    assert response.status == 404 and upstream.requests[-1].target == "/some/unknown/route"


def test_head_request_gets_headers_only(upstream, proxy):
    response, data = request(proxy, "HEAD", "/v1/models")
    assert response.status in (200, 404) and data == b""


def test_chunked_request_body_is_forwarded_whole(upstream, proxy):
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "chunked " * 1000}]}).encode()
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 1000]), body[i : i + 1000]) for i in range(0, len(body), 1000)
    )
    answer = raw_exchange(proxy.port, head + chunks + b"0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200")
    assert upstream.requests[-1].body == body
    proxy.wait_recorded(1)


def test_chunked_and_close_delimited_responses_reach_the_client(upstream, proxy):
    upstream.push(Json({"ok": 1}, chunked=True))
    response, data = request(proxy, "GET", "/v1/chunked")
    assert json.loads(data) == {"ok": 1}
    upstream.push(Raw(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end", close=True))
    response, data = request(proxy, "GET", "/v1/close-delimited")
    assert data == b"until the end"


def test_client_keep_alive_and_upstream_pool_reuse(upstream, proxy):
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    for i in range(5):
        conn.request(
            "POST",
            "/v1/chat/completions",
            body=json.dumps({"model": "m", "messages": [{"role": "user", "content": f"n{i}"}]}),
            headers={"Content-Type": "application/json"},
        )
        response = conn.getresponse()
        assert json.loads(response.read())["choices"][0]["message"]["content"] == f"echo: n{i}"
    conn.close()
    assert upstream.connections_opened == 1
    assert proxy.upstream_connections() == 1  # idle in the pool


@pytest.mark.parametrize(
    "base,path,sent",
    [
        ("/v1", "/v1/chat/completions", "/v1/chat/completions"),
        ("/v1", "/chat/completions", "/v1/chat/completions"),
        ("/api/v1", "/v1/models", "/api/v1/models"),
        ("/openai", "/v1/models", "/openai/v1/models"),
    ],
)
def test_target_path_is_joined_without_doubling(upstream, make_proxy, base, path, sent):
    proxy = make_proxy(upstream.url + base)
    request(proxy, "GET", path)
    assert upstream.requests[-1].target == sent


def test_upstream_down_gives_openai_style_502_naming_the_target(make_proxy):
    proxy = make_proxy("http://127.0.0.1:9")  # discard port: nothing listens
    response, data = request(proxy, "POST", "/v1/chat/completions", body=b"{}")
    error = json.loads(data)["error"]
    assert response.status == 502
    assert error["type"] == "proxy_error" and "127.0.0.1:9" in error["message"]


@pytest.fixture(scope="module")
def tls_material(tmp_path_factory):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_context)
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return server_context, str(ca_file)


def test_tls_upstream_verified_with_ca_file(make_proxy, tls_material):
    server_context, ca_file = tls_material
    with FakeUpstream(ssl_context=server_context) as tls_upstream:
        proxy = make_proxy(tls_upstream.url, ca_file=ca_file)
        for _ in range(3):
            response, data = request(proxy, "GET", "/v1/models")
            assert response.status == 200 and b"fake-model" in data
        assert tls_upstream.connections_opened == 1  # TLS handshake paid once


def test_tls_upstream_with_untrusted_certificate_is_refused_then_insecure_works(make_proxy, tls_material):
    server_context, _ = tls_material
    with FakeUpstream(ssl_context=server_context) as tls_upstream:
        proxy = make_proxy(tls_upstream.url)
        response, data = request(proxy, "GET", "/v1/models")
        assert response.status == 502 and b"certificate" in data
        insecure = make_proxy(tls_upstream.url, insecure=True, session="insecure")
        response, data = request(insecure, "GET", "/v1/models")
        assert response.status == 200


def test_idle_pooled_connections_are_closed_after_the_idle_time(upstream, make_proxy):
    """A burst leaves no sockets open for good: idle upstream connections close after pool_idle."""
    import dataclasses
    import time

    from conftest import TEST_TIMEOUTS

    proxy = make_proxy(upstream.url, timeouts=dataclasses.replace(TEST_TIMEOUTS, pool_idle=0.2))
    request(proxy, "GET", "/v1/models")
    assert proxy.upstream_connections() == 1
    deadline = time.monotonic() + 3
    while proxy.upstream_connections() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proxy.upstream_connections() == 0
    upstream.wait_for_open_connections(0)
