"""facepass.vision.images: URL policy, format sniffing, decoding limits, EXIF, and real HTTP fetches."""

from __future__ import annotations

import asyncio
import io
import socket
import struct
import uuid
import zlib
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from facepass.demo import photos
from facepass.demo.storage import PhotoStorage
from facepass.errors import (
    DownloadTimeout,
    NotAnImage,
    PhotoNotFound,
    PhotoTooLarge,
    StorageUnavailable,
    UrlNotAllowed,
)
from facepass.settings import Settings
from facepass.vision.images import ImageFetcher, ImageTooLarge, UrlPolicy, decode_image, sniff_format

BASE = "http://storage.test:9000/bucket/"


# --- UrlPolicy -----------------------------------------------------------------
def test_relative_path_resolves_under_base() -> None:
    policy = UrlPolicy(BASE, [])
    assert (
        policy.url_for("sessions/abc/previews/photo_001.jpg") == BASE + "sessions/abc/previews/photo_001.jpg"
    )


def test_relative_path_is_quoted() -> None:
    policy = UrlPolicy(BASE, [])
    url = policy.url_for("sessions/a b/фото#1?.jpg")
    assert url == BASE + "sessions/a%20b/%D1%84%D0%BE%D1%82%D0%BE%231%3F.jpg"


def test_base_without_slash_gets_one() -> None:
    assert UrlPolicy("http://storage.test/bucket", []).url_for("a.jpg") == "http://storage.test/bucket/a.jpg"


@pytest.mark.parametrize(
    "path",
    [
        "..",
        "../etc/passwd",
        "sessions/../../secret.jpg",
        "a/./b.jpg",
        "/etc/passwd",
        "a\\b.jpg",
        "..\\x.jpg",
        "",
        "   ",
        "a//b.jpg",
        "a/",
    ],
)
def test_bad_relative_paths_are_refused(path: str) -> None:
    with pytest.raises(UrlNotAllowed):
        UrlPolicy(BASE, []).url_for(path)


@pytest.mark.parametrize(
    "url",
    [
        "http://evil.example.com/x.jpg",
        "https://evil.example.com/x.jpg",
        "http://storage.test.evil.example.com/x.jpg",
        "http://cdn.example.com.evil.example.com/x.jpg",
    ],
)
def test_absolute_url_to_host_not_on_allow_list_is_refused(url: str) -> None:
    policy = UrlPolicy(BASE, ["cdn.example.com"], resolve_dns=False)
    with pytest.raises(UrlNotAllowed, match="allow-listed"):
        policy.url_for(url)


@pytest.mark.parametrize(
    "url", ["ftp://cdn.example.com/x.jpg", "file://cdn.example.com/etc/passwd", "//cdn.example.com/x.jpg"]
)
def test_absolute_non_http_url_is_refused(url: str) -> None:
    with pytest.raises(UrlNotAllowed):
        UrlPolicy(BASE, ["cdn.example.com"], resolve_dns=False).url_for(url)


def test_absolute_url_with_credentials_is_refused() -> None:
    with pytest.raises(UrlNotAllowed):
        UrlPolicy(BASE, ["cdn.example.com"], resolve_dns=False).url_for("http://u:p@cdn.example.com/x.jpg")


