"""Header policy: what crosses the proxy, what is rewritten, what is never shown."""

from __future__ import annotations

from typing import FrozenSet, Iterable, List, Optional, Sequence, Set, Tuple

Headers = List[Tuple[bytes, bytes]]

# RFC 9110 §7.6.1 connection-specific fields, plus the two single-hop auth fields. `Trailer` is not one.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
# The proxy answers `Expect: 100-continue` itself; forwarding it would make the upstream wait for a 100 we eat.
_REQUEST_ONLY_DROPPED = frozenset({b"host", b"expect"})
CONTROL_PREFIX = b"x-chatproxy-"
PROXY_KEY_HEADER = b"x-chatproxy-key"

SECRET_HEADERS = frozenset(
    {
        b"authorization",
        b"proxy-authorization",
        b"x-api-key",
        b"api-key",
        b"openai-organization",
        b"openai-project",
        b"cookie",
        b"set-cookie",
        PROXY_KEY_HEADER,
    }
)
# Vendors name their own key headers (x-goog-api-key, ocp-apim-subscription-key, x-amz-security-token,
# x-auth-token…): any field whose name holds one of these words is treated as a secret too.
_SECRET_WORDS = (b"key", b"token", b"secret", b"auth", b"password", b"credential", b"signature", b"cookie")


def is_secret(name: bytes) -> bool:
    """True for a header field whose value must never reach a log line or a file."""
    lowered = name.lower()
    return lowered in SECRET_HEADERS or any(word in lowered for word in _SECRET_WORDS)


def get(headers: Iterable[Tuple[bytes, bytes]], name: bytes) -> Optional[bytes]:
    """First value of `name` (lower-case), case-insensitive."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


# -- fields: a head as h11 keeps it once parsed ------------------------------------------------
# (name as sent, name in lower case, value): the relay reads and rewrites heads in this form, so a
# field's name is lowered once, by h11's parser, not again by every rule below.

Field = Tuple[bytes, bytes, bytes]
Fields = List[Field]


def as_fields(headers: Iterable[Tuple[bytes, bytes]]) -> Fields:
    return [(key, key.lower(), value) for key, value in headers]


def as_pairs(fields: Iterable[Field]) -> Headers:
    return [(key, value) for key, _, value in fields]


def field(fields: Iterable[Field], name: bytes) -> Optional[bytes]:
    """First value of `name` (lower-case)."""
    for _, low, value in fields:
        if low == name:
            return value
    return None


def _connection_tokens(fields: Iterable[Field]) -> FrozenSet[bytes]:
    tokens: Set[bytes] = set()
    for _, low, value in fields:
        if low == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return frozenset(tokens)


def _end_to_end(fields: Sequence[Field], also_drop: FrozenSet[bytes]) -> Fields:
    named = _connection_tokens(fields)
    return [
        item
        for item in fields
        if not (item[1] in HOP_BY_HOP or item[1] in named or item[1] in also_drop or item[1].startswith(CONTROL_PREFIX))
    ]


CHUNKED: Field = (b"Transfer-Encoding", b"transfer-encoding", b"chunked")


def host_field(authority: str) -> Field:
    return (b"Host", b"host", authority.encode("ascii"))


def upstream_fields(fields: Sequence[Field], host: Field, chunked: bool) -> Fields:
    """Request fields as sent upstream: end-to-end fields in order and case, Host rewritten.

    h11 frames a message from its headers, so a chunked request (whose Transfer-Encoding is
    hop-by-hop and was just dropped) gets `Transfer-Encoding: chunked` back.
    """
    out = [host]
    out.extend(_end_to_end(fields, _REQUEST_ONLY_DROPPED))
    if chunked:
        out.append(CHUNKED)
    return out


def for_upstream(headers: Sequence[Tuple[bytes, bytes]], authority: str, chunked: bool) -> Headers:
    """upstream_fields() for (name, value) pairs."""
    return as_pairs(upstream_fields(as_fields(headers), host_field(authority), chunked))


def client_fields(fields: Sequence[Field]) -> Fields:
    """Response fields as sent to the client; h11 re-frames a body without Content-Length."""
    return _end_to_end(fields, frozenset())


def for_client(headers: Sequence[Tuple[bytes, bytes]]) -> Headers:
    """client_fields() for (name, value) pairs."""
    return as_pairs(client_fields(as_fields(headers)))


def upgrade_token(fields: Sequence[Field]) -> Optional[bytes]:
    """The protocol a request asks to switch to (RFC 9110 §7.8: `Upgrade` named in `Connection`), or None."""
    if b"upgrade" not in _connection_tokens(fields):
        return None
    value = field(fields, b"upgrade")
    return value.strip() if value and value.strip() else None


def for_upgrade(fields: Sequence[Field], upgrade: bytes) -> Fields:
    """End-to-end fields plus the upgrade's own two hop-by-hop fields, asked for again on this hop."""
    return list(fields) + [(b"Connection", b"connection", b"Upgrade"), (b"Upgrade", b"upgrade", upgrade)]


