"""Run the real trainers on what chatproxy records: LLaMA-Factory, TRL and Axolotl, 2 steps each, on the CPU.

    python scripts/trainer_check.py --install             # once: a venv per trainer (GBs: torch and friends)
    python scripts/trainer_check.py                       # every trainer that is installed
    python scripts/trainer_check.py --trainer trl         # one of them

Not part of CI. Each trainer is installed from PyPI at a pinned version into its own venv (torch from
`pip install torch==2.13.0`, the CPU wheel), plus two venvs with only Hugging Face `datasets` (4.0.0, as
LLaMA-Factory 0.9.5 pins it, and the newest). Nothing is downloaded at run time: the model is a tiny
random Qwen2 and its tokenizer a byte-level BPE trained here on a few sentences, both written by the
trainer venv's own transformers.

The check: start `python -m chatproxy` in front of the tests' fake backend (tests/fake_upstream.py),
record a varied session with the real `openai` SDK (multi-turn, a regeneration, streamed and not,
parallel tool calls with text and reasoning beside them, a strict-mode tool schema, a data-URL and an
http image, an assistant prefill, special-token text, a reply cut off mid tool call; and a second session
of more chats than one shard of the live dataset holds, so that its live dataset is a folder), stop it, export
every profile, then for each trainer run its own data pipeline and 2 training steps, and print records
exported / examples kept / dropped with the trainer's reason. Every export is also loaded with each
`datasets` venv and compared, record by record, with the file.

Exit status 0 when every installed trainer kept every record and trained, and every `datasets` version
read each export (but `openai`, whose tool objects are not meant for Arrow) back unchanged.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VENVS = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "chatproxy-trainers"
TORCH = "torch==2.13.0"  # the CPU wheel on this machine's disk for Python 3.11
PACKAGES: Dict[str, List[str]] = {
    "llamafactory": [TORCH, "llamafactory==0.9.5"],
    "trl": [TORCH, "trl==1.16.0"],
    "axolotl": [TORCH, "axolotl==0.19.0"],
}
DATASETS_VENVS: Dict[str, List[str]] = {"datasets-4.0.0": ["datasets==4.0.0"], "datasets-newest": ["datasets"]}
IMPORT_CHECK = {
    "llamafactory": "import llamafactory.data.mm_plugin, transformers; from transformers import Qwen2ForCausalLM",
    "trl": "import trl, transformers",
    "axolotl": "import axolotl, transformers",
    "datasets-4.0.0": "import datasets",
    "datasets-newest": "import datasets",
}
PROFILES = ("sharegpt", "sharegpt-plain", "messages", "openai")
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


class CheckFailed(Exception):
    pass


# -- venvs ---------------------------------------------------------------------------------------


def venv_python(venvs: Path, name: str) -> Path:
    return venvs / name / "bin" / "python"


def installed(venvs: Path, name: str) -> Optional[Path]:
    python = venv_python(venvs, name)
    if not python.exists():
        return None
    done = subprocess.run([str(python), "-c", IMPORT_CHECK[name]], capture_output=True, timeout=300)
    return python if done.returncode == 0 else None


def install(venvs: Path, names: List[str]) -> None:
    for name in names:
        packages = {**PACKAGES, **DATASETS_VENVS}[name]
        print(f"installing {name}: {' '.join(packages)}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(venvs / name)
        python = str(venv_python(venvs, name))
        subprocess.run([python, "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
        if packages[0] == TORCH:  # torch first, from the local wheel, so nothing pulls a CUDA build
            subprocess.run([python, "-m", "pip", "install", "-q", TORCH], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", *packages], check=True)
        if name == "llamafactory":
            cpu_only_torchvision_torchaudio(venvs / name)


def cpu_only_torchvision_torchaudio(folder: Path) -> None:
    """LLaMA-Factory 0.9.5 requires torchvision and torchaudio; PyPI's builds of both are CUDA builds
    that do not load beside the CPU torch ("operator torchvision::nms does not exist"; torchaudio's
    _torchaudio.so needs libc10_cuda.so). LLaMA-Factory never imports torchvision (transformers uses PIL
    without it), so it goes; mm_plugin.py imports torchaudio at load time but uses it only for audio
    files, so its compiled extensions go and torchaudio imports as pure Python (_extension/utils.py
    _load_lib: no library file, no extension)."""
    python = str(folder / "bin" / "python")
    subprocess.run([python, "-m", "pip", "uninstall", "-q", "-y", "torchvision"], check=True)
    for library in folder.glob("lib/python*/site-packages/torchaudio/lib/*.so"):
        library.unlink()


# -- a tiny model, made locally ------------------------------------------------------------------

# Qwen2's ChatML template with tools, reduced: enough for TRL and Axolotl (tokenizer_default) and the
# same shape LLaMA-Factory's `qwen` template renders.
CHAT_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n{% if messages[0].role == 'system' %}{{ messages[0].content }}\n\n"
    "{% endif %}# Tools\n<tools>{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools><|im_end|>\n"
    "{%- elif messages[0].role == 'system' %}<|im_start|>system\n{{ messages[0].content }}<|im_end|>\n{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' and loop.first %}"
    "{%- elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}\n"
    "</tool_response><|im_end|>\n"
    "{%- elif message.role == 'assistant' %}<|im_start|>assistant\n{% generation %}{{ message.content or '' }}"
    "{%- for call in message.tool_calls or [] %}\n<tool_call>\n{{ {'name': call.function.name, "
    "'arguments': call.function.arguments} | tojson }}\n</tool_call>{%- endfor %}<|im_end|>{% endgeneration %}\n"
    "{%- else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)

MAKE_MODEL = r"""
import json, sys
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
out, template = sys.argv[1], json.loads(sys.argv[2])
specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
corpus = ["The weather in Paris is sunny.", "def f(x): return {'a': [1, 2]}", "<think> tool_call tool_response",
          "There once was a cat from Peru, who dreamed she was eating a shoe."] * 20
tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                               bos_token=None, unk_token=None, additional_special_tokens=specials[1:])
fast.chat_template = template
fast.save_pretrained(out)
config = Qwen2Config(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                     eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, tie_word_embeddings=True)
Qwen2ForCausalLM(config).save_pretrained(out)
print(f"model: {sum(p.numel() for p in Qwen2ForCausalLM(config).parameters())} parameters, vocab {len(fast)}")
"""


def make_model(python: Path, folder: Path) -> Path:
    model = folder / "tiny-qwen2"
    if not (model / "config.json").exists():
        run([str(python), "-c", MAKE_MODEL, str(model), json.dumps(CHAT_TEMPLATE)], "making the tiny model")
    return model


# -- recording -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def record_session(datasets: Path) -> int:
    """Record a varied session through `python -m chatproxy`; returns the number of requests made."""
    sys.path.insert(0, str(ROOT / "tests"))
    import openai

    from fake_upstream import Chat, FakeUpstream  # found through sys.path above

    port = free_port()
    with FakeUpstream() as upstream:
        proxy = subprocess.Popen(
            [sys.executable, "-m", "chatproxy", "--target", upstream.url, "--port", str(port), "--quiet"]
            + ["--datasets", str(datasets), "--session", "check"],
            cwd=ROOT,
        )
        try:
            wait_listening(port)
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-check", max_retries=0)
            count = drive(client, upstream, Chat)
            count += drive_many(client)
        finally:
            proxy.send_signal(signal.SIGTERM)
            proxy.wait(30)
    return count


def wait_listening(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise CheckFailed(f"chatproxy did not listen on port {port} within {timeout} s")


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}, "site": {"type": ["string", "null"]}},
            "required": ["query", "site"],
            "additionalProperties": False,
        },
    },
}


def drive(client: Any, upstream: Any, Chat: Callable[..., Any]) -> int:
    model = "fake-model"
    requests = 0

    def ask(messages: List[Dict[str, Any]], **extra: Any) -> Any:
        nonlocal requests
        requests += 1
        if extra.pop("stream", False):
            text = "".join(
                c.choices[0].delta.content or ""
                for c in client.chat.completions.create(model=model, messages=messages, stream=True, **extra)
                if c.choices
            )
            return text
        return client.chat.completions.create(model=model, messages=messages, **extra).choices[0].message

    history: List[Dict[str, Any]] = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hello there"},
    ]
    history.append({"role": "assistant", "content": ask(history).content})
    history.append({"role": "user", "content": "Tell me more, streamed"})
    ask(history, stream=True)
    haiku = [{"role": "user", "content": "Write a haiku"}]
    upstream.push(Chat("Leaves fall."), Chat("Snow melts."))
    ask(haiku)
    ask(haiku)  # a regeneration: a second branch
    upstream.push(
        Chat(
            "Let me check both.",
            reasoning="Two cities, two calls.",
            tool_calls=[
                {"id": "call_a", "name": "get_weather", "arguments": '{"city": "Paris"}'},
                {"id": "call_b", "name": "get_weather", "arguments": '{"city": "Rome"}'},
            ],
            finish_reason="tool_calls",
        ),
        Chat("Paris 18 C, Rome 24 C."),
    )
    tools_chat: List[Dict[str, Any]] = [{"role": "user", "content": "Weather in Paris and Rome?"}]
    reply = ask(tools_chat, tools=[WEATHER, SEARCH])
    tools_chat.append(reply.model_dump(exclude_none=True))
    tools_chat += [
        {"role": "tool", "tool_call_id": "call_a", "content": json.dumps({"temp": 18})},
        {"role": "tool", "tool_call_id": "call_b", "content": json.dumps({"temp": 24})},
    ]
    ask(tools_chat, tools=[WEATHER, SEARCH])
    upstream.push(
        Chat("", tool_calls=[{"id": "call_s", "name": "search", "arguments": '{"query": "cats", "site": null}'}])
    )
    ask([{"role": "user", "content": "Search for cats"}], tools=[SEARCH])
    # The same property name with a plain type in another chat's tool: Arrow's clash in datasets <= 4.0.0.
    plain = {
        "type": "function",
        "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"site": {"type": "string"}}}},
    }
    ask([{"role": "user", "content": "Look up example.org"}], tools=[plain])
    image = "data:image/png;base64," + base64.b64encode(PNG).decode()
    for url in (image, "https://example.com/cat.jpg"):
        ask(
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": url}},
                    ],
                }
            ]
        )
    upstream.push(Chat(" who dreamed she was eating a shoe."))
    ask(
        [{"role": "user", "content": "A limerick"}, {"role": "assistant", "content": "There once was a cat from Peru,"}]
    )
    upstream.push(Chat("Done.<|im_end|> and more"))
    ask([{"role": "user", "content": "Say something odd"}])
    upstream.push(
        Chat(
            "",
            tool_calls=[{"id": "call_t", "name": "get_weather", "arguments": '{"city": "Par'}],
            finish_reason="length",
        )
    )
    ask([{"role": "user", "content": "Weather in Paris, briefly?"}], tools=[WEATHER])
    return requests


MANY = "check-many"  # a session with more chats than one shard of the live dataset holds: a folder of them


def drive_many(client: Any) -> int:
    """One-turn chats into session MANY, past one shard; their metas differ between shards (tags from the
    second shard on), as Arrow, typing each file on its own, must still join them."""
    from chatproxy.recorder.store import SHARD_CHATS

    chats = SHARD_CHATS + 10
    for number in range(chats):
        headers = {"X-Chatproxy-Session": MANY}
        if number >= SHARD_CHATS:
            headers["X-Chatproxy-Tags"] = "late"
        client.chat.completions.create(
            model="fake-model",
            messages=[{"role": "user", "content": f"Question number {number}"}],
            extra_headers=headers,
        )
    return chats


def live_entries(path: Path) -> List[Dict[str, Any]]:
    """A live dataset's entries: one JSON array, or a folder of them (its shards)."""
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    return [entry for file in files for entry in json.loads(file.read_text(encoding="utf-8"))]