def test_allow_listed_hostname_is_allowed_case_insensitive() -> None:
    policy = UrlPolicy(BASE, ["CDN.Example.com"], resolve_dns=False)
    assert policy.url_for("https://cdn.example.COM/p/x.jpg") == "https://cdn.example.COM/p/x.jpg"


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1/x.jpg"),
        ("127.0.0.1", "http://127.0.0.1:9000/x.jpg"),  # the storage URL's port: allowed, the address not
        ("10.0.0.5", "http://10.0.0.5/x.jpg"),
        ("192.168.1.20", "http://192.168.1.20/x.jpg"),
        ("172.16.3.4", "https://172.16.3.4/x.jpg"),
        ("169.254.169.254", "http://169.254.169.254/latest/meta-data/"),
        ("::1", "http://[::1]/x.jpg"),
        ("fe80::1", "http://[fe80::1]/x.jpg"),
        ("::ffff:127.0.0.1", "http://[::ffff:127.0.0.1]/x.jpg"),
        ("0.0.0.0", "http://0.0.0.0/x.jpg"),
        ("100.64.0.1", "http://100.64.0.1/x.jpg"),  # shared address space (carrier-grade NAT)
        ("100.100.100.200", "http://100.100.100.200/latest/meta-data/"),  # a cloud's metadata, in it
        ("64:ff9b::a9fe:a9fe", "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/"),  # NAT64 of 169.254.169.254
        ("64:ff9b::7f00:1", "http://[64:ff9b::7f00:1]/x.jpg"),  # NAT64 of 127.0.0.1
        ("64:ff9b::a00:5", "http://[64:ff9b::a00:5]/x.jpg"),  # NAT64 of 10.0.0.5
        ("2002:7f00:1::1", "http://[2002:7f00:1::1]/x.jpg"),  # 6to4 of 127.0.0.1
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/x.jpg"),
        ("224.0.0.1", "http://224.0.0.1/x.jpg"),
        ("240.0.0.1", "http://240.0.0.1/x.jpg"),
        ("198.18.0.1", "http://198.18.0.1/x.jpg"),  # benchmarking range
        ("fc00::1", "https://[fc00::1]/x.jpg"),
    ],
)
def test_allow_listed_non_public_ip_literal_is_refused(host: str, url: str) -> None:
    policy = UrlPolicy(BASE, [host], resolve_dns=False)
    with pytest.raises(UrlNotAllowed, match="non-public"):
        policy.url_for(url)


def test_allow_listed_public_ip_literal_is_allowed() -> None:
    policy = UrlPolicy(BASE, ["93.184.216.34"], resolve_dns=False)
    assert policy.url_for("http://93.184.216.34/x.jpg") == "http://93.184.216.34/x.jpg"


@pytest.mark.parametrize(
    "host", ["::ffff:93.184.216.34", "64:ff9b::5db8:d822", "2002:5db8:d822::1"]
)  # mapped, NAT64 and 6to4 forms of 93.184.216.34: the IPv4 address they carry decides
def test_ipv6_forms_of_a_public_ipv4_address_are_allowed(host: str) -> None:
    url = f"https://[{host}]/x.jpg"
    assert UrlPolicy(BASE, [host], resolve_dns=False).url_for(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "http://cdn.example.com:8080/x.jpg",
        "http://cdn.example.com:22/x.jpg",
        "https://cdn.example.com:6379/x.jpg",
        "http://cdn.example.com:443:80/x.jpg",
        "http://cdn.example.com:99999/x.jpg",
    ],
)
def test_absolute_url_on_a_port_not_allowed_is_refused(url: str) -> None:
    with pytest.raises(UrlNotAllowed, match="port"):
        UrlPolicy(BASE, ["cdn.example.com"], resolve_dns=False).url_for(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://cdn.example.com/x.jpg",
        "http://cdn.example.com:80/x.jpg",
        "https://cdn.example.com/x.jpg",
        "http://cdn.example.com:443/x.jpg",
        "http://cdn.example.com:9000/x.jpg",  # the storage URL's own port
    ],
)
def test_absolute_url_on_an_allowed_port_passes(url: str) -> None:
    assert UrlPolicy(BASE, ["cdn.example.com"], resolve_dns=False).url_for(url) == url


def test_the_allowed_ports_are_a_setting() -> None:
    settings = Settings(
        storage_url=BASE, storage_allowed_hosts=["cdn.example.com"], storage_allowed_ports=[8443]
    )
    policy = UrlPolicy(BASE, settings.storage_allowed_hosts, False, settings.storage_allowed_ports)
    assert policy.url_for("https://cdn.example.com:8443/x.jpg") == "https://cdn.example.com:8443/x.jpg"
    with pytest.raises(UrlNotAllowed, match="port 443"):
        policy.url_for("https://cdn.example.com/x.jpg")
    assert Settings().storage_allowed_ports == [80, 443]


def test_allow_listed_hostname_resolving_to_loopback_is_refused() -> None:
    # "localhost" resolves through /etc/hosts, no network needed.
    policy = UrlPolicy(BASE, ["localhost"], resolve_dns=True)
    with pytest.raises(UrlNotAllowed, match="non-public"):
        policy.url_for("http://localhost/x.jpg")


