"""Fetching photos from object storage and decoding them, with the limits design.md asks for."""

from __future__ import annotations

import asyncio
import io
import ipaddress
import logging
import random
import socket
import time
from collections.abc import Collection
from typing import Any
from urllib.parse import SplitResult, quote, urlsplit

import aiohttp
import cv2
import numpy as np
import numpy.typing as npt
import yarl
from aiohttp.resolver import ThreadedResolver
from PIL import Image, UnidentifiedImageError
from pillow_heif import register_heif_opener

from facepass.errors import (
    DownloadTimeout,
    NotAnImage,
    PhotoError,
    PhotoNotFound,
    PhotoTooLarge,
    StorageForbidden,
    StorageUnavailable,
    UrlNotAllowed,
)
from facepass.settings import DEFAULT_STORAGE_PORTS, Settings
from facepass.storage import s3
from facepass.storage.paths import is_absolute, relative_path
from facepass.storage.s3 import S3Bucket

log = logging.getLogger(__name__)
register_heif_opener()  # PIL opens HEIC/HEIF (selfies from phones) from here on

BgrImage = npt.NDArray[np.uint8]

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"BM", "bmp"),
)
_CHUNK = 64 * 1024
_ERROR_BODY = 8 * 1024  # of a bucket's error answer: its code and message come first
_TELL_EVERY_S = 60.0


class ImageTooLarge(PhotoError):
    code = "too_many_pixels"

    def message(self, filename: str) -> str:
        return f"Изображение {filename} слишком большое: {self.detail}"


# HEIF's brands in its ftyp box (HEIC from phones: heic/heix; sequences and the generic ones).
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}


def sniff_format(data: bytes) -> str:
    """The image format by its first bytes; anything else is refused before decoding."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return "heif"
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    raise NotAnImage("content is not a JPEG, PNG, WebP, HEIC/HEIF or BMP image")


def _decode_heif(data: bytes, max_pixels: int) -> BgrImage:
    """HEIC/HEIF (iPhone photos and selfies) through pillow-heif: OpenCV cannot read it. The
    opener applies the file's own rotation and mirror (irot/imir) and resets EXIF orientation."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLarge(f"{width}x{height} pixels > limit {max_pixels}")
            rgb = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise NotAnImage(f"unreadable HEIF ({len(data)} bytes): {exc}") from exc
    return np.ascontiguousarray(rgb[:, :, ::-1])


# NAT64's well-known prefix: 64:ff9b::a9fe:a9fe reaches 169.254.169.254 through a translator.
NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _is_public_address(address: str) -> bool:
    """Only globally routable addresses (OWASP's SSRF sheet): ``is_global`` also leaves out
    shared address space (100.64.0.0/10, where one cloud keeps its metadata service) and
    the other special ranges. An IPv6 address that carries an IPv4 one (mapped, NAT64's
    prefix, 6to4) is judged by the IPv4 one; Teredo is refused."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.teredo is not None:
            return False
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return _is_public_address(str(embedded))
    return ip.is_global and not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
    )


class UrlPolicy:
    """Turns a catalog ``preview_path`` into the URL to fetch, or refuses it.

    Relative paths resolve under the storage base URL (which the operator chose,
    so it may be on loopback). Absolute URLs come from catalog data: only
    allow-listed hosts, on an allowed port (``allowed_ports`` and the storage URL's
    own), and only ones that resolve to globally routable addresses.
    """

    def __init__(
        self,
        storage_url: str,
        allowed_hosts: list[str],
        resolve_dns: bool = True,
        allowed_ports: Collection[int] = DEFAULT_STORAGE_PORTS,
    ) -> None:
        self.base = storage_url if storage_url.endswith("/") else storage_url + "/"
        self.allowed_hosts = {h.lower() for h in allowed_hosts}
        self.resolve_dns = resolve_dns
        self.allowed_ports = {*allowed_ports, _port_of(urlsplit(self.base))}

    @classmethod
    def from_settings(cls, settings: Settings) -> UrlPolicy:
        return cls(
            settings.storage_url, settings.storage_allowed_hosts, allowed_ports=settings.storage_allowed_ports
        )

    def url_for(self, preview_path: str) -> str:
        if is_absolute(preview_path):
            return self._absolute(preview_path.strip())
        return self.base + quote(relative_path(preview_path), safe="/")

    def _absolute(self, url: str) -> str:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if parts.scheme not in ("http", "https") or not host:
            raise UrlNotAllowed(f"URL {url!r} is not http(s)")
        if host not in self.allowed_hosts:
            raise UrlNotAllowed(f"host {host!r} is not allow-listed")
        if parts.username or parts.password:
            raise UrlNotAllowed("credentials in URL")
        try:
            port = _port_of(parts)
        except ValueError as exc:
            raise UrlNotAllowed(f"URL {url!r} has a bad port") from exc
        if port not in self.allowed_ports:
            raise UrlNotAllowed(f"port {port} of host {host!r} is not allowed")
        for address in self._addresses(host):
            if not _is_public_address(address):
                raise UrlNotAllowed(f"host {host!r} resolves to non-public address {address}")
        return url

    def _addresses(self, host: str) -> list[str]:
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        if not self.resolve_dns:
            return []
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except socket.gaierror as exc:
            raise StorageUnavailable(f"cannot resolve {host}: {exc}") from exc
        return [str(info[4][0]) for info in infos]


def _port_of(parts: SplitResult) -> int:
    """The port a URL connects to: its own, else its scheme's."""
    return parts.port or (443 if parts.scheme == "https" else 80)


