"""OpenAI (legacy) Completions (`POST …/completions`), streamed or not.

The request is one prompt string that a frontend rendered from a chat with some template:
templates.py recognises the template and reads the turns back (an open assistant turn at the end
is the start of the reply: its prefill). A reply's `choices[i].text`, or a stream's chunks, continue it.
The speaker names the template supplied go to `meta.names` (the request's stop strings help tell the
user from the characters), the presets' own turns to `meta.template_text`. A prompt that leaves the
user's turn open asks the model to write the user's next message (SillyTavern's Impersonate), one that
asks for an unnamed reply in a chat whose replies all carry names is a quiet prompt: side requests.
"""

from __future__ import annotations

from typing import Any, Dict, List

from chatproxy.apis import Choice, ImageSink, NotRecordable, Reply, Request
from chatproxy.apis.chat_completions import accumulate
from chatproxy.apis.openai_completions import completion_choices
from chatproxy.apis.templates import parse_prompt

NO_TEMPLATE_NOTE = "prompt in no known chat template: recorded as one user turn"


def read_request(request: Dict[str, Any], save_image: ImageSink) -> Request:
    parsed = parse_prompt(_single_prompt(request.get("prompt")), _stops(request))
    meta: Dict[str, Any] = {"template": parsed.template}
    if parsed.template == "none":
        meta["note"] = NO_TEMPLATE_NOTE
    if parsed.names:
        meta["names"] = parsed.names
    if parsed.template_text:
        meta["template_text"] = list(parsed.template_text)
    if parsed.side:
        meta["side_request"] = parsed.side
    return Request(parsed.messages, None, parsed.prefill, meta, housekeeping=parsed.side)


def _stops(request: Dict[str, Any]) -> List[str]:
    """The stop strings: OpenAI's `stop` (a string or a list), and `stopping_strings` as
    text-generation-webui names them (SillyTavern sends both)."""
    stops: List[str] = []
    for key in ("stop", "stopping_strings"):
        value = request.get(key)
        values = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        stops.extend(item for item in values if isinstance(item, str))
    return stops


def read_reply(body: Dict[str, Any]) -> Reply:
    choices = [
        Choice(i, {"role": "assistant", "content": text}, reason) for i, text, reason in completion_choices(body)
    ]
    usage = body.get("usage")
    return Reply(choices, body.get("model"), body.get("id"), usage if isinstance(usage, dict) else None)


def read_stream(events: List[Dict[str, Any]]) -> Reply:
    return accumulate(events)


def _single_prompt(prompt: Any) -> str:
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise NotRecordable("prompt is not a single string (batched or token prompts are not recorded)")
    return prompt