# --- sniff_format ------------------------------------------------------------------
def _encoded(ext: str) -> bytes:
    image = np.zeros((8, 8, 3), np.uint8)
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize(
    ("ext", "name"), [(".jpg", "jpeg"), (".png", "png"), (".webp", "webp"), (".bmp", "bmp")]
)
def test_sniff_format_recognizes_image_formats(ext: str, name: str) -> None:
    assert sniff_format(_encoded(ext)) == name


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello world",
        b"<html><body>404</body></html>",
        b"GIF89a\x01\x00\x01\x00",
        b"RIFF\x00\x00\x00\x00WAVE",
        b"\xff\xd8",
    ],
)
def test_sniff_format_refuses_everything_else(data: bytes) -> None:
    with pytest.raises(NotAnImage):
        sniff_format(data)


# --- decode_image -------------------------------------------------------------------
def test_decode_real_jpeg_keeps_shape() -> None:
    original = photos.load("t1.jpg")
    decoded = decode_image(photos.jpeg(original), max_pixels=50_000_000)
    assert decoded.shape == original.shape
    assert decoded.dtype == np.uint8
    assert decoded.flags["C_CONTIGUOUS"]
    assert float(np.abs(decoded.astype(np.int16) - original.astype(np.int16)).mean()) < 3


@pytest.mark.parametrize("ext", [".png", ".webp", ".bmp"])
def test_decode_other_formats(ext: str) -> None:
    original = photos.load("yaoming.jpg")
    ok, buf = cv2.imencode(ext, original)
    assert ok
    decoded = decode_image(buf.tobytes(), max_pixels=50_000_000)
    assert decoded.shape == original.shape


def test_pixel_cap() -> None:
    original = photos.load("t1.jpg")
    data = photos.jpeg(original)
    h, w = original.shape[:2]
    assert decode_image(data, max_pixels=h * w).shape == original.shape
    with pytest.raises(ImageTooLarge) as info:
        decode_image(data, max_pixels=h * w - 1)
    assert not info.value.transient
    assert info.value.message("big.jpg").startswith("Изображение big.jpg слишком большое")


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8,
        b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 50,
        b"BM" + b"\x13" * 300,
    ],
)
def test_valid_magic_with_garbage_body_is_not_an_image(data: bytes) -> None:
    with pytest.raises(NotAnImage) as info:
        decode_image(data, max_pixels=50_000_000)
    assert not info.value.transient


@pytest.mark.parametrize("keep", [0.5, 0.05])
def test_truncated_jpeg_is_not_an_image(keep: float) -> None:
    data = photos.jpeg(photos.load("t1.jpg"))
    with pytest.raises(NotAnImage):
        decode_image(data[: int(len(data) * keep)], max_pixels=50_000_000)


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def test_pixel_bomb_header_is_image_too_large() -> None:
    # A few hundred bytes that claim a 20000 x 20000 image: a permanent failure, not an unexpected error.
    with pytest.raises(ImageTooLarge):
        decode_image(_png_header_only(20_000, 20_000), max_pixels=50_000_000)


def test_png_pixel_cap_is_checked_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[object] = []
    original_load = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> Any:
        loads.append(self)
        return original_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    ok, buf = cv2.imencode(".png", np.zeros((100, 100, 3), np.uint8))
    assert ok
    with pytest.raises(ImageTooLarge):
        decode_image(buf.tobytes(), max_pixels=100)
    assert loads == [], "pixel data was decoded before the pixel cap refused the image"


def _asymmetric_rgb() -> Image.Image:
    """48x32 with big flat blocks of distinct colours: every flip/rotation looks different."""
    arr = np.zeros((32, 48, 3), np.uint8)
    arr[:16, :16] = (255, 0, 0)
    arr[:16, 16:] = (0, 255, 0)
    arr[16:, :32] = (0, 0, 255)
    arr[16:, 32:] = (255, 255, 0)
    arr[:8, :8] = (255, 255, 255)
    return Image.fromarray(arr, "RGB")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil_exif_transpose(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    _asymmetric_rgb().save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    data = buf.getvalue()

    with Image.open(io.BytesIO(data)) as im:
        assert im.getexif().get(0x0112) == orientation
        expected_rgb = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    decoded = decode_image(data, max_pixels=10_000)
    got_rgb = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)

    assert got_rgb.shape == expected_rgb.shape
    assert float(np.abs(got_rgb.astype(np.int16) - expected_rgb.astype(np.int16)).mean()) < 3
    if orientation >= 5:
        assert got_rgb.shape[:2] == (48, 32)  # rotated by 90 degrees


