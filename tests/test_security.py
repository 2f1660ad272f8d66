"""Security: where the proxy listens, the optional proxy key, private files, secrets kept out of
files and logs, and refusing smuggling, response splitting and open-proxy requests."""

from __future__ import annotations

import base64
import json
import logging
import stat
import sys

import pytest

from chatproxy import cli
from chatproxy.config import DEFAULT_HOST, Config, parse_target

from conftest import raw_exchange
from fake_upstream import Json, Raw
from subproc import ROOT, ProxyProcess
from support_faults import H11Client, assert_serves_next, chat_body, journal, post_chat, request, wait_until

UPSTREAM_KEY = "sk-upstream-secret-0123456789"
PROXY_KEY = "proxy-secret-abcdef"
SECRETS = {
    "Authorization": "Bearer " + UPSTREAM_KEY,
    "X-Api-Key": "xak-secret-4242",
    "api-key": "azure-secret-9999",
    "OpenAI-Organization": "org-secret-1111",
    "OpenAI-Project": "proj-secret-2222",
    "Cookie": "session=cookie-secret-3333",
    "Proxy-Authorization": "Basic cHJveHktc2VjcmV0",
    "x-goog-api-key": "goog-secret-6666",
    "Ocp-Apim-Subscription-Key": "apim-secret-8888",
}
QUERY_SECRET = "query-secret-1234"  # Gemini-style ?key= in the request target
RESPONSE_SECRET = "set-cookie-secret-5555"


# -- where it listens ---------------------------------------------------------------------------


def run_proxy(*args: str) -> ProxyProcess:
    proxy = ProxyProcess([sys.executable, "-m", "chatproxy", "--port", "0", *args], cwd=ROOT)
    proxy.wait_started()
    return proxy


def stop(proxy: ProxyProcess) -> str:
    """SIGTERM (a clean stop exits 0) and everything the proxy wrote to stderr."""
    assert proxy.stop() == 0
    return "\n".join(proxy.lines)


def test_listens_on_loopback_by_default(upstream, tmp_path):
    assert DEFAULT_HOST == "127.0.0.1"
    with run_proxy("--target", upstream.url, "--datasets", str(tmp_path / "d")) as proxy:
        assert proxy.url.startswith("http://127.0.0.1:")
        assert post_chat(proxy.port, "hello").status == 200
        output = stop(proxy)
    assert "anyone who can reach this port" not in output


def test_non_loopback_address_prints_a_warning(upstream, tmp_path):
    with run_proxy("--target", upstream.url, "--host", "0.0.0.0", "--datasets", str(tmp_path / "d")) as proxy:
        output = stop(proxy)
    assert "warning: listening on 0.0.0.0: anyone who can reach this port can use the backend with the key" in output
    assert "set --proxy-key" in output


@pytest.mark.parametrize(
    "host, warned",
    [
        ("127.0.0.1", False),
        ("127.3.2.1", False),
        ("::1", False),
        ("localhost", False),
        ("0.0.0.0", True),
        ("::", True),
        ("192.168.1.20", True),
        ("example.org", True),
    ],
)
def test_exposure_warning_depends_on_the_address(host, warned, caplog):
    caplog.set_level(logging.WARNING, logger="chatproxy")
    cli._warn_about_exposure(Config(target=parse_target("http://127.0.0.1:9"), host=host))
    assert ("anyone who can reach this port" in caplog.text) is warned


def test_warning_does_not_suggest_a_proxy_key_when_one_is_set(caplog):
    caplog.set_level(logging.WARNING, logger="chatproxy")
    cli._warn_about_exposure(Config(target=parse_target("http://127.0.0.1:9"), host="0.0.0.0", proxy_key="k"))
    assert "anyone who can reach this port" in caplog.text and "set --proxy-key" not in caplog.text


# -- the proxy key ------------------------------------------------------------------------------


@pytest.fixture
def keyed(upstream, make_proxy):
    return make_proxy(upstream.url, proxy_key=PROXY_KEY)


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [("Authorization", "Bearer " + UPSTREAM_KEY)],
        [("X-Chatproxy-Key", "wrong")],
        [("X-Chatproxy-Key", PROXY_KEY[:-1])],
        [("Authorization", "Bearer " + PROXY_KEY + "x")],
        [("Authorization", "Basic " + PROXY_KEY)],
        [("X-Chatproxy-Key", "wrong"), ("Authorization", "Bearer " + PROXY_KEY)],  # a wrong key is not rescued
    ],
    ids=["none", "upstream key only", "wrong header", "prefix", "wrong bearer", "not bearer", "wrong header + bearer"],
)
def test_requests_without_the_proxy_key_get_401_and_never_reach_upstream(upstream, keyed, headers):
    reply = post_chat(keyed.port, "let me in", headers=headers)
    assert reply.status == 401
    assert reply.json()["error"]["code"] == "request_rejected"
    assert upstream.connections_opened == 0