# -- export, datasets ----------------------------------------------------------------------------


def export_all(datasets: Path, out: Path) -> Dict[str, Path]:
    files = {}
    for profile in PROFILES:
        path = out / f"{profile}.jsonl"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "chatproxy",
                "export",
                "check",
                "--datasets",
                str(datasets),
                "--format",
                profile,
                "--out",
                str(path),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise CheckFailed(f"export --format {profile} failed: {done.stderr.strip()}")
        written = len(path.read_text(encoding="utf-8").splitlines())
        skipped = [line.strip() for line in done.stdout.splitlines() if " × " in line]
        print(f"export {profile}: {written} records" + (f"; skipped: {'; '.join(skipped)}" if skipped else ""))
        files[profile] = path
    return files


READ_BACK = r"""
import json, sys, datasets
def strip(v):
    if isinstance(v, dict):
        return {k: strip(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [strip(x) for x in v]
    return v
for path in sys.argv[1:]:
    want = [json.loads(line) for line in open(path, encoding="utf-8")]
    try:
        got = [strip(row) for row in datasets.load_dataset("json", data_files=path, split="train")]
    except Exception as exc:
        print(json.dumps({"path": path, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}))
        continue
    # Arrow fills keys a message lacks with None (stripped here); tool schemas must come back exactly.
    raw = datasets.load_dataset("json", data_files=path, split="train")
    differ = sum(
        1
        for a, row, b in zip(got, raw, want)
        if a != strip(b) or json.dumps(row.get("tools")) != json.dumps(b.get("tools"))
    )
    print(json.dumps({"path": path, "rows": len(got), "records": len(want), "differ": differ}))
"""


