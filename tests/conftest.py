"""Shared fixtures: a fake backend and the real proxy, each on its own loop in a background thread."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from chatproxy.config import Config, RecordOptions, Timeouts, parse_target  # noqa: E402
from chatproxy.proxy import Proxy  # noqa: E402

from fake_upstream import FakeUpstream  # noqa: E402

TEST_TIMEOUTS = Timeouts(
    connect=2.0,
    upstream_read=3.0,
    client_idle=5.0,
    client_header=2.0,
    client_body=2.0,
    client_write=2.0,
    pool_idle=4.0,
    shutdown_grace=1.0,
)


class RunningProxy:
    """The real proxy on a private event loop in a thread, so synchronous clients can use it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.proxy = Proxy(config)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> RunningProxy:
        self._thread.start()
        self.call(self.proxy.start())
        return self

    def call(self, coro: Any, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run(self, fn: Callable[[], Any]) -> Any:
        """Run a plain function on the proxy's loop (to read its state safely)."""

        async def wrapper() -> Any:
            return fn()

        return self.call(wrapper())

    def stop(self) -> None:
        if self.loop.is_running():
            self.call(self.proxy.stop(), timeout=30)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
        self.loop.close()

    @property
    def url(self) -> str:
        return self.proxy.url

    @property
    def port(self) -> int:
        assert self.proxy.address is not None
        return self.proxy.address[1]

    @property
    def datasets(self) -> Path:
        return self.config.datasets

    @property
    def session(self) -> str:
        return self.config.session

    def upstream_connections(self) -> int:
        return int(self.run(lambda: self.proxy.pool.open_count))

    def client_connections(self) -> int:
        return int(self.run(lambda: len(self.proxy.server.connections)))

    def wait_recorded(self, count: int, timeout: float = 5.0) -> None:
        """Until `count` records are on disk (journal fsynced) for the running session."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.run(lambda: self.proxy.recorder.counts["recorded"]) >= count:
                return
            time.sleep(0.01)
        raise AssertionError(f"expected {count} records, have {self.run(lambda: self.proxy.recorder.counts)}")

    def flush(self) -> None:
        """Write the live dataset now (as a stop would), keeping the proxy running."""

        async def settle_then_sync() -> None:
            # A client may hold its whole reply before the relay hands the exchange to the recorder.
            while any(conn.busy for conn in self.proxy.server.connections):
                await asyncio.sleep(0.005)
            await self.proxy.recorder.sync(snapshot=True)

        self.call(settle_then_sync())

    def dataset(self, session: Optional[str] = None) -> List[Dict[str, Any]]:
        self.flush()
        path = self.datasets / f"{session or self.session}.json"
        return json.loads(path.read_text(encoding="utf-8"))

    def journal(self, session: Optional[str] = None) -> List[Dict[str, Any]]:
        path = self.datasets / f"{session or self.session}.jsonl"
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(autouse=True)
def chatproxy_logging_restored() -> Iterator[None]:
    """A command run in-process (cli.main) points the "chatproxy" logger at the sys.stderr of its test,
    which pytest closes afterwards: put the logger back, or a proxy still running in a later test writes
    "--- Logging error ---" into that test's captured stderr."""
    logger = logging.getLogger("chatproxy")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def make_proxy(tmp_path: Path) -> Iterator[Callable[..., RunningProxy]]:
    started: List[RunningProxy] = []

    def factory(target: str, **overrides: Any) -> RunningProxy:
        record = overrides.pop("record", RecordOptions(snapshot_interval=0.05))
        fields: Dict[str, Any] = dict(
            target=parse_target(target),
            host="127.0.0.1",
            port=0,
            session="test-session",
            datasets=tmp_path / "datasets",
            timeouts=TEST_TIMEOUTS,
            record=record,
        )
        fields.update(overrides)
        running = RunningProxy(Config(**fields)).start()
        started.append(running)
        return running

    yield factory
    for running in reversed(started):
        running.stop()


@pytest.fixture
def proxy(upstream: FakeUpstream, make_proxy: Callable[..., RunningProxy]) -> RunningProxy:
    return make_proxy(upstream.url)


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes; for malformed-input tests."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)
