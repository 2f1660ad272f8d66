"""Command line: `python -m chatproxy --target URL` runs the proxy; `export`, `stats`, `show` read datasets."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from chatproxy import __version__
from chatproxy.config import (
    DEFAULT_HOST,
    DEFAULT_MAX_BODY,
    DEFAULT_PORT,
    Config,
    ConfigError,
    RecordOptions,
    Timeouts,
    check_session_id,
    new_session_id,
    parse_target,
)

log = logging.getLogger("chatproxy")

SUBCOMMANDS = ("export", "stats", "show")

DESCRIPTION = """\
Relay every request from an OpenAI-compatible frontend to an OpenAI-compatible backend, unchanged
(streaming included), and record each chat as a ShareGPT dataset for fine-tuning.

Point the frontend at http://HOST:PORT (with or without /v1, as the frontend expects) instead of the
backend. Every method and path is forwarded to --target; POST .../chat/completions and .../completions
are also recorded.
"""

EPILOG = """\
target URL:
  The request path is joined to the target's path without doubling a shared part: with
  --target https://api.openai.com/v1, a request for /v1/chat/completions and one for
  /chat/completions both go to https://api.openai.com/v1/chat/completions.

files (in --datasets, default ./datasets):
  SESSION.jsonl        append-only journal, one record per line, fsynced before a record is reported
  SESSION.json         the live ShareGPT dataset (a JSON array), replaced atomically about once a second
  SESSION/images/      images sent in chats, stored once each, referenced from the "images" column
  SESSION.lock         held while a proxy records the session

frontend control headers (removed before forwarding):
  X-Chatproxy-Session: NAME   record into dataset NAME instead of the running session
  X-Chatproxy-Tags: a,b       add tags to the record's meta
  X-Chatproxy-Record: no      do not record this request

environment:
  Every option can also be set as CHATPROXY_<OPTION> (e.g. CHATPROXY_TARGET, CHATPROXY_PORT,
  CHATPROXY_NO_RECORD=1); a command-line option wins over the environment.

other commands:
  chatproxy export --help     write a training dataset from recorded sessions
  chatproxy stats  --help     summarise recorded sessions
  chatproxy show   --help     print a session's conversations as a transcript

