"""A running proxy: wires config, upstream pool, recorder and server together; the embedding API."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from chatproxy.config import Config
from chatproxy.recorder import Recorder
from chatproxy.relay import Relay
from chatproxy.server import ProxyServer
from chatproxy.upstream import UpstreamPool, make_ssl_context

log = logging.getLogger("chatproxy")


class Proxy:
    """One proxy instance. Several can run in one process; nothing is global.

    Use `await Proxy(config).start()` (or `chatproxy.serve(config)`), then `await proxy.stop()`.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.address: Optional[Tuple[str, int]] = None
        ssl_context = make_ssl_context(config.insecure, config.ca_file) if config.target.is_tls else None
        self.pool = UpstreamPool(config.target, config.timeouts, ssl_context)
        self.recorder: Optional[Recorder] = None
        if config.record.enabled:
            self.recorder = Recorder(config.datasets, config.session, config.record)
        submit = self.recorder.submit if self.recorder is not None else None
        self.relay = Relay(config, self.pool, submit)
        self.server = ProxyServer(config, self.relay, self.recorder.status if self.recorder else None)

    @property
    def url(self) -> str:
        assert self.address is not None, "start() the proxy first"
        host, port = self.address
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}"

    @property
    def dataset_path(self) -> Optional[Path]:
        """The live ShareGPT file of the running session (None with recording off)."""
        if self.recorder is None:
            return None
        return self.config.datasets / f"{self.config.session}.json"

    @property
    def journal_path(self) -> Optional[Path]:
        if self.recorder is None:
            return None
        return self.config.datasets / f"{self.config.session}.jsonl"

    def status(self) -> Dict[str, Any]:
        return self.server.status()

    async def start(self) -> "Proxy":
        """Open the dataset (raises SessionLocked / OSError) and start listening."""
        if self.recorder is not None:
            await self.recorder.start()
        try:
            self.address = await self.server.start()
        except BaseException:
            if self.recorder is not None:
                await self.recorder.close()
            raise
        return self

    async def stop(self) -> None:
        """Finish or cut in-flight exchanges, then write what is queued and the final dataset."""
        await self.server.shutdown()
        if self.recorder is not None:
            await self.recorder.close()


async def serve(config: Config) -> Proxy:
    """Start a proxy inside the running event loop and return it; `await proxy.stop()` to end it."""
    return await Proxy(config).start()
