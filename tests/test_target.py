"""config.parse_target and Target.url_path: the README's rule for joining a request path onto --target.

The rule (README, "How the target path is joined"): the request path is put after the target's path
unless it already starts with it (as whole segments), and a part they share is not doubled.
"""

from __future__ import annotations

import pytest

from chatproxy.config import ConfigError, Target, parse_target


def joined(target: str, request_target: str) -> str:
    return parse_target(target).url_path(request_target)


# -- the README's own examples ----------------------------------------------------------------


@pytest.mark.parametrize("request_target", ["/v1/chat/completions", "/chat/completions"])
def test_readme_openai_example(request_target: str) -> None:
    """With --target https://api.openai.com/v1, both spellings go to /v1/chat/completions."""
    assert joined("https://api.openai.com/v1", request_target) == "/v1/chat/completions"


def test_readme_shared_segment_is_not_doubled() -> None:
    """With --target http://host/api/v1, /v1/models goes to /api/v1/models."""
    assert joined("http://host/api/v1", "/v1/models") == "/api/v1/models"


# -- starts with the base path: sent as is -----------------------------------------------------


@pytest.mark.parametrize(
    "base, request_target",
    [
        ("/v1", "/v1"),
        ("/v1", "/v1/"),
        ("/v1", "/v1/models"),
        ("/api/v1", "/api/v1/chat/completions"),
        ("/api/v1", "/api/v1"),
    ],
)
def test_path_already_under_the_base_is_sent_as_is(base: str, request_target: str) -> None:
    """A path equal to the base path, or below it, is not changed."""
    assert joined("http://h" + base, request_target) == request_target


def test_the_base_must_match_a_whole_segment() -> None:
    """/v10 does not start with the segment /v1: the base is put in front."""
    assert joined("http://h/v1", "/v10/models") == "/v1/v10/models"
    assert joined("http://h/v1", "/v1models") == "/v1/v1models"


def test_segments_compare_case_sensitively() -> None:
    """Paths are case-sensitive (RFC 3986 §6.2.2.1): /V1 is not /v1."""
    assert joined("http://h/v1", "/V1/models") == "/v1/V1/models"


# -- not under the base path: base put in front, shared segments merged ------------------------


@pytest.mark.parametrize(
    "base, request_target, expected",
    [
        ("/v1", "/models", "/v1/models"),
        ("/v1", "/", "/v1/"),
        ("/openai/v1", "/chat/completions", "/openai/v1/chat/completions"),
        # The longest run of segments that ends the base and starts the path is shared.
        ("/a/b/c", "/b/c/d", "/a/b/c/d"),
        ("/a/b/c", "/c/d", "/a/b/c/d"),
        ("/a/b/c", "/b/c", "/a/b/c"),
        # A segment that only appears inside the base, not at its end, is not merged.
        ("/a/b/c", "/b/d", "/a/b/c/b/d"),
        ("/a/b/c", "/a/b", "/a/b/c/a/b"),
        ("/api/v1", "/api/models", "/api/v1/api/models"),
        ("/x/v1", "/v1/v1/y", "/x/v1/v1/y"),
    ],
)
def test_base_is_put_in_front_without_doubling(base: str, request_target: str, expected: str) -> None:
    """Otherwise the base path goes in front, and a part both share (end of base, start of path) once."""
    assert joined("http://h" + base, request_target) == expected


def test_a_path_without_leading_slash_is_treated_as_rooted() -> None:
    """A target without its leading slash is joined as if it had one."""
    assert joined("http://h/v1", "chat/completions") == "/v1/chat/completions"
    assert joined("http://h", "models") == "/models"


def test_an_empty_request_path_is_the_root() -> None:
    """An empty path becomes / (below the base, if any)."""
    assert joined("http://h", "") == "/"
    assert joined("http://h/v1", "") == "/v1/"


# -- root targets ------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["http://localhost:11434", "http://localhost:11434/", "http://localhost:11434//"])
@pytest.mark.parametrize("request_target", ["/", "/v1/chat/completions", "/api/chat", "/a//b/"])
def test_root_target_sends_every_path_unchanged(target: str, request_target: str) -> None:
    """With no base path, the request path is relayed exactly as the client sent it."""
    assert joined(target, request_target) == request_target


# -- query strings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_target, expected",
    [
        ("/models?limit=2", "/v1/models?limit=2"),
        ("/v1/models?limit=2", "/v1/models?limit=2"),
        ("/models?", "/v1/models?"),
        ("/models?next=/v1/x&q=a?b", "/v1/models?next=/v1/x&q=a?b"),
        ("/v1?x=1", "/v1?x=1"),
        ("?x=1", "/v1/?x=1"),
    ],
)
def test_query_string_is_kept_byte_for_byte(request_target: str, expected: str) -> None:
    """Only the path is joined; the query, after the first `?`, is carried over untouched."""
    assert joined("https://api.openai.com/v1", request_target) == expected


def test_query_does_not_decide_whether_the_path_is_under_the_base() -> None:
    """A base path that appears only in the query does not count as a prefix."""
    assert joined("http://h/v1", "/models?/v1/") == "/v1/models?/v1/"