READ_LIVE = r"""
import json, sys, datasets
from pathlib import Path
folder = Path(sys.argv[1])
want = [entry for file in sorted(folder.glob("*.json")) for entry in json.loads(file.read_text(encoding="utf-8"))]
try:
    got = list(datasets.load_dataset("json", data_files=str(folder / "*.json"), split="train"))
except Exception as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {str(exc)[:200]}"}))
else:
    print(json.dumps({"rows": len(got), "records": len(want), "differ": sum(1 for a, b in zip(got, want) if a != b)}))
"""


def check_live_folder(python: Path, version: str, name: str, folder: Path) -> bool:
    """The live dataset of MANY, a folder of shards, loaded as the README says (`SESSION.json/*.json`)."""
    done = subprocess.run([str(python), "-c", READ_LIVE, str(folder)], capture_output=True, text=True)
    lines = done.stdout.splitlines()
    result = json.loads(lines[-1]) if lines else {"error": done.stderr.strip()[-300:]}
    if "error" in result:
        verdict = f"does not load: {result['error']}"
    elif result["differ"] or result["rows"] != result["records"]:
        verdict = f"{result['differ']} of {result['records']} entries read back changed ({result['rows']} rows)"
    else:
        verdict = f"{result['rows']} entries read back unchanged"
    print(f"datasets {version} ({name}): live folder {folder.name}/: {verdict}")
    return verdict.endswith("unchanged")


def check_datasets(python: Path, name: str, files: Dict[str, Path], datasets: Path) -> bool:
    version = subprocess.run(
        [str(python), "-c", "import datasets; print(datasets.__version__)"], capture_output=True, text=True
    ).stdout.strip()
    done = subprocess.run([str(python), "-c", READ_BACK, *map(str, files.values())], capture_output=True, text=True)
    ok = True
    for line in done.stdout.splitlines():
        result = json.loads(line)
        profile = Path(result["path"]).stem
        if "error" in result:
            verdict = f"does not load: {result['error']}"
        elif result["differ"]:
            verdict = f"{result['differ']} of {result['records']} records read back changed"
        else:
            verdict = f"{result['rows']} records read back unchanged"
        expected_bad = profile == "openai"  # tool objects are for OpenAI's upload, not Arrow
        ok = ok and (expected_bad or verdict.endswith("unchanged"))
        note = " (expected for openai)" if expected_bad and not verdict.endswith("unchanged") else ""
        print(f"datasets {version} ({name}): {profile}: {verdict}{note}")
    return check_live_folder(python, version, name, datasets / f"{MANY}.json") and ok


# -- trainers ------------------------------------------------------------------------------------


def run(
    argv: List[str], what: str, cwd: Optional[Path] = None, env: Optional[Dict[str, str]] = None, timeout: float = 3600
) -> str:
    done = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise CheckFailed(f"{what} failed (exit {done.returncode}):\n" + "\n".join(output.splitlines()[-30:]))
    return output


OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_DISABLED": "true",
    "CUDA_VISIBLE_DEVICES": "",
    # Axolotl 0.19 sends telemetry to PostHog unless told not to; offline, its exit then waits forever
    # on the flush of events that cannot be sent (telemetry/manager.py shutdown).
    "AXOLOTL_DO_NOT_TRACK": "1",
    "DO_NOT_TRACK": "1",
}


