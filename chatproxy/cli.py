"""Command line: `python -m chatproxy --target URL` runs the proxy; `export`, `stats`, `show` read datasets."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import ipaddress
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Coroutine, Dict, List, Mapping, NoReturn, Optional, Sequence, TextIO

from chatproxy import __version__
from chatproxy.config import (
    DEFAULT_HOST,
    DEFAULT_MAX_BODY,
    DEFAULT_PORT,
    Config,
    ConfigError,
    RecordOptions,
    Rotation,
    Timeouts,
    expand_session,
    new_session_id,
    parse_rotation,
    parse_size,
    parse_target,
)

log = logging.getLogger("chatproxy")

SUBCOMMANDS = ("export", "stats", "show", "mark", "review")
ENV_PREFIX = "CHATPROXY_"
STATUS_INTERVAL = 0.5  # seconds between redraws of the terminal status line
# Read by the recorder only, never an option: a fake clock for rotation tests (see recorder/core.py).
TEST_HOOKS = ("CHATPROXY_TEST_CLOCK_FILE",)
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("", "0", "false", "no", "off")

DESCRIPTION = """\
Relay every request from an OpenAI-compatible frontend to an OpenAI-compatible backend, unchanged
(streaming included), and record each chat as a ShareGPT dataset for fine-tuning.

Point the frontend at http://HOST:PORT (with or without /v1, as the frontend expects) instead of the
backend. Every method and path is forwarded to --target; POST .../chat/completions and .../completions
are also recorded.
"""

EPILOG = f"""\
examples:
  chatproxy --target http://127.0.0.1:8080/v1
      record chats with a llama.cpp server; frontends use http://127.0.0.1:{DEFAULT_PORT}/v1 as base URL
  chatproxy --target https://api.openai.com/v1 --session my-chats
      record into datasets/my-chats.json, resuming it if it exists
  chatproxy --target http://10.0.0.5:8000/v1 --session team-{{host}} --rotate 1d --datasets /shared/chats
      one of several proxies sharing a folder: a session per machine, a new part every day (00:00 UTC)
  CHATPROXY_TARGET=http://127.0.0.1:11434/v1 CHATPROXY_LOG_FORMAT=json chatproxy
      Ollama, configured from the environment, logging JSON lines

target URL:
  The request path is joined to the target's path without doubling a shared part: with
  --target https://api.openai.com/v1, a request for /v1/chat/completions and one for
  /chat/completions both go to https://api.openai.com/v1/chat/completions.

files (in --datasets, default ./datasets):
  SESSION.jsonl        append-only journal, one record per line, fsynced before a record is reported
  SESSION.json         the live ShareGPT dataset (a JSON array), replaced atomically about once a second
  SESSION/images/      images sent in chats, stored once each, referenced from the "images" column
  SESSION.lock         held while a proxy records the session
  SESSION.spool        exchanges the recorder had not written yet while it was behind (--recorder-memory);
                       emptied once recorded; one left by a killed proxy is recorded at the next start
  With --rotate, the journal and live dataset are per part: SESSION@20261202T000000Z.jsonl and .json,
  named by the part's start time (UTC), so ls lists them in time order; export, stats and show read
  every part of SESSION as one session (a chat continued in the next part is one record).

