"""SillyTavern 1.12.6's Text Completion prompts, rebuilt in Python from its source, for the tests.

What `Generate` (public/script.js) sends with instruct mode on: the context template's story string,
the context's chat start, every message formatted by `formatInstructModeChat`
(public/scripts/instruct-mode.js: the first message with the first output sequence, the last user
message with the last input sequence, names per the preset's names behaviour), the preset's user
alignment message before a chat that does not open with the user, and the last line of
`formatInstructModePrompt` for the kind of generation:

- normal: the (last) output sequence and, with names, "Char:";
- impersonate: the input sequence and, with names, "User:";
- quiet (`/gen`, extensions): the prompt as a narrator (system) message, then the last system sequence
  (or the output sequence) with no name;
- continue: no last line; the last message cut off where its text ends.

The presets and context templates are the stock files of 1.12.6 (default/content/presets/), Mistral V7's
context as later releases ship it; only the fields the prompt uses are copied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

SYSTEM = "Write {{char}}'s next reply in a fictional chat between {{char}} and {{user}}."  # Neutral - Chat
DESCRIPTION = "{{char}} is the guardian of the Eldoria forest, kind and fiercely protective."
PERSONALITY = "caring, gentle, fierce when needed"
SCENARIO = "{{user}} wakes up in {{char}}'s glade after being attacked by beasts."

_IF = "{{#if %s}}"

CONTEXTS: Dict[str, Dict[str, str]] = {
    "Default": {
        "story_string": "{{#if system}}{{system}}\n{{/if}}{{#if description}}{{description}}\n{{/if}}"
        "{{#if personality}}{{char}}'s personality: {{personality}}\n{{/if}}"
        "{{#if scenario}}Scenario: {{scenario}}\n{{/if}}",
        "chat_start": "***",
    },
    "ChatML": {
        "story_string": "<|im_start|>system\n{{#if system}}{{system}}\n{{/if}}"
        "{{#if description}}{{description}}\n{{/if}}"
        "{{#if personality}}{{char}}'s personality: {{personality}}\n{{/if}}"
        "{{#if scenario}}Scenario: {{scenario}}\n{{/if}}{{trim}}<|im_end|>",
    },
    "Llama 3 Instruct": {
        "story_string": "<|start_header_id|>system<|end_header_id|>\n\n{{#if system}}{{system}}\n{{/if}}"
        "{{#if description}}{{description}}\n{{/if}}{{#if personality}}{{char}}'s personality: {{personality}}\n{{/if}}"
        "{{#if scenario}}Scenario: {{scenario}}\n{{/if}}{{trim}}<|eot_id|>",
    },
    "Mistral V1": {
        "story_string": " [INST] {{#if system}}{{system}}\n{{/if}}{{#if description}}{{description}}\n{{/if}}"
        "{{#if personality}}{{personality}}\n{{/if}}"
        "{{#if scenario}}{{scenario}}\n{{/if}}{{trim}} [/INST] Understood.</s>",
    },
    "Mistral V2 & V3": {
        "story_string": "[INST] {{#if system}}{{system}}\n{{/if}}{{#if description}}{{description}}\n{{/if}}"
        "{{#if personality}}{{personality}}\n{{/if}}"
        "{{#if scenario}}{{scenario}}\n{{/if}}{{trim}}[/INST] Understood.</s>",
    },
    "Mistral V3-Tekken": {
        "story_string": "[INST]{{#if system}}{{system}}\n{{/if}}{{#if description}}{{description}}\n{{/if}}"
        "{{#if personality}}{{personality}}\n{{/if}}"
        "{{#if scenario}}{{scenario}}\n{{/if}}{{trim}}[/INST]Understood.</s>",
    },
    "Mistral V7": {
        "story_string": "[SYSTEM_PROMPT] {{#if system}}{{system}}\n{{/if}}{{#if description}}{{description}}\n{{/if}}"
        "{{#if personality}}{{personality}}\n{{/if}}{{#if scenario}}{{scenario}}\n{{/if}}{{trim}}[/SYSTEM_PROMPT]",
    },
    "Llama 2 Chat": {
        "story_string": "[INST] <<SYS>>\n{{#if system}}{{system}}\n<</SYS>>\n{{/if}}"
        "{{#if description}}{{description}}\n{{/if}}"
        "{{#if personality}}{{char}}'s personality: {{personality}}\n{{/if}}"
        "{{#if scenario}}Scenario: {{scenario}}\n{{/if}}{{trim}} [/INST]",
    },
    "Gemma 2": {
        "story_string": "<start_of_turn>user\n{{#if system}}{{system}}\n{{/if}}"
        "{{#if description}}{{description}}\n{{/if}}"
        "{{#if personality}}{{char}}'s personality: {{personality}}\n{{/if}}"
        "{{#if scenario}}Scenario: {{scenario}}\n{{/if}}{{trim}}<end_of_turn>",
    },
    "Alpaca": {
        "story_string": "{{#if system}}{{system}}\n{{/if}}{{#if description}}{{description}}\n{{/if}}"
        "{{#if personality}}{{char}}'s personality: {{personality}}\n{{/if}}"
        "{{#if scenario}}Scenario: {{scenario}}\n{{/if}}\n\n",
    },
}

_ALIGNMENT = "Let's get started. Please respond based on the information and instructions provided above."
_NO_SEQUENCES = {
    "input_suffix": "",
    "output_suffix": "",
    "system_sequence": "",
    "system_suffix": "",
    "last_output_sequence": "",
    "last_system_sequence": "",
    "first_output_sequence": "",
    "last_input_sequence": "",
    "first_input_sequence": "",
    "user_alignment_message": "",
    "system_same_as_user": False,
}

INSTRUCT: Dict[str, Dict[str, object]] = {
    "ChatML": {
        **_NO_SEQUENCES,
        "input_sequence": "<|im_start|>user",
        "input_suffix": "<|im_end|>\n",
        "output_sequence": "<|im_start|>assistant",
        "output_suffix": "<|im_end|>\n",
        "system_sequence": "<|im_start|>system",
        "system_suffix": "<|im_end|>\n",
        "wrap": True,
        "names_behavior": "always",
    },
    "ChatML-Names": {
        **_NO_SEQUENCES,
        "input_sequence": "<|im_start|>[{{name}}]",
        "input_suffix": "<|im_end|>\n",
        "output_sequence": "<|im_start|>[{{name}}]",
        "output_suffix": "<|im_end|>\n",
        "system_sequence": "<|im_start|>system",
        "system_suffix": "<|im_end|>\n",
        "wrap": True,
        "names_behavior": "none",
    },
    "Llama 3 Instruct": {
        **_NO_SEQUENCES,
        "input_sequence": "<|start_header_id|>user<|end_header_id|>\n\n",
        "input_suffix": "<|eot_id|>",
        "output_sequence": "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "output_suffix": "<|eot_id|>",
        "system_sequence": "<|start_header_id|>system<|end_header_id|>\n\n",
        "system_suffix": "<|eot_id|>",
        "system_same_as_user": True,
        "wrap": False,
        "names_behavior": "always",
    },
    "Llama-3-Instruct-Names": {
        **_NO_SEQUENCES,
        "input_sequence": "<|start_header_id|>[{{name}}]<|end_header_id|>\n\n",
        "input_suffix": "<|eot_id|>",
        "output_sequence": "<|start_header_id|>[{{name}}]<|end_header_id|>\n\n",
        "output_suffix": "<|eot_id|>",
        "system_sequence": "<|start_header_id|>system<|end_header_id|>\n\n",
        "system_suffix": "<|eot_id|>",
        "system_same_as_user": True,
        "wrap": False,
        "names_behavior": "none",
    },
    "Mistral V1": {
        **_NO_SEQUENCES,
        "input_sequence": " [INST] ",
        "output_sequence": " [/INST] ",
        "last_output_sequence": " [/INST]",
        "output_suffix": "</s>",
        "user_alignment_message": _ALIGNMENT,
        "system_same_as_user": True,
        "wrap": False,
        "names_behavior": "always",
    },
    "Mistral V2 & V3": {
        **_NO_SEQUENCES,
        "input_sequence": "[INST] ",
        "output_sequence": "[/INST] ",
        "last_output_sequence": "[/INST]",
        "output_suffix": "</s>",
        "user_alignment_message": _ALIGNMENT,
        "system_same_as_user": True,
        "wrap": False,
        "names_behavior": "always",
    },
    "Mistral V3-Tekken": {
        **_NO_SEQUENCES,
        "input_sequence": "[INST]",
        "output_sequence": "[/INST]",
        "output_suffix": "</s>",
        "user_alignment_message": _ALIGNMENT,
        "system_same_as_user": True,
        "wrap": False,
        "names_behavior": "always",
    },
    "Llama 2 Chat": {
        **_NO_SEQUENCES,
        "input_sequence": "[INST] ",
        "input_suffix": " [/INST]\n",
        "output_sequence": "",
        "output_suffix": "\n",
        "user_alignment_message": _ALIGNMENT,
        "system_same_as_user": True,
        "wrap": False,
        "names_behavior": "force",
    },
    "Gemma 2": {
        **_NO_SEQUENCES,
        "input_sequence": "<start_of_turn>user",
        "input_suffix": "<end_of_turn>\n",
        "output_sequence": "<start_of_turn>model",
        "output_suffix": "<end_of_turn>\n",
        "system_sequence": "<start_of_turn>system",
        "system_suffix": "<end_of_turn>\n",
        "system_same_as_user": True,
        "wrap": True,
        "names_behavior": "none",
    },
    "Alpaca": {
        **_NO_SEQUENCES,
        "input_sequence": "### Instruction:",
        "input_suffix": "\n\n",
        "output_sequence": "### Response:",
        "output_suffix": "\n\n",
        "system_sequence": "### Input:",
        "system_suffix": "\n\n",
        "wrap": True,
        "names_behavior": "force",
    },
    "Vicuna 1.1": {
        **_NO_SEQUENCES,
        "input_sequence": "\nUSER: ",
        "output_sequence": "\nASSISTANT: ",
        "output_suffix": "</s>",
        "system_same_as_user": True,
        "wrap": False,
        "names_behavior": "force",
    },
}


@dataclass
class Message:
    name: str
    text: str
    is_user: bool = False
    narrator: bool = False  # a /sys message, or an injection with the system role


@dataclass
class Chat:
    """One chat and the settings SillyTavern renders it with."""

    instruct: str
    context: str
    user: str = "Alex"
    character: str = "Seraphina"
    greeting: str = "*You wake in a glade.* You're awake. How do you feel?"
    group: bool = False
    names: Optional[str] = None  # override the preset's names behaviour ("none", "force", "always")
    messages: List[Message] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.messages:
            self.messages.append(Message(self.character, self.greeting))

    # -- what the user does ---------------------------------------------------------------------

    def say(self, text: str) -> Chat:
        self.messages.append(Message(self.user, text, is_user=True))
        return self

    def reply(self, text: str, speaker: Optional[str] = None) -> Chat:
        self.messages.append(Message(speaker or self.character, text))
        return self

    # -- what it sends ----------------------------------------------------------------------------

    def prompt(self, kind: str = "normal", speaker: Optional[str] = None, quiet: str = "") -> str:
        """The prompt of a generation: "normal" (the next reply, by `speaker` in a group), "impersonate",
        "quiet" (with `quiet` as the prompt) or "continue" (the last message)."""
        speaker = speaker or self.character
        preset = dict(INSTRUCT[self.instruct])
        if self.names:
            preset["names_behavior"] = self.names
        story = self._story(speaker)
        chat_start = CONTEXTS[self.context].get("chat_start", "")
        items = self._history(preset, speaker, kind)
        if items and kind not in ("continue", "quiet") and preset["wrap"]:
            items[-1] = re.sub(r"\n?$", "", items[-1], count=1)  # the last line adds its own
        last = ""
        if kind == "quiet":
            last += self._format(preset, self.user, quiet, False, True, speaker)
            last += self._last_line(preset, "System", False, speaker, quiet=True)
        elif kind == "impersonate":
            last += self._last_line(preset, self.user, True, speaker)
        elif kind == "normal":
            last += self._last_line(preset, speaker, False, speaker)
        if items:
            items[-1] += last
        body = "".join(items)
        if chat_start:
            body = self._macros(chat_start, speaker) + "\n" + body
        return story + body

    def stops(self, kind: str = "normal", speaker: Optional[str] = None, members: Sequence[str] = ()) -> List[str]:
        """getStoppingStrings: the names ("\\nAlex:" first, or the character's when impersonating, then the
        other group members'), then the instruct sequences with their names (getInstructStoppingSequences)."""
        speaker = speaker or self.character
        preset = dict(INSTRUCT[self.instruct])
        stops = [f"\n{speaker}:" if kind == "impersonate" else f"\n{self.user}:", f"\n{self.user}:"]
        stops += [f"\n{name}:" for name in members if name != speaker]
        sequences = [
            str(preset["input_sequence"]).replace("{{name}}", self.user),
            str(preset["output_sequence"]).replace("{{name}}", speaker),
            str(preset["first_output_sequence"]).replace("{{name}}", speaker),
            str(preset["last_output_sequence"]).replace("{{name}}", speaker),
            str(preset["system_sequence"]).replace("{{name}}", "System"),
            str(preset["last_system_sequence"]).replace("{{name}}", "System"),
        ]
        for line in dict.fromkeys("\n".join(sequences).split("\n")):
            if line.strip():
                stops.append(("\n" + line) if preset["wrap"] else line)
        return list(dict.fromkeys(self._macros(stop, speaker) for stop in stops))

    def _story(self, speaker: str) -> str:
        values = {"system": SYSTEM, "description": DESCRIPTION, "personality": PERSONALITY, "scenario": SCENARIO}
        text = CONTEXTS[self.context]["story_string"]
        text = re.sub(
            r"\{\{#if (\w+)\}\}(.*?)\{\{/if\}\}",
            lambda m: m.group(2) if values.get(m.group(1)) else "",
            text,
            flags=re.S,
        )
        for key, value in values.items():
            text = text.replace("{{" + key + "}}", value)
        text = self._macros(text, speaker)
        text = re.sub(r"(?:\r?\n)*\{\{trim\}\}(?:\r?\n)*", "", text)  # {{trim}}: the newlines around it go
        text = text.lstrip("\n")
        wrap = bool(INSTRUCT[self.instruct]["wrap"])
        if text and not text.endswith("\n") and wrap:
            text += "\n"
        return text

    def _macros(self, text: str, speaker: str) -> str:
        return text.replace("{{char}}", speaker).replace("{{user}}", self.user)

    def _history(self, preset: Dict[str, object], speaker: str, kind: str) -> List[str]:
        messages = list(self.messages)
        last_user = max((i for i, m in enumerate(messages) if m.is_user), default=-1)
        items = []
        for index, message in enumerate(messages):
            force = "first" if index == 0 else ("last" if index == last_user else None)
            if kind == "continue" and index == len(messages) - 1:
                force = "last"
            text = self._format(preset, message.name, message.text, message.is_user, message.narrator, speaker, force)
            if kind == "continue" and index == len(messages) - 1:
                text = text[: text.rindex(message.text) + len(message.text)]
            items.append(text)
        if preset["user_alignment_message"] and not messages[0].is_user:
            alignment = self._format(
                preset, self.user, str(preset["user_alignment_message"]), True, False, speaker, "first"
            )
            items.insert(0, alignment)
        return items

    def _format(
        self,
        preset: Dict[str, object],
        name: str,
        text: str,
        is_user: bool,
        narrator: bool,
        speaker: str,
        force: Optional[str] = None,
    ) -> str:
        """formatInstructModeChat."""
        behaviour = preset["names_behavior"]
        include = not narrator and behaviour == "always"
        if not narrator and behaviour == "force" and self.group and name != self.user:
            include = True
        if narrator:
            prefix = preset["input_sequence"] if preset["system_same_as_user"] else preset["system_sequence"]
            suffix = preset["input_suffix"] if preset["system_same_as_user"] else preset["system_suffix"]
        elif is_user:
            prefix = (
                preset[f"{force}_input_sequence"]
                if force and preset[f"{force}_input_sequence"]
                else preset["input_sequence"]
            )
            suffix = preset["input_suffix"]
        else:
            prefix = (
                preset[f"{force}_output_sequence"]
                if force and preset[f"{force}_output_sequence"]
                else preset["output_sequence"]
            )
            suffix = preset["output_suffix"]
        prefix = self._macros(str(prefix), speaker).replace("{{name}}", name or "System")
        suffix = self._macros(str(suffix), speaker).replace("{{name}}", name or "System")
        if not suffix and preset["wrap"]:
            suffix = "\n"
        separator = "\n" if preset["wrap"] else ""
        parts = [prefix, (f"{name}: {text}" if include and name else text) + suffix]
        return separator.join(part for part in parts if part)

    def _last_line(
        self, preset: Dict[str, object], name: str, impersonate: bool, speaker: str, quiet: bool = False
    ) -> str:
        """formatInstructModePrompt."""
        behaviour = preset["names_behavior"]
        include = bool(name) and (behaviour == "always" or (self.group and behaviour == "force")) and not quiet
        if impersonate:
            sequence = str(preset["input_sequence"])
        elif quiet:
            sequence = str(preset["last_system_sequence"] or preset["output_sequence"])
        else:
            sequence = str(preset["last_output_sequence"] or preset["output_sequence"])
        filler = ""
        output, last_output = str(preset["output_sequence"]), str(preset["last_output_sequence"])
        if (
            include
            and last_output
            and output
            and sequence == last_output
            and output[-1:].isspace()
            and not last_output[-1:].isspace()
        ):
            filler = output[-1]
        sequence = self._macros(sequence, speaker).replace("{{name}}", name or "System")
        separator = "\n" if preset["wrap"] else ""
        text = (separator + sequence + separator + filler + f"{name}:") if include else (separator + sequence)
        if quiet and separator:
            text = text[len(separator) :]
        return (text.rstrip() if preset["wrap"] else text) + ("" if include else separator)