def test_proxy_key_header_is_stripped_and_the_frontend_key_passes_through(upstream, keyed):
    reply = post_chat(
        keyed.port, "hi", headers=[("X-Chatproxy-Key", PROXY_KEY), ("Authorization", "Bearer " + UPSTREAM_KEY)]
    )
    assert reply.status == 200
    seen = upstream.requests[-1]
    assert seen.header("authorization") == "Bearer " + UPSTREAM_KEY
    assert seen.header("x-chatproxy-key") is None
    assert all(PROXY_KEY not in value for _, value in seen.headers)


def test_proxy_key_as_bearer_is_accepted_and_not_forwarded(upstream, keyed):
    """The Bearer form carries the proxy's key, not the backend's: the backend must never see it."""
    reply = post_chat(keyed.port, "hi", headers=[("Authorization", "Bearer " + PROXY_KEY)])
    assert reply.status == 200
    seen = upstream.requests[-1]
    assert seen.header("authorization") is None
    assert all(PROXY_KEY not in value for _, value in seen.headers)
    keyed.wait_recorded(1)


def test_status_page_needs_the_proxy_key_too(upstream, keyed):
    assert request(keyed.port, "GET", "/_chatproxy/status").status == 401
    assert request(keyed.port, "GET", "/_chatproxy/status", headers=[("X-Chatproxy-Key", PROXY_KEY)]).status == 200


# -- files ---------------------------------------------------------------------------------------


PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 32).decode()


def test_dataset_files_are_0600_and_folders_0700(upstream, make_proxy, tmp_path):
    proxy = make_proxy(upstream.url, datasets=tmp_path / "new" / "datasets")
    body = {
        "model": "m",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG}},
                ],
            }
        ],
    }
    with H11Client(proxy.port) as client:
        assert client.request("POST", "/v1/chat/completions", json.dumps(body).encode()).status == 200
    proxy.wait_recorded(1)
    proxy.flush()
    folder = proxy.datasets
    found = {p.relative_to(folder).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*")}
    found["."] = stat.S_IMODE(folder.stat().st_mode)
    assert {name for name, mode in found.items() if name.endswith((".json", ".jsonl", ".lock", ".png"))} == {
        "test-session.json",
        "test-session.jsonl",
        "test-session.lock",
        next(n for n in found if n.endswith(".png")),
    }
    for name, mode in found.items():
        expected = 0o700 if (folder / name).is_dir() else 0o600
        assert mode == expected, (name, oct(mode))


def test_secrets_never_reach_files_or_debug_logs(upstream, make_proxy, caplog):
    """With debug logging on, exchange heads are logged, and every secret header shows as ***."""
    caplog.set_level(logging.DEBUG, logger="chatproxy")
    proxy = make_proxy(upstream.url)
    upstream.push(
        Json(
            {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]},
            headers=[("Set-Cookie", "s=" + RESPONSE_SECRET)],
        )
    )
    headers = list(SECRETS.items()) + [("X-Chatproxy-Key", "unused-key-7777"), ("X-Chatproxy-Tags", "visible-tag")]
    assert post_chat(proxy.port, "tell no one", headers=headers).status == 200
    proxy.wait_recorded(1)
    proxy.flush()
    assert upstream.requests[-1].header("authorization") == "Bearer " + UPSTREAM_KEY  # still forwarded
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any(line.startswith("-> POST /v1/chat/completions") and "visible-tag" in line for line in debug), debug
    assert any(line.startswith("<- 200") for line in debug), debug
    assert "'***'" in caplog.text
    secrets = [v.split(" ", 1)[-1].split("=", 1)[-1] for v in SECRETS.values()] + [RESPONSE_SECRET, "unused-key-7777"]
    for secret in secrets:
        assert secret not in caplog.text
        for path in proxy.datasets.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), (secret, path)


