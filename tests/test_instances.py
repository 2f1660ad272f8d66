"""Scaling out: three chatproxy processes behind Debian's nginx, round-robin, one shared datasets folder.

Each instance records its own session (`--session team-{host}-{instance}`), rotating into parts as it
goes; nginx keeps connections to them alive and spreads requests in turn, so every chat's turns land on
different instances. The sessions read as one (`export --all`) hold each chat once, whole; `stats --all`
sums the instances. nginx runs as a child of the test, with its own prefix and configuration in a
temporary folder, on loopback ports.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import openai
import pytest

from chatproxy.commands import export, stats
from chatproxy.config import expand_session

from fake_agents import ResponsesTurn
from subproc import ROOT, ProxyProcess

NGINX = Path("/usr/sbin/nginx")
pytestmark = pytest.mark.skipif(
    not NGINX.exists(), reason="Debian's nginx is not installed (/usr/sbin/nginx; .ci/run installs it with apt-get)"
)

INSTANCES = 3
CHATS = 5  # prime to INSTANCES: taken in turn, a chat's next turn goes to the next instance
TURNS = 4
TEMPLATE = "team-{host}-{instance}"

NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
{user}
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {work}/client_body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    upstream chatproxy {{
{servers}
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://chatproxy;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_accepting(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"{what} is not accepting on port {port}")


def start_instance(upstream_url: str, datasets: Path, instance: int, cwd: Path) -> ProxyProcess:
    command = [sys.executable, "-m", "chatproxy", "--target", upstream_url, "--port", "0"]
    command += ["--datasets", str(datasets), "--session", TEMPLATE, "--rotate", "1d,2KB"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATPROXY_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["CHATPROXY_INSTANCE"] = str(instance)
    return ProxyProcess(command, env=env, cwd=cwd)


@pytest.fixture
def cluster(upstream: Any, tmp_path: Path) -> Iterator[Dict[str, Any]]:
    """Three instances sharing `datasets`, and nginx in front of them; everything stopped at the end."""
    datasets = tmp_path / "datasets"
    instances = [start_instance(upstream.url, datasets, number, tmp_path) for number in range(1, INSTANCES + 1)]
    work = tmp_path / "nginx"
    work.mkdir()
    port = free_port()
    nginx = None
    try:
        for instance in instances:
            instance.wait_started()
        servers = "\n".join(f"        server 127.0.0.1:{instance.port};" for instance in instances)
        user = "user root;" if os.geteuid() == 0 else ""  # workers otherwise run as nobody: no access to `work`
        (work / "nginx.conf").write_text(NGINX_CONF.format(work=work, user=user, servers=servers, port=port))
        nginx = subprocess.Popen(
            [str(NGINX), "-p", str(work), "-c", str(work / "nginx.conf"), "-e", str(work / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_accepting(port, nginx, "nginx")
        yield {"url": f"http://127.0.0.1:{port}", "datasets": datasets, "instances": instances, "upstream": upstream}
    finally:
        if nginx is not None:
            nginx.send_signal(signal.SIGQUIT)  # graceful: finish the open requests, then exit
            nginx.wait(10)
            assert nginx.stderr is not None
            nginx.stderr.close()
        for instance in instances:
            if instance.proc.poll() is None:
                instance.stop(signal.SIGTERM)


def sessions_of(datasets: Path) -> Dict[str, List[Dict[str, Any]]]:
    """Every journal line of every part, by session."""
    found: Dict[str, List[Dict[str, Any]]] = {}
    for journal in sorted(datasets.glob("*.jsonl")):
        session = journal.name[: -len(".jsonl")].split("@", 1)[0]
        lines = journal.read_text(encoding="utf-8").splitlines()
        found.setdefault(session, []).extend(json.loads(line) for line in lines)
    return found


def status_of(instance: ProxyProcess) -> Dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", instance.port, timeout=5)
    try:
        conn.request("GET", "/_chatproxy/status")
        return json.loads(conn.getresponse().read())  # type: ignore[no-any-return]
    finally:
        conn.close()


def user_texts(record: Dict[str, Any]) -> List[str]:
    return [m["content"] for m in record["messages"] if m["role"] in ("user", "assistant")]


def test_three_instances_behind_nginx_record_each_chat_once_whole(cluster, capsys):
    client = openai.OpenAI(base_url=cluster["url"] + "/v1", api_key="sk-test", max_retries=0, timeout=10)
    histories: List[List[Dict[str, Any]]] = [[{"role": "system", "content": f"Team chat {c}."}] for c in range(CHATS)]
    for turn in range(TURNS):
        for number in range(CHATS):
            sent = histories[number] + [{"role": "user", "content": f"chat {number} turn {turn}"}]
            if (number + turn) % 2:
                stream = client.chat.completions.create(model="fake-model", messages=sent, stream=True)
                reply = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
            else:
                reply = client.chat.completions.create(model="fake-model", messages=sent).choices[0].message.content
            assert reply == f"echo: chat {number} turn {turn}"
            histories[number] = sent + [{"role": "assistant", "content": reply}]
    client.close()

    names = {expand_session(TEMPLATE, str(number)) for number in range(1, INSTANCES + 1)}
    for instance in cluster["instances"]:
        status = status_of(instance)
        assert status["session"] in names
        # nginx keeps its connections to the instances alive (`keepalive 16`): fewer connections than
        # requests. Not "one still open": in about one run in four nginx has closed its connection to an
        # instance by now, after a streamed reply the client stopped reading at `data: [DONE]`.
        # (`requests` counts this status request, `accepted_connections` its connection.)
        assert 2 < status["requests"] and status["accepted_connections"] < status["requests"], status
    for instance in cluster["instances"]:
        assert instance.stop(signal.SIGTERM) == 0, "\n".join(instance.lines)

    recorded = sessions_of(cluster["datasets"])
    assert set(recorded) == names
    assert sum(len(lines) for lines in recorded.values()) == CHATS * TURNS  # each exchange on one instance
    for number in range(CHATS):
        holders = {
            session
            for session, lines in recorded.items()
            for record in lines
            if record["messages"][-1]["content"].startswith(f"echo: chat {number} ")
        }
        assert len(holders) >= 2, f"chat {number}'s turns all landed on {holders}"
    assert any(len(list(cluster["datasets"].glob(f"{name}@*.jsonl"))) > 1 for name in names), "no session rotated"

    out = cluster["datasets"].parent / "all.jsonl"
    assert export.main(["--all", "--datasets", str(cluster["datasets"]), "--format", "openai", "--out", str(out)]) == 0
    capsys.readouterr()
    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    expected = [
        [text for t in range(TURNS) for text in (f"chat {c} turn {t}", f"echo: chat {c} turn {t}")]
        for c in range(CHATS)
    ]
    assert sorted(user_texts(record) for record in written) == expected

    assert stats.main(["--all", "--datasets", str(cluster["datasets"])]) == 0
    out_text = capsys.readouterr().out
    total = out_text.split(f"total ({INSTANCES} sessions)\n", 1)[1]
    rows = {line[2:].split("  ", 1)[0]: line.split("  ", 2)[-1].strip() for line in total.splitlines() if line}
    assert rows["conversations"] == str(CHATS) and rows["branches"] == str(CHATS)
    assert rows["turns"] == str(CHATS * TURNS * 2)
    assert rows["models"] == f"fake-model ({CHATS * TURNS})"  # every reply, summed over the instances
    summed = sum(int(out_text.split(f"session {name}", 1)[1].split("conversations", 1)[1].split()[0]) for name in names)
    assert rows["summed"].startswith(f"{summed} conversations, ") and summed > CHATS


def test_a_responses_chain_continued_on_another_instance_is_recorded_as_partial(cluster):
    """previous_response_id names a response only the instance that relayed it has recorded: the next
    instance records the new turn with what the request carries, marked partial_history."""
    cluster["upstream"].push(ResponsesTurn(text="Hello! What can I do?"), ResponsesTurn(text="Paris."))
    client = openai.OpenAI(base_url=cluster["url"] + "/v1", api_key="sk-test", max_retries=0, timeout=10)
    first = client.responses.create(model="m", instructions="Be kind.", input="Hi there")
    client.responses.create(model="m", instructions="Be kind.", previous_response_id=first.id, input="Capital?")
    client.close()
    for instance in cluster["instances"]:
        assert instance.stop(signal.SIGTERM) == 0
    records = [r for lines in sessions_of(cluster["datasets"]).values() for r in lines]
    assert len(records) == 2  # nginx sent them to two instances
    second = next(r for r in records if r["messages"][-1]["content"] == "Paris.")
    assert second["meta"]["partial_history"] is True
    assert [m["content"] for m in second["messages"] if m["role"] == "user"] == ["Capital?"]


def test_two_instances_on_one_session_the_second_is_refused(upstream, tmp_path):
    datasets = tmp_path / "datasets"
    with start_instance(upstream.url, datasets, 1, tmp_path) as first:
        first.wait_started()
        with start_instance(upstream.url, datasets, 1, tmp_path) as second:
            assert second.finish() == 1
        assert second.lines[-1].startswith(
            "chatproxy: error: session is already being recorded by another chatproxy (pid "
        ), second.lines
        assert first.stop() == 0
