"""`python -m chatproxy review`: serve the review page over recorded sessions, with no proxy running."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import signal
import sys
import threading
import time
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
FOR_PROXY_NICE = 10
FOR_PROXY_IDLE = 30 * 60.0  # seconds without a page request before the proxy's page process ends

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
    # The running proxy's page (review/app.py ProxyPage): its key on stdin, which closing ends the page.
    parser.add_argument("--for-proxy", action="store_true", help=argparse.SUPPRESS)
    args = parse(parser, argv)
    if isinstance(args, int):
        return args
    if args.for_proxy:
        args.key = _line_from_stdin() or None
        try:
            os.nice(FOR_PROXY_NICE)  # the relay first: the page waits a little, the proxy's clients do not
        except (AttributeError, OSError):
            pass  # no nice() here (Windows), or not allowed: the page runs at the proxy's priority
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
    catalogue = Catalogue(folder, names)
    catalogue.start()  # reading begins now; the page answers while it goes on (and says it is loading)
    app = ReviewApp(catalogue, args.key, args.host)
    try:
        return asyncio.run(_serve(app, args.host, args.port, args.open, args.for_proxy))
    except KeyboardInterrupt:
        return 0


def _line_from_stdin() -> str:
    # Unbuffered reads of fd 0: sys.stdin's buffer would be locked by the thread below at exit.
    line = b""
    while not line.endswith(b"\n"):
        byte = os.read(0, 1)
        if not byte:
            break
        line += byte
    return line.decode("utf-8", "replace").strip()


def _until_stdin_closes(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """The proxy that started this page holds our stdin: it closes when the proxy ends, however it ends."""
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass  # closed under us: the same news
    try:
        loop.call_soon_threadsafe(stop.set)
    except RuntimeError:
        pass  # the page stopped first (a signal): nothing left to stop


async def _until_left_alone(app: ReviewApp, stop: asyncio.Event) -> None:
    """No page request for FOR_PROXY_IDLE seconds: the proxy starts another page when one comes."""
    while not stop.is_set():
        await asyncio.sleep(min(60.0, FOR_PROXY_IDLE / 4))
        if time.monotonic() - app.last_request > FOR_PROXY_IDLE:
            stop.set()


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _serve(app: ReviewApp, host: str, port: int, open_browser: bool, for_proxy: bool = False) -> int:
    try:
        server, (bound, bound_port) = await start_review_server(app, host, port)
    except OSError as exc:
        print(f"chatproxy: error: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    shown = f"[{bound}]" if ":" in bound else bound
    url = f"http://{shown}:{bound_port}{PREFIX}/" + (f"?key={app.key}" if app.key and not for_proxy else "")
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
    if for_proxy:
        threading.Thread(target=_until_stdin_closes, args=(loop, stop), daemon=True).start()
        loop.create_task(_until_left_alone(app, stop))
    await stop.wait()
    await server.shutdown()
    app.catalogue.close()
    return 0