def test_debug_flag_logs_masked_heads(upstream, tmp_path):
    """The real --debug switch, end to end: heads and bodies on stderr, no secret among them."""
    with run_proxy("--target", upstream.url, "--debug", "--datasets", str(tmp_path / "d"), "--session", "dbg") as proxy:
        assert post_chat(proxy.port, "debug me", headers=list(SECRETS.items())).status == 200
        proxy.wait_for("recorded dbg: ")
        target = f"/v1/chat/completions?alt=sse&key={QUERY_SECRET}"
        body = chat_body("query key", False)
        assert request(proxy.port, "POST", target, body, [("Content-Type", "application/json")]).status == 200
        proxy.wait_for("echo: query key")
        output = stop(proxy)
    assert "?alt=sse&key=***" in output and QUERY_SECRET not in output
    assert "-> POST /v1/chat/completions" in output and "<- 200" in output
    assert "debug me" in output  # the request body
    assert "echo: debug me" in output  # the response body
    for value in SECRETS.values():
        assert value.split(" ", 1)[-1] not in output


# -- smuggling, splitting, open proxy -------------------------------------------------------------


@pytest.mark.parametrize(
    "wire, status",
    [
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
            400,
        ),
        (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde", 400),
        (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
        (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length : 4\r\n\r\nabcd", 400),
        (b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Split: a\rSet-Cookie: evil=1\r\n\r\n", 400),
        (b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Nul: a\x00b\r\n\r\n", 400),
        (b"GET /v1/models\r\nX: y HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ],
    ids=[
        "CL then TE",
        "TE then CL",
        "two lengths",
        "unknown coding",
        "space before colon",
        "bare CR",
        "NUL",
        "split request line",
    ],
)
def test_ambiguous_or_malformed_requests_are_refused(upstream, proxy, wire, status):
    answer = raw_exchange(proxy.port, wire)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:120]
    assert b"connection: close" in answer.lower()
    assert upstream.connections_opened == 0
    assert_serves_next(proxy)


@pytest.mark.parametrize(
    "target",
    [
        b"http://evil.example/v1/models",
        b"https://127.0.0.1:1/v1/models",
        b"evil.example:443",
        b"*",
    ],
)
def test_absolute_and_authority_targets_are_refused_not_an_open_proxy(upstream, proxy, target):
    method = b"CONNECT" if target.endswith(b":443") else (b"OPTIONS" if target == b"*" else b"GET")
    answer = raw_exchange(proxy.port, method + b" " + target + b" HTTP/1.1\r\nHost: evil.example\r\n\r\n")
    assert answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 405 ")), answer[:120]
    assert upstream.connections_opened == 0


def test_a_foreign_host_header_still_only_reaches_the_target(upstream, proxy):
    reply = request(proxy.port, "GET", "/v1/models", headers=[("Host", "evil.example")])
    assert reply.status == 200
    assert upstream.requests[-1].header("host") == f"127.0.0.1:{upstream.port}"
    with H11Client(proxy.port) as client:
        client.sock.sendall(b"GET //evil.example/v1/models HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
        assert client.read_reply().status == 200  # answered by the target: nobody else is ever asked
    assert upstream.requests[-1].target == "//evil.example/v1/models"


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"X-Split: a\rSet-Cookie: evil=1\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi!",
        b"HTTP/1.1 200 O\rK\r\nContent-Length: 2\r\n\r\nhi",
    ],
    ids=["CL and TE", "bare CR in a header", "two lengths", "CR in the reason"],
)
def test_ambiguous_or_split_upstream_responses_become_502(upstream, proxy, response):
    upstream.push(Raw(response))
    reply = post_chat(proxy.port, "hello")
    assert reply.status == 502 and reply.complete
    assert reply.json()["error"]["code"] == "upstream_bad_response"
    assert reply.header("set-cookie") is None
    assert_serves_next(proxy)
    proxy.wait_recorded(1)
    assert len(journal(proxy)) == 1


@pytest.mark.parametrize("session", ["../escape", "a/b", "..", ".hidden", "x" * 200, "/etc/passwd"])
def test_session_header_cannot_write_outside_the_datasets_folder(upstream, proxy, tmp_path, session, caplog):
    caplog.set_level(logging.WARNING, logger="chatproxy")
    reply = post_chat(proxy.port, "where do I go", headers=[("X-Chatproxy-Session", session)])
    assert reply.status == 200
    wait_until(lambda: "invalid session id" in caplog.text, "the refusal to be logged")
    assert proxy.run(lambda: proxy.proxy.recorder.counts["unrecordable"]) == 1
    proxy.flush()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["datasets"]
    own = {"test-session.json", "test-session.lock", ".test-session.json.index", ".test-session.jsonl.cache"}
    assert {"test-session.json", "test-session.lock"} <= {p.name for p in proxy.datasets.iterdir()} <= own
    assert_serves_next(proxy)