def num_examples(output: str) -> Optional[int]:
    found = re.findall(r"Num examples = ([\d,]+)", output)
    return int(found[-1].replace(",", "")) if found else None


# LLaMA-Factory 0.9.5 logs why it drops an example. converter.py warns "Invalid role tag in [...]."
# and/or "Invalid message count in [...].", then "Skipping this abnormal example.", and empties the
# example; processor/supervised.py then warns "Dropped invalid example: []" for it (and for any example
# that is not an odd prompt and one response), and "Dropped lengthy example with length N > M.".
LLAMAFACTORY_REASON = re.compile(r"Invalid role tag|Invalid message count")
LLAMAFACTORY_LENGTHY = re.compile(r"Dropped lengthy example with length \d+ > \d+")


def llamafactory_drops(output: str) -> List[str]:
    """One reason per example LLaMA-Factory dropped, read off its log (the messages left out)."""
    pending: List[str] = []  # the converter's reasons for the example it is about to skip
    abnormal: List[str] = []  # skipped by the converter, dropped later by the processor, in order
    drops: List[str] = []
    for line in output.splitlines():
        reason = LLAMAFACTORY_REASON.search(line)
        lengthy = LLAMAFACTORY_LENGTHY.search(line)
        if reason:
            pending.append(reason.group(0).lower())
        elif "Skipping this abnormal example" in line:
            abnormal.append(f"abnormal example ({', '.join(pending) or 'no reason logged'})")
            pending = []
        elif "Dropped invalid example" in line:
            drops.append(abnormal.pop(0) if abnormal else "invalid example (not an odd prompt and one response)")
        elif lengthy:
            drops.append(lengthy.group(0))
    return drops + abnormal


def trained_steps(output: str) -> int:
    """The number of optimiser steps logged: one `{'loss': ...}` dict per step with logging_steps 1."""
    return len(re.findall(r"\{'loss': ", output))


def check_llamafactory(python: Path, model: Path, files: Dict[str, Path], datasets: Path, work: Path) -> bool:
    ok = True
    live = datasets / "check.json"
    # The entry `export` prints, less "images": the tiny model is text-only (template `qwen`), and with an
    # image listed LLaMA-Factory 0.9.5 stops the whole run ("This model does not support image input",
    # mm_plugin.py _validate_input) instead of dropping the example. A vision template (qwen2_vl) needs
    # a video processor, which needs torchvision, which does not load beside the CPU torch here. The
    # `<image>` placeholder then stays in the text, as a text model would see it.
    columns = {"messages": "conversations", "tools": "tools"}
    entries: Dict[str, Dict[str, Any]] = {
        "export": {"file_name": str(files["sharegpt"]), "formatting": "sharegpt", "columns": columns},
        # The live file, registered as the README says (dataset_dir = the datasets folder).
        "live": {"file_name": str(live), "formatting": "sharegpt", "columns": columns},
        # A live dataset past one shard: the folder of that same name, which LLaMA-Factory reads whole.
        "live-folder": {"file_name": f"{MANY}.json", "formatting": "sharegpt", "columns": columns},
    }
    for name, entry in entries.items():
        folder = work / f"lf-{name}"
        folder.mkdir(exist_ok=True)
        (folder / "dataset_info.json").write_text(json.dumps({name: entry}), encoding="utf-8")
        live_run = name.startswith("live")
        records = (
            len(live_entries(datasets / entry["file_name"]))
            if live_run
            else len(files["sharegpt"].read_text(encoding="utf-8").splitlines())
        )
        config = {
            "model_name_or_path": str(model),
            "trust_remote_code": False,
            "stage": "sft",
            "do_train": True,
            "finetuning_type": "full",
            "dataset": name,
            "dataset_dir": str(datasets if live_run else folder),
            "template": "qwen",
            "cutoff_len": 1024,
            "overwrite_cache": True,
            "preprocessing_num_workers": 1,
            "output_dir": str(folder / "out"),
            "overwrite_output_dir": True,
            "per_device_train_batch_size": 1,
            "gradient_accumulation_steps": 1,
            "max_steps": 2,
            "learning_rate": 1e-4,
            "report_to": "none",
            "logging_steps": 1,
            "save_strategy": "no",
            "bf16": False,
            "fp16": False,
        }
        if live_run:
            (datasets / "dataset_info.json").write_text(json.dumps({name: entry}), encoding="utf-8")
        # JSON is YAML; the name must end in .yaml: 0.9.5's read_args passes a Path to json.load for .json.
        (folder / "train.yaml").write_text(json.dumps(config), encoding="utf-8")
        try:
            output = run(
                [str(python), "-m", "llamafactory.cli", "train", str(folder / "train.yaml")],
                f"LLaMA-Factory on {name}",
                env=OFFLINE,
            )
        except CheckFailed as exc:
            print(f"LLaMA-Factory 0.9.5 ({name}): FAILED: {exc}")
            ok = False
            continue
        (folder / "log.txt").write_text(output, encoding="utf-8")
        kept = num_examples(output)
        reasons = llamafactory_drops(output)
        steps = trained_steps(output)
        print(
            f"LLaMA-Factory 0.9.5 ({name}): {records} records, {kept} examples kept, "
            f"{len(reasons)} dropped{': ' + '; '.join(reasons) if reasons else ''}; trained {steps} steps"
        )
        ok = ok and kept == records and not reasons and steps == 2
    return ok


