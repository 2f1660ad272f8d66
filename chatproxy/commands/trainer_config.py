"""The configuration a consumer needs to read an export, printed ready to paste.

Paths are absolute so the lines work from wherever the trainer runs; LLaMA-Factory joins `file_name` to
its dataset_dir, and an absolute path survives that join unchanged.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, List


def dataset_name(out: Path) -> str:
    """A dataset_info.json key from the output file name."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", out.stem).strip("_") or "chatproxy"


def snippets(profile: str, files: Dict[str, Path], name: str, columns: List[str], reasoning: str) -> str:
    """Everything to print after writing `files` ({"train": path} or {"train": .., "test": ..})."""
    paths = {split: str(path.resolve()) for split, path in files.items()}
    blocks = []
    if profile == "sharegpt":
        blocks.append(_llamafactory(paths, name, columns))
    if profile == "sharegpt-plain":
        blocks.append(_fastchat(paths))
        blocks.append(_unsloth(paths))
    if profile in ("sharegpt-plain", "messages"):
        blocks.append(_axolotl(paths, profile, reasoning))
    if profile == "messages":
        blocks.append(_trl(paths))
    if profile == "openai":
        blocks.append(_openai(paths))
    if profile == "dpo-sharegpt":
        blocks.append(_llamafactory(paths, name, columns, ranking=True))
    if profile == "dpo":
        blocks.append(_trl_dpo(paths))
    if profile in ("sharegpt", "messages", "dpo", "dpo-sharegpt"):
        blocks.append(_huggingface(paths))
    return "\n\n".join(blocks) + "\n"


def _openai(paths: Dict[str, str]) -> str:
    lines = [
        "OpenAI fine-tuning: upload with",
        f'client.files.create(file=open({json.dumps(paths["train"])}, "rb"), purpose="fine-tune")',
    ]
    if "test" in paths:
        lines.append(f"and the same for the validation file {paths['test']}")
    lines.append(
        "(tools are JSON objects here, as OpenAI wants them; for TRL, Axolotl or Hugging Face datasets export"
        " --format messages, whose tools column is JSON text that loads unchanged)"
    )
    return "\n".join(lines)


def _trl(paths: Dict[str, str]) -> str:
    return "\n".join(
        [
            "TRL: SFTTrainer(model=..., train_dataset=dataset) with the dataset loaded as below",
            "(a JSON-string tools column is json.loads'ed per example)",
        ]
    )


def _llamafactory(paths: Dict[str, str], name: str, columns: List[str], ranking: bool = False) -> str:
    mapping = {"messages": "conversations"}
    mapping.update({column: column for column in columns})  # only columns some record has: a missing one is a KeyError
    if ranking:
        mapping.update(chosen="chosen", rejected="rejected")
    entries: Dict[str, Dict[str, object]] = {}
    for split, path in paths.items():
        key = name if len(paths) == 1 else f"{name}_{split}"
        entry: Dict[str, object] = {"file_name": path, "formatting": "sharegpt"}
        if ranking:
            entry["ranking"] = True  # and train with stage: dpo
        entry["columns"] = mapping
        entries[key] = entry
    text = json.dumps(entries, indent=2, ensure_ascii=False)[2:-2]  # the entries, without the outer braces
    lines = ["LLaMA-Factory: add to dataset_info.json (in your dataset_dir)", text]
    if len(paths) == 1:
        lines.append(f"and train with:  dataset: {name}")
    else:
        lines.append(f"and train with:  dataset: {name}_train\n                 eval_dataset: {name}_test")
    return "\n".join(lines)


def _trl_dpo(paths: Dict[str, str]) -> str:
    return (
        'TRL: DPOTrainer(model=..., train_dataset=load_dataset("json", '
        f'data_files={json.dumps(paths["train"])}, split="train"), ...)  '
        "(conversational preference: prompt, chosen, rejected)"
    )


def _axolotl(paths: Dict[str, str], profile: str, reasoning: str) -> str:
    lines = ["Axolotl: in your config"]
    for key, split in (("datasets", "train"), ("test_datasets", "test")):
        if split not in paths:
            continue
        lines += [f"{key}:", f"  - path: {paths[split]}", "    ds_type: json", "    type: chat_template"]
        if key == "test_datasets":
            lines.append("    split: train  # a local JSON file loads as one split named train")
        if profile == "sharegpt-plain":
            lines += [
                "    field_messages: conversations",
                "    message_property_mappings:",
                "      role: from",
                "      content: value",
            ]
        elif reasoning == "keep":
            lines.append("    # split_thinking: true  # if your chat template renders reasoning_content")
    return "\n".join(lines)


def _huggingface(paths: Dict[str, str]) -> str:
    lines = ["Hugging Face datasets:", "from datasets import load_dataset"]
    # One call per file: load_dataset with both files casts the second to the first one's columns, and a
    # column that no record of one split has (tools) would make that fail.
    for split, path in paths.items():
        name = "dataset" if len(paths) == 1 else split
        lines.append(f'{name} = load_dataset("json", data_files={json.dumps(path)}, split="train")')
    return "\n".join(lines)


def _unsloth(paths: Dict[str, str]) -> str:
    return "\n".join(
        [
            "Unsloth:",
            "from datasets import load_dataset",
            "from unsloth.chat_templates import standardize_sharegpt",
            "dataset = standardize_sharegpt(",
            f'    load_dataset("json", data_files={json.dumps(paths["train"])}, split="train")',
            ")",
        ]
    )


def _fastchat(paths: Dict[str, str]) -> str:
    path = paths["train"]
    line = f"FastChat: --data_path {path}"
    if not path.endswith(".json"):
        line += "\n(fastchat/train/train.py reads a JSON array: export with --out NAME.json for it)"
    if len(paths) > 1:
        line += "\n(FastChat holds out its own evaluation split; the test file is for your own evaluation)"
    return line