session templates:
  --session may hold {{host}} (this machine's short host name, made safe for a file name) and
  {{instance}} (--instance, or CHATPROXY_INSTANCE), so proxies sharing one --datasets folder record
  sessions of their own: --session team-{{host}}, or team-{{host}}-{{instance}} for several per machine.

frontend control headers (removed before forwarding):
  X-Chatproxy-Session: NAME   record into dataset NAME instead of the running session
  X-Chatproxy-Tags: a,b       add tags to the record's meta
  X-Chatproxy-Record: no      do not record this request

output:
  One start-up line, one "recorded ..." line per saved conversation, warnings and errors, on stderr.
  In a terminal a status line below them shows requests relayed, conversations recorded, errors and
  the dataset file. --log-format json writes one JSON object per line instead (for services).
  GET /_chatproxy/status answers the same counters as JSON.

environment:
  Every option can also be set as CHATPROXY_<OPTION>, e.g. CHATPROXY_TARGET, CHATPROXY_PORT,
  CHATPROXY_LOG_FORMAT=json; on/off options take 1/0, true/false, yes/no or on/off
  (CHATPROXY_NO_RECORD=1). A command-line option wins over the environment.

other commands:
  chatproxy export --help     write a training dataset from recorded sessions
  chatproxy stats  --help     summarise recorded sessions
  chatproxy show   --help     print a session's conversations as a transcript
  chatproxy mark   --help     keep, discard, rate, tag or note a recorded conversation
  chatproxy review --help     serve the review page over recorded sessions

exit status: 0 after a clean stop (SIGINT/SIGTERM), 2 for a bad option or unusable dataset folder,
1 when the port cannot be opened, the session is locked by another proxy, or records could not be
written before exit.
"""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the reason and where to read more, no usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="chatproxy",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--target", metavar="URL", help="backend base URL, http:// or https://, with or without a path (required)"
    )
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on (default {DEFAULT_HOST}; anything else is reachable by others)",
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT}; 0 picks a free one)"
    )
    parser.add_argument(
        "--session",
        metavar="ID",
        help="record into this session, resuming its dataset if it exists (default: a new UUID); "
        "{host} and {instance} are filled in (see session templates)",
    )
    parser.add_argument("--instance", metavar="NAME", help="the value of {instance} in --session")
    parser.add_argument(
        "--datasets", metavar="DIR", default="datasets", help="folder for journals and datasets (default ./datasets)"
    )
    parser.add_argument("--no-record", action="store_true", help="relay only, record nothing")
    parser.add_argument(
        "--rotate",
        metavar="WHEN",
        type=_rotation,
        help="roll the session into a new part: daily (at 00:00 UTC), weekly (Mondays 00:00 UTC), every "
        "PERIOD (12h, 1d, 7d: at UTC boundaries), past SIZE of journal (200MB), or both (1d,200MB)",
    )
    parser.add_argument(
        "--branches",
        choices=("all", "last"),
        default="all",
        help="regenerated replies and edits: keep every branch (default) or only the newest per chat",
    )
    parser.add_argument(
        "--reasoning",
        choices=("keep", "drop"),
        default="keep",
        help="write model reasoning as <think>...</think> before the answer (default) or drop it",
    )
    parser.add_argument(
        "--keep-incomplete",
        action="store_true",
        help="also put replies cut short (client gone, upstream reset) into the dataset",
    )
    parser.add_argument(
        "--record-all",
        action="store_true",
        help="also record frontends' housekeeping calls (title, tag, follow-up generation, ...)",
    )
    parser.add_argument(
        "--in-process-recorder",
        action="store_true",
        help="record in the proxy's own process instead of a second one (half the "
        "throughput under load; for hosts that allow no child processes)",
    )
    parser.add_argument(
        "--recorder-memory",
        metavar="SIZE",
        type=_size,
        default="64MiB",
        help="exchanges not yet on disk the proxy holds in memory while the recorder is behind; past "
        "that they wait in SESSION.spool (default 64MiB; 0: spool them all)",
    )
    parser.add_argument(
        "--proxy-key", metavar="KEY", help="require this key (X-Chatproxy-Key header, or Authorization: Bearer KEY)"
    )
    parser.add_argument(
        "--max-body",
        metavar="BYTES",
        type=int,
        default=DEFAULT_MAX_BODY,
        help=f"largest request body accepted (default {DEFAULT_MAX_BODY}); larger gets 413",
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=float,
        default=600.0,
        help="longest wait for the backend's next byte (default 600)",
    )
    parser.add_argument(
        "--connect-timeout",
        metavar="SECONDS",
        type=float,
        default=10.0,
        help="longest wait to connect to the backend (default 10)",
    )
    parser.add_argument("--insecure", action="store_true", help="do not verify the backend's TLS certificate")
    parser.add_argument(
        "--ca-file", metavar="PEM", help="trust this CA bundle for the backend instead of the system store"
    )
    parser.add_argument(
        "--debug", action="store_true", help="log every exchange's headers and bodies (secret headers masked)"
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="log only warnings and errors (no start-up line, record lines or status line)",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text (default): plain lines, with a live status line in a terminal; "
        "json: one JSON object per line (time, level, message, fields), for services",
    )
    parser.add_argument("--version", action="version", version=f"chatproxy {__version__}")
    return parser


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rotation(text: str) -> Rotation:
    try:
        return parse_rotation(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- environment variables -------------------------------------------------------------------


def env_name(action: argparse.Action) -> str:
    return ENV_PREFIX + action.dest.upper()


def _env_options(parser: argparse.ArgumentParser) -> List[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest not in ("help", "version")]


def env_defaults(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> Dict[str, Any]:
    """CHATPROXY_<OPTION> values, converted and checked like the option itself (ConfigError if not)."""
    defaults: Dict[str, Any] = {}
    for action in _env_options(parser):
        name = env_name(action)
        raw = environ.get(name)
        if raw is None:
            continue
        if isinstance(action, argparse._StoreTrueAction):
            word = raw.strip().lower()
            if word not in TRUE_WORDS + FALSE_WORDS:
                raise ConfigError(f"{name}={raw!r}: use 1/0, true/false, yes/no or on/off")
            defaults[action.dest] = word in TRUE_WORDS
            continue
        value: Any = raw.strip()
        if action.type is int:
            try:
                value = int(value)
            except ValueError:
                raise ConfigError(f"{name}={raw!r}: not a whole number") from None
        elif action.type is float:
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{name}={raw!r}: not a number") from None
        elif callable(action.type):
            try:
                value = action.type(value)
            except (argparse.ArgumentTypeError, ValueError) as exc:
                raise ConfigError(f"{name}={raw!r}: {exc}") from None
        if action.choices is not None and value not in action.choices:
            raise ConfigError(f"{name}={raw!r}: use one of {', '.join(map(str, action.choices))}")
        defaults[action.dest] = value
    return defaults


def unknown_env_names(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> List[str]:
    """CHATPROXY_* variables that name no option: most likely typos."""
    known = {env_name(a) for a in _env_options(parser)} | set(TEST_HOOKS)
    return sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in known)


# -- from options to a Config ----------------------------------------------------------------


def config_from_args(args: argparse.Namespace) -> Config:
    if not args.target:
        raise ConfigError("--target is required (the backend's base URL, e.g. http://127.0.0.1:5000)")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be 0-65535 (got {args.port})")
    if args.max_body <= 0:
        raise ConfigError("--max-body must be positive")
    for option, seconds in (("--timeout", args.timeout), ("--connect-timeout", args.connect_timeout)):
        if not seconds > 0:  # also refuses nan
            raise ConfigError(f"{option} must be a positive number of seconds (got {seconds})")
    if args.ca_file and not os.path.isfile(args.ca_file):
        raise ConfigError(f"--ca-file {args.ca_file}: no such file")
    session = expand_session(args.session, args.instance or None) if args.session else new_session_id()
    timeouts = Timeouts(connect=args.connect_timeout, upstream_read=args.timeout)
    record = RecordOptions(
        enabled=not args.no_record,
        branches=args.branches,
        reasoning=args.reasoning,
        keep_incomplete=args.keep_incomplete,
        record_all=args.record_all,
        in_process=args.in_process_recorder,
        recorder_memory=args.recorder_memory,
        rotate=args.rotate,
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
            pass  # the folder was writable, which is all the probe asked; a stray probe file is harmless


# -- main ------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (argparse's exits included)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return _run_subcommand(argv[0], argv[1:])
    parser = build_parser()
    try:
        try:
            parser.set_defaults(**env_defaults(parser, os.environ))
        except ConfigError as exc:
            if not {"-h", "--help", "--version"} & set(argv):  # help stays readable whatever the environment
                print(f"chatproxy: error: {exc}", file=sys.stderr)
                return 2
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        config = config_from_args(args)
        if config.record.enabled:
            check_datasets_folder(config.datasets)
    except ConfigError as exc:
        print(f"chatproxy: error: {exc}", file=sys.stderr)
        return 2
    status_line = _setup_logging(args.debug, args.quiet, args.log_format)
    for name in unknown_env_names(parser, os.environ):
        log.warning("warning: ignoring %s: no such option", name)
    try:
        return _run_event_loop(_serve_until_signal(config, status_line))
    except KeyboardInterrupt:  # a Ctrl-C before the signal handlers were in place
        return 130


def _run_subcommand(name: str, argv: List[str]) -> int:
    _setup_logging(False, False, "text")
    # Imported here, never while serving: a command's modules cost the proxy nothing.
    if name == "export":
        from chatproxy.commands.export import main as run
    elif name == "stats":
        from chatproxy.commands.stats import main as run
    elif name == "mark":
        from chatproxy.commands.mark import main as run
    elif name == "review":
        from chatproxy.commands.review import main as run
    else:
        from chatproxy.commands.show import main as run
    return run(argv)


async def _serve_until_signal(config: Config, status_line: Optional[StatusLine]) -> int:
    from chatproxy.proxy import Proxy
    from chatproxy.recorder.durable import SessionLocked

    stop = asyncio.Event()
    _on_signals(stop.set)
    try:
        proxy = Proxy(config)
    except OSError as exc:  # ssl.SSLError included: only the backend's TLS setup can fail here
        print(f"chatproxy: error: cannot use --ca-file {config.ca_file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        await proxy.start()
    except SessionLocked as exc:
        print(f"chatproxy: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if config.record.enabled and proxy.recorder is None:
            message = f"cannot open the dataset for session {config.session} in {config.datasets}: {reason}"
        else:
            message = f"cannot listen on {config.host}:{config.port}: {reason}"
        print(f"chatproxy: error: {message}", file=sys.stderr)
        return 1
    _warn_about_exposure(config)
    live = current_dataset(proxy)
    dataset = str(live) if live else "not recording (--no-record)"
    log.info(
        "chatproxy %s listening on %s -> %s, dataset %s",
        __version__,
        proxy.url,
        config.target.url,
        dataset,
        extra={
            "event": "listening",
            "url": proxy.url,
            "target": config.target.url,
            "session": config.session,
            "dataset": live and str(live),
        },
    )
    if config.record.enabled and config.record.rotate:
        log.info(
            "rotating %s into a new part %s",
            config.session,
            config.record.rotate.describe(),
            extra={"event": "rotation", "session": config.session, "rotate": config.record.rotate.describe()},
        )
    refresher = None
    if status_line is not None:
        refresher = asyncio.ensure_future(status_line.run(proxy))
    try:
        await stop.wait()
        log.info("stopping: finishing in-flight requests and writing the dataset", extra={"event": "stopping"})
        await proxy.stop()
    finally:
        if refresher is not None:
            refresher.cancel()
        if status_line is not None:
            status_line.detach()
    status = proxy.status()
    unwritten = status.get("pending_records", 0)
    spooled = status.get("backlog_spooled", 0)
    log.info(
        "stopped: %d requests relayed, %d conversations recorded, %d errors%s%s",
        status["requests"],
        status.get("recorded", 0),
        status["errors"],
        f", dataset {proxy.dataset_path}" if proxy.dataset_path else "",
        f"; {spooled} exchange(s) wait in {status.get('spool')} for the next start" if spooled else "",
        extra={
            "event": "stopped",
            "requests": status["requests"],
            "recorded": status.get("recorded", 0),
            "errors": status["errors"],
            "unwritten": unwritten,
            "spooled": spooled,
        },
    )
    return 1 if unwritten else 0


def current_dataset(proxy: Any) -> Optional[Path]:
    """The live dataset being written now: with --rotate, the current part's, as the recorder reports it."""
    reported = proxy.status().get("dataset")
    return Path(reported) if reported else proxy.dataset_path


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
            "your frontend sends%s",
            config.host,
            "" if config.proxy_key else " (set --proxy-key to require a key)",
        )


