"""The canonical message form every API is parsed into, and the small readers every rendering shares.

A message is a dict: `role` (system, user, assistant, tool), `content` (text, with a placeholder
where an image, audio or file stood), and where present `images` (paths or URLs, one per
IMAGE placeholder), `reasoning`, `tool_calls` ([{id, name, arguments}], arguments as JSON text) and
`tool_call_id`. Values read from recorded JSON are checked, never trusted:
`as_text` and `as_list` give "" and [] for anything of the wrong type.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List

Message = Dict[str, Any]

IMAGE = "<image>"
AUDIO = "<audio>"
VIDEO = "<video>"
FILE = "<file>"

# LLaMA-Factory's IMAGE/VIDEO/AUDIO_PLACEHOLDER (extras/constants.py) and their unbacked spellings:
# a placeholder with no file behind it would make the trainer look for one.
UNBACKED = {IMAGE: "[image]", VIDEO: "[video]", AUDIO: "[audio]"}


def as_text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def as_list(value: Any) -> List[Any]:
    return value if isinstance(value, list) else []


def neutral(value: str, keep_images: bool = False) -> str:
    """Media placeholders spelled so that no trainer takes them for one (images kept if asked)."""
    for token, spelling in UNBACKED.items():
        if not (keep_images and token == IMAGE):
            value = value.replace(token, spelling)
    return value


def encode_json(value: Any) -> bytes:
    """Compact UTF-8 JSON, as the journal stores it and the thread tree hashes it."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (from a "\\ud800" escape in the request) has no UTF-8 form: escape it.
        return json.dumps(value, separators=(",", ":")).encode("ascii")
