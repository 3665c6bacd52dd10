"""An S3-compatible bucket: where a key lives, how a GET of it is signed, its presigned URL,
and what the bucket's error answers mean.

Signing is SigV4 headers (``sigv4.py``, held to botocore's ``S3SigV4Auth`` by a test) on the
service's own aiohttp client (``vision/images.py``), not an S3 client library: measured on 2
cores (docs/storage.md), the existing client with header signing costs ~2x an unsigned GET's
CPU where aiobotocore costs ~8x, and it keeps every guard of the fetcher (checked resolver,
byte caps, one deadline, no redirects). botocore brings the standard AWS credential chain and
signs the presigned URLs of search answers. Only requests to the configured endpoint are signed, never
an absolute URL from the catalog.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials
from botocore.session import Session as BotocoreSession
from pydantic import SecretStr

from facepass.errors import (
    PhotoError,
    PhotoNotFound,
    StorageForbidden,
    StorageUnavailable,
    UrlNotAllowed,
)
from facepass.settings import Settings, read_secret_file
from facepass.storage.paths import is_absolute, relative_path
from facepass.storage.sigv4 import GetSigner

log = logging.getLogger(__name__)

_CODE = re.compile(rb"<Code>([^<]{1,128})</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]{1,512})</Message>")
# 400s that are about the credentials or the signature, not the request.
_AUTH_400 = {
    "AuthorizationHeaderMalformed",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "RequestTimeTooSkewed",
    "InvalidAccessKeyId",
}
# What an operator should look at, by the bucket's error code (the log line says it).
HINTS = {
    "SignatureDoesNotMatch": "check FACEPASS_S3_SECRET_ACCESS_KEY",
    "InvalidAccessKeyId": "check FACEPASS_S3_ACCESS_KEY_ID",
    "AccessDenied": "the key may not read this bucket or prefix (or the request was unsigned)",
    "RequestTimeTooSkewed": "this node's clock is off",
    "ExpiredToken": "the session token expired",
    "InvalidToken": "check FACEPASS_S3_SESSION_TOKEN",
    "AuthorizationHeaderMalformed": "check FACEPASS_S3_REGION",
    "PermanentRedirect": "the bucket is in another region or endpoint: check FACEPASS_S3_REGION",
    "NoSuchBucket": "check FACEPASS_S3_BUCKET",
}
AWS_ENDPOINT = "https://s3.{region}.amazonaws.com"


@dataclass(frozen=True, slots=True)
class BucketError:
    """A non-200 answer of the bucket, as its XML body tells it."""

    status: int
    code: str
    message: str

    def describe(self) -> str:
        text = f"{self.status} {self.code}".strip()
        return f"{text}: {self.message}" if self.message else text

    def hint(self) -> str:
        return HINTS.get(self.code, "")


def parse_error(status: int, reason: str | None, body: bytes) -> BucketError:
    """Code and message of an S3 error body (the rest of it, e.g. AWS's StringToSign, is
    dropped: it says nothing the operator needs and echoes the request)."""
    code = _CODE.search(body)
    message = _MESSAGE.search(body)
    return BucketError(
        status,
        code.group(1).decode(errors="replace") if code else (reason or ""),
        message.group(1).decode(errors="replace") if message else "",
    )


def error_for(error: BucketError) -> PhotoError:
    """The per-photo error of a bucket's answer: 403 (and the 400s of a bad signature) ->
    ``storage_forbidden``, 404 NoSuchKey -> ``not_found``, 5xx and SlowDown ->
    ``storage_unavailable`` (retried); each says the bucket's own code."""
    text = error.describe()
    if error.status == 403 or error.code in _AUTH_400 or 300 <= error.status < 400:
        return StorageForbidden(text)
    if error.status in (404, 410) and error.code != "NoSuchBucket":
        return PhotoNotFound(text)
    return StorageUnavailable(text)