# -- output: plain lines, JSON lines, or lines above a live status line ----------------------


def _run_event_loop(main: Coroutine[Any, Any, int]) -> int:
    """asyncio.run, on uvloop when it is installed (the `fast` extra): a faster loop, same behaviour."""
    try:
        import uvloop
    except ImportError:  # the `fast` extra is optional: the standard loop is the default
        return asyncio.run(main)
    log.debug("using uvloop %s", getattr(uvloop, "__version__", ""))
    if hasattr(uvloop, "run"):
        return int(uvloop.run(main))
    uvloop.install()  # uvloop < 0.18
    return asyncio.run(main)


def _setup_logging(debug: bool, quiet: bool, log_format: str, stream: Optional[TextIO] = None) -> Optional[StatusLine]:
    """Route the "chatproxy" loggers to stderr; returns the status line when one is shown."""
    stream = sys.stderr if stream is None else stream
    level = logging.DEBUG if debug else (logging.WARNING if quiet else logging.INFO)
    status_line: Optional[StatusLine] = None
    handler: logging.Handler
    if log_format == "json":
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter())
    elif not quiet and _is_terminal(stream):
        handler = status_line = StatusLine(stream)
        handler.setFormatter(logging.Formatter("chatproxy: %(message)s"))
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("chatproxy: %(message)s"))
    root = logging.getLogger("chatproxy")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    return status_line


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):  # no isatty (a replaced stream), or already closed: not a terminal
        return False


