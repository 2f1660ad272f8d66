"""OpenAI (legacy) Completions (`POST …/completions`), streamed or not.

The request is one prompt string that a frontend rendered from a chat with some template:
templates.py recognises the template and reads the turns back (an open assistant turn at the end
is the start of the reply: its prefill). A reply's `choices[i].text`, or a stream's chunks, continue it.
The speaker names the template supplied go to `meta.names`; a prompt that leaves the user's turn open
asks the model to write the user's next message (SillyTavern's Impersonate): a side request.
"""

from __future__ import annotations

from typing import Any, Dict, List

from chatproxy.apis import Choice, ImageSink, NotRecordable, Reply, Request
from chatproxy.apis.chat_completions import accumulate
from chatproxy.apis.openai_completions import completion_choices
from chatproxy.apis.templates import parse_prompt

NO_TEMPLATE_NOTE = "prompt in no known chat template: recorded as one user turn"


def read_request(request: Dict[str, Any], save_image: ImageSink) -> Request:
    parsed = parse_prompt(_single_prompt(request.get("prompt")))
    meta: Dict[str, Any] = {"template": parsed.template}
    if parsed.template == "none":
        meta["note"] = NO_TEMPLATE_NOTE
    if parsed.names:
        meta["names"] = parsed.names
    side = "impersonate" if parsed.open_role == "user" else None
    return Request(parsed.messages, None, parsed.prefill, meta, housekeeping=side)


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
