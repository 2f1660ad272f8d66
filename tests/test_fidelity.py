"""Dataset fidelity through the real proxy: threads, branches, tools, reasoning, images, text completions."""

from __future__ import annotations

import base64
import json

import openai
import pytest

from chatproxy.chats.sharegpt import llamafactory_problems
from chatproxy.config import RecordOptions

from fake_upstream import Chat, Completion

SYSTEM = "You are Seraphina, a kind forest guardian. Stay in character."
GREETING = "*Seraphina smiles warmly.* Welcome to my glade, traveller."
# A 1x1 PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def sdk(proxy, **headers) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=proxy.url + "/v1", api_key="sk-x", max_retries=0, timeout=10, default_headers=headers or None
    )


def assert_llamafactory_valid(records):
    for record in records:
        assert llamafactory_problems(record) == [], record


def test_sillytavern_chat_with_regenerate_and_trimmed_context(upstream, proxy):
    """40 turns, one regenerate, the last 10 turns sent with a trimmed context: one chat, two branches."""
    client = sdk(proxy)
    history = [{"role": "system", "content": SYSTEM}, {"role": "assistant", "content": GREETING}]
    for turn in range(40):
        history.append({"role": "user", "content": f"Turn {turn}: tell me about the glade."})
        window = history if turn < 30 else history[:1] + history[-9:]  # frontend trims old turns
        stream = turn % 2 == 0
        if turn == 20:
            # regenerate: the same history twice, the second answer differs
            upstream.push(Chat("A first answer that the user did not like.", stream=stream))
            client.chat.completions.create(model="fake-model", messages=window, stream=stream)
        upstream.push(Chat(f"Answer {turn}: the glade is calm.", stream=stream))
        reply = client.chat.completions.create(model="fake-model", messages=window, stream=stream)
        text = (
            "".join(c.choices[0].delta.content or "" for c in reply if c.choices)
            if stream
            else reply.choices[0].message.content
        )
        history.append({"role": "assistant", "content": text})
    proxy.wait_recorded(41)
    records = proxy.dataset()
    assert len(records) == 2  # the finished chat and the abandoned branch at turn 20
    full = records[-1]["conversations"]
    assert full[0] == {"from": "system", "value": SYSTEM + "\n\n" + GREETING}
    assert [t["value"] for t in full[1:]] == [m["content"] for m in history[2:]]
    branch = records[0]["conversations"]
    assert branch[-1]["value"] == "A first answer that the user did not like."
    assert len(branch) == 1 + 2 * 21
    assert_llamafactory_valid(records)
    # journal bytes grow with new text, not with the replayed history
    journal = (proxy.datasets / f"{proxy.session}.jsonl").stat().st_size
    text = sum(len(m["content"]) for m in history)
    assert journal < 3 * text + 41 * 600  # about one copy of the text plus per-record metadata


def test_branches_last_keeps_only_the_newest_branch(upstream, make_proxy):
    proxy = make_proxy(upstream.url, record=RecordOptions(branches="last", snapshot_interval=0.05))
    client = sdk(proxy)
    messages = [{"role": "user", "content": "Pick a colour"}]
    for text in ("Red.", "Blue."):
        upstream.push(Chat(text, stream=False))
        client.chat.completions.create(model="m", messages=messages)
    proxy.wait_recorded(2)
    (record,) = proxy.dataset()
    assert record["conversations"][-1] == {"from": "gpt", "value": "Blue."}
    assert len(proxy.journal()) == 2  # the journal keeps both


def test_n_choices_are_branches(upstream, proxy):
    sdk(proxy).chat.completions.create(model="m", n=2, messages=[{"role": "user", "content": "Two ideas"}])
    proxy.wait_recorded(2)
    replies = sorted(r["conversations"][-1]["value"] for r in proxy.dataset())
    assert replies == ["echo: Two ideas", "echo: Two ideas #1"]


