"""Configuration values: the target URL, time-outs, limits and recording options."""

from __future__ import annotations

import dataclasses
import re
import time
import urllib.parse
from pathlib import Path
from typing import Dict, Optional

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 12538
# Generous for chats with pasted documents or a few base64 images, but finite.
DEFAULT_MAX_BODY = 64 * 1024 * 1024
# Exchanges the recorder has not confirmed on disk, held in memory before they go to SESSION.spool.
DEFAULT_RECORDER_MEMORY = 64 * 1024 * 1024
SIZE_UNITS = {"b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmg]i?b|b)?")

_SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
REVIEW_ENDING = ".review"  # SESSION.review.jsonl holds a session's review marks


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
    """A session id becomes a file name: letters, digits, '.', '_', '-', no path parts.

    '@' is refused: it joins a session to the name of one of its parts (SESSION@PART.jsonl). So is a
    name ending in ".review", which would read as another session's review journal (SESSION.review.jsonl).
    """
    if "@" in session:
        raise ConfigError(
            f"invalid session id {session!r}: '@' separates a session from its part (SESSION@PART); "
            "name the session alone"
        )
    if session.endswith(REVIEW_ENDING):
        raise ConfigError(f"invalid session id {session!r}: a name ending in {REVIEW_ENDING!r} is a review journal's")
    if not _SESSION_ID.fullmatch(session) or ".." in session:
        raise ConfigError(
            f"invalid session id {session!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, without '..'"
        )
    return session


def parse_size(text: str) -> int:
    """A number of bytes: 64MiB, 200MB, 512KiB, 1.5GB, or plain bytes (KB/MB/GB are 1000-based)."""
    match = _SIZE.fullmatch(text.strip().lower())
    if not match:
        raise ConfigError(f"not a size: {text!r} (use e.g. 64MiB, 200MB, 512KiB or bytes)")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2) or "b"])


def new_session_id() -> str:
    import uuid  # only when no session is given

    return str(uuid.uuid4())


_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def expand_session(template: str, instance: Optional[str] = None, host: Optional[str] = None) -> str:
    """`--session` with `{host}` (this machine's short host name) and `{instance}` filled in, checked.

    Several proxies that share one datasets folder each record their own session: `team-{host}` on
    one proxy per machine, `team-{host}-{instance}` for several on one machine.
    """
    values: Dict[str, Optional[str]] = {"host": None, "instance": instance}

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise ConfigError(f"--session {template!r}: unknown placeholder {{{name}}} (use {{host}} or {{instance}})")
        if name == "host":
            values["host"] = file_name_part(host if host is not None else short_host_name()) or "host"
        value = values[name]
        if not value:
            raise ConfigError(f"--session {template!r} uses {{instance}}: set --instance (or CHATPROXY_INSTANCE)")
        return value

    return check_session_id(_PLACEHOLDER.sub(fill, template))


def short_host_name() -> str:
    import socket  # only for a --session template

    return socket.gethostname().split(".", 1)[0]


def file_name_part(text: str) -> str:
    """`text` with every run of characters a session name cannot hold replaced by '-' ("" stays "")."""
    return _UNSAFE.sub("-", text).strip("-")


# -- rotation -------------------------------------------------------------------------------------

# Scheduled rotations fall on whole multiples of the period counted from a Monday, 00:00 UTC: a day
# starts at midnight UTC, a week on Monday, 12h at 00:00 and 12:00 UTC, whatever the local time zone.
ROTATION_ANCHOR = 4 * 86400  # 1970-01-05T00:00:00Z, the first Monday after the Unix epoch
PERIOD_UNITS = {"h": 3600, "d": 86400, "w": 7 * 86400}
PERIOD_WORDS = {"hourly": 3600, "daily": 86400, "weekly": 7 * 86400}
MIN_ROTATE_SIZE = 1000  # bytes: a part of at least one record, whatever the unit
_PERIOD = re.compile(r"(\d+)([hdw])")