# -- trailing slashes --------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["http://h/v1", "http://h/v1/", "http://h/v1///"])
def test_trailing_slashes_on_the_target_are_ignored(target: str) -> None:
    """`--target …/v1/` is the same target as `…/v1`: its base path has no trailing slash."""
    parsed = parse_target(target)
    assert parsed.base_path == "/v1"
    assert parsed.url_path("/chat/completions") == "/v1/chat/completions"
    assert parsed.url_path("/v1/chat/completions") == "/v1/chat/completions"


def test_trailing_slash_on_the_request_is_kept() -> None:
    """The client's trailing slash is relayed."""
    assert joined("http://h/v1", "/models/") == "/v1/models/"
    assert joined("http://h/v1", "/v1/models/") == "/v1/models/"


# -- parse_target: what a target is ------------------------------------------------------------


@pytest.mark.parametrize(
    "url, expected",
    [
        ("https://api.openai.com/v1", Target("https", "api.openai.com", 443, "/v1")),
        ("http://localhost:11434", Target("http", "localhost", 11434, "")),
        ("http://127.0.0.1:8080/v1/", Target("http", "127.0.0.1", 8080, "/v1")),
        ("https://example.com:8443/api/v1", Target("https", "example.com", 8443, "/api/v1")),
        ("http://[::1]:8000/v1", Target("http", "::1", 8000, "/v1")),
        ("http://h:", Target("http", "h", 80, "")),
        ("  https://h/v1  ", Target("https", "h", 443, "/v1")),
        ("HTTPS://API.Example.COM/V1", Target("https", "api.example.com", 443, "/V1")),
    ],
)
def test_parse_target(url: str, expected: Target) -> None:
    """Scheme and host are case-folded, the port defaults by scheme, the path keeps its case."""
    assert parse_target(url) == expected


@pytest.mark.parametrize(
    "url, authority, tls",
    [
        ("https://api.openai.com/v1", "api.openai.com", True),
        ("https://api.openai.com:443/v1", "api.openai.com", True),
        ("https://h:80", "h:80", True),
        ("http://h:80", "h", False),
        ("http://h:443", "h:443", False),
        ("http://localhost:11434", "localhost:11434", False),
        ("http://[::1]/v1", "[::1]", False),
        ("https://[2001:db8::1]:8443", "[2001:db8::1]:8443", True),
    ],
)
def test_authority_omits_only_the_default_port(url: str, authority: str, tls: bool) -> None:
    """The Host value drops the port only when it is the scheme's default (RFC 9110 §7.2); IPv6 is bracketed."""
    target = parse_target(url)
    assert target.authority == authority
    assert target.is_tls is tls


@pytest.mark.parametrize(
    "url, expected",
    [
        ("https://api.openai.com/v1/", "https://api.openai.com/v1"),
        ("https://api.openai.com:443/v1", "https://api.openai.com/v1"),
        ("http://[::1]:8080", "http://[::1]:8080"),
        ("http://h/", "http://h"),
    ],
)
def test_url_is_the_normalised_target(url: str, expected: str) -> None:
    """`url` (shown at start-up and in the status page) is the target without default port or trailing slash."""
    assert parse_target(url).url == expected


@pytest.mark.parametrize(
    "url, complaint",
    [
        ("api.openai.com/v1", "http:// or https://"),
        ("localhost:8080", "http:// or https://"),
        ("ftp://h/v1", "http:// or https://"),
        ("ws://h/v1", "http:// or https://"),
        ("", "http:// or https://"),
        ("http://", "no host"),
        ("http:///v1", "no host"),
        ("https://user:pw@h/v1", "credentials"),
        ("https://user@h/v1", "credentials"),
        ("https://:pw@h/v1", "credentials"),
        ("http://h/v1?api-version=1", "query or fragment"),
        ("http://h/v1#frag", "query or fragment"),
        ("http://h:99999/v1", "invalid port"),
        ("http://h:65536", "invalid port"),
        ("http://h:abc/v1", "invalid port"),
        ("http://h:-1", "invalid port"),
        ("http://h:0/v1", "invalid port"),
    ],
)
def test_bad_targets_are_config_errors(url: str, complaint: str) -> None:
    """An unusable --target is a ConfigError with a one-line message saying what is wrong."""
    with pytest.raises(ConfigError) as caught:
        parse_target(url)
    message = str(caught.value)
    assert complaint in message
    assert "\n" not in message


def test_credentials_are_not_echoed_in_the_error() -> None:
    """A target carrying a password is refused without printing the password."""
    with pytest.raises(ConfigError) as caught:
        parse_target("https://user:hunter2@h/v1")
    assert "hunter2" not in str(caught.value)


def test_config_error_is_a_value_error() -> None:
    """Callers that only know ValueError still catch a bad target."""
    with pytest.raises(ValueError):
        parse_target("nope")


def test_highest_port_is_accepted() -> None:
    """65535 is a valid port; the range check stops just above it."""
    assert parse_target("http://h:65535").port == 65535
    assert parse_target("http://h:1").port == 1