def test_streamed_agent_loop_with_parallel_tool_calls(upstream, proxy):
    client = sdk(proxy)
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        },
        {
            "type": "function",
            "function": {
                "name": "get_time",
                "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}},
            },
        },
    ]
    calls = [
        {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"id": "call_2", "name": "get_time", "arguments": '{"tz": "Europe/Paris"}'},
    ]
    messages = [{"role": "user", "content": "Weather and time in Paris?"}]
    upstream.push(Chat("", tool_calls=calls, finish_reason="tool_calls", stream=True))
    for _ in client.chat.completions.create(model="m", messages=messages, tools=tools, stream=True):
        pass
    messages.append(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                for c in calls
            ],
        }
    )
    messages.append({"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"})
    messages.append({"role": "tool", "tool_call_id": "call_2", "content": "14:05"})
    upstream.push(Chat("It is 18 C and sunny; the time is 14:05.", stream=True))
    for _ in client.chat.completions.create(model="m", messages=messages, tools=tools, stream=True):
        pass
    proxy.wait_recorded(2)
    (record,) = proxy.dataset()
    turns = record["conversations"]
    assert [t["from"] for t in turns] == ["human", "function_call", "observation", "gpt"]
    assert json.loads(turns[1]["value"]) == [
        {"name": "get_weather", "arguments": {"city": "Paris"}},
        {"name": "get_time", "arguments": {"tz": "Europe/Paris"}},
    ]
    # One <tool_response> per result, as LLaMA-Factory 0.9.5's own OpenAI converter joins them (converter.py).
    assert turns[2]["value"] == "18 C, sunny\n</tool_response>\n<tool_response>\n14:05"
    assert [t["name"] for t in json.loads(record["tools"])] == ["get_weather", "get_time"]
    assert_llamafactory_valid([record])


def test_streamed_reasoning_is_inline_think_or_dropped(upstream, make_proxy, tmp_path):
    for mode, expected in (("keep", "<think>\nFirst, 6 times 7.\n</think>\n\n42."), ("drop", "42.")):
        proxy = make_proxy(
            upstream.url, session=f"reasoning-{mode}", record=RecordOptions(reasoning=mode, snapshot_interval=0.05)
        )
        upstream.push(Chat("42.", reasoning="First, 6 times 7.", stream=True))
        for _ in sdk(proxy).chat.completions.create(
            model="m", stream=True, messages=[{"role": "user", "content": "6*7?"}]
        ):
            pass
        proxy.wait_recorded(1)
        assert proxy.dataset()[0]["conversations"][-1] == {"from": "gpt", "value": expected}
        assert proxy.journal()[0]["messages"][-1]["reasoning"] == "First, 6 times 7."


def test_image_is_saved_once_and_referenced(upstream, proxy):
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    content = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": data_url}},
    ]
    client = sdk(proxy)
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": content}])
    client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": content + [{"type": "text", "text": "again"}]}]
    )
    proxy.wait_recorded(2)
    records = proxy.dataset()
    images = {path for r in records for path in r["images"]}
    assert len(images) == 1
    (image,) = images
    assert (proxy.datasets / image).read_bytes() == PNG
    assert "<image>" in records[0]["conversations"][0]["value"]
    raw = b"".join(p.read_bytes() for p in proxy.datasets.glob("*.json*"))
    assert base64.b64encode(PNG)[:20] not in raw  # never inlined
    assert_llamafactory_valid(records)


def test_chatml_text_completion_becomes_clean_turns(upstream, proxy):
    prompt = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\nParis.<|im_end|>\n"
        "<|im_start|>user\nAnd of Italy?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    upstream.push(Completion("Rome.", stream=True))
    for _ in sdk(proxy).completions.create(model="m", prompt=prompt, stream=True):
        pass
    proxy.wait_recorded(1)
    (record,) = proxy.dataset()
    assert record["conversations"] == [
        {"from": "system", "value": "You are a helpful assistant."},
        {"from": "human", "value": "What is the capital of France?"},
        {"from": "gpt", "value": "Paris."},
        {"from": "human", "value": "And of Italy?"},
        {"from": "gpt", "value": "Rome."},
    ]
    assert record["meta"]["template"] == "chatml"


