"""A TCP proxy on loopback that delays every byte by a set one-way latency (not a test).

What `bench_route.py` puts in front of each node's libp2p daemon to measure servers far apart
without network namespaces (netem needs root and the kernel's sch_netem, which a build
machine rarely grants): the node listens on its own port and announces the proxy's, so every
connection to it, the client's and the other nodes', crosses the proxy, and each direction of
each connection is held back by `delay` seconds, in order (what netem's `delay` does on a
link's egress). The delay can be changed while connections are open; 0 forwards at once.

    proxy = DelayProxy()
    port = proxy.forward(node_port)     # listen on `port`, forward to 127.0.0.1:node_port
    proxy.delay = 0.020                 # 20 ms each way from now on
    proxy.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Coroutine
from typing import Any

CHUNK = 1 << 16  # bytes read at once


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DelayProxy:
    """Delaying TCP forwarders on 127.0.0.1, served by one thread's event loop."""

    def __init__(self) -> None:
        self.delay = 0.0  # seconds added to each direction of every connection
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._servers: list[asyncio.base_events.Server] = []

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def forward(self, target_port: int) -> int:
        """Listen on a new port and forward its connections to 127.0.0.1:`target_port`."""

        async def start() -> int:
            server = await asyncio.start_server(
                lambda r, w: self._connection(r, w, target_port), "127.0.0.1", 0
            )
            self._servers.append(server)
            return int(server.sockets[0].getsockname()[1])

        port: int = self._run(start())
        return port

    async def _connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target_port: int
    ) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy one direction, each chunk sent `delay` after it arrived, in arrival order."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(send())
        try:
            while data := await reader.read(CHUNK):
                queue.put_nowait((time.monotonic() + self.delay, data))
        except OSError:
            pass
        finally:
            queue.put_nowait((0.0, b""))
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await sender
            writer.close()

    def close(self) -> None:
        """Stop listening, drop every connection, stop the thread."""

        async def stop() -> None:
            for server in self._servers:
                server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        with contextlib.suppress(Exception):
            self._run(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> DelayProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
