"""headers.py: which fields cross the proxy, how Host and framing are rewritten, what a log line may show."""

from __future__ import annotations

from typing import List, Tuple

import pytest

from chatproxy import _h11
from chatproxy import headers as hdr
from chatproxy._h11 import h11

H = List[Tuple[bytes, bytes]]

# A request head as h11 hands it over (raw_items(): names in the case the client sent them).
REQUEST: H = [
    (b"Host", b"127.0.0.1:12538"),
    (b"User-Agent", b"OpenAI/Python 1.30.0"),
    (b"Authorization", b"Bearer sk-secret"),
    (b"Content-Type", b"application/json"),
    (b"Content-Length", b"17"),
    (b"Connection", b"keep-alive"),
    (b"Keep-Alive", b"timeout=5"),
    (b"X-Chatproxy-Session", b"s1"),
    (b"X-Chatproxy-Key", b"proxy-secret"),
    (b"Accept", b"text/event-stream"),
]

# Every field RFC 9110 §7.6.1 (and the single-hop auth fields) names as connection-specific.
HOP_BY_HOP_FIELDS = [
    b"Connection",
    b"Keep-Alive",
    b"Proxy-Connection",
    b"TE",
    b"Transfer-Encoding",
    b"Upgrade",
    b"Proxy-Authenticate",
    b"Proxy-Authorization",
]

SECRET_FIELDS = [
    b"Authorization",
    b"Proxy-Authorization",
    b"X-Api-Key",
    b"api-key",
    b"OpenAI-Organization",
    b"OpenAI-Project",
    b"Cookie",
    b"Set-Cookie",
    b"X-Chatproxy-Key",
    # Vendors' own key headers: Gemini, Azure API Management, AWS, and common token headers.
    b"x-goog-api-key",
    b"Ocp-Apim-Subscription-Key",
    b"X-Amz-Security-Token",
    b"X-Auth-Token",
    b"X-Access-Token",
    b"X-Client-Secret",
]


def names(headers: H) -> List[bytes]:
    return [key.lower() for key, _ in headers]


# -- get --------------------------------------------------------------------------------------


def test_get_matches_the_name_case_insensitively() -> None:
    """`get` finds a field whatever case the sender used; the name asked for is lower-case."""
    assert hdr.get([(b"Content-TYPE", b"application/json")], b"content-type") == b"application/json"


def test_get_returns_the_first_of_repeated_fields() -> None:
    """With a field repeated, the first value is the one returned."""
    headers = [(b"X-A", b"1"), (b"x-a", b"2")]
    assert hdr.get(headers, b"x-a") == b"1"


def test_get_returns_none_for_a_missing_field() -> None:
    """A field that is not there is None, not an empty value."""
    assert hdr.get([(b"X-A", b"")], b"x-b") is None
    assert hdr.get([(b"X-A", b"")], b"x-a") == b""


def test_get_accepts_any_iterable() -> None:
    """A generator of pairs works as well as a list (it is read once, up to the match)."""
    assert hdr.get(((k, v) for k, v in REQUEST), b"accept") == b"text/event-stream"


# -- for_upstream -----------------------------------------------------------------------------


def test_upstream_request_starts_with_the_target_host() -> None:
    """The client's Host is replaced by the target's authority, sent first."""
    out = hdr.for_upstream(REQUEST, "api.openai.com", chunked=False)
    assert out[0] == (b"Host", b"api.openai.com")
    assert names(out).count(b"host") == 1


def test_upstream_request_drops_every_host_the_client_sent() -> None:
    """Repeated or oddly cased Host fields from the client never reach the target."""
    request = [(b"host", b"a"), (b"HOST", b"b"), (b"X-A", b"1")]
    assert hdr.for_upstream(request, "t:8080", chunked=False) == [(b"Host", b"t:8080"), (b"X-A", b"1")]


def test_upstream_request_keeps_end_to_end_fields_in_order_and_case() -> None:
    """Exactly the end-to-end fields go on, in the client's order, case and values (secrets included)."""
    out = hdr.for_upstream(REQUEST, "api.openai.com", chunked=False)
    assert out == [
        (b"Host", b"api.openai.com"),
        (b"User-Agent", b"OpenAI/Python 1.30.0"),
        (b"Authorization", b"Bearer sk-secret"),
        (b"Content-Type", b"application/json"),
        (b"Content-Length", b"17"),
        (b"Accept", b"text/event-stream"),
    ]


def test_upstream_request_keeps_repeated_fields() -> None:
    """Repeated end-to-end fields are relayed as separate fields, not merged or deduplicated."""
    request = [(b"Accept", b"a"), (b"X-B", b"b"), (b"Accept", b"c")]
    assert hdr.for_upstream(request, "t", chunked=False)[1:] == request


