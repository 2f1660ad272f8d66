"""Export profiles: for each consumer, how a recorded conversation becomes a record it accepts.

A profile builds a record from canonical messages and then runs it through the validators of its
consumers (trainer_rules.py). A conversation that cannot be made valid raises `Unusable` with a one-line
reason, and is counted and explained rather than written.

- sharegpt: LLaMA-Factory's ShareGPT convention, exactly as the live SESSION.json (sharegpt.py), with
  image paths made absolute; an image that is not a local file any more (an http URL, a deleted file)
  gets the "[image]" treatment of sharegpt.py rule 10. Every record has "tools" ("" when none) and
  "images" ([] when none), which LLaMA-Factory 0.9.5 reads as no tools and no images.
- sharegpt-plain: human/gpt turns of two keys each, for FastChat and Unsloth. Neither has a place for a
  system prompt that both read (FastChat's roles table knows only human and gpt; Unsloth's templates read
  a system turn but FastChat raises on it), so the system prompt is put before the first human message,
  a blank line between, as Unsloth's Mistral and Gemma templates do themselves. Tool use is rendered as
  text rather than dropped -- an answer built on a tool result it no longer shows would teach the model
  to invent results: calls become <tool_call>{"name", "arguments"}</tool_call> lines in the gpt turn,
  results <tool_response>...</tool_response> in the human turn, and for a chat that uses tools the tool
  list leads the first human message as <tools>...</tools> (the Hermes/Qwen convention). No images.
- openai: OpenAI chat fine-tuning JSONL (openai_chat.py), tools as objects, as OpenAI requires. Not for
  Hugging Face `datasets`: Arrow infers one type per column across records, so different tool schemas
  either fail to load (datasets <= 4.0.0: "type": ["string", "null"] beside "type": "string" raises
  ArrowInvalid) or come back with the other tools' keys added as null.
- messages: the same records with `tools` as one JSON string, which reads back from `datasets` byte
  for byte and which TRL 1.16 (trl/trainer/sft_trainer.py, tokenize_fn: json.loads a string) and
  Axolotl 0.19 (prompt_strategies/chat_template.py, _get_tools: json.loads a string) both take.

- dpo: preference pairs for TRL's DPOTrainer, conversational with an explicit prompt: "prompt",
  "chosen" and "rejected" as lists of messages (the `messages` rendering, split after the prompt).
- dpo-sharegpt: the same pairs for LLaMA-Factory's `"ranking": true` ShareGPT datasets: "conversations"
  ending with the human turn, "chosen" and "rejected" one gpt (or function_call) turn each, and the
  "tools" and "images" columns as in `sharegpt`.
Pairs come from the review marks (commands/preferences.py): an edited assistant turn against the
recorded one, and branches of one chat rated differently.

Every profile refuses a conversation whose tool call arguments are not a JSON object (messages.py
tool_call_problem; the live SESSION.json leaves the same conversations out).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from chatproxy.chats.messages import as_text, is_local_image, tool_call_problem
from chatproxy.chats.openai_chat import openai_tools, to_openai_chat
from chatproxy.chats.sharegpt import localise_images, to_sharegpt
from chatproxy.commands.trainer_rules import (
    axolotl_problems,
    fastchat_problems,
    llamafactory_problems,
    llamafactory_ranking_problems,
    openai_problems,
    trl_preference_problems,
    trl_problems,
    unsloth_problems,
)

__all__ = ["PAIR_PROFILES", "PROFILES", "Profile", "Unusable", "tool_call_problem"]

Message = Dict[str, Any]
Record = Dict[str, Any]
Builder = Callable[[List[Message], Optional[List[Any]], str, Path], Optional[Record]]
PairBuilder = Callable[[List[Message], Message, Message, Optional[List[Any]], str, Path], Optional[Record]]
Validator = Callable[[Any], List[str]]


class Unusable(Exception):
    """This conversation cannot be made valid for the profile; str(exc) says why, in one line."""


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    summary: str
    build: Builder
    validators: Tuple[Tuple[str, Validator], ...]
    build_pair: Optional[PairBuilder] = None  # set for the preference profiles, which write pairs

    @property
    def pairs(self) -> bool:
        return self.build_pair is not None

    def pair_record(
        self,
        prompt: List[Message],
        chosen: Message,
        rejected: Message,
        tools: Optional[List[Any]],
        reasoning: str,
        image_root: Path,
    ) -> Record:
        """The preference record to write, or Unusable."""
        assert self.build_pair is not None
        problem = tool_call_problem(prompt + [chosen, rejected])
        if problem:
            raise Unusable(problem)
        record = self.build_pair(prompt, chosen, rejected, tools, reasoning, image_root)
        if record is None:
            raise Unusable("the prompt and the two replies do not make a pair")
        return self._checked(record)

    def record(self, messages: List[Message], tools: Optional[List[Any]], reasoning: str, image_root: Path) -> Record:
        """The record to write, or Unusable."""
        problem = tool_call_problem(messages)
        if problem:
            raise Unusable(problem)
        record = self.build(messages, tools, reasoning, image_root)
        if record is None:
            raise Unusable(_empty_reason(messages))
        return self._checked(record)

    def _checked(self, record: Record) -> Record:
        for consumer, validator in self.validators:
            problems = validator(record)
            if problems:
                raise Unusable(f"{consumer} would reject it: {problems[0]}")
        return record


# ---------------------------------------------------------------------------------------------------------
# Checks shared by every profile
# ---------------------------------------------------------------------------------------------------------


def _empty_reason(messages: List[Message]) -> str:
    if not any(m.get("role") == "user" for m in messages):
        return "no user message"
    return "no assistant reply after the first user message"


# ---------------------------------------------------------------------------------------------------------
# sharegpt
# ---------------------------------------------------------------------------------------------------------


def _build_sharegpt(
    messages: List[Message], tools: Optional[List[Any]], reasoning: str, image_root: Path
) -> Optional[Record]:
    record = to_sharegpt(messages, tools, reasoning)
    if record is None:
        return None
    _localise_images(record, image_root)
    # Both columns in every record, as in the live SESSION.json: LLaMA-Factory reads every column its
    # dataset_info.json entry names from every example (and from each file of a --split).
    return {
        "conversations": record["conversations"],
        "tools": record.get("tools", ""),
        "images": record.get("images", []),
    }


def _localise_images(record: Record, image_root: Path) -> None:
    """Absolute paths for image files that exist; "[image]" for the placeholders of any that do not."""

    def locate(entry: str) -> str:
        if not is_local_image(entry):
            return ""
        path = Path(entry) if Path(entry).is_absolute() else image_root / entry
        return str(path.resolve()) if path.is_file() else ""

    localise_images(record, locate)


# ---------------------------------------------------------------------------------------------------------
# sharegpt-plain
# ---------------------------------------------------------------------------------------------------------


def _build_plain(
    messages: List[Message], tools: Optional[List[Any]], reasoning: str, image_root: Path
) -> Optional[Record]:
    record = to_sharegpt(_as_text_chat(messages), None, reasoning)
    if record is None:
        return None
    turns = record["conversations"]
    preface = [turns.pop(0)["value"]] if turns[0]["from"] == "system" else []
    if _uses_tools(messages):
        preface.append(_tools_block(tools))
    texts = [text for text in preface + [turns[0]["value"]] if text]
    turns[0]["value"] = "\n\n".join(texts)
    return {"conversations": turns}


def _as_text_chat(messages: List[Message]) -> List[Message]:
    """The chat with tool use written out as text and images left out, ready for to_sharegpt."""
    chat: List[Message] = []
    started = False
    for message in messages:
        role = message.get("role")
        started = started or role == "user"
        # Without its "images", a message's placeholders are neutralised by to_sharegpt (rule 10).
        text = as_text(message.get("content"))
        if role == "tool":
            if started:
                chat.append({"role": "user", "content": "<tool_response>\n" + text + "\n</tool_response>"})
            continue
        plain: Message = {"role": role, "content": text}
        if isinstance(message.get("reasoning"), str):
            plain["reasoning"] = message["reasoning"]
        if role == "assistant" and started and message.get("tool_calls"):
            calls = [_call_text(call) for call in message["tool_calls"] if isinstance(call, dict)]
            plain["content"] = "\n".join(part for part in [text] + calls if part)
        chat.append(plain)
    return chat


def _call_text(call: Message) -> str:
    raw = as_text(call.get("arguments"))
    try:
        arguments: Any = json.loads(raw) if raw.strip() else {}
    except ValueError:
        arguments = raw  # refused earlier by tool_call_problem; kept readable all the same
    body = json.dumps({"name": call.get("name", ""), "arguments": arguments}, ensure_ascii=False)
    return "<tool_call>\n" + body + "\n</tool_call>"


def _uses_tools(messages: List[Message]) -> bool:
    return any(m.get("role") == "tool" or m.get("tool_calls") for m in messages)


def _tools_block(tools: Optional[List[Any]]) -> str:
    functions = openai_tools(tools)
    if not functions:
        return ""
    lines = [json.dumps(function, ensure_ascii=False) for function in functions]
    return "<tools>\n" + "\n".join(lines) + "\n</tools>"


# ---------------------------------------------------------------------------------------------------------
# openai
# ---------------------------------------------------------------------------------------------------------


def _build_openai(
    messages: List[Message], tools: Optional[List[Any]], reasoning: str, image_root: Path
) -> Optional[Record]:
    return to_openai_chat(messages, tools, reasoning)


def _build_messages(
    messages: List[Message], tools: Optional[List[Any]], reasoning: str, image_root: Path
) -> Optional[Record]:
    return to_openai_chat(messages, tools, reasoning, tools_as_text=True)


# ---------------------------------------------------------------------------------------------------------
# dpo, dpo-sharegpt
# ---------------------------------------------------------------------------------------------------------


def _no_single(
    messages: List[Message], tools: Optional[List[Any]], reasoning: str, image_root: Path
) -> Optional[Record]:
    return None  # the preference profiles write pairs only (Profile.pair_record)


def _pair_sides(
    prompt: List[Message],
    chosen: Message,
    rejected: Message,
    render: Callable[[List[Message]], Optional[Record]],
    key: str,
) -> Optional[Tuple[Record, Record]]:
    """The prompt rendered once with each reply; None unless both render and share all but their last turn
    (a reply merged into the prompt's last turn is not a pair of answers)."""
    sides = [render(prompt + [reply]) for reply in (chosen, rejected)]
    first, second = sides
    if first is None or second is None or len(first[key]) < 2 or len(second[key]) < 2:
        return None
    return (first, second) if first[key][:-1] == second[key][:-1] else None


def _build_trl_pair(
    prompt: List[Message],
    chosen: Message,
    rejected: Message,
    tools: Optional[List[Any]],
    reasoning: str,
    image_root: Path,
) -> Optional[Record]:
    def render(messages: List[Message]) -> Optional[Record]:
        return to_openai_chat(messages, tools, reasoning, tools_as_text=True)

    sides = _pair_sides(prompt, chosen, rejected, render, "messages")
    if sides is None:
        return None
    good, bad = sides[0]["messages"], sides[1]["messages"]
    return {"prompt": good[:-1], "chosen": good[-1:], "rejected": bad[-1:]}


def _build_ranking_pair(
    prompt: List[Message],
    chosen: Message,
    rejected: Message,
    tools: Optional[List[Any]],
    reasoning: str,
    image_root: Path,
) -> Optional[Record]:
    def render(messages: List[Message]) -> Optional[Record]:
        return _build_sharegpt(messages, tools, reasoning, image_root)

    sides = _pair_sides(prompt, chosen, rejected, render, "conversations")
    if sides is None:
        return None
    good, bad = sides
    return {
        "conversations": good["conversations"][:-1],
        "chosen": good["conversations"][-1],
        "rejected": bad["conversations"][-1],
        "tools": good["tools"],
        "images": good["images"],
    }


PROFILES: Dict[str, Profile] = {
    profile.name: profile
    for profile in (
        Profile(
            "sharegpt",
            "LLaMA-Factory ShareGPT: system, human/gpt, function_call/observation, tools, images",
            _build_sharegpt,
            (("LLaMA-Factory", llamafactory_problems),),
        ),
        Profile(
            "sharegpt-plain",
            "human/gpt only, two keys per message, text only: FastChat, Unsloth",
            _build_plain,
            (("FastChat", fastchat_problems), ("Unsloth", unsloth_problems)),
        ),
        Profile(
            "openai",
            "OpenAI chat fine-tuning JSONL (messages, tools as objects): upload to OpenAI",
            _build_openai,
            (("OpenAI", openai_problems),),
        ),
        Profile(
            "messages",
            "the same messages, tools as one JSON string: TRL SFTTrainer, Axolotl chat_template, datasets",
            _build_messages,
            (("Axolotl", axolotl_problems), ("TRL", trl_problems)),
        ),
    )
}

# The preference profiles write pairs, not conversations (Profile.pair_record): kept apart so that what
# iterates over PROFILES to render one conversation never meets them.
PAIR_PROFILES: Dict[str, Profile] = {
    profile.name: profile
    for profile in (
        Profile(
            "dpo",
            "preference pairs from the review marks, prompt/chosen/rejected messages: TRL DPOTrainer",
            _no_single,
            (("TRL", trl_preference_problems),),
            _build_trl_pair,
        ),
        Profile(
            "dpo-sharegpt",
            "preference pairs from the review marks, ShareGPT with chosen/rejected: LLaMA-Factory ranking",
            _no_single,
            (("LLaMA-Factory", llamafactory_ranking_problems),),
            _build_ranking_pair,
        ),
    )
}
