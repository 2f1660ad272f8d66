"""The embedding API: `await chatproxy.serve(config)` inside someone else's asyncio program.

Also the promises that make embedding safe: importing chatproxy is instant and starts nothing,
several proxies share a process without sharing state, and the package needs only h11.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import json
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Set

import pytest

import chatproxy

from subproc import ROOT, chat

PACKAGE = ROOT / "chatproxy"
# Standard modules of other platforms, which find_spec cannot see here (Python 3.9 has no stdlib_module_names).
OTHER_PLATFORM_STDLIB = {
    "msvcrt",
    "winreg",
    "winsound",
    "_winapi",
    "nt",
    "fcntl",
    "termios",
    "grp",
    "pwd",
    "resource",
    "posix",
}


def make_config(upstream_url: str, datasets: Path, session: str) -> chatproxy.Config:
    return chatproxy.Config(
        target=chatproxy.parse_target(upstream_url),
        host="127.0.0.1",
        port=0,
        session=session,
        datasets=datasets,
        record=chatproxy.RecordOptions(snapshot_interval=0.05),
    )


async def chat_async(proxy: chatproxy.Proxy, text: str) -> dict:
    """A blocking client in the default executor, as an application with a sync SDK would do it."""
    assert proxy.address is not None
    return await asyncio.get_running_loop().run_in_executor(None, chat, proxy.address[1], text)


async def wait_recorded(proxy: chatproxy.Proxy, count: int) -> None:
    for _ in range(500):
        if proxy.status()["recorded"] >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not recorded: {proxy.status()}")


def test_serve_relays_and_records_inside_an_asyncio_program(upstream, tmp_path):
    async def program() -> Path:
        proxy = await chatproxy.serve(make_config(upstream.url, tmp_path / "datasets", "embedded"))
        try:
            assert proxy.url.startswith("http://127.0.0.1:")
            reply = await chat_async(proxy, "hello from an embedding program")
            assert reply["choices"][0]["message"]["content"] == "echo: hello from an embedding program"
            await wait_recorded(proxy, 1)
            status = proxy.status()
            assert status["requests"] == 1 and status["errors"] == 0
            assert status["dataset"] == str(proxy.dataset_path)
        finally:
            await proxy.stop()
        return proxy.dataset_path

    dataset_path = asyncio.run(program())
    assert dataset_path == tmp_path / "datasets" / "embedded.json"
    records = json.loads(dataset_path.read_text(encoding="utf-8"))
    assert records[0]["conversations"][-1] == {"from": "gpt", "value": "echo: hello from an embedding program"}


def test_two_proxies_in_one_process_keep_separate_state(upstream, tmp_path):
    """Each proxy has its own port, counters and dataset; stopping one leaves the other serving."""

    async def program() -> None:
        first = await chatproxy.serve(make_config(upstream.url, tmp_path / "a", "first"))
        second = await chatproxy.serve(make_config(upstream.url, tmp_path / "b", "second"))
        try:
            assert first.address != second.address
            await asyncio.gather(
                chat_async(first, "to the first"),
                chat_async(second, "to the second"),
                chat_async(second, "again to the second"),
            )
            await wait_recorded(first, 1)
            await wait_recorded(second, 2)
            assert (first.status()["requests"], second.status()["requests"]) == (1, 2)
            await first.stop()
            await chat_async(second, "second still serves")
            await wait_recorded(second, 3)
        finally:
            await second.stop()
            await first.stop()  # a second stop is harmless

    asyncio.run(program())
    first_texts = [r["conversations"][0]["value"] for r in json.loads((tmp_path / "a" / "first.json").read_text())]
    second_texts = sorted(
        r["conversations"][0]["value"] for r in json.loads((tmp_path / "b" / "second.json").read_text())
    )
    assert first_texts == ["to the first"]
    assert second_texts == ["again to the second", "second still serves", "to the second"]


def test_proxy_is_an_async_context_manager(upstream, tmp_path):
    async def program() -> None:
        async with chatproxy.Proxy(make_config(upstream.url, tmp_path / "d", "ctx")) as proxy:
            await chat_async(proxy, "inside a with block")
            await wait_recorded(proxy, 1)
        assert proxy.server.stopping

    asyncio.run(program())
    assert (
        json.loads((tmp_path / "d" / "ctx.json").read_text())[0]["conversations"][0]["value"] == "inside a with block"
    )


def test_a_session_recorded_by_one_proxy_is_refused_to_another(upstream, tmp_path):
    async def program() -> None:
        config = make_config(upstream.url, tmp_path / "d", "shared")
        first = await chatproxy.serve(config)
        try:
            with pytest.raises(chatproxy.SessionLocked):
                await chatproxy.serve(config)
        finally:
            await first.stop()
        again = await chatproxy.serve(config)  # released by the stop
        await again.stop()

    asyncio.run(program())


def test_proxy_built_outside_the_loop_runs_inside_it(upstream, tmp_path):
    """Proxy(config) may be made before asyncio.run (on 3.9 asyncio objects bind to a loop when made)."""
    proxy = chatproxy.Proxy(make_config(upstream.url, tmp_path / "d", "early"))

    async def program() -> None:
        await proxy.start()
        try:
            await chat_async(proxy, "made early")
            await wait_recorded(proxy, 1)
        finally:
            await proxy.stop()

    asyncio.run(program())


def test_recording_off_has_no_dataset(upstream, tmp_path):
    async def program() -> None:
        config = make_config(upstream.url, tmp_path / "d", "off")
        config = chatproxy.Config(
            target=config.target, port=0, datasets=config.datasets, record=chatproxy.RecordOptions(enabled=False)
        )
        proxy = await chatproxy.serve(config)
        try:
            assert proxy.dataset_path is None
            await chat_async(proxy, "not kept")
            assert proxy.status()["requests"] == 1
        finally:
            await proxy.stop()

    asyncio.run(program())
    assert not (tmp_path / "d").exists()


# -- import hygiene --------------------------------------------------------------------------


def test_import_is_instant_and_starts_nothing():
    """`import chatproxy` loads no submodule, no asyncio, no h11 and no thread; names load on first use."""
    code = (
        "import sys, threading\n"
        "before = set(sys.modules)\n"
        "import chatproxy\n"
        "new = sorted(set(sys.modules) - before)\n"
        "print(new)\n"
        "print(threading.active_count())\n"
        "serve = chatproxy.serve\n"
        "print('chatproxy.proxy' in sys.modules, 'h11' in sys.modules or 'h11_mypyc' in sys.modules,"
        " threading.active_count())\n"
        "print(sorted(n for n in dir(chatproxy) if not n.startswith('_')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    new, threads, after, names = result.stdout.splitlines()
    assert [m for m in eval(new) if m.startswith("chatproxy") or m in ("asyncio", "h11")] == ["chatproxy"]
    assert threads == "1"
    assert after == "True True 1"
    assert {"serve", "Proxy", "Config", "parse_target", "RecordOptions", "Timeouts", "SessionLocked"} <= set(
        eval(names)
    )


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nonesuch'"):
        chatproxy.nonesuch  # noqa: B018


def _stdlib(name: str) -> bool:
    names = getattr(sys, "stdlib_module_names", None)  # Python 3.10+
    if names is not None:
        return name in names
    if name in sys.builtin_module_names or name in OTHER_PLATFORM_STDLIB:
        return True
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        return False
    stdlib = sysconfig.get_paths()["stdlib"]
    return spec.origin in ("built-in", "frozen") or (
        spec.origin.startswith(stdlib) and "site-packages" not in spec.origin
    )


def _imported_top_level_names(path: Path) -> Set[str]:
    names: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_package_imports_only_stdlib_and_h11():
    """Every import in every module, at any depth: the runtime needs h11 and nothing else.

    The optional speed-ups of the `fast` extra are imported in exactly two guarded places."""
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 10
    optional = {"_h11.py: h11_mypyc", "cli.py: uvloop"}
    outside = {
        f"{path.relative_to(PACKAGE).as_posix()}: {name}"
        for path in modules
        for name in _imported_top_level_names(path)
        if name not in ("chatproxy", "h11", "__future__") and not _stdlib(name)
    }
    assert outside == optional, sorted(outside)
