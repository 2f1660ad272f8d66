"""A running proxy: wires config, upstream pool, recorder and server together; the embedding API."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from chatproxy.config import Config
from chatproxy.recorder.capture import Exchange
from chatproxy.recorder.interface import Recorder
from chatproxy.recorder.process import RecorderFailed, RecorderProcess, can_start_process
from chatproxy.relay import Relay
from chatproxy.server import ProxyServer
from chatproxy.upstream import UpstreamPool, make_ssl_context

log = logging.getLogger("chatproxy")


class Proxy:
    """One proxy instance. Several can run in one process; nothing is global.

    `await serve(config)` (or `await Proxy(config).start()`), then `await proxy.stop()`; or
    `async with Proxy(config) as proxy: ...`. The object may be built outside the event loop
    (even in another thread); everything bound to a loop is created by `start()`.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.address: Optional[Tuple[str, int]] = None
        ssl_context = make_ssl_context(config.insecure, config.ca_file) if config.target.is_tls else None
        self.pool = UpstreamPool(config.target, config.timeouts, ssl_context)
        # Made in start(): before Python 3.10 an asyncio.Queue binds to the loop current at creation.
        self.recorder: Optional[Recorder] = None
        submit = self._submit if config.record.enabled else None
        self.relay = Relay(config, self.pool, submit)
        self.server = ProxyServer(config, self.relay, self._recorder_status if config.record.enabled else None)

    def _submit(self, exchange: Exchange) -> None:
        if self.recorder is not None:
            self.recorder.submit(exchange)

    def _recorder_status(self) -> Dict[str, Any]:
        return self.recorder.status() if self.recorder is not None else {}

    @property
    def url(self) -> str:
        """The base URL clients use, e.g. http://127.0.0.1:12538 (append /v1 for most SDKs)."""
        assert self.address is not None, "start() the proxy first"
        host, port = self.address
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}"

    @property
    def dataset_path(self) -> Optional[Path]:
        """The live ShareGPT file of the running session (None with recording off)."""
        if not self.config.record.enabled:
            return None
        return self.config.datasets / f"{self.config.session}.json"

    @property
    def journal_path(self) -> Optional[Path]:
        if not self.config.record.enabled:
            return None
        return self.config.datasets / f"{self.config.session}.jsonl"

    def status(self) -> Dict[str, Any]:
        """Counters and state, as served at /_chatproxy/status: requests, errors, recorded, dataset, ..."""
        return self.server.status()

    async def start(self) -> Proxy:
        """Open the dataset (raises SessionLocked / OSError) and start listening."""
        if self.config.record.enabled:
            self.recorder = await self._start_recorder()
        try:
            self.address = await self.server.start()
        except BaseException:
            if self.recorder is not None:
                await self.recorder.close()
            raise
        return self

    async def _start_recorder(self) -> Recorder:
        folder, session, options = self.config.datasets, self.config.session, self.config.record
        if not options.in_process and can_start_process():
            recorder = RecorderProcess(folder, session, options)
            try:
                await recorder.start()
                return recorder
            except RecorderFailed as exc:
                log.warning("%s; recording in this process instead", exc)
        from chatproxy.recorder.in_process import InProcessRecorder  # only here: the recorder process is the usual case

        in_process = InProcessRecorder(folder, session, options)
        await in_process.start()
        return in_process

    async def stop(self) -> None:
        """Finish or cut in-flight exchanges, then write what is queued and the final dataset."""
        await self.server.shutdown()
        self.pool.close()  # after the last exchange: built here, closed here
        if self.recorder is not None:
            await self.recorder.close()

    async def __aenter__(self) -> Proxy:
        return await self.start() if self.address is None else self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.stop()


async def serve(config: Config) -> Proxy:
    """Start a proxy inside the running event loop and return it; `await proxy.stop()` to end it.

    Raises SessionLocked when another process records the same session, OSError when the port
    cannot be opened or the datasets folder is unusable.
    """
    return await Proxy(config).start()