@pytest.mark.parametrize("name", HOP_BY_HOP_FIELDS)
def test_upstream_request_drops_hop_by_hop_fields(name: bytes) -> None:
    """Each connection-specific field of RFC 9110 §7.6.1 stops at the proxy, in any case."""
    for spelling in (name, name.lower(), name.upper()):
        request = [(b"X-Before", b"1"), (spelling, b"whatever"), (b"X-After", b"2")]
        out = hdr.for_upstream(request, "t", chunked=False)
        assert out == [(b"Host", b"t"), (b"X-Before", b"1"), (b"X-After", b"2")]


def test_trailer_is_end_to_end() -> None:
    """`Trailer` is not connection-specific: it is relayed both ways."""
    assert (b"Trailer", b"X-Checksum") in hdr.for_upstream([(b"Trailer", b"X-Checksum")], "t", chunked=True)
    assert hdr.for_client([(b"Trailer", b"X-Checksum")]) == [(b"Trailer", b"X-Checksum")]


def test_fields_named_in_connection_are_dropped() -> None:
    """A field the Connection header lists is connection-specific too (RFC 9110 §7.6.1)."""
    request = [(b"Connection", b"X-Hop, x-other"), (b"X-Hop", b"1"), (b"X-Other", b"2"), (b"X-Kept", b"3")]
    assert hdr.for_upstream(request, "t", chunked=False) == [(b"Host", b"t"), (b"X-Kept", b"3")]


def test_connection_tokens_are_trimmed_and_case_folded() -> None:
    """Tokens are compared without surrounding spaces and case-insensitively; empty list items are harmless."""
    request = [(b"Connection", b" ,  X-HOP  ,,close "), (b"x-hop", b"1"), (b"X-Kept", b"2")]
    assert hdr.for_upstream(request, "t", chunked=False) == [(b"Host", b"t"), (b"X-Kept", b"2")]


def test_every_connection_header_counts() -> None:
    """Tokens of repeated Connection fields are all honoured, and a field named before its Connection too."""
    request = [(b"X-One", b"1"), (b"Connection", b"x-one"), (b"Connection", b"X-Two"), (b"X-Two", b"2")]
    assert hdr.for_upstream(request, "t", chunked=False) == [(b"Host", b"t")]


def test_a_connection_token_only_matches_a_whole_name() -> None:
    """`Connection: x-a` drops `X-A`, not `X-A-B` or `X-`."""
    request = [(b"Connection", b"x-a"), (b"X-A", b"1"), (b"X-A-B", b"2"), (b"X-", b"3")]
    assert hdr.for_upstream(request, "t", chunked=False) == [(b"Host", b"t"), (b"X-A-B", b"2"), (b"X-", b"3")]


def test_expect_is_not_forwarded() -> None:
    """The proxy answers `Expect: 100-continue` itself, so the target never waits for a 100 the proxy eats."""
    request = [(b"Expect", b"100-continue"), (b"Content-Length", b"5")]
    assert hdr.for_upstream(request, "t", chunked=False) == [(b"Host", b"t"), (b"Content-Length", b"5")]


def test_control_headers_are_not_forwarded() -> None:
    """Every X-Chatproxy-* field (session, tags, the proxy key) is for the proxy alone."""
    request = [
        (b"X-Chatproxy-Session", b"s"),
        (b"x-chatproxy-tags", b"a,b"),
        (b"X-CHATPROXY-KEY", b"k"),
        (b"X-Chatproxy-Anything-New", b"v"),
        (b"X-Chatproxyish", b"kept: no dash after the prefix"),
    ]
    assert hdr.for_upstream(request, "t", chunked=False) == [
        (b"Host", b"t"),
        (b"X-Chatproxyish", b"kept: no dash after the prefix"),
    ]


def test_chunked_request_gets_transfer_encoding_back_last() -> None:
    """The client's Transfer-Encoding is dropped as hop-by-hop; a chunked body gets a fresh one, at the end."""
    request = [(b"Transfer-Encoding", b"Chunked"), (b"Content-Type", b"application/json")]
    out = hdr.for_upstream(request, "t", chunked=True)
    assert out == [(b"Host", b"t"), (b"Content-Type", b"application/json"), (b"Transfer-Encoding", b"chunked")]


def test_unchunked_request_has_no_transfer_encoding() -> None:
    """Without `chunked`, no Transfer-Encoding is sent, even if the client sent one."""
    out = hdr.for_upstream([(b"Transfer-Encoding", b"chunked")], "t", chunked=False)
    assert out == [(b"Host", b"t")]


def test_upstream_request_does_not_change_its_input() -> None:
    """The client's header list is read, never edited in place (the capture and the log use it after)."""
    request = list(REQUEST)
    hdr.for_upstream(request, "t", chunked=True)
    assert request == REQUEST


