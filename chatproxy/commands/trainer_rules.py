"""The published rules of the trainers that read our exports, as validators.

Each function takes one exported record and returns readable reasons its consumer would reject it, crash
on it, or silently drop it; an empty list means it loads. The export runs every record through the
validators of its profile and writes only those with no problem, so these functions are also the
specification of what each profile must produce. Each check names the code it mirrors, with the version
it was last read against (the wheels on PyPI; re-read them when a trainer's version moves):

- LLaMA-Factory 0.9.5: `sharegpt.llamafactory_problems` (src/llamafactory/data/converter.py,
  SharegptDatasetConverter; formatter.py FunctionFormatter and ToolFormatter; mm_plugin.py;
  processor/supervised.py).
- FastChat (fschat 0.2.36, not re-read for this revision): fastchat/train/train.py `preprocess` and
  train_with_template.py `apply_prompt_template`.
- Unsloth (unsloth_zoo, not re-read for this revision): unsloth_zoo/dataset_utils.py
  `standardize_data_formats` (exported by unsloth.chat_templates as `standardize_sharegpt`) and the
  templates in unsloth/chat_templates.py.
- OpenAI: the chat fine-tuning data format (one JSON object per line with "messages" and optional "tools";
  tool calls as in Chat Completions, arguments a JSON string) and the format checks of the OpenAI
  cookbook's "Data preparation and analysis for chat model fine-tuning".
- Axolotl 0.19.0: src/axolotl/prompt_strategies/chat_template.py (ChatTemplatePrompter,
  ChatTemplateStrategy: _get_messages, _get_tools, transform_message).
- TRL 1.16.0: trl/trainer/sft_trainer.py (tokenize_fn) and trl/data_utils.py (is_conversational).
"""

from __future__ import annotations

import json
from typing import Any, List

from chatproxy.chats.sharegpt import llamafactory_problems

__all__ = [
    "axolotl_problems",
    "fastchat_problems",
    "llamafactory_problems",
    "llamafactory_ranking_problems",
    "openai_problems",
    "trl_preference_problems",
    "trl_problems",
    "unsloth_dataset_problems",
    "unsloth_problems",
]

# ---------------------------------------------------------------------------------------------------------
# FastChat
# ---------------------------------------------------------------------------------------------------------

FASTCHAT_ROLES = ("human", "gpt")


def fastchat_problems(record: Any) -> List[str]:
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
        # SupervisedDataset: sources = [example["conversations"] for example in raw_data]
        return ["no conversations list"]
    turns = record["conversations"]
    if not turns:
        return ["conversations is empty"]
    problems = []
    for position, turn in enumerate(turns):
        role = turn.get("from") if isinstance(turn, dict) else None
        if role not in FASTCHAT_ROLES:
            # roles = {"human": conv.roles[0], "gpt": conv.roles[1]}; roles[sentence["from"]] -> KeyError
            return [f"turn {position} is from {role!r}; FastChat knows only 'human' and 'gpt'"]
        if not isinstance(turn.get("value"), str):
            # conv.append_message(role, sentence["value"]) is joined into one prompt string
            problems.append(f"turn {position} has no string value")
        # assert role == conv.roles[j % 2]: strictly human, gpt, human, gpt, ...
        if role != FASTCHAT_ROLES[position % 2]:
            # A leading non-human turn is dropped ("Skip the first one if it is not from human"), which
            # shifts every later turn; the export never relies on that.
            problems.append(f"turn {position} is {role!r} where {FASTCHAT_ROLES[position % 2]!r} must be")
            break
    if turns[-1].get("from") != "gpt":
        # Targets are masked to the gpt parts; a trailing human turn is trained on nothing.
        problems.append("the last turn is not from 'gpt'")
    return problems


# ---------------------------------------------------------------------------------------------------------
# Unsloth
# ---------------------------------------------------------------------------------------------------------

# standardize_data_formats' default aliases (aliases_for_system / _user / _assistant).
UNSLOTH_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "input": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "output": "assistant",
}
UNSLOTH_SAMPLE = 10  # it infers the key names from itertools.islice(dataset, 10)


