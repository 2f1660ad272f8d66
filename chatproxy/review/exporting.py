"""Export from the review page: the page's selection as `chatproxy export` arguments, then export's own code.

Every filter of the list is an `export` option (selection.py defines both), so the command line shown
beside the count selects exactly what the list does, and writes exactly the records counted and offered
for download. Export's own rules still apply on top: conversations discarded in the review and replies cut
short are left out unless the page asks for them (`with_discarded`, `with_incomplete`), as on the command
line (--include-discarded, --keep-incomplete).

The conversations are those the catalogue has read (the same collection export reads), so nothing is read
twice; the records are made by export's own `take`. Results are kept per settings until the sessions or
the marks change. The running proxy serves the page too, and the proxy process never loads
chatproxy.commands until the page asks for an export (tests/test_layout.py): export is imported inside the
functions here.
"""

from __future__ import annotations

import argparse
import io
import shlex
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple

from chatproxy.review import selection

if TYPE_CHECKING:
    from chatproxy.review.catalogue import Catalogue

DEFAULT_PROFILE = "messages"
KEPT_RESULTS = 4  # exports remembered (a count, then its download, for a few profiles)
FEATURE_FLAGS = {"1": "--with", "0": "--without"}
# The page's filters that are an export option with the value as the page has it.
OPTIONS = (
    ("q", "--search"),
    ("session", "--in-session"),
    ("since", "--since"),
    ("until", "--until"),
    ("model", "--model"),
    ("api", "--api"),
    ("tag", "--tag"),
    ("min_rating", "--min-rating"),
    ("max_turns", "--max-turns"),
    ("max_chars", "--max-chars"),
)


class ExportRefused(ValueError):
    """The selection or the profile cannot be exported; str(exc) is one line for the user."""


def profiles() -> List[str]:
    from chatproxy.commands import export

    for action in export.build_parser()._actions:
        if action.dest == "format" and action.choices is not None:
            return sorted(str(choice) for choice in action.choices)
    return [DEFAULT_PROFILE]


def arguments(params: Mapping[str, str], names: Optional[List[str]], folder: Path) -> List[str]:
    """The `export` arguments (without --out) for the page's selection; raises ExportRefused for a filter
    the page cannot have sent."""
    try:
        selection.from_params(params)  # the list's own reading of the filters: refuse what it refuses
    except selection.SelectionError as exc:
        raise ExportRefused(str(exc)) from None

    def given(name: str) -> str:
        return params.get(name, "").strip()

    argv: List[str] = list(names) if names is not None else ["--all"]
    argv += ["--datasets", str(folder), "--format", given("profile") or DEFAULT_PROFILE]
    for name, option in OPTIONS:
        if given(name):
            argv += [option, given(name)]
    for name, option in (("min_turns", "--min-turns"), ("min_chars", "--min-chars")):
        if given(name) and int(given(name)):
            argv += [option, given(name)]
    for name in selection.FEATURES:
        if given(name):
            argv += [FEATURE_FLAGS[given(name)], name]
    status = given("status")
    if status:
        argv += ["--only", status]
    elif given("with_discarded") == "1":
        argv.append("--include-discarded")
    complete = given("complete")
    if complete == "0":
        argv.append("--only-incomplete")
    elif complete != "1" and given("with_incomplete") == "1":
        argv.append("--keep-incomplete")
    return argv


def command_line(argv: List[str], out_name: str) -> str:
    return shlex.join(["python", "-m", "chatproxy", "export", *argv, "--out", out_name])


class Exporter:
    """The page's exports over one catalogue, the last few remembered."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue
        self._kept: Dict[Tuple[Any, ...], Dict[str, Any]] = {}
        self._lock = threading.Lock()

    def run(self, params: Mapping[str, str]) -> Dict[str, Any]:
        """What export makes of the selection: the records (encoded), the tally, the command line."""
        from chatproxy.commands import export
        from chatproxy.commands.common import UsageError
        from chatproxy.config import ConfigError

        catalogue = self.catalogue
        argv = arguments(params, catalogue.names, catalogue.folder)
        profile = argv[argv.index("--format") + 1]
        suffix = ".jsonl" if params.get("as", "jsonl") == "jsonl" else ".json"
        out_name = f"{profile}{suffix}"
        parser = export.build_parser()
        try:
            args = parser.parse_args(argv + ["--out", str(Path(tempfile.gettempdir()) / out_name)])
            options = export.options_from(args)
        except (argparse.ArgumentError, UsageError, ConfigError) as exc:
            raise ExportRefused(str(exc)) from None
        key = (tuple(argv), suffix, catalogue.version())
        with self._lock:
            kept = self._kept.get(key)
        if kept is not None:
            return dict(kept)
        listed = catalogue.matching(params, whole=True)
        snapshot = catalogue.snapshot()
        key = (tuple(argv), suffix, snapshot.version)
        collected = export.Collected([], export.Tally(), set())
        tally = collected.tally
        tally.sessions, tally.records = snapshot.sessions, snapshot.records
        tally.duplicates, tally.merged = snapshot.duplicates, snapshot.merged
        # The catalogue keeps replies cut short (the list shows them); export reads them only when asked to.
        marked = [(c, m) for c, m in snapshot.marked if options.keep_incomplete or c.node.complete]
        export.take(marked, options, collected, export.Progress(io.StringIO()))
        refused = [
            {"reason": reason, "count": len(where), "examples": where[:3]}
            for reason, where in sorted(tally.reasons.items(), key=lambda item: -len(item[1]))
        ]
        result = {
            "profile": profile,
            "records": len(collected.records),
            "listed": len(listed),
            "discarded": 0 if options.include_discarded else sum(1 for _, m in listed if m.status == "discard"),
            "incomplete": 0 if options.keep_incomplete else sum(1 for r, _ in listed if not r.summary.complete),
            "conversations": tally.conversations,
            "filtered": tally.filtered,
            "duplicates": tally.duplicates,
            "skipped": tally.skipped,
            "refused": refused,
            "command": command_line(argv, out_name),
            "file": out_name,
            "data": export.encode_dataset(collected.records, suffix == ".jsonl"),
        }
        with self._lock:
            self._kept = {k: v for k, v in self._kept.items() if k[2] == snapshot.version}
            while len(self._kept) >= KEPT_RESULTS:
                self._kept.pop(next(iter(self._kept)))
            self._kept[key] = result
        return dict(result)
