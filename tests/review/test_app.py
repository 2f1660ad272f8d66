"""The review page's HTTP API over real sockets: paging, search, filters, marks, the key, same origin, images."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import pytest
from review_sessions import PNG, make_week

from chatproxy.review.app import ReviewApp, start_review_server
from chatproxy.review.catalogue import Catalogue


@pytest.fixture
def week(tmp_path: Path) -> Path:
    return make_week(tmp_path)


class Page:
    """`chatproxy review`'s server on its own loop in a thread, as the command runs it."""

    def __init__(self, folder: Path, key: Optional[str] = None, host: str = "127.0.0.1", read: bool = True) -> None:
        self.app = ReviewApp(Catalogue(folder), key, host)
        self.app.catalogue.start()
        if read:
            self.app.catalogue.wait_until_read()  # answers are then of every record (while reading, of those read)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server, (_, self.port) = asyncio.run_coroutine_threadsafe(
            start_review_server(self.app, host, 0), self.loop
        ).result(10)

    def request(
        self, method: str, path: str, body: Any = None, headers: Optional[Dict[str, str]] = None
    ) -> Tuple[int, Dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, data, headers or {})
        reply = conn.getresponse()
        result = reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
        conn.close()
        return result

    def get_json(self, path: str) -> Any:
        status, _, body = self.request("GET", "/_chatproxy/review/" + path)
        assert status == 200, body
        return json.loads(body)

    def mark(self, body: Dict[str, Any], **headers: str) -> Tuple[int, bytes]:
        sent = {
            "Content-Type": "application/json",
            "Origin": f"http://127.0.0.1:{self.port}",
            "X-Chatproxy-Token": self.app.token,
        }
        sent.update({k.replace("_", "-"): v for k, v in headers.items()})
        status, _, data = self.request(
            "POST", "/_chatproxy/review/api/mark", body, {k: v for k, v in sent.items() if v}
        )
        return status, data

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()
        self.app.catalogue.close()


@pytest.fixture
def page(week: Path) -> Iterator[Page]:
    running = Page(week)
    yield running
    running.stop()


def test_the_page_and_its_files_are_served_with_a_strict_policy(page: Page) -> None:
    status, headers, body = page.request("GET", "/_chatproxy/review/")
    assert status == 200 and page.app.token.encode() in body
    assert headers["content-security-policy"].startswith("default-src 'self'")
    assert "access-control-allow-origin" not in headers
    for name in ("app.js", "app.css"):
        assert page.request("GET", "/_chatproxy/review/" + name)[0] == 200
    assert page.request("GET", "/_chatproxy/review")[0] == 308
    assert page.request("GET", "/")[0] == 303
    assert page.request("GET", "/v1/models")[0] == 404


def test_the_list_is_newest_first_paged_and_searchable(page: Page) -> None:
    everything = page.get_json("api/list")
    assert everything["total"] == 5
    times = [row["time"] for row in everything["rows"]]
    assert times == sorted(times, reverse=True)
    first = page.get_json("api/list?per=2")
    second = page.get_json("api/list?per=2&page=1")
    assert [r["id"] for r in first["rows"] + second["rows"]] == [r["id"] for r in everything["rows"][:4]]
    assert [r["id"] for r in page.get_json("api/list?q=drumming")["rows"]] == ["a000000000000003"]
    assert page.get_json("api/list?q=grey+SKY")["total"] == 1
    haiku = page.get_json("api/list?q=haiku")["rows"]
    assert {r["branches"] for r in haiku} == {2}


def test_filters(page: Page) -> None:
    assert page.get_json("api/list?model=llama*")["total"] == 1  # the regenerated branch came from gpt-4o
    assert page.get_json("api/list?images=1")["rows"][0]["id"] == "a000000000000004"
    assert page.get_json("api/list?reasoning=1")["total"] == 1
    assert page.get_json("api/list?tag=vision")["total"] == 1
    assert page.get_json("api/list?since=2026-05-02")["total"] == 2
    assert page.get_json("api/list?until=2026-05-01")["total"] == 3
    assert page.get_json("api/list?min_turns=3")["total"] == 0


