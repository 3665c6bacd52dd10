"""Integration tier: one real Ray head (``ray start --head`` on test ports) + Serve,
shared by the whole session: the route tests drive it over HTTP and the bulk
tests submit jobs to it with the real ``ray job submit`` CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import ray
from ray import serve

from actors.pool import kill_pool_actors
from facepass.settings import Settings
from serve_app import build_app
from tests.conftest import free_port

RAY_BIN = Path(sys.executable).parent / "ray"
# Ray >= 2.59 turns token auth on for local clusters; the CLI clients must be told.
RAY_ENV = {**os.environ, "RAY_AUTH_MODE": "token"}
# The integration tier runs closed, as a deployment should: every /api call carries a key.
API_KEYS = ["it-current-key-5d1c7e0b", "it-previous-key-9a4f2b61"]


@dataclass(frozen=True)
class RayHead:
    gcs_address: str
    dashboard_url: str
    metrics_url: str
    env: dict[str, str]


@dataclass(frozen=True)
class Service:
    base_url: str
    settings: Settings
    head: RayHead

    @property
    def headers(self) -> dict[str, str]:
        return self.settings.api_headers()

    def reindex(self, session_id: object, **params: str) -> httpx.Response:
        url = f"{self.base_url}/api/v1/faces/force-reindex-session/{session_id}"
        return httpx.post(url, params=params, headers=self.headers, timeout=300)

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        """GET with the key (``path`` starts with /)."""
        return httpx.get(f"{self.base_url}{path}", headers=self.headers, timeout=60, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    gcs, dashboard, metrics = free_port(), free_port(), free_port()
    log = (tmp_path_factory.mktemp("ray") / "head.log").open("w")
    command = [
        str(RAY_BIN), "start", "--head", "--block", "--disable-usage-stats",
        f"--port={gcs}", f"--dashboard-port={dashboard}", f"--metrics-export-port={metrics}",
        f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
        "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--num-cpus=4",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=RAY_ENV, start_new_session=True
    )
    head = RayHead(
        f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard}", f"http://127.0.0.1:{metrics}", RAY_ENV
    )
    try:
        _wait_for(head.dashboard_url + "/api/version", process)
        yield head
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()
        _forget_address(head.gcs_address)


def _forget_address(gcs_address: str) -> None:
    """`ray start` leaves its address in /tmp/ray/ray_current_cluster; a later plain
    ray.init() would try to join the dead head. `ray stop` removes it; SIGTERM does not."""
    from ray._private.utils import get_ray_address_file

    path = Path(get_ray_address_file(None))
    if path.exists() and path.read_text().strip().endswith(gcs_address.split(":")[-1]):
        path.unlink()


def _wait_for(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ray start exited with {process.returncode}")
        try:
            httpx.get(url, timeout=2)  # any answer (even 401) means the dashboard is up
            return
        except httpx.HTTPError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not come up")


@pytest.fixture(scope="session")
def service(settings: Settings, ray_head: RayHead) -> Iterator[Service]:
    settings = Settings.model_validate({**settings.model_dump(), "api_key": API_KEYS})
    ray.init(address=ray_head.gcs_address, namespace=settings.ray_namespace)
    serve.start(http_options={"host": settings.http_host, "port": settings.http_port})
    serve.run(build_app(settings), name="facepass", route_prefix="/")
    try:
        yield Service(f"http://{settings.http_host}:{settings.http_port}", settings, ray_head)
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        kill_pool_actors(settings)
        ray.shutdown()
