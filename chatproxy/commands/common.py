"""What `export`, `stats` and `show` share on the command line: one-line errors, exit 2, --datasets."""

from __future__ import annotations

import argparse
import datetime
import sys
from typing import List, NoReturn, Optional, Union

from chatproxy.commands.sessions import DATASETS_ENV, Session, default_datasets

USAGE_ERROR = 2


class UsageError(Exception):
    """A bad option or argument: one line for stderr, exit status 2, nothing written."""


class Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing the usage block, so every error is one line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def new_parser(prog: str, description: str, epilog: str = "") -> Parser:
    return Parser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_datasets_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--datasets",
        metavar="DIR",
        default=default_datasets(),
        help=f"folder the proxy records into (default ./datasets, or ${DATASETS_ENV})",
    )


def parse(parser: Parser, argv: List[str]) -> Union[argparse.Namespace, int]:
    """The parsed options, or the exit status when parsing ended the command (--help, or an error)."""
    try:
        return parser.parse_args(argv)
    except UsageError as exc:
        return fail(parser.prog, str(exc))
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0


def tolerant_output() -> None:
    """Print what cannot be encoded as "?" rather than crash mid-transcript: recorded text may hold any
    character, and a redirected stdout on Windows is not UTF-8."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="replace")


def fail(prog: str, message: str) -> int:
    print(f"{prog}: error: {message} (see {prog} --help)", file=sys.stderr)
    return USAGE_ERROR


def print_warnings(session: Session) -> None:
    """What reading a session found wrong (damaged lines, …), on stderr."""
    for line in session.warnings():
        print(f"chatproxy: warning: {line}", file=sys.stderr)


def local_time(moment: Optional[datetime.datetime]) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S %z") if moment else "-"