def test_marks_are_saved_to_the_review_journal_and_filter(page: Page, week: Path) -> None:
    status, body = page.mark({"session": "week", "id": "a000000000000001", "op": "discard"})
    assert status == 200 and json.loads(body)["status"] == "discard"
    assert page.mark({"session": "week", "id": "a000000000000004", "op": "rating", "value": 4})[0] == 200
    assert [r["id"] for r in page.get_json("api/list?status=discarded")["rows"]] == ["a000000000000001"]
    assert page.get_json("api/list?min_rating=4")["total"] == 1
    assert page.get_json("api/list?status=unmarked")["total"] == 4
    assert len((week / "week.review.jsonl").read_bytes().splitlines()) == 2
    assert json.loads(page.mark({"session": "week", "id": "a000000000000001", "op": "undo"})[1])["status"] is None


def test_an_edit_keeps_the_original(page: Page) -> None:
    status, body = page.mark({"session": "week", "id": "a000000000000001", "op": "edit", "turn": 2, "content": "Hey."})
    assert status == 200
    assert json.loads(body)["edits"] == [{"turn": 2, "content": "Hey.", "original": "Hi."}]
    assert page.mark({"session": "week", "id": "a000000000000001", "op": "edit", "turn": 1, "content": "x"})[0] == 400


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({"Origin": "http://evil.example"}, "Origin"),
        ({"Origin": ""}, "Origin"),
        ({"X_Chatproxy_Token": "0" * 32}, "token"),
        ({"Content_Type": "text/plain"}, "JSON"),
    ],
)
def test_a_mark_from_another_origin_or_without_the_token_is_refused(
    page: Page, headers: Dict[str, str], why: str
) -> None:
    status, body = page.mark({"session": "week", "id": "a000000000000001", "op": "discard"}, **headers)
    assert status in (403, 415) and why.encode() in body
    assert page.get_json("api/list?status=discarded")["total"] == 0


def test_another_host_name_is_refused(page: Page) -> None:
    """DNS rebinding: a page of evil.example resolved to 127.0.0.1 sends its own name as Host."""
    status, _, _ = page.request("GET", "/_chatproxy/review/api/list", headers={"Host": "evil.example"})
    assert status == 421


def test_images_only_by_name_from_the_images_folder(page: Page, week: Path) -> None:
    conversation = page.get_json("api/conversation?session=week&id=a000000000000004")
    name = conversation["messages"][0]["images"][0]["name"]
    status, headers, body = page.request("GET", f"/_chatproxy/review/api/image?session=week&name={name}")
    assert status == 200 and body == PNG and headers["content-type"] == "image/png"
    (week / "secret.png").write_bytes(b"secret")
    for bad in ("../../secret.png", "..%2F..%2Fsecret.png", "/etc/passwd", "week.jsonl", name[:-4] + ".txt"):
        assert page.request("GET", f"/_chatproxy/review/api/image?session=week&name={bad}")[0] == 404
    assert page.request("GET", f"/_chatproxy/review/api/image?session=..&name={name}")[0] == 404


def test_a_key_is_needed_on_every_request_when_set(week: Path) -> None:
    page = Page(week, key="s3cret")
    try:
        assert page.request("GET", "/_chatproxy/review/")[0] == 401
        assert page.request("GET", "/_chatproxy/review/api/list")[0] == 401
        status, headers, _ = page.request("GET", "/_chatproxy/review/?key=s3cret")
        assert status == 200 and "HttpOnly; SameSite=Strict" in headers["set-cookie"]
        cookie = headers["set-cookie"].split(";")[0]
        assert page.request("GET", "/_chatproxy/review/api/list", headers={"Cookie": cookie})[0] == 200
        assert page.request("GET", "/_chatproxy/review/api/list", headers={"X-Chatproxy-Key": "s3cret"})[0] == 200
        assert page.request("GET", "/_chatproxy/review/api/list", headers={"X-Chatproxy-Key": "wrong"})[0] == 401
    finally:
        page.stop()