class RefusedAddress(OSError):
    """A catalog host resolved to an address it must never be reached on."""


class CheckedResolver(ThreadedResolver):
    """Resolve once, check those addresses, connect to them: aiohttp connects to exactly
    what ``resolve`` returns, so a DNS answer that changes between the policy's check and
    the connection (rebinding) cannot send a download to loopback or a private network.
    Hosts in ``trusted`` (the storage base URL the operator chose) may be anywhere."""

    def __init__(self, trusted: set[str]) -> None:
        super().__init__()
        self.trusted = {h.lower() for h in trusted}

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> Any:
        results = await super().resolve(host, port, family)
        if host.lower() in self.trusted:
            return results
        for result in results:
            if not _is_public_address(result["host"]):
                raise RefusedAddress(f"host {host!r} resolves to non-public address {result['host']}")
        return results


class ImageFetcher:
    """Async downloads: one connection pool per worker, a hard total deadline per photo.

    aiohttp, not httpx: at a few hundred photos/s per worker httpx's pool spent
    ~4 ms of CPU per download in its own bookkeeping (the benchmark's
    orchestration run); aiohttp (already installed with Ray) does the same work
    in a fraction of that. Redirects are refused, the size is capped before and
    while reading, and the whole download has one deadline, retries of transient
    failures (5xx, SlowDown, a connect that hangs, a dropped connection) included. With the s3
    backend, keys of the bucket are fetched with SigV4-signed GETs (``storage/s3.py``).
    """

    def __init__(self, settings: Settings) -> None:
        self.policy = UrlPolicy.from_settings(settings)
        self.bucket = S3Bucket(settings) if settings.storage_backend == "s3" else None
        self._trusted = {urlsplit(settings.storage_url).hostname or ""}
        if self.bucket is not None:
            self._trusted.add(self.bucket.host)
        self.timeout_s = settings.download_timeout_s
        self.max_bytes = settings.max_download_bytes
        self.retries = settings.storage_retries
        self.backoff_s = settings.storage_retry_backoff_s
        self.connect_s = min(settings.storage_connect_timeout_s, self.timeout_s)
        # One connection per photo in flight (a decoder actor holds twice as many), kept alive.
        self.connections = max(16, 2 * settings.in_flight_ceiling_per_actor())
        self._session: aiohttp.ClientSession | None = None
        self._told: dict[str, float] = {}  # bucket error code -> when it was last logged

    def _timeout(self, total: float) -> aiohttp.ClientTimeout:
        # No sock_read: aiohttp re-arms that timer on every chunk received, measured +10-20% CPU a
        # photo in the actors (bench orchestration stage); the total deadline bounds a stall.
        return aiohttp.ClientTimeout(total=total, sock_connect=self.connect_s)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self.connections, limit_per_host=0, resolver=CheckedResolver(self._trusted)
                ),
                timeout=self._timeout(self.timeout_s),
                trust_env=False,  # no proxies from the environment
                auto_decompress=False,  # the bytes stored are the bytes checked
            )
        return self._session

    async def fetch(self, preview_path: str) -> bytes:
        if self.bucket is not None and self.bucket.is_key(preview_path):
            return await self._fetch_signed(self.bucket, preview_path)
        if not is_absolute(preview_path):
            # A path under the storage: the client's own total timeout is the deadline (no task
            # of its own a photo: one less per download at thousands of photos/s).
            return await self._download(self.policy.url_for(preview_path))
        try:
            return await asyncio.wait_for(self._resolve_and_download(preview_path), timeout=self.timeout_s)
        except TimeoutError as exc:
            raise DownloadTimeout(f"timeout after {self.timeout_s:g}s") from exc

    async def _resolve_and_download(self, preview_path: str) -> bytes:
        # Absolute: a DNS look-up, off the event loop.
        url = await asyncio.to_thread(self.policy.url_for, preview_path)
        return await self._download(url)

    async def _fetch_signed(self, bucket: S3Bucket, preview_path: str) -> bytes:
        url = bucket.url_of(bucket.key_for(preview_path))
        try:
            if not bucket.credentials_ready:  # the AWS chain's first look-up may block (a role's metadata)
                await asyncio.to_thread(bucket.credentials)
            return await self._download(url, bucket)
        except StorageForbidden as exc:
            self._tell(bucket, exc)
            raise

    async def _download(self, url: str, bucket: S3Bucket | None = None) -> bytes:
        """GET with retries of transient failures, all within one deadline of timeout_s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        timeout: aiohttp.ClientTimeout | None = None  # the first try: the session's own
        for attempt in range(self.retries + 1):
            try:
                headers = bucket.signed_headers(url) if bucket is not None else None
                return await self._get(url, headers, timeout, bucket)
            except (StorageUnavailable, DownloadTimeout):
                pause = self.backoff_s * (2**attempt) * random.uniform(0.5, 1.0)
                if attempt == self.retries or deadline - loop.time() <= pause:
                    raise
            await asyncio.sleep(pause)
            timeout = self._timeout(deadline - loop.time())
        raise AssertionError("unreachable: the last try raises")

    async def _get(
        self,
        url: str,
        headers: dict[str, str] | None,
        timeout: aiohttp.ClientTimeout | None,
        bucket: S3Bucket | None,
    ) -> bytes:
        try:
            # encoded=True: the path is quoted already; aiohttp must not re-quote it.
            # No timeout argument on a first try: None would mean none at all, not the session's.
            extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
            async with self._http().get(
                yarl.URL(url, encoded=True), headers=headers, allow_redirects=False, **extra
            ) as response:
                if response.status != 200:
                    if bucket is not None:  # the XML body says which of its errors it is
                        answer = await response.content.read(_ERROR_BODY)
                        raise s3.error_for(s3.parse_error(response.status, response.reason, answer))
                    self._check_status(response.status, response.reason)
                declared = response.content_length
                if declared is not None and declared > self.max_bytes:
                    raise PhotoTooLarge(f"{declared} bytes > limit {self.max_bytes}")
                if declared is not None:  # within the cap: read at once
                    return await response.read()
                body = bytearray()
                async for chunk in response.content.iter_chunked(_CHUNK):
                    body += chunk
                    if len(body) > self.max_bytes:
                        raise PhotoTooLarge(f"more than {self.max_bytes} bytes")
                return bytes(body)
        except TimeoutError as exc:
            raise DownloadTimeout(f"timeout after {self.timeout_s:g}s") from exc
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, RefusedAddress):
                raise UrlNotAllowed(str(exc.os_error)) from exc
            raise StorageUnavailable(f"{type(exc).__name__}: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise StorageUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def _tell(self, bucket: S3Bucket, exc: StorageForbidden) -> None:
        """One log line per kind of refusal a minute: every photo fails the same way then."""
        kind = exc.detail.split(":", 1)[0]
        now = time.monotonic()
        if now - self._told.get(kind, -_TELL_EVERY_S) < _TELL_EVERY_S:
            return
        self._told[kind] = now
        hint = next((h for code, h in s3.HINTS.items() if code in kind), "")
        log.warning(
            "S3 bucket %r at %s refused a signed GET: %s%s",
            bucket.bucket,
            bucket.endpoint,
            exc.detail,
            f" ({hint})" if hint else "",
        )

    @staticmethod
    def _check_status(status: int, reason_phrase: str | None) -> None:
        if status == 200:
            return
        reason = f"{status} {reason_phrase or ''}".strip()
        if status in (404, 410):
            raise PhotoNotFound(reason)
        if status in (401, 403) or 300 <= status < 400:
            raise UrlNotAllowed(reason)
        raise StorageUnavailable(reason)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# EXIF orientation -> (rotation, then flip) that undoes it, as PIL's exif_transpose does.
_ORIENT = {
    2: (None, 1),
    3: (cv2.ROTATE_180, None),
    4: (None, 0),
    5: (cv2.ROTATE_90_CLOCKWISE, 1),
    6: (cv2.ROTATE_90_CLOCKWISE, None),
    7: (cv2.ROTATE_90_COUNTERCLOCKWISE, 1),
    8: (cv2.ROTATE_90_COUNTERCLOCKWISE, None),
}


def decode_image(data: bytes, max_pixels: int) -> BgrImage:
    """Bytes -> upright BGR array. Checks the format and the pixel count before decoding."""
    if sniff_format(data) == "heif":
        return _decode_heif(data, max_pixels)
    try:
        with Image.open(io.BytesIO(data)) as header:  # reads the header only
            width, height = header.size
            if width * height > max_pixels:  # before getexif(): for PNG that decodes everything
                raise ImageTooLarge(f"{width}x{height} pixels > limit {max_pixels}")
            orientation = int(header.getexif().get(0x0112, 1) or 1)
    except Image.DecompressionBombError as exc:  # PIL's own cap, hit while reading the header
        raise ImageTooLarge(str(exc)) from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise NotAnImage(f"unreadable header ({len(data)} bytes, starts {data[:8].hex()}): {exc}") from exc
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if image is None or image.size == 0:
        raise NotAnImage("corrupt image data")
    rotate, flip = _ORIENT.get(orientation, (None, None))
    if rotate is not None:
        image = cv2.rotate(image, rotate)
    if flip is not None:
        image = cv2.flip(image, flip)
    return np.ascontiguousarray(image)