def test_control_headers_route_tag_and_skip(upstream, proxy):
    messages = [{"role": "user", "content": "hello"}]
    sdk(proxy, **{"X-Chatproxy-Session": "side-project", "X-Chatproxy-Tags": "rp, test"}).chat.completions.create(
        model="m", messages=messages
    )
    sdk(proxy, **{"X-Chatproxy-Record": "no"}).chat.completions.create(model="m", messages=messages)
    for request in upstream.requests:
        assert not any(k.lower().startswith("x-chatproxy-") for k, _ in request.headers)
    proxy.flush()
    (side,) = proxy.dataset("side-project")
    assert side["meta"]["tags"] == ["rp", "test"]
    assert proxy.dataset() == []


def test_bad_session_header_is_not_recorded_and_traffic_is_unharmed(upstream, proxy):
    reply = sdk(proxy, **{"X-Chatproxy-Session": "../escape"}).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.choices[0].message.content == "echo: hi"
    proxy.flush()
    assert not list(proxy.datasets.parent.glob("escape*"))
    assert proxy.run(lambda: proxy.proxy.recorder.counts["unrecordable"]) == 1


def test_housekeeping_title_request_is_not_recorded(upstream, proxy):
    title_prompt = (
        "### Task:\nGenerate a concise, 3-5 word title with an emoji summarizing the chat history.\n"
        "### Guidelines:\n- The title should clearly represent the main theme or subject of the conversation.\n"
        '### Output:\nJSON format: { "title": "your concise title here" }\n'
        "### Chat History:\n<chat_history>\nUSER: hello\nASSISTANT: hi\n</chat_history>"
    )
    client = sdk(proxy)
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": title_prompt}])
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "a real question"}])
    proxy.wait_recorded(1)
    records = proxy.dataset()
    assert [r["conversations"][0]["value"] for r in records] == ["a real question"]


def test_live_dataset_loads_with_hugging_face_datasets(upstream, proxy, tmp_path):
    datasets = pytest.importorskip("datasets", minversion="2.14")  # not the repo's datasets/ folder
    client = sdk(proxy)
    client.chat.completions.create(
        model="m", messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": "one"}]
    )
    upstream.push(
        Chat("", tool_calls=[{"id": "c", "name": "f", "arguments": "{}"}], finish_reason="tool_calls", stream=False)
    )
    client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "call"}],
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    )
    for _ in client.chat.completions.create(model="m", stream=True, messages=[{"role": "user", "content": "two"}]):
        pass
    proxy.wait_recorded(3)
    proxy.flush()
    loaded = datasets.load_dataset(
        "json",
        data_files=str(proxy.datasets / f"{proxy.session}.json"),
        split="train",
        cache_dir=str(tmp_path / "hf-cache"),
    )
    assert loaded.num_rows == 3
    assert_llamafactory_valid(proxy.dataset())


def test_stream_finished_before_the_client_hangs_up_is_complete(upstream, proxy):
    """A client that closes right after the last event still gets its chat recorded as complete."""
    import socket

    from fake_upstream import SSE

    def event(delta, finish=None):
        return json.dumps(
            {
                "id": "c",
                "object": "chat.completion.chunk",
                "model": "m",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
        )

    upstream.push(SSE([event({"role": "assistant", "content": "Hi"}), event({}, "stop"), "[DONE]", ""], gap=0.3))
    body = json.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "hello"}]}).encode()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        received = b""
        while b"[DONE]" not in received:
            received += sock.recv(65536)
    proxy.wait_recorded(1)
    (record,) = proxy.dataset()
    assert record["conversations"][-1] == {"from": "gpt", "value": "Hi"}
    assert record["meta"]["complete"] is True