def test_the_running_proxy_answers_the_page_itself(upstream: Any, make_proxy: Any) -> None:
    """Never forwarded: the fake backend sees no request for it, and chats recorded since appear."""
    proxy = make_proxy(upstream.url)
    before = len(upstream.requests) if hasattr(upstream, "requests") else None
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    conn.request("GET", "/_chatproxy/review/api/list")
    reply = conn.getresponse()
    assert reply.status == 200 and json.loads(reply.read())["total"] == 0
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hello review"}]})
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    assert conn.getresponse().read()
    proxy.wait_recorded(1)
    conn.request("GET", "/_chatproxy/review/api/list?q=review")
    rows = json.loads(conn.getresponse().read())["rows"]
    assert [row["first"] for row in rows] == ["hello review"]
    conn.close()
    if before is not None:
        assert not any("_chatproxy" in str(r) for r in upstream.requests)


def post(page: Page, path: str, body: Dict[str, Any], **headers: str) -> Tuple[int, Any]:
    sent = {
        "Content-Type": "application/json",
        "Origin": f"http://127.0.0.1:{page.port}",
        "X-Chatproxy-Token": page.app.token,
    }
    sent.update({k.replace("_", "-"): v for k, v in headers.items()})
    status, _, data = page.request("POST", "/_chatproxy/review/" + path, body, {k: v for k, v in sent.items() if v})
    return status, json.loads(data) if status == 200 else data


def test_a_bulk_mark_covers_the_filtered_set_and_undoes_as_one(page: Page, week: Path) -> None:
    status, done = post(page, "api/bulk", {"filter": "q=haiku", "op": "discard"})
    assert status == 200 and done["count"] == 2
    assert {r["id"] for r in page.get_json("api/list?status=discarded")["rows"]} == {
        "a000000000000002",
        "a000000000000003",
    }
    assert len((week / "week.review.jsonl").read_bytes().splitlines()) == 2
    assert post(page, "api/bulk", {"filter": "", "op": "tag", "value": "batch1"})[1]["count"] == 5
    assert page.get_json("api/list?tag=batch1")["total"] == 5
    # A single mark made after the bulk one survives the bulk undo.
    assert page.mark({"session": "week", "id": "a000000000000002", "op": "keep"})[0] == 200
    status, undone = post(page, "api/bulk", {"op": "undo", "batch": done["batch"]})
    assert status == 200 and undone["count"] == 2
    assert page.get_json("api/list?status=discarded")["total"] == 0
    assert [r["id"] for r in page.get_json("api/list?status=kept")["rows"]] == ["a000000000000002"]
    assert page.get_json("api/list?tag=batch1")["total"] == 5
    assert post(page, "api/bulk", {"op": "undo", "batch": done["batch"]})[0] == 400  # nothing left to undo
    assert post(page, "api/bulk", {"filter": "", "op": "edit"})[0] == 400
    assert post(page, "api/bulk", {"filter": "", "op": "rating", "value": 3})[0] == 400


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": ""},
        {"X_Chatproxy_Token": "0" * 32},
        {"Content_Type": "text/plain"},
    ],
)
def test_a_bulk_mark_needs_the_same_origin_and_the_token(page: Page, headers: Dict[str, str]) -> None:
    status, _ = post(page, "api/bulk", {"filter": "", "op": "discard"}, **headers)
    assert status in (403, 415)
    assert page.get_json("api/list?status=discarded")["total"] == 0
    assert page.request("GET", "/_chatproxy/review/api/bulk")[0] == 404


def test_the_dashboard_of_the_selection(page: Page, week: Path) -> None:
    stats = page.get_json("api/stats")
    assert stats["total"] == 5
    assert stats["per_day"] == [["2026-05-01", 3], ["2026-05-02", 2]]
    assert stats["per_model"] == [["gpt-4o", 4], ["llama-3", 1]]
    assert stats["per_api"] == [["chat.completions", 5]]  # meta.api, or the API of meta.endpoint
    assert sum(stats["turns"]["counts"]) == 5 and stats["turns"]["min"] == 2
    assert sum(stats["chars"]["counts"]) == 5 and len(stats["chars"]["edges"]) == len(stats["chars"]["counts"]) + 1
    assert stats["share"] == {"tools": 0.0, "reasoning": 0.2, "images": 0.2}
    assert stats["duplicates"] == 0 and stats["tokens"] is None
    assert page.get_json("api/stats?model=llama*")["total"] == 1
    # The same chat recorded twice (a retried request) counts once; usage gives a token histogram.
    from review_sessions import bot, record, user, week_records, write_session

    extra = [
        record("b000000000000001", [user("same"), bot("same")], "2026-05-03T10:00:00.000Z", usage={"total_tokens": 7}),
        record("b000000000000002", [user("same"), bot("same")], "2026-05-03T11:00:00.000Z", usage={"total_tokens": 9}),
    ]
    write_session(week, "week", week_records("week") + extra)
    stats = page.get_json("api/stats?since=2026-05-03")
    assert stats["total"] == 2 and stats["duplicates"] == 1 and stats["unique"] == 1
    assert stats["with_usage"] == 2 and stats["tokens"]["min"] == 7 and stats["tokens"]["max"] == 9