# A part's name is its start time, UTC, fixed width, so that `ls` lists a session's parts in time order:
# SESSION@20261202T153640Z.jsonl. Parts are the session's: one lock and one images folder for all.
PART_SEPARATOR = "@"
PART_TIME_FORMAT = "%Y%m%dT%H%M%SZ"
_PART = re.compile(r"\d{8}T\d{6}Z")


def part_name(moment: float) -> str:
    """The part that starts at `moment` (Unix seconds), to the second."""
    return time.strftime(PART_TIME_FORMAT, time.gmtime(int(moment)))


def part_time(part: str) -> Optional[int]:
    """When the part named `part` started (Unix seconds), or None: not a part name."""
    if not _PART.fullmatch(part):
        return None
    import calendar  # here: the proxy's own start-up has no use for it

    try:
        return calendar.timegm(time.strptime(part, PART_TIME_FORMAT))
    except ValueError:  # 20261399T..., a name that only looks like one
        return None


@dataclasses.dataclass(frozen=True)
class Rotation:
    """When a session's recording rolls into a new part: every `period` seconds (on the UTC boundaries
    above), when the part's journal passes `size` bytes, or whichever comes first (0: not by that)."""

    period: int = 0
    size: int = 0

    def describe(self) -> str:
        """E.g. "daily at 00:00 UTC or past 200,000,000 bytes", for the start-up line."""
        parts = []
        if self.period:
            words = {seconds: word for word, seconds in PERIOD_WORDS.items()}
            unit = next(u for u in "wdh" if self.period % PERIOD_UNITS[u] == 0)
            if self.period == PERIOD_WORDS["weekly"]:
                parts.append("weekly, Mondays at 00:00 UTC")
            elif self.period == PERIOD_WORDS["daily"]:
                parts.append("daily at 00:00 UTC")
            else:
                parts.append(words.get(self.period) or f"every {self.period // PERIOD_UNITS[unit]}{unit} (UTC)")
        if self.size:
            parts.append(f"past {self.size:,} bytes")
        return " or ".join(parts)

    def period_start(self, moment: float) -> float:
        """The scheduled boundary at or before `moment` (Unix seconds; -inf without a period)."""
        if not self.period:
            return float("-inf")
        return ROTATION_ANCHOR + ((moment - ROTATION_ANCHOR) // self.period) * self.period

    def next_boundary(self, moment: float) -> float:
        """The first scheduled boundary after `moment` (inf without a period)."""
        return self.period_start(moment) + self.period if self.period else float("inf")


def parse_rotation(text: str) -> Rotation:
    """`--rotate`: daily, weekly, a period (12h, 1d, 7d, 2w), a size (200MB, 1GiB), or both joined by ','."""
    period = size = 0
    for item in text.strip().lower().replace(" ", "").split(","):
        period_match, size_match = _PERIOD.fullmatch(item), _SIZE.fullmatch(item)
        if item in PERIOD_WORDS and not period:
            period = PERIOD_WORDS[item]
        elif period_match and not period:
            period = int(period_match.group(1)) * PERIOD_UNITS[period_match.group(2)]
            if not period:
                raise ConfigError(f"a period must be at least 1h (got {text!r})")
        elif size_match and size_match.group(2) and not size:  # a unit, so that 200 is not taken for bytes
            size = parse_size(item)
            if size < MIN_ROTATE_SIZE:
                raise ConfigError(f"a size must be at least 1KB (got {text!r})")
        else:
            raise ConfigError(
                "use daily, weekly, a period like 12h, 1d or 7d, a size like 200MB, or a period and a size "
                f"like 1d,200MB (got {text!r})"
            )
    return Rotation(period, size)


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
    # Bytes of exchanges not yet confirmed on disk that the proxy holds; past them they are spooled
    # (recorder/spool.py). 0: every one of them is spooled.
    recorder_memory: int = DEFAULT_RECORDER_MEMORY
    rotate: Optional[Rotation] = None  # roll each session into a new part on schedule or size


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