def test_authority_must_be_ascii() -> None:
    """The Host value is the target authority as ASCII (an IDN target must arrive already encoded)."""
    assert hdr.for_upstream([], "xn--bcher-kva.example:8443", chunked=False) == [
        (b"Host", b"xn--bcher-kva.example:8443")
    ]
    with pytest.raises(UnicodeEncodeError):
        hdr.for_upstream([], "bücher.example", chunked=False)


# -- for_client -------------------------------------------------------------------------------


def test_client_response_keeps_end_to_end_fields_in_order_and_case() -> None:
    """Response fields go back unchanged, in order and case, repeated ones included (Set-Cookie is relayed)."""
    response = [
        (b"Date", b"Mon, 01 Jan 2024 00:00:00 GMT"),
        (b"Content-Type", b"text/event-stream"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"openai-processing-ms", b"12"),
        (b"Content-Length", b"3"),
    ]
    assert hdr.for_client(response) == response


@pytest.mark.parametrize("name", HOP_BY_HOP_FIELDS)
def test_client_response_drops_hop_by_hop_fields(name: bytes) -> None:
    """The target's connection-specific fields do not reach the client."""
    response = [(b"X-Before", b"1"), (name, b"whatever"), (b"X-After", b"2")]
    assert hdr.for_client(response) == [(b"X-Before", b"1"), (b"X-After", b"2")]


def test_client_response_drops_fields_named_in_connection() -> None:
    """A field the target's Connection header names stops at the proxy."""
    response = [(b"Connection", b"close, X-Backend-Conn"), (b"X-Backend-Conn", b"7"), (b"Server", b"uvicorn")]
    assert hdr.for_client(response) == [(b"Server", b"uvicorn")]


def test_client_response_drops_control_headers() -> None:
    """X-Chatproxy-* fields from the target (another chatproxy, say) are not passed on."""
    assert hdr.for_client([(b"X-Chatproxy-Session", b"s"), (b"Server", b"x")]) == [(b"Server", b"x")]


def test_client_response_gets_no_host_and_no_framing_added() -> None:
    """Responses are not given a Host or a Transfer-Encoding: h11 frames the body itself."""
    assert hdr.for_client([(b"Transfer-Encoding", b"chunked")]) == []
    assert hdr.for_client([]) == []