exit status: 0 after a clean stop (SIGINT/SIGTERM), 2 for a bad option or unusable dataset folder,
1 when the port cannot be opened or the session is locked by another proxy.
"""


class _EnvDefaults:
    """CHATPROXY_<NAME> environment variables as option defaults."""

    def __init__(self, environ: "os._Environ[str] | dict") -> None:
        self.environ = environ

    def get(self, name: str, default: Optional[str] = None) -> Optional[str]:
        return self.environ.get("CHATPROXY_" + name.upper().replace("-", "_"), default)

    def flag(self, name: str) -> bool:
        return (self.get(name) or "").strip().lower() in ("1", "true", "yes", "on")


def build_parser(env: _EnvDefaults) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatproxy",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--target", metavar="URL", default=env.get("target"),
                        help="backend base URL, http:// or https://, with or without a path (required)")
    parser.add_argument("--host", default=env.get("host", DEFAULT_HOST),
                        help=f"address to listen on (default {DEFAULT_HOST}; anything else is reachable by others)")
    parser.add_argument("--port", type=int, default=int(env.get("port", str(DEFAULT_PORT)) or DEFAULT_PORT),
                        help=f"port to listen on (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--session", metavar="ID", default=env.get("session"),
                        help="record into this session, resuming its dataset if it exists (default: a new UUID)")
    parser.add_argument("--datasets", metavar="DIR", default=env.get("datasets", "datasets"),
                        help="folder for journals and datasets (default ./datasets)")
    parser.add_argument("--no-record", action="store_true", default=env.flag("no_record"),
                        help="relay only, record nothing")
    parser.add_argument("--branches", choices=("all", "last"), default=env.get("branches", "all"),
                        help="regenerated replies and edits: keep every branch (default) or only the newest per chat")
    parser.add_argument("--reasoning", choices=("keep", "drop"), default=env.get("reasoning", "keep"),
                        help="write model reasoning as <think>...</think> before the answer (default) or drop it")
    parser.add_argument("--keep-incomplete", action="store_true", default=env.flag("keep_incomplete"),
                        help="also put replies cut short (client gone, upstream reset) into the dataset")
    parser.add_argument("--record-all", action="store_true", default=env.flag("record_all"),
                        help="also record frontends' housekeeping calls (title, tag, follow-up generation, ...)")
    parser.add_argument("--proxy-key", metavar="KEY", default=env.get("proxy_key"),
                        help="require this key (X-Chatproxy-Key header, or Authorization: Bearer KEY)")
    parser.add_argument("--max-body", metavar="BYTES", type=int, default=int(env.get("max_body", str(DEFAULT_MAX_BODY)) or 0),
                        help=f"largest request body accepted (default {DEFAULT_MAX_BODY}); larger gets 413")
    parser.add_argument("--timeout", metavar="SECONDS", type=float, default=float(env.get("timeout", "600") or 600),
                        help="longest wait for the backend's next byte (default 600)")
    parser.add_argument("--connect-timeout", metavar="SECONDS", type=float, default=float(env.get("connect_timeout", "10") or 10),
                        help="longest wait to connect to the backend (default 10)")
    parser.add_argument("--insecure", action="store_true", default=env.flag("insecure"),
                        help="do not verify the backend's TLS certificate")
    parser.add_argument("--ca-file", metavar="PEM", default=env.get("ca_file"),
                        help="trust this CA bundle for the backend instead of the system store")
    parser.add_argument("--debug", action="store_true", default=env.flag("debug"),
                        help="log every exchange's headers and bodies (secret headers masked)")
    parser.add_argument("--quiet", action="store_true", default=env.flag("quiet"),
                        help="log only warnings and errors")
    parser.add_argument("--version", action="version", version=f"chatproxy {__version__}")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    if not args.target:
        raise ConfigError("--target is required (the backend's base URL, e.g. http://127.0.0.1:5000)")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be 0-65535 (got {args.port})")
    if args.max_body <= 0:
        raise ConfigError("--max-body must be positive")
    session = check_session_id(args.session) if args.session else new_session_id()
    timeouts = Timeouts(connect=args.connect_timeout, upstream_read=args.timeout)
    record = RecordOptions(
        enabled=not args.no_record,
        branches=args.branches,
        reasoning=args.reasoning,
        keep_incomplete=args.keep_incomplete,
        record_all=args.record_all,
    )
    return Config(
        target=parse_target(args.target),
        host=args.host,
        port=args.port,
        session=session,
        datasets=Path(args.datasets),
        timeouts=timeouts,
        record=record,
        max_body=args.max_body,
        insecure=args.insecure,
        debug=args.debug,
        proxy_key=args.proxy_key or None,
        ca_file=args.ca_file,
    )


def check_datasets_folder(folder: Path) -> None:
    """Fail at start, with a reason, rather than on the first chat."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create --datasets folder {folder}: {exc.strerror or exc}") from None
    if not folder.is_dir():
        raise ConfigError(f"--datasets {folder} is not a folder")
    probe = folder / f".chatproxy-write-test-{os.getpid()}"
    try:
        with open(probe, "wb") as handle:
            handle.write(b"ok")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise ConfigError(f"cannot write to --datasets folder {folder}: {exc.strerror or exc}") from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return _run_subcommand(argv[0], argv[1:])
    parser = build_parser(_EnvDefaults(os.environ))
    args = parser.parse_args(argv)
    _setup_logging(args.debug, args.quiet)
    try:
        config = config_from_args(args)
        if config.record.enabled:
            check_datasets_folder(config.datasets)
    except ConfigError as exc:
        print(f"chatproxy: error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_serve_until_signal(config))


def _run_subcommand(name: str, argv: List[str]) -> int:
    _setup_logging(False, False)
    if name == "export":
        from chatproxy.export import main as run
    else:
        from chatproxy.inspect import main as run_inspect

        return run_inspect([name] + argv)
    return run(argv)


def _setup_logging(debug: bool, quiet: bool) -> None:
    level = logging.DEBUG if debug else (logging.WARNING if quiet else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("chatproxy: %(message)s"))
    root = logging.getLogger("chatproxy")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


async def _serve_until_signal(config: Config) -> int:
    from chatproxy.durable import SessionLocked
    from chatproxy.proxy import Proxy

    proxy = Proxy(config)
    try:
        await proxy.start()
    except SessionLocked as exc:
        print(f"chatproxy: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"chatproxy: error: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    _warn_about_exposure(config)
    dataset = proxy.dataset_path or "not recording (--no-record)"
    log.info("chatproxy %s listening on %s -> %s, dataset %s", __version__, proxy.url, config.target.url, dataset)
    stop = asyncio.Event()
    _on_signals(stop.set)
    await stop.wait()
    log.info("stopping: finishing in-flight requests and writing the dataset")
    await proxy.stop()
    return 0


def _on_signals(callback: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, callback)
        except (NotImplementedError, RuntimeError):  # Windows: only SIGINT, via KeyboardInterrupt
            signal.signal(signum, lambda *_: loop.call_soon_threadsafe(callback))


def _warn_about_exposure(config: Config) -> None:
    if config.insecure:
        log.warning("warning: --insecure: the backend's TLS certificate is not verified")
    try:
        loopback = ipaddress.ip_address(config.host).is_loopback
    except ValueError:
        loopback = config.host == "localhost"
    if not loopback:
        log.warning(
            "warning: listening on %s: anyone who can reach this port can use the backend with the key "
            "your frontend sends%s", config.host, "" if config.proxy_key else " (set --proxy-key to require a key)"
        )