class S3Bucket:
    """The configured bucket of ``FACEPASS_STORAGE_BACKEND=s3``."""

    def __init__(self, settings: Settings) -> None:
        assert settings.s3_bucket, "settings validation requires a bucket for the s3 backend"
        self.bucket = settings.s3_bucket.strip()
        self.region = settings.s3_region
        self.prefix = settings.s3_prefix
        self.endpoint = settings.s3_endpoint_url or AWS_ENDPOINT.format(region=self.region)
        self.addressing = settings.s3_addressing or ("path" if settings.s3_endpoint_url else "virtual")
        self._base = self._base_url(self.endpoint)
        self._host_header = _host_header(self._base)
        self._signer = GetSigner(self.region)
        presign_endpoint = settings.s3_presign_endpoint_url or self.endpoint
        self._presign_base = self._base_url(presign_endpoint)
        self.presign_expiry_s = settings.s3_presign_expiry_s
        self._explicit = _explicit_credentials(settings)
        self._key_files = KeyFiles.of(settings) if self._explicit is not None else None
        self._chain: Credentials | None = None
        self._lock = threading.Lock()

    def _base_url(self, endpoint: str) -> str:
        parts = urlsplit(endpoint)
        if self.addressing == "virtual":
            return f"{parts.scheme}://{self.bucket}.{parts.netloc}/"
        return f"{parts.scheme}://{parts.netloc}/{quote(self.bucket, safe='')}/"

    @property
    def host(self) -> str:
        """The host requests go to (the operator's: it may be on loopback)."""
        return urlsplit(self._base).hostname or ""

    def is_key(self, preview_path: str) -> bool:
        """A path this bucket serves signed: a relative key or an ``s3://`` URL."""
        return not is_absolute(preview_path) or preview_path.strip().lower().startswith("s3://")

    def key_for(self, preview_path: str) -> str:
        """The object key of a catalog path: ``s3_prefix`` + a relative path, or the key of an
        ``s3://<bucket>/<key>`` URL (that bucket only; the prefix is not added to it)."""
        path = preview_path.strip()
        if not path.lower().startswith("s3://"):
            return self.prefix + relative_path(path)
        bucket, _, key = path[len("s3://") :].partition("/")
        if bucket != self.bucket:
            raise UrlNotAllowed(f"bucket {bucket!r} is not FACEPASS_S3_BUCKET")
        return relative_path(key)

    def url_of(self, key: str) -> str:
        return self._base + quote(key, safe="/~")

    def credentials(self) -> ReadOnlyCredentials:
        """The keys to sign with: the settings' own, else the AWS chain's (looked up once, on
        first use; may block on a metadata service: call it off the event loop)."""
        if self._explicit is not None:
            if self._key_files is not None and (renewed := self._key_files.renewed()) is not None:
                self._explicit = renewed
            return self._explicit.get_frozen_credentials()
        with self._lock:
            if self._chain is None:
                self._chain = BotocoreSession().get_credentials()
            if self._chain is None:
                raise StorageForbidden(
                    "no S3 credentials: set FACEPASS_S3_ACCESS_KEY_ID and FACEPASS_S3_SECRET_ACCESS_KEY "
                    "(or their _FILE forms), or give the node an AWS profile or role"
                )
            return self._chain.get_frozen_credentials()

    @property
    def credentials_ready(self) -> bool:
        return self._explicit is not None or self._chain is not None

    def signed_headers(self, url: str) -> dict[str, str]:
        """Headers of a SigV4-signed GET of ``url`` (x-amz-content-sha256 included, as AWS asks)."""
        keys = self.credentials()
        return self._signer.headers(
            self._host_header, urlsplit(url).path, keys.access_key, keys.secret_key, keys.token
        )

    def presigned_url(self, preview_path: str) -> str | None:
        """A GET URL of the photo any client can open until it expires; None where the path is
        not a key of this bucket (an absolute URL of the catalog) or presigning is off."""
        if not self.presign_expiry_s or not self.is_key(preview_path):
            return None
        url = self._presign_base + quote(self.key_for(preview_path), safe="/~")
        request = AWSRequest(method="GET", url=url)
        signer = S3SigV4QueryAuth(self.credentials(), "s3", self.region, expires=self.presign_expiry_s)
        signer.add_auth(request)
        return str(request.url)


