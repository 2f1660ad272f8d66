"""Raw bytes both ways after a protocol switch (`101 Switching Protocols`: WebSocket, the Realtime API).

Once both sides have switched, HTTP is over on this pair of connections: whatever one side sends is
written to the other as it arrives, until either side closes or stays silent for the idle limit.
Nothing is recorded: the frames are the client's and the backend's business.
"""

from __future__ import annotations

import asyncio
from typing import Tuple

from chatproxy.deadlines import ReadTimer

READ_SIZE = 64 * 1024

Side = Tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def splice(client: Side, upstream: Side, idle_timeout: float) -> None:
    """Copy both ways until one direction ends; then both connections are closed."""
    loop = asyncio.get_running_loop()
    directions = [
        asyncio.ensure_future(_copy(client[0], upstream[1], idle_timeout, loop)),
        asyncio.ensure_future(_copy(upstream[0], client[1], idle_timeout, loop)),
    ]
    try:
        await asyncio.wait(directions, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in directions:
            task.cancel()
        await asyncio.gather(*directions, return_exceptions=True)  # their errors are the peers leaving


async def _copy(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, idle_timeout: float, loop: asyncio.AbstractEventLoop
) -> None:
    timer = ReadTimer(loop)
    try:
        while True:
            try:
                data = await timer.read(reader, READ_SIZE, idle_timeout)
            except OSError:
                return  # a reset ends this direction like an EOF
            if not data:  # EOF, or silent past the idle limit (None)
                return
            writer.write(data)
            try:
                await writer.drain()
            except OSError:
                return  # the other side is gone
    finally:
        timer.close()