def unsloth_problems(record: Any) -> List[str]:
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
        # `if "conversations" not in column_names: return dataset` -- nothing is standardised.
        return ["no conversations list"]
    turns = record["conversations"]
    if not turns:
        return ["conversations is empty"]
    problems = []
    for position, turn in enumerate(turns):
        if not isinstance(turn, dict) or set(turn) != {"from", "value"}:
            # assert(len(uniques.keys()) == 2): every message has the same two keys.
            return [f"turn {position} does not have exactly the keys 'from' and 'value'"]
        if not all(isinstance(value, str) for value in turn.values()):
            # "Unsloth: Cannot standardize non text datasets!"
            problems.append(f"turn {position} has a non-string field")
            continue
        role = UNSLOTH_ALIASES.get(turn["from"])
        if role is None:
            # TypeError("Unsloth: [...] are not in aliases. Please update aliases.")
            problems.append(f"turn {position} is from {turn['from']!r}, which is not one of Unsloth's aliases")
        elif role == "system" and position != 0:
            # Its templates read a system prompt only as messages[0]; elsewhere
            # raise_exception('Only user and assistant roles are supported!').
            problems.append(f"turn {position} is a system turn after the start")
    return problems


def unsloth_dataset_problems(records: List[Any]) -> List[str]:
    """The one rule that spans records: how standardize_data_formats tells the role key from the text key.

    It counts distinct values of each key over the first 10 records and takes the key with fewer distinct
    values as the role; if the texts are no more varied than the roles it picks the wrong key and fails.
    """
    roles, values = set(), set()
    for record in records[:UNSLOTH_SAMPLE]:
        for turn in record.get("conversations", ()) if isinstance(record, dict) else ():
            if isinstance(turn, dict):
                roles.add(turn.get("from"))
                values.add(turn.get("value"))
    if roles and len(values) <= len(roles):
        return [
            f"the first {UNSLOTH_SAMPLE} conversations hold only {len(values)} distinct texts for {len(roles)} "
            "roles; Unsloth's standardize_sharegpt would mistake the text for the role"
        ]
    return []


# ---------------------------------------------------------------------------------------------------------
# OpenAI chat fine-tuning
# ---------------------------------------------------------------------------------------------------------

OPENAI_ROLES = ("system", "user", "assistant", "tool")
OPENAI_MESSAGE_KEYS = {
    # The cookbook allows role, content, name, function_call and weight; tool calling adds tool_calls to
    # assistant messages and tool_call_id to tool messages.
    "system": {"role", "content", "name"},
    "user": {"role", "content", "name"},
    "assistant": {"role", "content", "name", "weight", "tool_calls", "function_call"},
    "tool": {"role", "content", "tool_call_id"},
}
OPENAI_RECORD_KEYS = {"messages", "tools", "parallel_tool_calls", "functions"}


def openai_problems(record: Any) -> List[str]:
    if not isinstance(record, dict):
        return ["record is not a JSON object"]  # cookbook: data_type
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return ["messages is missing or empty"]  # cookbook: missing_messages_list
    problems = [f"unrecognized key {key!r}" for key in sorted(set(record) - OPENAI_RECORD_KEYS)]
    for position, message in enumerate(messages):
        problems += [f"messages[{position}]: {p}" for p in _openai_message_problems(message)]
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        problems.append("no assistant message")  # cookbook: example_missing_assistant_message
    problems += _openai_tool_flow_problems(messages)
    problems += _openai_tools_problems(record.get("tools"))
    return problems


def _openai_message_problems(message: Any) -> List[str]:
    if not isinstance(message, dict):
        return ["not an object"]
    role = message.get("role")
    if role not in OPENAI_ROLES:
        return [f"unrecognized role {role!r}"]  # cookbook: unrecognized_role
    problems = [f"unrecognized key {key!r}" for key in sorted(set(message) - OPENAI_MESSAGE_KEYS[role])]
    content = message.get("content")
    if role == "assistant" and message.get("tool_calls"):
        # Chat Completions: content may be omitted on an assistant message that calls tools.
        if content is not None and not isinstance(content, str):
            problems.append("content is not a string")
        problems += _openai_call_problems(message["tool_calls"])
    elif role == "tool":
        if not isinstance(content, str):
            problems.append("tool content is not a string")
        if not isinstance(message.get("tool_call_id"), str) or not message["tool_call_id"]:
            problems.append("tool message without tool_call_id")
    elif not isinstance(content, str) or not content:
        problems.append("content is missing or empty")  # cookbook: missing_content
    return problems


def _openai_call_problems(calls: Any) -> List[str]:
    if not isinstance(calls, list):
        return ["tool_calls is not a list"]
    problems = []
    for position, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or call.get("type") != "function" or not _nonempty(call.get("id")):
            problems.append(f"tool_calls[{position}] needs id, type 'function' and function")
        elif not _nonempty(function.get("name")):
            problems.append(f"tool_calls[{position}] has no function name")
        elif not _json_object_text(function.get("arguments")):
            problems.append(f"tool_calls[{position}] arguments are not a JSON object in a string")
    return problems