# What the recorder's copy can decode (zlib): asked for instead of br or zstd on recorded routes.
DECODABLE_CODINGS = frozenset({b"gzip", b"x-gzip", b"deflate", b"identity"})


def decodable_codings(fields: Sequence[Field]) -> Fields:
    """`Accept-Encoding` narrowed to the codings the recorder can read, q-values kept; `*` becomes
    gzip and deflate. The field is otherwise unchanged, and the client still gets a coding it asked for."""
    out: Fields = []
    for item in fields:
        if item[1] != b"accept-encoding":
            out.append(item)
            continue
        kept = []
        for part in item[2].split(b","):
            coding = part.split(b";", 1)[0].strip().lower()
            if coding in DECODABLE_CODINGS:
                kept.append(part.strip())
            elif coding == b"*":
                params = part.strip()[1:]
                kept.extend([b"gzip" + params, b"deflate" + params])
        out.append((item[0], item[1], b", ".join(kept) if kept else b"identity"))
    return out


def decodable_accept_encoding(headers: Sequence[Tuple[bytes, bytes]]) -> Headers:
    """decodable_codings() for (name, value) pairs."""
    return as_pairs(decodable_codings(as_fields(headers)))


def framing_conflict(fields: Sequence[Field]) -> bool:
    """Content-Length together with Transfer-Encoding is a smuggling vector: refuse it.

    RFC 9112 §6.3 (message body length), the steps this proxy relies on:
    3. Transfer-Encoding and Content-Length both present: Transfer-Encoding overrides, and the
       message "ought to be handled as an error" by an intermediary; it may be a smuggling attempt,
       and relaying both would let the next hop frame it otherwise. So it is refused, here.
    4. Transfer-Encoding whose final coding is chunked: chunked framing (is_chunked; h11 parses it).
    5. Content-Length alone: that many bytes (h11 rejects a malformed or repeated-different value).
    """
    names = {low for _, low, _ in fields}
    return b"content-length" in names and b"transfer-encoding" in names


def is_chunked(fields: Sequence[Field]) -> bool:
    """RFC 9112 §6.3 step 4: chunked is the final transfer coding (h11 accepts no other)."""
    value = field(fields, b"transfer-encoding")
    return value is not None and value.strip().lower().endswith(b"chunked")


def masked(headers: Iterable[Tuple[bytes, bytes]]) -> List[Tuple[str, str]]:
    """Headers safe for a log line: secret values hidden, all others decoded."""
    shown = []
    for key, value in headers:
        name = key.decode("latin-1")
        if is_secret(key):
            shown.append((name, "***"))
        else:
            shown.append((name, value.decode("latin-1")))
    return shown


def masked_target(target: str) -> str:
    """A request target safe for a log line: values of secret-looking query parameters (`?key=…`,
    `access_token=…`) hidden, the rest kept as sent."""
    path, sep, query = target.partition("?")
    if not sep:
        return target
    fields = []
    for field in query.split("&"):
        name, eq, _ = field.partition("=")
        fields.append(f"{name}=***" if eq and is_secret(name.encode("latin-1", "replace")) else field)
    return f"{path}?{'&'.join(fields)}"
