"""The s3 storage backend against a real S3-compatible server on loopback (SeaweedFS, which
checks signatures): signed GETs, keys and s3:// URLs, the bucket's refusals as per-photo errors,
presigned URLs; and retries of transient storage failures, for both backends."""

from __future__ import annotations

import asyncio
import http.server
import logging
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from facepass.demo.s3server import LocalS3Server
from facepass.errors import PhotoNotFound, StorageForbidden, StorageUnavailable, UrlNotAllowed
from facepass.settings import Settings
from facepass.storage.s3 import KeyFiles, S3Bucket, error_for, parse_error
from facepass.storage.sigv4 import GetSigner
from facepass.vision.images import ImageFetcher
from tests.unit.test_images import _fetch, _raises

JPEG = b"\xff\xd8\xff" + b"s3 photo" * 100


@pytest.fixture
def key(s3_server: LocalS3Server) -> Callable[[str], str]:
    """Keys of this test only (the server is shared by the session)."""
    folder = f"s3-test/{uuid.uuid4()}/"
    return lambda name: folder + name


@pytest.fixture
def bucket_settings(s3_server: LocalS3Server) -> Settings:
    return s3_server.settings(Settings(download_timeout_s=5))


def test_the_bucket_is_private_an_unsigned_get_is_refused(
    s3_server: LocalS3Server, key: Callable[[str], str]
) -> None:
    """Without this the rest proves nothing: the server really checks."""
    path = key("private.jpg")
    s3_server.put(path, JPEG)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{s3_server.endpoint_url}/{s3_server.bucket}/{path}", timeout=5)
    assert info.value.code == 403
    assert b"AccessDenied" in info.value.read()


def test_a_key_and_an_s3_url_are_fetched_signed(
    s3_server: LocalS3Server, bucket_settings: Settings, key: Callable[[str], str]
) -> None:
    path = key("фото 1+~=&()!'* #.jpg")  # names as photographers upload them
    s3_server.put(path, JPEG)
    assert _fetch(bucket_settings, path) == JPEG
    assert _fetch(bucket_settings, f"s3://{s3_server.bucket}/{path}") == JPEG


def test_the_prefix_goes_before_relative_keys_only(
    s3_server: LocalS3Server, bucket_settings: Settings, key: Callable[[str], str]
) -> None:
    path = key("prefixed.jpg")
    folder, name = path.rsplit("/", 1)
    s3_server.put(path, JPEG)
    prefixed = bucket_settings.model_copy(update={"s3_prefix": folder + "/"})
    assert _fetch(prefixed, name) == JPEG
    assert _fetch(prefixed, f"s3://{s3_server.bucket}/{path}") == JPEG  # a full key: no prefix added


def test_the_signature_covers_the_payload_hash_header(bucket_settings: Settings) -> None:
    """AWS refuses a signed request without x-amz-content-sha256 (SeaweedFS does not check)."""
    bucket = S3Bucket(bucket_settings)
    headers = {name.lower(): value for name, value in bucket.signed_headers(bucket.url_of("a/b.jpg")).items()}
    assert "x-amz-content-sha256" in headers
    assert "x-amz-content-sha256" in headers["authorization"].split("SignedHeaders=")[1]
    assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=")


