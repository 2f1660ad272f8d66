"""chatproxy in front of real OpenAI-compatible servers that this project did not write.

    python scripts/real_server_check.py --install          # once: venvs with the servers (about 2 min + 8 min)
    python scripts/real_server_check.py                    # every server that is installed
    python scripts/real_server_check.py --server litellm   # one of them

Servers, installed from PyPI into their own virtual environments (so their dependencies never
meet the test environment's), started on loopback with nothing downloaded at run time:

- litellm: LiteLLM's proxy server (FastAPI + uvicorn) with a model whose `mock_response` answers
  without any provider.
- llama-cpp: llama-cpp-python's server (`llama_cpp.server`, the llama.cpp engine behind FastAPI),
  loading a tiny random-weight GGUF model that this script writes with the `gguf` package. Its
  replies are gibberish, but real: tokenised, sampled and detokenised by llama.cpp. The package has
  no wheel on PyPI, so installing builds llama.cpp from source (about 8 minutes on 2 cores).

For each server: start it, start `python -m chatproxy --target SERVER/v1` in front of it, then with
the real `openai` SDK list models and make chat and text completions, streamed and not (for LiteLLM
also the Responses API with `openai` and the Messages API with `anthropic`, not streamed); stop
the proxy with SIGTERM and check that SESSION.json holds exactly those conversations, each with the
text the SDK received. Stream shapes worth knowing are printed as "observed" lines.

The venvs live in --venvs (default ~/.cache/chatproxy-real-servers). tests/test_real_server.py runs
the same checks for every server installed there and skips the others.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VENVS = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "chatproxy-real-servers"
START_TIMEOUT = 120.0  # LiteLLM's proxy takes about 10 s to import on a small machine
MOCK_REPLY = "Hello from LiteLLM's mock provider."

# Pinned: these are the versions the compatibility notes were written against. LiteLLM 1.107.0
# was a compromised release; newer ones than 1.80 need a certifi newer than PyPI served here.
PACKAGES = {
    "litellm": ["litellm[proxy]==1.80.0"],
    "llama-cpp": ["llama-cpp-python[server]==0.3.36", "gguf==0.19.0"],
}
IMPORT_CHECK = {"litellm": "import litellm.proxy.proxy_cli", "llama-cpp": "import llama_cpp.server, gguf"}


class CheckFailed(Exception):
    pass


# -- servers -------------------------------------------------------------------------------------


LITELLM_CONFIG = """\
model_list:
  - model_name: mock-gpt
    litellm_params:
      model: openai/mock-gpt
      api_key: sk-not-used
      mock_response: "{reply}"
litellm_settings:
  telemetry: false
"""

# Written by the server's own interpreter (it has numpy and gguf): a 1-layer llama with 32-wide
# embeddings, an SPM vocabulary with byte fallback (any text tokenises), and a chat template.
MAKE_GGUF = r"""
import sys
import numpy as np
import gguf