# -- framing_conflict -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers, conflict",
    [
        ([(b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked")], True),
        ([(b"transfer-encoding", b"chunked"), (b"CONTENT-LENGTH", b"5")], True),
        ([(b"Content-Length", b"5"), (b"Transfer-Encoding", b"identity")], True),
        ([(b"Content-Length", b"5")], False),
        ([(b"Content-Length", b"5"), (b"Content-Length", b"5")], False),
        ([(b"Transfer-Encoding", b"chunked")], False),
        ([(b"Content-Type", b"application/json")], False),
        ([], False),
    ],
)
def test_framing_conflict(headers: H, conflict: bool) -> None:
    """Content-Length together with Transfer-Encoding, whatever their values or case, is a conflict."""
    assert hdr.framing_conflict(hdr.as_fields(headers)) is conflict


# -- is_chunked -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers, chunked",
    [
        ([(b"Transfer-Encoding", b"chunked")], True),
        ([(b"transfer-encoding", b"Chunked")], True),
        ([(b"Transfer-Encoding", b" chunked ")], True),
        ([(b"Transfer-Encoding", b"gzip, chunked")], True),
        ([(b"Transfer-Encoding", b"chunked, gzip")], False),
        ([(b"Transfer-Encoding", b"gzip")], False),
        ([(b"Transfer-Encoding", b"")], False),
        ([(b"Content-Length", b"7")], False),
        ([], False),
    ],
)
def test_is_chunked(headers: H, chunked: bool) -> None:
    """A body is chunked when chunked is the last transfer coding (RFC 9112 §6.3)."""
    assert hdr.is_chunked(hdr.as_fields(headers)) is chunked


# -- masked -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SECRET_FIELDS)
def test_masked_hides_secret_values(name: bytes) -> None:
    """A field that can carry a credential shows as *** in a log line, whatever its case; the name stays."""
    for spelling in (name, name.lower(), name.upper()):
        shown = hdr.masked([(spelling, b"sk-very-secret")])
        assert shown == [(spelling.decode("ascii"), "***")]


def test_masked_never_contains_a_secret_value() -> None:
    """Across a whole request head, no secret value appears anywhere in what is shown."""
    request = REQUEST + [(b"Cookie", b"session=cookie-secret"), (b"x-api-key", b"anthropic-secret")]
    shown = repr(hdr.masked(request))
    for secret in ("sk-secret", "proxy-secret", "cookie-secret", "anthropic-secret"):
        assert secret not in shown


def test_masked_shows_other_fields_decoded_in_order() -> None:
    """Other fields are shown as text, name case and order kept, repeated ones too."""
    headers = [(b"Content-Type", b"application/json"), (b"Authorization", b"Bearer x"), (b"X-A", b"1"), (b"x-a", b"2")]
    assert hdr.masked(headers) == [
        ("Content-Type", "application/json"),
        ("Authorization", "***"),
        ("X-A", "1"),
        ("x-a", "2"),
    ]


def test_masked_keeps_ordinary_fields_readable() -> None:
    """The name-based rule does not hide the fields a reader of the debug log needs."""
    fields = [
        b"Content-Type",
        b"Content-Length",
        b"Accept",
        b"User-Agent",
        b"Host",
        b"X-Request-Id",
        b"Anthropic-Version",
    ]
    assert all(value != "***" for _, value in hdr.masked((name, b"v") for name in fields))


@pytest.mark.parametrize(
    ("target", "shown"),
    [
        ("/v1beta/models/g:generateContent?key=AIzaSecret", "/v1beta/models/g:generateContent?key=***"),
        ("/v1/chat?alt=sse&access_token=tok-1&x=2", "/v1/chat?alt=sse&access_token=***&x=2"),
        ("/v1/chat/completions", "/v1/chat/completions"),
        ("/v1/models?limit=5&flag", "/v1/models?limit=5&flag"),
    ],
)
def test_masked_target_hides_secret_query_values(target: str, shown: str) -> None:
    """Keys passed in the query string (Gemini's `?key=`, OAuth's `access_token`) never reach a log line."""
    assert hdr.masked_target(target) == shown


def test_masked_decodes_any_byte_as_latin1() -> None:
    """Non-ASCII header bytes never make a log line fail: they are shown as Latin-1."""
    assert hdr.masked([(b"X-Name", b"caf\xe9 \xff")]) == [("X-Name", "caf\xe9 \xff")]


def test_masked_hides_secrets_even_when_empty() -> None:
    """An empty Authorization is still masked: what is shown does not depend on the value."""
    assert hdr.masked([(b"Authorization", b"")]) == [("Authorization", "***")]


def test_masked_accepts_any_iterable() -> None:
    """A generator of pairs (h11's header iteration) works like a list."""
    assert hdr.masked(pair for pair in [(b"Cookie", b"a=1"), (b"Accept", b"*/*")]) == [
        ("Cookie", "***"),
        ("Accept", "*/*"),
    ]


# -- relayed heads: h11's parsed fields handed back to h11 ------------------------------------


def test_this_h11_takes_its_parsed_fields_back_unchecked() -> None:
    """_h11 builds relayed events from the parsed fields only after a probe at import; if an h11
    release changed its internals, the probe falls back to the public API, and this says so."""
    assert _h11.TRUSTED_HEADERS is not None


@pytest.mark.parametrize("trusted", [True, False])
def test_a_relayed_head_is_the_same_bytes_either_way(trusted: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A parsed request, rewritten by the header rules, serialises as the public API would serialise it."""
    if not trusted:
        monkeypatch.setattr(_h11, "TRUSTED_HEADERS", None)
    server = h11.Connection(h11.SERVER)
    server.receive_data(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:12538\r\nContent-Length: 2\r\n"
        b"Connection: keep-alive\r\nAccept-Encoding: br, gzip\r\nX-Chatproxy-Tags: a\r\nUser-Agent: t\r\n\r\n{}"
    )
    parsed = server.next_event()
    assert type(parsed) is h11.Request
    fields = hdr.decodable_codings(
        hdr.upstream_fields(_h11.fields_of(parsed.headers), hdr.host_field("api.example:443"), chunked=False)
    )
    expected = h11.Connection(h11.CLIENT).send(
        h11.Request(method=b"POST", target=b"/v1/chat/completions", headers=hdr.as_pairs(fields))
    )
    sent = h11.Connection(h11.CLIENT).send(_h11.request(b"POST", b"/v1/chat/completions", fields))
    assert sent == expected
    assert sent.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.example:443\r\n")
    assert b"Accept-Encoding: gzip\r\n" in sent and b"Connection" not in sent and b"X-Chatproxy" not in sent

    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=b"GET", target=b"/", headers=[(b"Host", b"a")]))
    client.receive_data(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
    response = client.next_event()
    assert type(response) is h11.Response
    kept = hdr.client_fields(_h11.fields_of(response.headers))
    answer = h11.Connection(h11.SERVER)
    answer.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    answer.next_event()
    public = h11.Connection(h11.SERVER)
    public.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    public.next_event()
    assert answer.send(_h11.response(200, kept, b"OK")) == public.send(
        h11.Response(status_code=200, headers=hdr.as_pairs(kept), reason=b"OK")
    )
