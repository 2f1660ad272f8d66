"""`python -m chatproxy review`: serve the review page over recorded sessions, with no proxy running."""

from __future__ import annotations

import asyncio
import ipaddress
import signal
import sys
import webbrowser
from pathlib import Path
from typing import List, Optional

from chatproxy.commands import sessions
from chatproxy.commands.common import add_datasets_option, fail, new_parser, parse
from chatproxy.config import ConfigError
from chatproxy.review.app import PREFIX, ReviewApp, start_review_server
from chatproxy.review.catalogue import Catalogue

PROG = "chatproxy review"
DEFAULT_PORT = 12539  # beside the proxy's 12538

EPILOG = """\
The page lists the conversations newest first; search and filters are in its URL, so a view can be
bookmarked. Marks (keep, discard, rating, tags, note, edited replies) go to SESSION.review.jsonl beside
each journal; export honours them (see chatproxy export --help). The running proxy serves the same page
at /_chatproxy/review/.

keys: j/k next/previous, a keep, d discard, e edit the last reply, u undo, / search, ? the keys

Off loopback (--host 0.0.0.0) the page needs --key: open it once as .../_chatproxy/review/?key=KEY.
"""


def main(argv: List[str]) -> int:
    parser = new_parser(PROG, "Serve the review page: browse, search, mark and edit recorded conversations.", EPILOG)
    parser.add_argument("sessions", nargs="*", metavar="SESSION", help="sessions to show (default: every session)")
    parser.add_argument("--all", action="store_true", help="every session in --datasets, new ones included")
    add_datasets_option(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks one)")
    parser.add_argument("--key", metavar="KEY", help="required on every request; needed for any host but loopback")
    parser.add_argument("--open", action="store_true", help="open the page in the default browser")
    args = parse(parser, argv)
    if isinstance(args, int):
        return args
    folder = Path(args.datasets)
    try:
        names: Optional[List[str]] = None
        if args.sessions:
            names = sessions.resolve(folder, args.sessions, args.all)
        elif not folder.is_dir():
            raise ConfigError(f"no datasets folder {folder} (use --datasets DIR)")
        if not _loopback(args.host) and not args.key:
            raise ConfigError(f"--host {args.host} is reachable from other machines: give --key")
    except ConfigError as exc:
        return fail(PROG, str(exc))
    app = ReviewApp(Catalogue(folder, names), args.key, args.host)
    try:
        return asyncio.run(_serve(app, args.host, args.port, args.open))
    except KeyboardInterrupt:
        return 0


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _serve(app: ReviewApp, host: str, port: int, open_browser: bool) -> int:
    try:
        server, (bound, bound_port) = await start_review_server(app, host, port)
    except OSError as exc:
        print(f"chatproxy: error: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    shown = f"[{bound}]" if ":" in bound else bound
    url = f"http://{shown}:{bound_port}{PREFIX}/" + (f"?key={app.key}" if app.key else "")
    print(f"chatproxy review: {url}", flush=True)
    if open_browser:
        webbrowser.open(url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass  # Windows: Ctrl-C arrives as KeyboardInterrupt instead
    await stop.wait()
    await server.shutdown()
    app.catalogue.close()
    return 0
