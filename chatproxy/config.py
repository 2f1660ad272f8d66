"""Configuration values: the target URL, time-outs, limits and recording options."""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from pathlib import Path
from typing import Optional

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 12538
# Generous for chats with pasted documents or a few base64 images, but finite.
DEFAULT_MAX_BODY = 64 * 1024 * 1024

_SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class ConfigError(ValueError):
    """A user-supplied setting is unusable; the message is one line for the terminal."""


@dataclasses.dataclass(frozen=True)
class Target:
    """The upstream base URL, split into the parts the relay needs."""

    scheme: str
    host: str
    port: int
    base_path: str  # "" or "/v1", never with a trailing slash

    @property
    def is_tls(self) -> bool:
        return self.scheme == "https"

    @property
    def authority(self) -> str:
        """The Host header value: the default port is omitted (RFC 9110 §7.2)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.is_tls else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.authority}{self.base_path}"

    def url_path(self, request_target: str) -> str:
        """Join a client's request target onto the base path without doubling it.

        The rule: if the request path already starts with the base path (as a whole
        segment), it is sent as is; otherwise the base path is put in front.
        `/v1` + `/v1/chat/completions` -> `/v1/chat/completions`;
        `/v1` + `/chat/completions` -> `/v1/chat/completions`;
        `/api/v1` + `/v1/models` -> `/api/v1/models` (the shared `/v1` is not doubled).
        """
        path, sep, query = request_target.partition("?")
        if not path.startswith("/"):
            path = "/" + path
        base = self.base_path
        if base and not (path == base or path.startswith(base + "/")):
            path = _join_overlapping(base, path)
        return path + sep + query


def _join_overlapping(base: str, path: str) -> str:
    """Join base and path, merging the longest run of segments that ends base and starts path."""
    base_parts = base.strip("/").split("/")
    path_parts = path.lstrip("/").split("/")
    for size in range(min(len(base_parts), len(path_parts)), 0, -1):
        if base_parts[-size:] == path_parts[:size]:
            return "/" + "/".join(base_parts + path_parts[size:])
    return base + path


def parse_target(url: str) -> Target:
    """Parse `--target`: http(s) URL with optional port and base path."""
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme not in ("http", "https"):
        raise ConfigError(f"--target must start with http:// or https:// (got {url!r})")
    if not parsed.hostname:
        raise ConfigError(f"--target has no host name (got {url!r})")
    if parsed.username or parsed.password:
        raise ConfigError("--target must not carry credentials; the frontend's own key is relayed")
    if parsed.query or parsed.fragment:
        raise ConfigError(f"--target must not have a query or fragment (got {url!r})")
    try:
        port = parsed.port
    except ValueError:
        port = 0
    if port == 0:  # out of range, not a number, or 0 (which `or` below would have turned into the default)
        raise ConfigError(f"--target has an invalid port (got {url!r})")
    port = port or (443 if parsed.scheme == "https" else 80)
    return Target(parsed.scheme, parsed.hostname, port, parsed.path.rstrip("/"))


def check_session_id(session: str) -> str:
    """A session id becomes a file name: letters, digits, '.', '_', '-', no path parts."""
    if not _SESSION_ID.fullmatch(session) or ".." in session:
        raise ConfigError(
            f"invalid session id {session!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, without '..'"
        )
    return session


def new_session_id() -> str:
    import uuid  # only when no session is given

    return str(uuid.uuid4())


@dataclasses.dataclass(frozen=True)
class Timeouts:
    """Seconds. Upstream reads are long because a model may think for minutes before its first token."""

    connect: float = 10.0
    upstream_read: float = 600.0
    client_idle: float = 75.0  # keep-alive wait for the next request (nginx's default)
    client_header: float = 30.0  # a request head must arrive within this (slowloris)
    client_body: float = 60.0  # each read of a request body
    client_write: float = 60.0  # a client that stops reading is dropped after this
    pool_idle: float = 4.0  # below uvicorn's 5 s keep-alive, so we never reuse a socket it is closing
    shutdown_grace: float = 5.0


@dataclasses.dataclass(frozen=True)
class RecordOptions:
    """How conversations are recorded and written to the live ShareGPT file."""

    enabled: bool = True
    branches: str = "all"  # "all" or "last"
    reasoning: str = "keep"  # "keep" or "drop"
    keep_incomplete: bool = False
    record_all: bool = False  # also record frontends' housekeeping calls (titles, tags, …)
    snapshot_interval: float = 1.0
    # Record in a second process (on another core), or in this one: slower under load, but no
    # child process. The second process is used wherever one can be started.
    in_process: bool = False


@dataclasses.dataclass(frozen=True)
class Config:
    target: Target
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    session: str = dataclasses.field(default_factory=new_session_id)
    datasets: Path = Path("datasets")
    timeouts: Timeouts = Timeouts()
    record: RecordOptions = RecordOptions()
    max_body: int = DEFAULT_MAX_BODY
    insecure: bool = False
    debug: bool = False
    proxy_key: Optional[str] = None
    ca_file: Optional[str] = None