def test_export_from_the_page_counts_downloads_and_prints_the_command(page: Page, week: Path) -> None:
    assert "messages" in page.get_json("api/export/profiles")["profiles"]
    assert page.mark({"session": "week", "id": "a000000000000001", "op": "discard"})[0] == 200
    preview = page.get_json("api/export?profile=messages&q=haiku&model=gpt*")
    assert preview["records"] == 1 and preview["listed"] == 1  # the regenerated haiku came from gpt-4o
    assert preview["command"].startswith("python -m chatproxy export --all --datasets ")
    assert "--format messages --search haiku --model 'gpt*' --out messages.jsonl" in preview["command"]
    listed = page.get_json("api/export?profile=messages")
    assert listed["listed"] == 5 and listed["discarded"] == 1 and listed["records"] == 4
    status, headers, body = page.request("GET", "/_chatproxy/review/api/export/file?profile=messages&model=gpt*")
    assert status == 200 and 'filename="messages.jsonl"' in headers["content-disposition"]
    lines = body.decode().splitlines()
    assert len(lines) == 3 and "Hi." not in body.decode()
    assert all(json.loads(line)["messages"] for line in lines)
    # The command line printed gives the same file.
    import shlex

    from chatproxy import cli

    argv = shlex.split(page.get_json("api/export?profile=messages&model=gpt*")["command"])[3:]
    out = week.parent / "messages.jsonl"
    assert cli.main(argv[:-1] + [str(out)]) == 0
    assert out.read_bytes() == body
    # What the validators refuse is shown: a DPO export without pairs refuses nothing but yields nothing.
    assert page.get_json("api/export?profile=dpo")["records"] == 0
    assert page.request("GET", "/_chatproxy/review/api/export?profile=nonsense")[0] == 400


def _part_record(rid: str, texts: Any, when: str) -> str:
    messages = [{"role": "user" if n % 2 == 0 else "assistant", "content": t} for n, t in enumerate(texts)]
    meta = {"time": when, "model": "m", "endpoint": "/v1/chat/completions", "complete": True}
    return json.dumps({"v": 1, "id": rid, "parent": None, "base": 0, "messages": messages, "meta": meta}) + "\n"


def test_a_rotated_session_is_one_list_and_a_chat_across_parts_one_row(tmp_path: Path) -> None:
    """--rotate splits a session into parts (SESSION@PART.jsonl): the page lists the session once, and a
    chat that went on in the next part is one row, the longer, as export gives it."""
    folder = tmp_path / "datasets"
    folder.mkdir()
    first = _part_record("p1000000000000001", ["plan the trip", "Sure."], "2026-12-01T23:59:00Z")
    (folder / "team@20261201T000000Z.jsonl").write_text(first)
    later = _part_record("p2000000000000001", ["plan the trip", "Sure.", "by train", "Booked."], "2026-12-02T00:01:00Z")
    other = _part_record("p2000000000000002", ["hello", "Hi."], "2026-12-02T00:02:00Z")
    (folder / "team@20261202T000000Z.jsonl").write_text(later + other)
    running = Page(folder)
    try:
        listed = running.get_json("api/list")
        assert listed["total"] == 2, listed
        assert {row["id"] for row in listed["rows"]} == {"p2000000000000001", "p2000000000000002"}
        assert running.get_json("api/list?q=booked")["total"] == 1
    finally:
        running.stop()
