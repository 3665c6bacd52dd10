"""A real HTTP object-storage stand-in on loopback, with optional latency and bandwidth cap."""

from __future__ import annotations

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # many clients connect at once (the default backlog of 5 drops SYNs)
    daemon_threads = True


class PhotoStorage:
    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, latency_s: float = 0.0, bytes_per_s: float = 0.0
    ) -> None:
        self.files: dict[str, bytes] = {}
        self.hits: Counter[str] = Counter()
        self.latency_s = latency_s
        self.bytes_per_s = bytes_per_s
        self._open = threading.Event()  # cleared: requests wait (hold/release)
        self._open.set()
        self._server = _Server((host, port), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        assert isinstance(host, str)
        return f"http://{host}:{port}/"

    def put(self, path: str, data: bytes) -> None:
        self.files[path] = data

    def remove(self, path: str) -> None:
        self.files.pop(path, None)

    def hold(self) -> None:
        """Requests wait from now until ``release()`` (a stalled bucket, for tests)."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def start(self) -> PhotoStorage:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._open.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> PhotoStorage:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        storage = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = unquote(urlsplit(self.path).path).lstrip("/")
                storage.hits[path] += 1
                storage._open.wait()
                if storage.latency_s:
                    time.sleep(storage.latency_s)
                data = storage.files.get(path)
                if data is None:
                    self.send_response(404, "Not Found")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self._send(data)

            def _send(self, data: bytes) -> None:
                if not storage.bytes_per_s:
                    self.wfile.write(data)
                    return
                chunk = 64 * 1024
                for start in range(0, len(data), chunk):
                    self.wfile.write(data[start : start + chunk])
                    time.sleep(min(chunk, len(data) - start) / storage.bytes_per_s)

            def log_message(self, *_: object) -> None:
                pass

        return Handler