n_embd, n_ff, n_head = 32, 64, 4
words = ["\u2581", "\u2581Hello", "\u2581world", "\u2581the", "\u2581a", "e", "t", "a", "o", "n", "s", "\u2581hi"]
tokens = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)] + words
types = ([gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
         + [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * len(words))
scores = [0.0] * 259 + [-float(i) for i in range(len(words))]
w = gguf.GGUFWriter(sys.argv[1], "llama")
w.add_name("chatproxy-tiny-random")
w.add_context_length(512)
w.add_embedding_length(n_embd)
w.add_block_count(1)
w.add_feed_forward_length(n_ff)
w.add_head_count(n_head)
w.add_head_count_kv(n_head)
w.add_rope_dimension_count(n_embd // n_head)
w.add_layer_norm_rms_eps(1e-5)
w.add_file_type(0)
w.add_tokenizer_model("llama")
w.add_token_list(tokens)
w.add_token_scores(scores)
w.add_token_types(types)
w.add_bos_token_id(1)
w.add_eos_token_id(2)
w.add_unk_token_id(0)
w.add_add_bos_token(True)
w.add_chat_template("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}<|assistant|>")
rng = np.random.default_rng(0)
def weights(*shape):
    return (rng.standard_normal(shape) * 0.2).astype(np.float32)
ones = np.ones(n_embd, dtype=np.float32)
w.add_tensor("token_embd.weight", weights(len(tokens), n_embd))
w.add_tensor("output_norm.weight", ones)
w.add_tensor("output.weight", weights(len(tokens), n_embd))
for name, shape in [("attn_q", (n_embd, n_embd)), ("attn_k", (n_embd, n_embd)), ("attn_v", (n_embd, n_embd)),
                    ("attn_output", (n_embd, n_embd)), ("ffn_gate", (n_ff, n_embd)), ("ffn_down", (n_embd, n_ff)),
                    ("ffn_up", (n_ff, n_embd))]:
    w.add_tensor("blk.0.%s.weight" % name, weights(*shape))
w.add_tensor("blk.0.attn_norm.weight", ones)
w.add_tensor("blk.0.ffn_norm.weight", ones)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(name: str, python: str, port: int, workdir: Path) -> List[str]:
    if name == "litellm":
        config = workdir / "litellm.yaml"
        config.write_text(LITELLM_CONFIG.format(reply=MOCK_REPLY), encoding="utf-8")
        return [
            python,
            "-m",
            "litellm.proxy.proxy_cli",
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
    model = workdir / "tiny.gguf"
    subprocess.run([python, "-c", MAKE_GGUF, str(model)], check=True, timeout=120)
    return [
        python,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--model_alias",
        "tiny",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "256",
        "--verbose",
        "false",
    ]


def server_env(name: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATPROXY_", "PYTHON"))}
    if name == "litellm":
        env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # the bundled price list, not a download at start-up
        env["LITELLM_TELEMETRY"] = "False"
    return env


def wait_http(port: int, path: str, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CheckFailed(f"server exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                conn.close()
                return
            conn.close()
        except OSError:
            pass
        time.sleep(0.2)
    raise CheckFailed(f"no answer on port {port} within {timeout}s:\n{log.read_text(errors='replace')[-3000:]}")


def stop_process(proc: subprocess.Popen, signum: int = signal.SIGTERM, timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(signum)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


# -- the check -----------------------------------------------------------------------------------


def check(name: str, python: str, report: Callable[[str], None] = print) -> None:
    """Run the server, chatproxy in front of it, and the SDK through both; raises CheckFailed."""
    try:
        import openai
    except ImportError:
        raise CheckFailed("the openai package is needed in this interpreter (pip install -e '.[test]')") from None
    with tempfile.TemporaryDirectory(prefix=f"chatproxy-{name}-") as tmp:
        workdir = Path(tmp)
        server_port = free_port()
        server_log = workdir / "server.log"
        started = time.monotonic()
        with open(server_log, "wb") as log_file:
            server = subprocess.Popen(
                server_command(name, python, server_port, workdir),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=server_env(name),
                cwd=tmp,
            )
        try:
            wait_http(server_port, "/v1/models", START_TIMEOUT, server, server_log)
            report(f"{name}: server up in {time.monotonic() - started:.1f}s on port {server_port}")
            _through_proxy(name, f"http://127.0.0.1:{server_port}/v1", workdir, openai, report)
        finally:
            stop_process(server, signal.SIGINT)


def _through_proxy(name: str, target: str, workdir: Path, openai: Any, report: Callable[[str], None]) -> None:
    datasets = workdir / "datasets"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATPROXY_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    command = [
        sys.executable,
        "-m",
        "chatproxy",
        "--target",
        target,
        "--port",
        "0",
        "--datasets",
        str(datasets),
        "--session",
        name,
    ]
    proxy_log = workdir / "proxy.log"
    with open(proxy_log, "wb") as log_file:
        proxy = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    try:
        url = _wait_startup(proxy, proxy_log)
        client = openai.OpenAI(base_url=url + "/v1", api_key="sk-relayed-not-checked", max_retries=0, timeout=60)
        expected = _drive(name, client, report)
        _observe_raw_stream(name, int(url.rsplit(":", 1)[1]), report)
    finally:
        code = stop_process(proxy)
    log_text = proxy_log.read_text(errors="replace")
    if code != 0:
        raise CheckFailed(f"chatproxy exited with {code}:\n{log_text}")
    complaints = [
        line for line in log_text.splitlines() if "Traceback" in line or "warning" in line or "error:" in line
    ]
    if complaints:
        raise CheckFailed("chatproxy complained:\n" + "\n".join(complaints))
    journal = [json.loads(line) for line in (datasets / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
    journaled = [[(_FROM[m["role"]], m.get("content", "")) for m in record["messages"]] for record in journal]
    if sorted(journaled) != sorted(expected):
        raise CheckFailed(f"journal differs from what the SDK received:\n  expected {expected}\n  recorded {journaled}")
    incomplete = [record["meta"] for record in journal if not record["meta"].get("complete")]
    if incomplete:
        raise CheckFailed(
            f"{len(incomplete)} of {len(journal)} records marked incomplete although the SDK read the whole reply "
            f"(finish_reason {[m.get('finish_reason') for m in incomplete]})"
        )
    records = json.loads((datasets / f"{name}.json").read_text(encoding="utf-8"))
    got = [[(turn["from"], turn["value"]) for turn in record["conversations"]] for record in records]
    if sorted(got) != sorted(expected):
        raise CheckFailed(f"dataset differs from what the SDK received:\n  expected {expected}\n  recorded {got}")
    models = {record["meta"].get("model") for record in records}
    apis = sorted({str(record["meta"].get("api")) for record in records})
    report(
        f"{name}: {len(expected)} conversations recorded as the SDK received them over {apis}; "
        f"models: {sorted(map(str, models))}"
    )


_FROM = {"system": "system", "user": "human", "assistant": "gpt", "tool": "tool"}


def _wait_startup(proxy: subprocess.Popen, log: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if " listening on " in text:
            return text.split(" listening on ", 1)[1].split()[0]
        if proxy.poll() is not None:
            raise CheckFailed(f"chatproxy exited with {proxy.returncode}:\n{text}")
        time.sleep(0.05)
    raise CheckFailed("chatproxy did not start:\n" + log.read_text(errors="replace"))


def _drive(name: str, client: Any, report: Callable[[str], None]) -> List[List[tuple]]:
    """Models, then chat and text completions, streamed and not; returns the expected conversations."""
    models = [m.id for m in client.models.list()]
    model = models[0]
    report(f"{name}: /v1/models through the proxy: {models}")
    options: Dict[str, Any] = {"max_tokens": 8, "temperature": 0}
    expected = []

    question = "Say hello in one short sentence."
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}], **options)
    text = reply.choices[0].message.content or ""
    expected.append([("human", question), ("gpt", text)])

    question = "Now tell a very short story."
    pieces = []
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], stream=True, **options
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    expected.append([("human", question), ("gpt", "".join(pieces))])

    prompt = "Once upon a time"
    completion = client.completions.create(model=model, prompt=prompt, **options)
    expected.append([("human", prompt), ("gpt", completion.choices[0].text or "")])

    prompt = "The quick brown fox"
    stream = client.completions.create(model=model, prompt=prompt, stream=True, **options)
    pieces = [c.choices[0].text or "" for c in stream if c.choices]
    expected.append([("human", prompt), ("gpt", "".join(pieces))])

    if name == "litellm":
        expected += _drive_agent_apis(client, model, report)
        for conversation in expected:
            if conversation[1][1] != MOCK_REPLY:
                raise CheckFailed(f"LiteLLM's mock reply did not come through intact: {conversation[1][1]!r}")
    report(f"{name}: SDK replies: {[c[1][1] for c in expected]}")
    return expected


def _drive_agent_apis(client: Any, model: str, report: Callable[[str], None]) -> List[List[tuple]]:
    """LiteLLM serves the Responses and the Anthropic Messages APIs beside chat completions; its
    mock model answers both, through the proxy. Not streamed: LiteLLM 1.80's mock provider fails
    both streams itself (a 500, "'async for' requires an object with __aiter__ method")."""
    import anthropic

    expected = []
    question = "Answer over the Responses API."
    reply = client.responses.create(model=model, input=question, max_output_tokens=16)
    expected.append([("human", question), ("gpt", reply.output_text)])
    base = str(client.base_url).rstrip("/").rsplit("/v1", 1)[0]
    messages = anthropic.Anthropic(base_url=base, api_key="sk-relayed", max_retries=0, timeout=60)
    try:
        question = "Answer over the Messages API."
        answer = messages.messages.create(model=model, max_tokens=16, messages=[{"role": "user", "content": question}])
        expected.append([("human", question), ("gpt", "".join(b.text for b in answer.content if b.type == "text"))])
    finally:
        messages.close()
    report(f"litellm: Responses and Messages replies: {[c[1][1] for c in expected]}")
    return expected


def _observe_raw_stream(name: str, port: int, report: Callable[[str], None]) -> None:
    """The shape of each streamed endpoint's events, read as raw bytes through the proxy (not recorded)."""
    for path, body in (
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/completions", {"prompt": "hi"}),
    ):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        payload = dict(
            body, model="mock-gpt" if name == "litellm" else "tiny", stream=True, max_tokens=4, temperature=0
        )
        conn.request(
            "POST", path, json.dumps(payload), {"Content-Type": "application/json", "X-Chatproxy-Record": "no"}
        )
        response = conn.getresponse()
        raw = response.read()
        conn.close()
        events = [e for e in raw.replace(b"\r\n", b"\n").split(b"\n\n") if e.strip()]
        datas = [e[len(b"data: ") :] for e in events if e.startswith(b"data: ")]
        chunks = [json.loads(d) for d in datas if d != b"[DONE]"]
        length = response.getheader("content-length")
        framing = "chunked" if response.getheader("transfer-encoding") else f"content-length {length}"
        notes = [
            f"{response.status} {response.getheader('content-type')}, {framing}",
            f"{len(chunks)} chunks, [DONE] {'sent' if b'[DONE]' in datas else 'missing'}",
            "CRLF line ends" if b"\r\n" in raw else "LF line ends",
        ]
        first = chunks[0]["choices"][0] if chunks and chunks[0].get("choices") else {}
        if first.get("delta") == {"role": "assistant"} or first.get("text") == "":
            notes.append("first chunk carries no text")
        if any(c.get("choices") and "text" not in c["choices"][0] and "delta" not in c["choices"][0] for c in chunks):
            notes.append("a chunk's choice has neither text nor delta")
        if any("usage" in c for c in chunks):
            notes.append("usage in stream chunks")
        if len({c.get("model") for c in chunks}) > 1:
            notes.append(f"model changes within the stream: {sorted({str(c.get('model')) for c in chunks})}")
        choices = [c["choices"][0] for c in chunks if c.get("choices")]
        before = {"null" if "finish_reason" in c else "omitted" for c in choices[:-1]}
        notes.append(
            f"finish_reason {choices[-1].get('finish_reason') if choices else None!r} at the end, "
            f"{' or '.join(sorted(before)) or 'no chunks'} before"
        )
        if any(c.get("delta", {}).get("role") and c.get("delta", {}).get("content") for c in choices):
            notes.append("role and first text in the same chunk")
        report(f"{name}: observed {path} stream: " + "; ".join(notes))


# -- set-up --------------------------------------------------------------------------------------


def venv_python(venvs: Path, name: str) -> Path:
    return venvs / name / "bin" / "python"


def installed(venvs: Path, name: str) -> Optional[str]:
    """The interpreter of `name`'s venv if the server imports there, else None."""
    python = venv_python(venvs, name)
    if not python.exists():
        return None
    done = subprocess.run([str(python), "-c", IMPORT_CHECK[name]], capture_output=True, timeout=120)
    return str(python) if done.returncode == 0 else None


def install(venvs: Path, name: str) -> None:
    folder = venvs / name
    if not venv_python(venvs, name).exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(folder)
    print(f"installing {' '.join(PACKAGES[name])} into {folder} ...", flush=True)
    subprocess.run([str(venv_python(venvs, name)), "-m", "pip", "install", "-q", *PACKAGES[name]], check=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument(
        "--server", choices=sorted(PACKAGES), action="append", help="check only this server (repeatable)"
    )
    parser.add_argument(
        "--venvs", type=Path, default=DEFAULT_VENVS, help=f"where the servers' venvs are (default {DEFAULT_VENVS})"
    )
    parser.add_argument("--install", action="store_true", help="create the venvs and install the servers first")
    args = parser.parse_args(argv)
    names = args.server or sorted(PACKAGES)
    if args.install:
        for name in names:
            install(args.venvs, name)
    failed = skipped = 0
    for name in names:
        python = installed(args.venvs, name)
        if python is None:
            print(f"{name}: not installed in {args.venvs / name} (run with --install); skipped")
            skipped += 1
            continue
        started = time.monotonic()
        try:
            check(name, python)
        except CheckFailed as exc:
            print(f"{name}: FAILED: {exc}")
            failed += 1
        else:
            print(f"{name}: ok ({time.monotonic() - started:.1f}s)")
    print(f"{len(names) - failed - skipped} passed, {failed} failed, {skipped} skipped")
    return 1 if failed or skipped == len(names) else 0


if __name__ == "__main__":
    sys.exit(main())