def _openai_tool_flow_problems(messages: List[Any]) -> List[str]:
    """Chat Completions' ordering rules: a tool message answers a call of the assistant message before
    it, and every call is answered before the conversation moves on (the last message may call tools)."""
    open_ids: List[str] = []
    for position, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role == "tool":
            if message.get("tool_call_id") not in open_ids:
                return [f"messages[{position}]: tool result for no open tool call"]
            open_ids.remove(message["tool_call_id"])
            continue
        if open_ids:
            return [f"messages[{position}]: tool call {open_ids[0]!r} has no result before this message"]
        if role == "assistant" and isinstance(message.get("tool_calls"), list):
            open_ids = [c["id"] for c in message["tool_calls"] if isinstance(c, dict) and isinstance(c.get("id"), str)]
    return []


def _openai_tools_problems(tools: Any) -> List[str]:
    if tools is None:
        return []
    if not isinstance(tools, list) or not tools:
        return ["tools is not a non-empty list"]
    problems = []
    for position, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type") != "function" or not _nonempty(function.get("name")):
            problems.append(f"tools[{position}] is not {{'type': 'function', 'function': {{'name': ...}}}}")
        elif "parameters" in function and not isinstance(function["parameters"], dict):
            problems.append(f"tools[{position}] parameters is not a JSON schema object")
    return problems


# ---------------------------------------------------------------------------------------------------------
# Axolotl chat_template
# ---------------------------------------------------------------------------------------------------------

# Axolotl 0.19.0, prompt_strategies/chat_template.py: ChatTemplatePrompter's default roles mapping (used
# when the dataset config sets no `roles`).
AXOLOTL_ROLES = {"human", "user", "assistant", "gpt", "system", "tool"}


def axolotl_problems(record: Any) -> List[str]:
    """Axolotl 0.19.0 chat_template datasets with the default field_messages/field_tools."""
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list):
        # _get_messages: ValueError "Messages is null" / "Unknown messages format" (a JSON string is also
        # json.loads'ed there, but the export always writes a list).
        return ["messages (the default field_messages) is not a list"]
    problems = []
    for position, message in enumerate(messages):
        if not isinstance(message, dict):
            problems.append(f"messages[{position}] is not an object")
            continue
        if message.get("role") not in AXOLOTL_ROLES:
            # Unmapped roles reach the chat template as they are, which most templates reject.
            problems.append(f"messages[{position}] role {message.get('role')!r} is not in the default roles")
        if message.get("role") == "assistant" and not isinstance(message.get("content"), str):
            # transform_message copies only values that are not None; with split_thinking: true it then
            # reads transformed_message["content"] -> KeyError: 'content' and the dataset fails to prepare.
            problems.append(f"messages[{position}] is an assistant message without string content")
        for call in message.get("tool_calls") or ():
            arguments = call.get("function", {}).get("arguments") if isinstance(call, dict) else None
            # transform_message: json.loads(arguments) for string arguments, re-raising JSONDecodeError --
            # one bad call aborts the whole dataset's preparation.
            if isinstance(arguments, str) and not _json_text(arguments):
                problems.append(f"messages[{position}] has tool call arguments that are not JSON")
    problems += _axolotl_tools_problems(record.get("tools"))
    return problems


def _axolotl_tools_problems(tools: Any) -> List[str]:
    # _get_tools: None is no tools; a string is json.loads'ed (JSONDecodeError re-raised); the result
    # must be a list, else ValueError("Unknown tools format. Please convert it into a list[dict].").
    if tools is None:
        return []
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except (ValueError, RecursionError):
            return ["tools is a string that is not JSON"]
    if not isinstance(tools, list):
        return ["tools is not a list (or a JSON string of one)"]
    for position, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        # A string `parameters` is json.loads'ed the same way.
        if isinstance(function, dict) and isinstance(function.get("parameters"), str):
            if not _json_text(function["parameters"]):
                return [f"tools[{position}] parameters is a string that is not JSON"]
    return []


# ---------------------------------------------------------------------------------------------------------
# TRL SFTTrainer
# ---------------------------------------------------------------------------------------------------------