# --- ImageFetcher against a real loopback HTTP server --------------------------------------
def _fetch(settings: Settings, preview_path: str) -> bytes:
    async def go() -> bytes:
        fetcher = ImageFetcher(settings)
        try:
            return await fetcher.fetch(preview_path)
        finally:
            await fetcher.aclose()

    return asyncio.run(go())


def _raises(settings: Settings, preview_path: str, kind: type[Exception]) -> Any:
    with pytest.raises(kind) as info:
        _fetch(settings, preview_path)
    return info.value


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Storage paths of this test only (the loopback storage is shared by the session)."""
    prefix = f"images-test/{uuid.uuid4()}/"
    return lambda name: prefix + name


def test_fetch_ok_returns_the_bytes(
    settings: Settings, storage: PhotoStorage, unique: Callable[[str], str]
) -> None:
    data = photos.jpeg(photos.load("yaoming.jpg"))
    path = unique("ok.jpg")
    storage.put(path, data)
    assert _fetch(settings, path) == data
    assert storage.hits[path] == 1


def test_fetch_quotes_unusual_names(
    settings: Settings, storage: PhotoStorage, unique: Callable[[str], str]
) -> None:
    path = unique("фото 1#.jpg")
    storage.put(path, b"\xff\xd8\xffpayload")
    assert _fetch(settings, path) == b"\xff\xd8\xffpayload"


def test_fetch_missing_is_transient_not_found(settings: Settings, unique: Callable[[str], str]) -> None:
    exc = _raises(settings, unique("x.jpg"), PhotoNotFound)
    assert exc.message("x.jpg") == "Ошибка скачивания x.jpg: 404 Not Found"
    assert exc.transient is True
    assert exc.code == "not_found"


def test_fetch_too_large_is_permanent(
    settings: Settings, storage: PhotoStorage, unique: Callable[[str], str]
) -> None:
    path = unique("big.jpg")
    storage.put(path, b"\xff\xd8\xff" + b"\0" * 5000)
    small = settings.model_copy(update={"max_download_bytes": 1000})
    exc = _raises(small, path, PhotoTooLarge)
    assert exc.transient is False
    assert exc.code == "too_large"
    # at the limit exactly it is fine
    exact = settings.model_copy(update={"max_download_bytes": 5003})
    assert len(_fetch(exact, path)) == 5003


def test_fetch_timeout_is_transient(settings: Settings) -> None:
    with PhotoStorage(latency_s=2) as slow:
        # Nothing stored: the late 404 is a single write, so the abandoned handler ends quietly.
        impatient = settings.model_copy(update={"storage_url": slow.url, "download_timeout_s": 0.5})
        exc, elapsed = asyncio.run(_timed_fetch(impatient, "slow.jpg"))
    assert isinstance(exc, DownloadTimeout)
    assert exc.transient is True
    assert exc.code == "timeout"
    assert elapsed < 1.8, "the deadline did not cut the download short"


async def _timed_fetch(settings: Settings, path: str) -> tuple[Exception | None, float]:
    loop = asyncio.get_running_loop()
    fetcher = ImageFetcher(settings)
    started = loop.time()
    try:
        await fetcher.fetch(path)
    except Exception as exc:  # returned to the test for inspection
        return exc, loop.time() - started
    finally:
        await fetcher.aclose()
    return None, loop.time() - started


def test_fetch_from_dead_storage_is_transient(settings: Settings) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = settings.model_copy(update={"storage_url": f"http://127.0.0.1:{port}/"})
    exc = _raises(dead, "x.jpg", StorageUnavailable)
    assert exc.transient is True


def test_fetch_refuses_absolute_catalog_url_to_loopback(
    settings: Settings, storage: PhotoStorage, unique: Callable[[str], str]
) -> None:
    """Catalog data may not point the fetcher at loopback, even at the storage server itself."""
    path = unique("abs.jpg")
    storage.put(path, b"\xff\xd8\xffsecret")
    _raises(settings, storage.url + path, UrlNotAllowed)
    listed = settings.model_copy(update={"storage_allowed_hosts": ["127.0.0.1"]})
    _raises(listed, storage.url + path, UrlNotAllowed)
    assert storage.hits[path] == 0
    assert _fetch(settings, path) == b"\xff\xd8\xffsecret"  # the relative path is fine


def test_fetcher_reuses_and_closes_its_client(
    settings: Settings, storage: PhotoStorage, unique: Callable[[str], str]
) -> None:
    path = unique("twice.jpg")
    storage.put(path, b"\xff\xd8\xfftwice")

    async def go() -> None:
        fetcher = ImageFetcher(settings)
        assert await fetcher.fetch(path) == b"\xff\xd8\xfftwice"
        client = fetcher._session
        assert await fetcher.fetch(path) == b"\xff\xd8\xfftwice"
        assert fetcher._session is client
        await fetcher.aclose()
        assert fetcher._session is None
        await fetcher.aclose()  # twice is fine

    asyncio.run(go())
    assert storage.hits[path] == 2


# --- DNS rebinding ---------------------------------------------------------------
def test_a_dns_answer_that_changes_after_the_check_is_never_followed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The policy's look-up says public; the next look-up (the one a connection would use)
    says loopback, where a server waits. The fetcher connects only to addresses it checked
    itself, at connection time: it refuses, and the loopback server sees no request."""
    with PhotoStorage() as server:
        server.put("x.jpg", _encoded(".jpg"))
        port = int(server.url.rsplit(":", 1)[1].strip("/"))
        answers = iter(["93.184.216.34"] + ["127.0.0.1"] * 10)
        real = socket.getaddrinfo
        looked_up: list[str] = []

        def rebinding(host: str, *args: Any, **kwargs: Any) -> Any:
            if host != "rebind.example":
                return real(host, *args, **kwargs)
            address = next(answers)
            looked_up.append(address)
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))]

        monkeypatch.setattr(socket, "getaddrinfo", rebinding)
        settings = Settings(  # the server's port allowed: only the address may refuse it
            storage_url=BASE, storage_allowed_hosts=["rebind.example"], storage_allowed_ports=[port]
        )
        fetcher = ImageFetcher(settings)

        async def fetch() -> bytes:
            try:
                return await fetcher.fetch(f"http://rebind.example:{port}/x.jpg")
            finally:
                await fetcher.aclose()

        with pytest.raises(UrlNotAllowed, match="non-public address 127.0.0.1"):
            asyncio.run(fetch())
        assert looked_up[:2] == ["93.184.216.34", "127.0.0.1"]  # the policy passed; the connection did not
        assert sum(server.hits.values()) == 0