TRL_DRIVER = r"""
import json, sys
from datasets import load_dataset
from transformers import AutoTokenizer
from trl import SFTConfig, SFTTrainer
model, path, out = sys.argv[1:4]
dataset = load_dataset("json", data_files=path, split="train")
tokenizer = AutoTokenizer.from_pretrained(model)
args = SFTConfig(output_dir=out, max_steps=2, per_device_train_batch_size=1, report_to=[], use_cpu=True,
                 logging_steps=1, save_strategy="no", max_length=1024, assistant_only_loss=True, bf16=False)
trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
kept = len(trainer.train_dataset)
trainer.train()
print(json.dumps({"records": len(dataset), "kept": kept}))
"""


def check_trl(python: Path, model: Path, files: Dict[str, Path], work: Path) -> bool:
    try:
        output = run(
            [str(python), "-c", TRL_DRIVER, str(model), str(files["messages"]), str(work / "trl-out")],
            "TRL",
            env=OFFLINE,
        )
    except CheckFailed as exc:
        print(f"TRL 1.16.0 (messages): FAILED: {exc}")
        return False
    result = json.loads(next(line for line in reversed(output.splitlines()) if line.startswith("{")))
    dropped = result["records"] - result["kept"]
    print(f"TRL 1.16.0 (messages): {result['records']} records, {result['kept']} examples kept, {dropped} dropped")
    return bool(result["kept"] == result["records"])


