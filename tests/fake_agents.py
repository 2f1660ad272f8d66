"""Fake backends for the agent APIs, speaking each wire format as its public reference defines it:
OpenAI Responses (JSON or `event:`/`data:` SSE), Anthropic Messages (JSON or SSE) and Ollama's
native chat and generate (JSON or NDJSON). Each is a fake_upstream Behaviour answering one request
with one scripted turn: reasoning, text and tool calls, streamed when the request asks for it.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from fake_upstream import Behaviour, Exchange

MODEL = "fake-agent-model"
_ids = itertools.count(1)

Call = Tuple[str, Dict[str, Any]]  # (tool name, arguments)


def _pieces(text: str, size: int = 7) -> List[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _sse(events: Sequence[Dict[str, Any]], named: bool) -> bytes:
    out = []
    for event in events:
        head = f"event: {event['type']}\n" if named else ""
        out.append((head + "data: " + json.dumps(event) + "\n\n").encode())
    return b"".join(out)


async def _send_stream(ex: Exchange, body: bytes, content_type: str, split: int) -> None:
    await ex.start(200, content_type)
    for start in range(0, len(body), split):
        await ex.send_data(body[start : start + split])
    await ex.end()


@dataclass
class Turn(Behaviour):
    """What the model says in one reply; subclasses put it in their API's wire format."""

    text: str = ""
    calls: Sequence[Call] = ()
    reasoning: str = ""
    split: int = 97  # bytes per write of a stream: events cross TCP reads
    cut_after: Optional[int] = None  # end the stream early, after this many events
    status: str = "completed"
    call_ids: Sequence[str] = ()  # the calls' ids, where a test replays a history that names them
    seen: List[Dict[str, Any]] = field(default_factory=list)

    async def run(self, ex: Exchange) -> None:
        request = ex.request.json()
        self.seen.append(request)
        await self.answer(ex, request)

    async def answer(self, ex: Exchange, request: Dict[str, Any]) -> None:
        raise NotImplementedError

    def call_id(self, default: str, i: int) -> str:
        return self.call_ids[i] if i < len(self.call_ids) else default


# -- OpenAI Responses -------------------------------------------------------------------------