_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: Dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class StatusLine(logging.Handler):
    """Log lines scroll up; one status line stays below them, redrawn in place with a carriage return.

    Every write (log line or redraw) happens under the handler's lock, because records are logged
    from worker threads too: the line is blanked, the log line printed, and the status drawn again.
    Blanking pads with spaces instead of using an erase escape, so it works on any terminal.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self.text = ""  # the status without width fitting; empty when detached
        self._drawn = 0  # characters currently on the status line
        self._wake: Optional[Callable[[], None]] = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            self._write(self._blank() + message + "\n" + self._fitted())
        except Exception:
            self.handleError(record)
        wake = self._wake
        if wake is not None:
            wake()  # redraw with fresh counts soon: a "recorded" line just changed them

    def show(self, text: str) -> None:
        self.acquire()
        try:
            self.text = text
            self._write(self._blank() + self._fitted())
        finally:
            self.release()

    def detach(self) -> None:
        """Remove the status line; later log lines are plain."""
        self.acquire()
        try:
            self._wake = None
            self.text = ""
            self._write(self._blank())
        finally:
            self.release()

    async def run(self, proxy: Any) -> None:
        """Redraw from `proxy.status()` every STATUS_INTERVAL and shortly after each log line."""
        loop = asyncio.get_running_loop()
        poke = asyncio.Event()

        def wake() -> None:
            try:
                loop.call_soon_threadsafe(poke.set)
            except RuntimeError:  # the loop has closed
                pass

        self._wake = wake
        while True:
            self.show(status_text(proxy.status(), current_dataset(proxy)))
            poke.clear()
            try:
                await asyncio.wait_for(poke.wait(), STATUS_INTERVAL)
            except asyncio.TimeoutError:
                pass  # the interval is over with nothing new: redraw all the same

    def _blank(self) -> str:
        if not self._drawn:
            return ""
        # Two more columns for a "^C" the terminal may have echoed after the status.
        blank = "\r" + " " * min(self._drawn + 2, _columns(self.stream) - 1) + "\r"
        self._drawn = 0
        return blank

    def _fitted(self) -> str:
        if not self.text:
            return ""
        # One column short of the width: writing the last column makes some terminals wrap.
        text = fit(self.text, _columns(self.stream) - 1)
        self._drawn = len(text)
        return text

    def _write(self, data: str) -> None:
        if data:
            self.stream.write(data)
            self.stream.flush()


def status_text(status: Mapping[str, Any], dataset: Optional[Path]) -> str:
    errors = status.get("errors", 0) + status.get("write_errors", 0) + status.get("spool_errors", 0)
    where = f"-> {dataset}" if dataset is not None else "(not recording)"
    counters = f"{status.get('requests', 0)} requests | {status.get('recorded', 0)} recorded | {errors} errors"

    def megabytes(size: int) -> str:
        return f"{size / (1 << 20):.1f} MB"

    # The recorder's backlog, once it matters: anything spooled, a failing spool, or a tenth of the
    # memory bound in use (a few exchanges always wait for the next commit).
    held, spooled = status.get("backlog_in_memory_bytes", 0), status.get("backlog_spooled", 0)
    bound = status.get("backlog_limit_bytes") or 64 << 20
    if spooled or status.get("spool_error") or held * 10 >= bound:
        counters += (
            f" | behind: {status.get('backlog_in_memory', 0)} in memory ({megabytes(held)}),"
            f" {spooled} spooled ({megabytes(status.get('backlog_spooled_bytes', 0))})"
            + (", spool failing" if status.get("spool_error") else "")
        )
    return f"[{counters}] {where}"


def fit(text: str, width: int) -> str:
    """Shorten to `width`, keeping the counters and the end of the path (the file name)."""
    if len(text) <= width:
        return text
    head, sep, tail = text.partition("] ")
    room = width - len(head) - len(sep) - 3
    if sep and room >= 8:
        return head + sep + "..." + tail[-room:]
    return text[: max(width - 3, 0)] + "..."


def _columns(stream: TextIO) -> int:
    """The width of the terminal the status line is drawn on (COLUMNS wins, as for shutil)."""
    columns = 0
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        pass  # COLUMNS is not a number: ask the terminal instead
    if columns <= 0:
        try:
            columns = os.get_terminal_size(stream.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return max(columns or 80, 20)
