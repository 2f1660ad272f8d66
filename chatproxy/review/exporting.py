"""Export from the review page: the page's selection as `chatproxy export` arguments, then export's own code.

The running proxy serves the page too, and the proxy process never loads chatproxy.commands (see
tests/test_layout.py): export is imported inside the functions here, only when an export is asked for.
The page's filters that `export` has an option for become that option; the others (search, API, has
tools / reasoning / images, length ranges) are listed back as not applied, so the count shown is exactly
what the command line printed beside it writes.
"""

from __future__ import annotations

import argparse
import io
import shlex
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

# Page filters export has no option for: shown on the page as "not applied".
NOT_EXPORTABLE = {
    "q": "search",
    "api": "API",
    "tools": "has tools",
    "reasoning": "has reasoning",
    "images": "has images",
    "max_turns": "max turns",
    "min_chars": "min length",
    "max_chars": "max length",
}
DEFAULT_PROFILE = "messages"


class ExportRefused(ValueError):
    """The selection or the profile cannot be exported; str(exc) is one line for the user."""


def profiles() -> List[str]:
    from chatproxy.commands import export

    for action in export.build_parser()._actions:
        if action.dest == "format" and action.choices is not None:
            return sorted(str(choice) for choice in action.choices)
    return [DEFAULT_PROFILE]


def arguments(params: Mapping[str, str], names: Optional[List[str]], folder: Path) -> Tuple[List[str], List[str]]:
    """The `export` arguments for the page's selection (without --out), and the filters left out."""
    argv: List[str] = []
    if params.get("session"):
        argv.append(params["session"])
    elif names is not None:
        argv.extend(names)
    else:
        argv.append("--all")
    argv += ["--datasets", str(folder), "--format", params.get("profile") or DEFAULT_PROFILE]
    for name, option in (("since", "--since"), ("until", "--until"), ("model", "--model"), ("tag", "--tag")):
        if params.get(name):
            argv += [option, params[name]]
    status = params.get("status", "")
    left_out = [label for name, label in NOT_EXPORTABLE.items() if params.get(name)]
    if status in ("kept", "unmarked"):
        argv += ["--only", status]
    elif status == "discarded":
        left_out.append("discarded only (export leaves discarded out)")
    if params.get("min_rating"):
        argv += ["--min-rating", params["min_rating"]]
    if params.get("min_turns") and params["min_turns"] != "0":
        argv += ["--min-turns", params["min_turns"]]
    if params.get("complete") == "0":
        argv.append("--keep-incomplete")
    return argv, left_out


def run(params: Mapping[str, str], names: Optional[List[str]], folder: Path) -> Dict[str, Any]:
    """What export makes of the selection: the records (encoded), the tally, the command line."""
    from chatproxy.commands import export
    from chatproxy.commands.common import UsageError

    argv, left_out = arguments(params, names, folder)
    profile = argv[argv.index("--format") + 1]
    suffix = ".jsonl" if params.get("as", "jsonl") == "jsonl" else ".json"
    out_name = f"{profile}{suffix}"
    parser = export.build_parser()
    parser.exit_on_error = False
    try:
        args = parser.parse_args(argv + ["--out", str(Path(tempfile.gettempdir()) / out_name)])
        options = export.options_from(args)
    except SystemExit:
        raise ExportRefused(f"export cannot take these settings (profile {profile!r}?)") from None
    except (argparse.ArgumentError, UsageError, ValueError) as exc:  # ValueError: ConfigError
        raise ExportRefused(str(exc)) from None
    collected = export.collect(options, export.Progress(io.StringIO()))
    tally = collected.tally
    refused = [
        {"reason": reason, "count": len(where), "examples": where[:3]}
        for reason, where in sorted(tally.reasons.items(), key=lambda item: -len(item[1]))
    ]
    command = shlex.join(["python", "-m", "chatproxy", "export", *argv, "--out", out_name])
    return {
        "profile": profile,
        "records": len(collected.records),
        "conversations": tally.conversations,
        "filtered": tally.filtered,
        "duplicates": tally.duplicates,
        "skipped": tally.skipped,
        "refused": refused,
        "not_applied": left_out,
        "command": command,
        "file": out_name,
        "data": export.encode_dataset(collected.records, suffix == ".jsonl"),
    }