def test_the_operators_storage_host_may_be_on_loopback() -> None:
    with PhotoStorage() as server:
        server.put("x.jpg", _encoded(".jpg"))
        fetcher = ImageFetcher(Settings(storage_url=server.url.replace("127.0.0.1", "localhost")))

        async def fetch() -> bytes:
            try:
                return await fetcher.fetch("x.jpg")
            finally:
                await fetcher.aclose()

        assert asyncio.run(fetch()) == server.files["x.jpg"]


# --- HEIC/HEIF (selfies from phones) -------------------------------------------------------
def test_heic_is_sniffed_and_decoded_upright() -> None:
    image = np.zeros((40, 20, 3), np.uint8)
    image[:10, :, 2] = 255  # a red band along the top of a portrait image
    data = photos.heic(image, orientation=6)  # stored rotated, as a phone held sideways
    assert sniff_format(data) == "heif"
    decoded = decode_image(data, max_pixels=10_000)
    assert decoded.shape == (20, 40, 3)  # the file's own rotation applied (EXIF 6: 90 degrees)
    plain = decode_image(photos.heic(image), max_pixels=10_000)
    assert plain.shape == (40, 20, 3)
    assert plain[2, 10, 2] > 200 and plain[30, 10, 2] < 60  # red on top, not elsewhere, BGR order


def test_heic_over_the_pixel_limit_or_broken_is_refused() -> None:
    data = photos.heic(np.zeros((40, 40, 3), np.uint8))
    with pytest.raises(ImageTooLarge):
        decode_image(data, max_pixels=100)
    with pytest.raises(NotAnImage):
        decode_image(data[:40], max_pixels=10_000)