def trl_problems(record: Any) -> List[str]:
    """TRL 1.16.0 SFTTrainer on a conversational ("messages") dataset."""
    messages = record.get("messages") if isinstance(record, dict) else None
    # data_utils.is_conversational: a list whose first element is a dict with "role"; otherwise the
    # example is taken for plain text and dataset_text_field ("text") is looked up -- a KeyError.
    if not isinstance(messages, list) or not messages or not isinstance(messages[0], dict):
        return ["messages is not a non-empty list of messages"]
    if "role" not in messages[0]:
        return ["messages[0] has no role"]
    problems = []
    for position, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            problems.append(f"messages[{position}] is not a message with a role")
        elif not isinstance(message.get("content"), str):
            # apply_chat_template renders content through the model's template; None reaches Jinja as
            # "None" in templates that print it.
            problems.append(f"messages[{position}] has no string content")
    tools = record.get("tools")
    if tools is not None:
        # sft_trainer.py tokenize_fn: tools = json.loads(tools) if isinstance(tools, str) else tools,
        # then passed to apply_chat_template(tools=...), which wants a list of JSON schemas.
        try:
            parsed = json.loads(tools) if isinstance(tools, str) else tools
        except (ValueError, RecursionError):
            return problems + ["tools is a string that is not JSON"]
        if not isinstance(parsed, list):
            problems.append("tools is not a list (or a JSON string of one)")
    return problems


# ---------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------


def _nonempty(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _json_text(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _json_object_text(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return isinstance(json.loads(value), dict)
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------------------
# Preference pairs (export --format dpo, dpo-sharegpt)
# ---------------------------------------------------------------------------------------------------------

SHAREGPT_ASKING = ("human", "observation")
SHAREGPT_ANSWERING = ("gpt", "function_call")


def trl_preference_problems(record: Any) -> List[str]:
    """TRL's DPOTrainer on a conversational preference dataset with an explicit prompt (TRL docs,
    "Dataset formats": {"prompt": [messages], "chosen": [messages], "rejected": [messages]};
    trl/data_utils.py is_conversational looks at the first element of the first of prompt/chosen/...,
    and maybe_apply_chat_template renders the prompt with add_generation_prompt=True when its last
    message is not the assistant's, then chosen and rejected each after the prompt)."""
    if not isinstance(record, dict):
        return ["record is not a JSON object"]
    problems = []
    for column in ("prompt", "chosen", "rejected"):
        messages = record.get(column)
        if not isinstance(messages, list) or not messages:
            return [f"{column} is not a non-empty list of messages"]
        for position, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                problems.append(f"{column}[{position}] is not a message with a role")
            elif not isinstance(message.get("content"), str):
                problems.append(f"{column}[{position}] has no string content")
    if problems:
        return problems
    if record["prompt"][-1].get("role") not in ("user", "tool"):
        # A prompt ending in an assistant turn is continued, not answered: the pair would train on a
        # continuation of a message the model did not write.
        problems.append("the prompt does not end with a user or tool message")
    for column in ("chosen", "rejected"):
        if [m.get("role") for m in record[column]] != ["assistant"]:
            problems.append(f"{column} is not one assistant message")
    if record["chosen"] == record["rejected"]:
        problems.append("chosen and rejected are the same")
    return problems


def llamafactory_ranking_problems(record: Any) -> List[str]:
    """LLaMA-Factory 0.9.5, a ShareGPT dataset with `"ranking": true` (src/llamafactory/data/converter.py,
    SharegptDatasetConverter): an optional leading system turn is taken out; the other turns must
    alternate human/observation and gpt/function_call and, for ranking, be odd in number (they end with
    the asking turn); "chosen" and "rejected" are one turn each, from an answering tag ("Invalid role
    tag" otherwise). A broken example is dropped with a warning."""
    if not isinstance(record, dict):
        return ["record is not a JSON object"]
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns or not all(isinstance(t, dict) for t in turns):
        return ["conversations is missing or empty"]
    if turns[0].get("from") == "system":
        turns = turns[1:]
    problems = []
    if len(turns) % 2 == 0:
        problems.append(f"{len(turns)} turns after the system turn; a ranking example needs an odd number")
    for position, turn in enumerate(turns):
        allowed = SHAREGPT_ASKING if position % 2 == 0 else SHAREGPT_ANSWERING
        if turn.get("from") not in allowed or not isinstance(turn.get("value"), str):
            problems.append(f"turn {position} is from {turn.get('from')!r} where {' or '.join(allowed)} must be")
            break
    for column in ("chosen", "rejected"):
        turn = record.get(column)
        if not isinstance(turn, dict) or turn.get("from") not in SHAREGPT_ANSWERING:
            problems.append(f"{column} is not one gpt or function_call turn")
        elif not isinstance(turn.get("value"), str) or not turn["value"].strip():
            problems.append(f"{column} has no text")
    if not problems and record["chosen"] == record["rejected"]:
        problems.append("chosen and rejected are the same")
    return problems