def _host_header(url: str) -> str:
    """What an HTTP client sends as Host (and SigV4 signs): the port only when not the scheme's."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    default = 443 if parts.scheme == "https" else 80
    return host if parts.port in (None, default) else f"{host}:{parts.port}"


class KeyFiles:
    """Keys read from ``FACEPASS_S3_*_FILE`` files are read again when a file changes (a mounted
    Secret rotated in place, a wrong secret fixed), looked at once every few seconds: the pool's
    actors are long-lived and shared by the service and the jobs, so a fix must reach them
    without a restart. Only the keys that came from their files (a value set directly wins)."""

    CHECK_EVERY_S = 5.0

    def __init__(self, files: dict[str, Path], values: dict[str, str | None]) -> None:
        self.files = files  # field name -> its file, for the fields that came from a file
        self.values = values  # every key field's value now
        self._stamps = self._stat()
        self._checked = time.monotonic()

    @classmethod
    def of(cls, settings: Settings) -> KeyFiles | None:
        values = {name: _revealed(getattr(settings, name)) for name in _KEY_FIELDS}
        files: dict[str, Path] = {}
        for name in _KEY_FIELDS:
            path = getattr(settings, f"{name}_file")
            if path is not None and _read(Path(path)) == values[name]:
                files[name] = Path(path).expanduser()
        return cls(files, values) if files else None

    def _stat(self) -> dict[str, tuple[int, int] | None]:
        stamps: dict[str, tuple[int, int] | None] = {}
        for name, path in self.files.items():
            try:
                info = path.stat()
                stamps[name] = (info.st_mtime_ns, info.st_size)
            except OSError:
                stamps[name] = None
        return stamps

    def renewed(self) -> Credentials | None:
        """New credentials when a file changed since the last look; else None."""
        now = time.monotonic()
        if now - self._checked < self.CHECK_EVERY_S:
            return None
        self._checked = now
        stamps = self._stat()
        if stamps == self._stamps:
            return None
        self._stamps = stamps
        read = {name: _read(path) for name, path in self.files.items()}
        if any(value is None for value in read.values()):  # half-way through a rotation: next look
            self._stamps = {}
            return None
        self.values |= read
        access, secret = self.values["s3_access_key_id"], self.values["s3_secret_access_key"]
        if not access or not secret:
            return None
        log.info("S3 credentials read again from %s", ", ".join(str(p) for p in self.files.values()))
        return Credentials(access, secret, self.values["s3_session_token"])


_KEY_FIELDS = ("s3_access_key_id", "s3_secret_access_key", "s3_session_token")


def _revealed(secret: SecretStr | None) -> str | None:
    return secret.get_secret_value() if secret is not None else None


def _read(path: Path) -> str | None:
    """A key file's text as the settings read it; None while it cannot be read (mid-rotation)."""
    try:
        return read_secret_file(path, "FACEPASS_S3_*_FILE")
    except ValueError:
        return None


def _explicit_credentials(settings: Settings) -> Credentials | None:
    if settings.s3_access_key_id is None or settings.s3_secret_access_key is None:
        return None
    token = settings.s3_session_token.get_secret_value() if settings.s3_session_token else None
    return Credentials(
        settings.s3_access_key_id.get_secret_value(), settings.s3_secret_access_key.get_secret_value(), token
    )


class PhotoLinks:
    """Presigned GET URLs for search answers, so a guest's client shows a photo of the private
    bucket without the service proxying it. None with the http backend, with
    ``s3_presign_expiry_s`` 0, or for a path that is no key of the bucket."""

    def __init__(self, settings: Settings) -> None:
        on = settings.storage_backend == "s3" and settings.s3_presign_expiry_s > 0
        self.bucket = S3Bucket(settings) if on else None
        self.expires_in_s = settings.s3_presign_expiry_s if on else None

    def urls(self, preview_paths: list[str]) -> list[str | None]:
        """One URL a path (may block on the AWS chain's first look-up: call it off the loop)."""
        return [self._url(path) for path in preview_paths]

    def _url(self, preview_path: str) -> str | None:
        if self.bucket is None:
            return None
        try:
            return self.bucket.presigned_url(preview_path)
        except PhotoError as exc:  # a path catalog data made up, no credentials: no link, said once
            log.warning("no presigned URL for %r: %s", preview_path, exc)
            return None