def check_axolotl(python: Path, model: Path, files: Dict[str, Path], work: Path) -> bool:
    folder = work / "axolotl"
    shutil.rmtree(folder / "prepared", ignore_errors=True)  # a --keep folder's earlier run counts no rows
    folder.mkdir(exist_ok=True)
    records = len(files["messages"].read_text(encoding="utf-8").splitlines())
    config = {
        "base_model": str(model),
        "tokenizer_config": str(model),
        "chat_template": "tokenizer_default",
        "datasets": [
            {"path": str(files["messages"]), "ds_type": "json", "type": "chat_template", "split_thinking": True}
        ],
        "dataset_prepared_path": str(folder / "prepared"),
        "val_set_size": 0,
        "output_dir": str(folder / "out"),
        "sequence_len": 1024,
        "sample_packing": False,
        "micro_batch_size": 1,
        "gradient_accumulation_steps": 1,
        "max_steps": 2,
        "num_epochs": 1,
        "learning_rate": 1e-4,
        "optimizer": "adamw_torch",
        "lr_scheduler": "constant",
        "bf16": False,
        "fp16": False,
        "tf32": False,
        "flash_attention": False,
        "sdp_attention": False,
        "save_strategy": "no",
        "logging_steps": 1,
        "use_wandb": False,
        "dataset_processes": 1,
    }
    path = folder / "config.yml"
    path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    axolotl = str(python.parent / "axolotl")
    # `axolotl train` execs `accelerate launch` found through PATH: the venv's own.
    env = {**OFFLINE, "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    try:
        prep = run([axolotl, "preprocess", str(path)], "Axolotl preprocess", env=env)
        (folder / "preprocess.log").write_text(prep, encoding="utf-8")
        output = run([axolotl, "train", str(path)], "Axolotl train", env=env)
        (folder / "train.log").write_text(output, encoding="utf-8")
    except CheckFailed as exc:
        print(f"Axolotl 0.19.0 (messages): FAILED: {exc}")
        return False
    dropped = axolotl_drops(prep + output)
    kept = prepared_rows(python, folder / "prepared")
    steps = trained_steps(output)
    print(
        f"Axolotl 0.19.0 (messages): {records} records, {kept} examples kept, "
        f"{sum(n for n, _ in dropped)} dropped{': ' + '; '.join(r for _, r in dropped) if dropped else ''}; "
        f"trained {steps} steps"
    )
    return kept == records and not dropped and steps == 2


# Axolotl 0.19.0 logs what it drops: utils/data/utils.py "Dropped N sequences outside valid range
# ([min, max])" and "Dropped N short sequences (<N tokens)"; utils/trainer.py "Dropped N samples with no
# trainable tokens" (all labels masked).
AXOLOTL_DROP = re.compile(
    r"Dropped (\d+) (sequences outside valid range \S+ \S+|short sequences \(<\d+ tokens\)"
    r"|samples with no trainable tokens)"
)


def axolotl_drops(output: str) -> List[Tuple[int, str]]:
    """(count, reason) for each drop Axolotl logged."""
    return [(int(m.group(1)), m.group(0)) for m in AXOLOTL_DROP.finditer(output)]


PREPARED_ROWS = r"""
import sys, datasets
from pathlib import Path
print(sum(len(datasets.load_from_disk(str(p.parent))) for p in Path(sys.argv[1]).rglob("dataset_info.json")))
"""


def prepared_rows(python: Path, prepared: Path) -> Optional[int]:
    """The rows of the tokenized dataset `axolotl preprocess` saved: the examples it trains on."""
    done = subprocess.run([str(python), "-c", PREPARED_ROWS, str(prepared)], capture_output=True, text=True)
    return int(done.stdout.strip()) if done.returncode == 0 and done.stdout.strip() else None


TRAINERS = ("llamafactory", "trl", "axolotl")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--install", action="store_true", help="create the venvs (all, or those named by --trainer)")
    parser.add_argument(
        "--trainer", action="append", choices=TRAINERS + tuple(DATASETS_VENVS), help="only this one (repeatable)"
    )
    parser.add_argument(
        "--venvs", type=Path, default=DEFAULT_VENVS, help=f"where the venvs are (default {DEFAULT_VENVS})"
    )
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = parser.parse_args(argv)
    names = args.trainer or list(TRAINERS) + list(DATASETS_VENVS)
    if args.install:
        install(args.venvs, names)
        return 0
    pythons = {name: installed(args.venvs, name) for name in names}
    for name, python in pythons.items():
        if python is None:
            print(
                f"{name}: not installed in {args.venvs / name} "
                f"(python scripts/trainer_check.py --install --trainer {name})"
            )
    if not any(pythons.values()):
        return 2
    with tempfile.TemporaryDirectory(prefix="chatproxy-trainers-") as temporary:
        work = args.keep or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        datasets = work / "datasets"
        print(f"recorded {record_session(datasets)} requests through chatproxy")
        files = export_all(datasets, work)
        ok = True
        trainer_python = next((pythons[n] for n in TRAINERS if pythons.get(n)), None)
        try:
            model = make_model(trainer_python, work) if trainer_python else None
        except CheckFailed as exc:
            print(f"FAILED: {exc}")
            return 1
        for name, python in pythons.items():
            if python is None:
                continue
            try:
                if name in DATASETS_VENVS:
                    ok = check_datasets(python, name, files, datasets) and ok
                elif model is not None and name == "llamafactory":
                    ok = check_llamafactory(python, model, files, datasets, work) and ok
                elif model is not None and name == "trl":
                    ok = check_trl(python, model, files, work) and ok
                elif model is not None and name == "axolotl":
                    ok = check_axolotl(python, model, files, work) and ok
            except CheckFailed as exc:
                print(f"{name}: FAILED: {exc}")
                ok = False
    print("all kept and trained" if ok else "NOT all kept / trained: see above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
