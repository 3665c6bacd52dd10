"""A real HTTP object-storage stand-in on loopback, with optional latency and bandwidth cap.

HTTP/1.1 with keep-alive, served by one asyncio event loop in a thread of its own: a
request's latency is a timer, not a sleeping thread, so thousands of photos/s cost the
process that hosts it little (the thread-per-connection ``http.server`` it replaces cost
~0.3-0.45 ms of CPU a photo, as much as the service's own hops in the benchmark).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections import Counter
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

_HEAD_LIMIT = 64 * 1024  # request line and headers
_CHUNK = 64 * 1024  # bytes written between two waits under a bandwidth cap


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where installed (Ray's own actors use it: ~2x less CPU a request), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class PhotoStorage:
    # True where ``files.get`` may block (builds a photo): looked up in a thread, not on the loop.
    lookups_block = False

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, latency_s: float = 0.0, bytes_per_s: float = 0.0
    ) -> None:
        self.files: dict[str, bytes] = {}
        self.hits: Counter[str] = Counter()
        self.latency_s = latency_s
        self.bytes_per_s = bytes_per_s
        self._sock = socket.create_server((host, port), backlog=1024)  # many clients connect at once
        self._loop = _new_loop()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="photo-storage")
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._open = asyncio.Event()  # cleared: requests wait (hold/release); used on the loop only
        self._open.set()
        self._started = threading.Event()

    @property
    def url(self) -> str:
        host, port = self._sock.getsockname()[:2]
        assert isinstance(host, str)
        return f"http://{host}:{port}/"

    def put(self, path: str, data: bytes) -> None:
        self.files[path] = data

    def remove(self, path: str) -> None:
        self.files.pop(path, None)

    def hold(self) -> None:
        """Requests wait from now until ``release()`` (a stalled bucket, for tests)."""
        self._on_loop(self._open.clear)

    def release(self) -> None:
        self._on_loop(self._open.set)

    def start(self) -> PhotoStorage:
        self._thread.start()
        self._started.wait()
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            self._sock.close()
            return
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> PhotoStorage:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _on_loop(self, action: Callable[[], object]) -> None:
        """Run ``action()`` on the server's loop and wait for it (at once before start)."""
        if not self._thread.is_alive():
            action()
            return

        async def run() -> None:
            action()

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def listen() -> None:
            self._server = await asyncio.start_server(self._connection, sock=self._sock, limit=_HEAD_LIMIT)

        self._loop.run_until_complete(listen())
        self._started.set()
        self._loop.run_forever()
        self._loop.close()

    async def _close(self) -> None:
        self._open.set()
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection is to be closed."""
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return False
        method, target, version = parts
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        body_length = int(headers.get("content-length", "0") or 0)
        if body_length:
            await reader.readexactly(body_length)
        keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        if method != "GET":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            return keep
        path = unquote(urlsplit(target).path).lstrip("/")
        self.hits[path] += 1
        await self._open.wait()
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if self.lookups_block:
            data = await asyncio.get_running_loop().run_in_executor(None, self.files.get, path)
        else:
            data = self.files.get(path)
        if data is None:
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return keep
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n%s\r\n"
            % (len(data), b"" if keep else b"Connection: close\r\n")
        )
        await self._send(writer, data)
        return keep

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        if not self.bytes_per_s:
            writer.write(data)
            await writer.drain()
            return
        view = memoryview(data)
        for start in range(0, len(data), _CHUNK):
            chunk = view[start : start + _CHUNK]
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(len(chunk) / self.bytes_per_s)