def test_a_wrong_secret_is_a_per_photo_storage_forbidden_told_once_in_the_log(
    s3_server: LocalS3Server,
    bucket_settings: Settings,
    key: Callable[[str], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = key("a.jpg")
    s3_server.put(path, JPEG)
    wrong = bucket_settings.model_copy(update={"s3_secret_access_key": SecretStr("not-the-secret-9f3a")})

    async def twice() -> list[BaseException]:
        fetcher = ImageFetcher(wrong)
        try:
            got = await asyncio.gather(fetcher.fetch(path), fetcher.fetch(path), return_exceptions=True)
        finally:
            await fetcher.aclose()
        return list(got)

    with caplog.at_level(logging.WARNING, logger="facepass.vision.images"):
        errors = asyncio.run(twice())
    for exc in errors:
        assert isinstance(exc, StorageForbidden)
        assert exc.code == "storage_forbidden"
        assert exc.transient is True  # the credentials get fixed; the photo is not done
        assert "SignatureDoesNotMatch" in exc.message("a.jpg")
    told = [r.getMessage() for r in caplog.records if "refused a signed GET" in r.getMessage()]
    assert len(told) == 1, told
    assert "FACEPASS_S3_SECRET_ACCESS_KEY" in told[0]
    assert "not-the-secret-9f3a" not in caplog.text and s3_server.secret_key not in caplog.text


def test_an_unknown_access_key_is_storage_forbidden(
    s3_server: LocalS3Server, bucket_settings: Settings, key: Callable[[str], str]
) -> None:
    path = key("a.jpg")
    s3_server.put(path, JPEG)
    stranger = bucket_settings.model_copy(update={"s3_access_key_id": SecretStr("AKIANOBODY")})
    assert "InvalidAccessKeyId" in _raises(stranger, path, StorageForbidden).detail


def test_a_missing_object_is_not_found_and_not_retried(
    bucket_settings: Settings, key: Callable[[str], str]
) -> None:
    exc = _raises(bucket_settings, key("missing.jpg"), PhotoNotFound)
    assert exc.code == "not_found"
    assert (
        exc.message("missing.jpg")
        == "Ошибка скачивания missing.jpg: 404 NoSuchKey: The specified key does not exist."
    )


def test_catalog_data_cannot_name_another_bucket_or_climb_out(bucket_settings: Settings) -> None:
    _raises(bucket_settings, "s3://someone-elses/a.jpg", UrlNotAllowed)
    _raises(bucket_settings, "../a.jpg", UrlNotAllowed)
    _raises(bucket_settings, f"s3://{bucket_settings.s3_bucket}/../x.jpg", UrlNotAllowed)


def test_an_absolute_url_to_the_endpoint_is_not_signed_nor_allowed(
    s3_server: LocalS3Server, bucket_settings: Settings, key: Callable[[str], str]
) -> None:
    """The endpoint is trusted for keys; an absolute catalog URL is catalog data (SSRF policy)."""
    path = key("a.jpg")
    s3_server.put(path, JPEG)
    _raises(bucket_settings, f"{s3_server.endpoint_url}/{s3_server.bucket}/{path}", UrlNotAllowed)


def test_a_presigned_url_downloads_the_photo_and_an_edited_one_does_not(
    s3_server: LocalS3Server, bucket_settings: Settings, key: Callable[[str], str]
) -> None:
    path = key("shown to a guest.jpg")
    s3_server.put(path, JPEG)
    url = S3Bucket(bucket_settings.model_copy(update={"s3_presign_expiry_s": 120})).presigned_url(path)
    assert url is not None and "X-Amz-Expires=120" in url and "X-Amz-Signature=" in url
    assert s3_server.secret_key not in url
    assert urllib.request.urlopen(url, timeout=5).read() == JPEG
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(url.replace("X-Amz-Expires=120", "X-Amz-Expires=99999"), timeout=5)
    assert info.value.code == 403


def test_presigned_urls_only_for_keys_of_the_bucket_and_when_on(bucket_settings: Settings) -> None:
    bucket = S3Bucket(bucket_settings)
    assert bucket.presigned_url("https://cdn.example.com/a.jpg?X-Amz-Signature=1") is None
    assert (
        S3Bucket(bucket_settings.model_copy(update={"s3_presign_expiry_s": 0})).presigned_url("a.jpg") is None
    )
    public = bucket_settings.model_copy(update={"s3_presign_endpoint_url": "https://photos.example.com"})
    url = S3Bucket(public).presigned_url("a.jpg")
    assert url is not None and url.startswith(
        f"https://photos.example.com/{bucket_settings.s3_bucket}/a.jpg?"
    )


def test_virtual_host_addressing_and_the_aws_default_endpoint() -> None:
    aws = S3Bucket(Settings(storage_backend="s3", s3_bucket="guests", s3_region="eu-west-1"))
    assert aws.url_of("a b.jpg") == "https://guests.s3.eu-west-1.amazonaws.com/a%20b.jpg"
    own = S3Bucket(Settings(storage_backend="s3", s3_bucket="guests", s3_endpoint_url="http://minio:9000/"))
    assert own.url_of("a.jpg") == "http://minio:9000/guests/a.jpg"


def test_bucket_error_codes_map_to_per_photo_errors() -> None:
    def mapped(status: int, code: str) -> type:
        body = f"<Error><Code>{code}</Code><Message>m</Message><StringToSign>x</StringToSign></Error>"
        return type(error_for(parse_error(status, None, body.encode())))

    assert mapped(403, "AccessDenied") is StorageForbidden
    assert mapped(403, "RequestTimeTooSkewed") is StorageForbidden
    assert mapped(400, "ExpiredToken") is StorageForbidden
    assert mapped(301, "PermanentRedirect") is StorageForbidden
    assert mapped(404, "NoSuchKey") is PhotoNotFound
    assert mapped(404, "NoSuchBucket") is StorageUnavailable
    assert mapped(503, "SlowDown") is StorageUnavailable
    assert (
        parse_error(403, "Forbidden", b"<Error><Code>AccessDenied</Code></Error>").describe()
        == "403 AccessDenied"
    )
    assert (
        "StringToSign"
        not in parse_error(403, None, b"<Code>A</Code><StringToSign>s</StringToSign>").describe()
    )


# --- settings ----------------------------------------------------------------------------
def test_s3_settings_refuse_what_cannot_work() -> None:
    with pytest.raises(ValidationError, match="FACEPASS_S3_BUCKET"):
        Settings(storage_backend="s3")
    with pytest.raises(ValidationError, match="both"):
        Settings(storage_backend="s3", s3_bucket="b", s3_access_key_id="AKIA")
    with pytest.raises(ValidationError, match="scheme://host"):
        Settings(storage_backend="s3", s3_bucket="b", s3_endpoint_url="http://minio:9000/bucket")
    assert Settings(s3_prefix="/photos/2026/").s3_prefix == "photos/2026/"


def test_s3_secrets_come_from_files_and_are_never_shown(tmp_path: Path) -> None:
    (tmp_path / "id").write_text("AKIAFROMFILE\n")
    (tmp_path / "secret").write_text("secret-from-file-31c7\n")
    settings = Settings(
        storage_backend="s3",
        s3_bucket="b",
        s3_access_key_id_file=tmp_path / "id",
        s3_secret_access_key_file=tmp_path / "secret",
    )
    assert settings.s3_secret_access_key is not None
    assert settings.s3_secret_access_key.get_secret_value() == "secret-from-file-31c7"
    assert S3Bucket(settings).credentials().access_key == "AKIAFROMFILE"
    shown = repr(settings) + str(settings.model_dump()) + settings.model_dump_json()
    assert "secret-from-file-31c7" not in shown and "AKIAFROMFILE" not in shown


def test_without_keys_the_aws_chain_is_asked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-env")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    assert S3Bucket(Settings(storage_backend="s3", s3_bucket="b")).credentials().access_key == "AKIAFROMENV"


# --- retries of transient failures (both backends) ---------------------------------------
class _Flaky(http.server.BaseHTTPRequestHandler):
    """Answers each path's first ``failures`` GETs with 503 SlowDown, then the photo."""

    failures: dict[str, int] = {}
    hits: dict[str, int] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.hits[self.path] = self.hits.get(self.path, 0) + 1
        if self.path.endswith("missing.jpg"):
            self._answer(404, b"<Error><Code>NoSuchKey</Code></Error>")
        elif self.hits[self.path] <= self.failures.get(self.path, 0):
            self._answer(503, b"<Error><Code>SlowDown</Code><Message>Please reduce</Message></Error>")
        else:
            self._answer(200, JPEG)

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def flaky() -> Iterator[tuple[str, type[_Flaky]]]:
    handler = type("Flaky", (_Flaky,), {"failures": {}, "hits": {}})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("backend", ["http", "s3"])
def test_a_transient_failure_is_tried_again_within_the_deadline(
    flaky: tuple[str, type[_Flaky]], backend: str
) -> None:
    url, handler = flaky
    if backend == "s3":
        settings = Settings(
            storage_backend="s3",
            s3_endpoint_url=url,
            s3_bucket="photos",
            s3_access_key_id="AKIA",
            s3_secret_access_key="s",
            storage_retry_backoff_s=0.01,
        )
        folder = "/photos/"
    else:
        settings = Settings(storage_url=url + "/", storage_retry_backoff_s=0.01)
        folder = "/"
    handler.failures[folder + "a.jpg"] = 2
    assert _fetch(settings, "a.jpg") == JPEG
    assert handler.hits[folder + "a.jpg"] == 3
    handler.failures[folder + "b.jpg"] = 5  # more failures than tries: the last error stands
    exc = _raises(settings, "b.jpg", StorageUnavailable)
    assert "503" in exc.detail
    assert handler.hits[folder + "b.jpg"] == 1 + settings.storage_retries
    _raises(settings, "missing.jpg", PhotoNotFound)
    assert handler.hits[folder + "missing.jpg"] == 1  # a 404 is an answer, not retried


def test_keys_from_files_are_read_again_when_a_file_changes(
    s3_server: LocalS3Server, key: Callable[[str], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mounted Secret fixed in place reaches a long-lived fetcher (the pool's actors)."""
    monkeypatch.setattr(KeyFiles, "CHECK_EVERY_S", 0.0)
    path = key("rotated.jpg")
    s3_server.put(path, JPEG)
    (tmp_path / "id").write_text(s3_server.access_key)
    (tmp_path / "secret").write_text("an-old-wrong-secret")
    settings = Settings(
        storage_backend="s3",
        s3_endpoint_url=s3_server.endpoint_url,
        s3_bucket=s3_server.bucket,
        s3_access_key_id_file=tmp_path / "id",
        s3_secret_access_key_file=tmp_path / "secret",
    )

    async def fetch_before_and_after_the_fix() -> tuple[BaseException | bytes, bytes]:
        fetcher = ImageFetcher(settings)
        try:
            try:
                before: BaseException | bytes = await fetcher.fetch(path)
            except StorageForbidden as exc:
                before = exc
            (tmp_path / "secret").write_text(s3_server.secret_key + "\n")
            return before, await fetcher.fetch(path)
        finally:
            await fetcher.aclose()

    before, after = asyncio.run(fetch_before_and_after_the_fix())
    assert isinstance(before, StorageForbidden)
    assert after == JPEG


def test_a_key_set_directly_is_not_replaced_by_its_file(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("from-the-file")
    settings = Settings(
        storage_backend="s3",
        s3_bucket="b",
        s3_access_key_id="AKIA",
        s3_secret_access_key="set-directly",
        s3_secret_access_key_file=tmp_path / "secret",
    )
    assert KeyFiles.of(settings) is None
    assert S3Bucket(settings).credentials().secret_key == "set-directly"


def test_the_aws_sdks_own_variables_name_the_endpoint_and_region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio.internal:9000")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ru-central1")
    settings = Settings(storage_backend="s3", s3_bucket="b")
    assert (settings.s3_endpoint_url, settings.s3_region) == ("http://minio.internal:9000", "ru-central1")
    monkeypatch.setenv("FACEPASS_S3_REGION", "us-east-1")  # ours win
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "https://s3.example.com")  # the S3 one before the global one
    settings = Settings(storage_backend="s3", s3_bucket="b")
    assert (settings.s3_endpoint_url, settings.s3_region) == ("https://s3.example.com", "us-east-1")


@pytest.mark.parametrize("token", [None, "a-session-token/+="])
def test_the_signer_writes_what_botocore_writes(monkeypatch: pytest.MonkeyPatch, token: str | None) -> None:
    """The service's SigV4 (storage/sigv4.py) against botocore's S3SigV4Auth, same time, same GET."""
    import datetime

    import botocore.auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    when = datetime.datetime(2026, 12, 8, 1, 2, 3)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: when)
    url = "http://127.0.0.1:8333/photos/a/%D1%84%D0%BE%D1%82%D0%BE%201%2B~%3D.jpg"
    request = AWSRequest(method="GET", url=url)
    botocore.auth.S3SigV4Auth(Credentials("AKIDEXAMPLE", "s3cr3t/KEY", token), "s3", "ru-central1").add_auth(
        request
    )
    expected = dict(request.headers.items())
    ours = GetSigner("ru-central1").headers(
        "127.0.0.1:8333",
        "/photos/a/%D1%84%D0%BE%D1%82%D0%BE%201%2B~%3D.jpg",
        "AKIDEXAMPLE",
        "s3cr3t/KEY",
        token,
        now=when.replace(tzinfo=datetime.UTC).timestamp(),
    )
    assert ours == expected


def test_the_host_header_signed_is_the_one_sent() -> None:
    for endpoint, host in [
        ("http://127.0.0.1:8333", "127.0.0.1:8333"),
        ("https://Storage.Example.com:443", "storage.example.com"),
        ("http://[::1]:9000", "[::1]:9000"),
    ]:
        bucket = S3Bucket(Settings(storage_backend="s3", s3_bucket="b", s3_endpoint_url=endpoint))
        assert bucket._host_header == host


def test_no_credentials_anywhere_is_a_per_photo_storage_forbidden(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to ask here
    settings = Settings(storage_backend="s3", s3_bucket="b", s3_endpoint_url="http://127.0.0.1:9")
    with caplog.at_level(logging.WARNING, logger="facepass.vision.images"):
        exc = _raises(settings, "a.jpg", StorageForbidden)
    assert "no S3 credentials" in exc.detail and "FACEPASS_S3_ACCESS_KEY_ID" in exc.detail
    assert "no S3 credentials" in caplog.text
