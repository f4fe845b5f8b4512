"""A TLS-terminating proxy on loopback that records every plaintext byte crossing it, both ways.

Put between a gRPC caller and a server (both speaking TLS with certificates from the federation's
CA), it shows what actually crosses the connection: HTTP/2 frames with the protobuf messages in
them. Header values may be HPACK-compressed (Huffman-coded), so the search covers message bodies
and literal headers; fedprag puts nothing but the method path and a bearer token in headers.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from pathlib import Path
from typing import Self


class RecordingProxy:
    """Listens on a free loopback port with ``cert``/``key`` and forwards to ``upstream_port`` over TLS."""

    def __init__(self, upstream_port: int, cert: Path, key: Path, ca: Path):
        self.upstream_port = upstream_port
        self.server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_context.load_cert_chain(cert, key)
        self.server_context.set_alpn_protocols(["h2"])
        self.client_context = ssl.create_default_context(cafile=str(ca))
        self.client_context.set_alpn_protocols(["h2"])
        self.recorded: list[bytes] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _shutdown(self) -> None:
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def plaintext(self) -> bytes:
        """Everything that crossed so far, both directions, in arrival order."""
        return b"".join(self.recorded)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.server_context))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port, ssl=self.client_context,
                                                             server_hostname="127.0.0.1")

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    self.recorded.append(data)
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