class ResponsesTurn(Turn):
    def items(self) -> List[Dict[str, Any]]:
        n = next(_ids)
        items: List[Dict[str, Any]] = []
        if self.reasoning:
            items.append(
                {"id": f"rs_{n}", "type": "reasoning", "summary": [{"type": "summary_text", "text": self.reasoning}]}
            )
        if self.text:
            items.append(
                {
                    "id": f"msg_{n}",
                    "type": "message",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": self.text, "annotations": []}],
                }
            )
        for i, (name, arguments) in enumerate(self.calls):
            items.append(
                {
                    "id": f"fc_{n}_{i}",
                    "type": "function_call",
                    "status": "completed",
                    "call_id": self.call_id(f"call_{n}_{i}", i),
                    "name": name,
                    "arguments": json.dumps(arguments),
                }
            )
        return items

    def response(self, request: Dict[str, Any], output: List[Dict[str, Any]], status: str) -> Dict[str, Any]:
        return {
            "id": f"resp_{next(_ids)}",
            "object": "response",
            "created_at": 1_700_000_000,
            "status": status,
            "model": request.get("model", MODEL),
            "output": output,
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": request.get("tools", []),
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "usage": {"input_tokens": 11, "output_tokens": 7, "total_tokens": 18},
        }

    async def answer(self, ex: Exchange, request: Dict[str, Any]) -> None:
        output = self.items()
        response = self.response(request, output, self.status)
        if not request.get("stream"):
            await ex.respond(200, json.dumps(response).encode())
            return
        events = list(self.events(response))
        if self.cut_after is not None:
            events = events[: self.cut_after]
        await _send_stream(ex, _sse(events, named=True), "text/event-stream", self.split)

    def events(self, response: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
        started = dict(response, status="in_progress", output=[], usage=None)
        yield {"type": "response.created", "response": started}
        yield {"type": "response.in_progress", "response": started}
        for index, item in enumerate(response["output"]):
            yield from self._item_events(index, item)
        ending = {"completed": "response.completed", "incomplete": "response.incomplete"}.get(
            response["status"], "response.failed"
        )
        yield {"type": ending, "response": response}

    def _item_events(self, index: int, item: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
        empty = dict(item, status="in_progress")
        if item["type"] == "message":
            empty["content"] = []
        if item["type"] == "function_call":
            empty["arguments"] = ""
        yield {"type": "response.output_item.added", "output_index": index, "item": empty}
        if item["type"] == "message":
            text = item["content"][0]["text"]
            yield {
                "type": "response.content_part.added",
                "item_id": item["id"],
                "output_index": index,
                "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": []},
            }
            for piece in _pieces(text):
                yield {
                    "type": "response.output_text.delta",
                    "item_id": item["id"],
                    "output_index": index,
                    "content_index": 0,
                    "delta": piece,
                }
            yield {
                "type": "response.output_text.done",
                "item_id": item["id"],
                "output_index": index,
                "content_index": 0,
                "text": text,
            }
        elif item["type"] == "function_call":
            for piece in _pieces(item["arguments"]):
                yield {
                    "type": "response.function_call_arguments.delta",
                    "item_id": item["id"],
                    "output_index": index,
                    "delta": piece,
                }
        elif item["type"] == "reasoning":
            for piece in _pieces(item["summary"][0]["text"]):
                yield {
                    "type": "response.reasoning_summary_text.delta",
                    "item_id": item["id"],
                    "output_index": index,
                    "summary_index": 0,
                    "delta": piece,
                }
        yield {"type": "response.output_item.done", "output_index": index, "item": item}


# -- Anthropic Messages -----------------------------------------------------------------------


class MessagesTurn(Turn):
    stop_reason: str = "end_turn"

    def blocks(self) -> List[Dict[str, Any]]:
        n = next(_ids)
        blocks: List[Dict[str, Any]] = []
        if self.reasoning:
            blocks.append({"type": "thinking", "thinking": self.reasoning, "signature": f"sig-{n}"})
        if self.text:
            blocks.append({"type": "text", "text": self.text})
        for i, (name, arguments) in enumerate(self.calls):
            call_id = self.call_id(f"toolu_{n}_{i}", i)
            blocks.append({"type": "tool_use", "id": call_id, "name": name, "input": arguments})
        return blocks

    async def answer(self, ex: Exchange, request: Dict[str, Any]) -> None:
        blocks = self.blocks()
        stop = "tool_use" if self.calls else ("max_tokens" if self.status == "incomplete" else "end_turn")
        message = {
            "id": f"msg_{next(_ids)}",
            "type": "message",
            "role": "assistant",
            "model": request.get("model", MODEL),
            "content": blocks,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": 21, "output_tokens": 9, "cache_read_input_tokens": 4},
        }
        if not request.get("stream"):
            await ex.respond(200, json.dumps(message).encode())
            return
        events = list(self.events(message))
        if self.cut_after is not None:
            events = events[: self.cut_after]
        await _send_stream(ex, _sse(events, named=True), "text/event-stream", self.split)

    def events(self, message: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
        start = dict(message, content=[], stop_reason=None, usage=dict(message["usage"], output_tokens=1))
        yield {"type": "message_start", "message": start}
        yield {"type": "ping"}
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                yield {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}
                for piece in _pieces(block["text"]):
                    yield {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": piece},
                    }
            elif block["type"] == "thinking":
                yield {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "thinking", "thinking": "", "signature": ""},
                }
                for piece in _pieces(block["thinking"]):
                    delta = {"type": "thinking_delta", "thinking": piece}
                    yield {"type": "content_block_delta", "index": index, "delta": delta}
                delta = {"type": "signature_delta", "signature": block["signature"]}
                yield {"type": "content_block_delta", "index": index, "delta": delta}
            else:
                first = dict(block, input={})
                yield {"type": "content_block_start", "index": index, "content_block": first}
                for piece in _pieces(json.dumps(block["input"]), 5):
                    delta = {"type": "input_json_delta", "partial_json": piece}
                    yield {"type": "content_block_delta", "index": index, "delta": delta}
            yield {"type": "content_block_stop", "index": index}
        yield {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": {"output_tokens": 9},
        }
        yield {"type": "message_stop"}


# -- a whole agent task ----------------------------------------------------------------------


@dataclass
class AgentScript(Behaviour):
    """A backend for a real agent (Codex on Responses, Claude Code on Messages) doing one tool round:
    the first request of a task gets a shell call (the tool the request declares: Codex's `exec_command`
    or older `shell`, Claude Code's `Bash`), a request whose last item is the tool's result gets the
    final answer, a request without tools (Claude Code's title) a title. Anything else: 404. One
    instance answers every request; `seen` keeps them (method, target, headers, JSON body)."""

    final_text: str = "There is one file: hello.txt."
    seen: List[Tuple[str, str, List[Tuple[str, str]], Any]] = field(default_factory=list)

    async def run(self, ex: Exchange) -> None:
        request = ex.request
        try:
            body = request.json() if request.body else None
        except ValueError:
            body = None
        self.seen.append((request.method, request.target, request.headers, body))
        if request.method == "POST" and isinstance(body, dict) and request.path.endswith("/responses"):
            await self._responses(body).run(ex)
        elif request.method == "POST" and isinstance(body, dict) and request.path.endswith("/messages"):
            await self._messages(body).run(ex)
        else:
            await ex.respond(404, json.dumps({"error": {"message": "not here"}}).encode())

    def _responses(self, body: Dict[str, Any]) -> Turn:
        items = body.get("input") if isinstance(body.get("input"), list) else []
        if items and isinstance(items[-1], dict) and items[-1].get("type") == "function_call_output":
            return ResponsesTurn(text=self.final_text, reasoning="Listed the files.")
        names = [tool.get("name") for tool in body.get("tools") or [] if isinstance(tool, dict)]
        call: Call = ("exec_command", {"cmd": "ls"}) if "exec_command" in names else ("shell", {"command": ["ls"]})
        return ResponsesTurn(reasoning="I should list the files.", calls=[call])

    def _messages(self, body: Dict[str, Any]) -> Turn:
        if not body.get("tools"):
            return MessagesTurn(text='{"title": "List the files"}')
        messages = body.get("messages") or [{}]
        content = messages[-1].get("content") if isinstance(messages[-1], dict) else None
        if any(isinstance(block, dict) and block.get("type") == "tool_result" for block in as_blocks(content)):
            return MessagesTurn(text=self.final_text, reasoning="Listed the files.")
        return MessagesTurn(reasoning="I should list the files.", calls=[("Bash", {"command": "ls"})])


def as_blocks(content: Any) -> List[Any]:
    return content if isinstance(content, list) else []


# -- Ollama native ----------------------------------------------------------------------------


class OllamaTurn(Turn):
    async def answer(self, ex: Exchange, request: Dict[str, Any]) -> None:
        generate = ex.request.path.endswith("/api/generate")
        lines = list(self.lines(request, generate))
        if request.get("stream") is False:
            whole = dict(lines[-1])
            if generate:
                whole["response"] = self.text
                whole["thinking"] = self.reasoning or None
            else:
                whole["message"] = self._message(self.text, self.reasoning, self.calls)
            await ex.respond(200, json.dumps(whole).encode())
            return
        if self.cut_after is not None:
            lines = lines[: self.cut_after]
        body = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
        await _send_stream(ex, body, "application/x-ndjson", self.split)

    @staticmethod
    def _message(text: str, thinking: str, calls: Sequence[Call]) -> Dict[str, Any]:
        message: Dict[str, Any] = {"role": "assistant", "content": text}
        if thinking:
            message["thinking"] = thinking
        if calls:
            message["tool_calls"] = [{"function": {"name": name, "arguments": args}} for name, args in calls]
        return message

    def lines(self, request: Dict[str, Any], generate: bool) -> Iterator[Dict[str, Any]]:
        base = {"model": request.get("model", MODEL), "created_at": "2026-12-02T10:00:00Z"}
        for piece in _pieces(self.reasoning) if self.reasoning else []:
            yield dict(
                base,
                done=False,
                **({"response": "", "thinking": piece} if generate else {"message": self._message("", piece, ())}),
            )
        for piece in _pieces(self.text):
            yield dict(
                base, done=False, **({"response": piece} if generate else {"message": self._message(piece, "", ())})
            )
        if self.calls and not generate:
            yield dict(base, done=False, message=self._message("", "", self.calls))
        final = dict(base, done=True, done_reason="stop", prompt_eval_count=13, eval_count=8, total_duration=1)
        if generate:
            final["response"] = ""
        else:
            final["message"] = {"role": "assistant", "content": ""}
        yield final
