"""Fail closed on the address Serve really binds: `serve deploy` of the project's Serve config
(HTTP on 0.0.0.0, as KubeRay and cluster.yaml run it) on a Ray head of its own, with no API
key. FACEPASS_HTTP_HOST says nothing there (it is only for `serve run`); the replica asks
Serve, refuses to start, and the deployment says why; no route answers."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from facepass.settings import Settings
from jobs.local_head import LocalRayHead, free_port, project_env
from tests.conftest import secret_files

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def serve_status(head: LocalRayHead) -> dict[str, Any]:
    command = ["serve", "status", "-a", head.dashboard_url]
    done = subprocess.run(command, env=head.env, capture_output=True, text=True, timeout=120, check=True)
    status: dict[str, Any] = yaml.safe_load(done.stdout)
    return status


def test_serve_deploy_on_every_interface_without_a_key_serves_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    config = yaml.safe_load((REPO / "deploy" / "serve_config.yaml").read_text())
    assert config["http_options"]["host"] == "0.0.0.0"
    config["http_options"]["port"] = port
    (tmp_path / "serve_config.yaml").write_text(yaml.safe_dump(config))
    env = project_env(
        {
            **secret_files(
                tmp_path / "secrets", cloud_dsn=settings.cloud_url(), local_dsn=settings.local_url()
            ),
            "FACEPASS_STORAGE_URL": settings.storage_url,
            "FACEPASS_DATA_DIR": str(tmp_path / "data"),
            "FACEPASS_RAY_NAMESPACE": f"facepass-bind-{uuid.uuid4().hex[:8]}",
            "FACEPASS_EMBED_ACTORS": "1",
            "FACEPASS_FOLLOW": "false",
            "PYTHONPATH": str(REPO),
        }
    )
    for name in [n for n in env if n.startswith("FACEPASS_API_KEY")]:
        del env[name]
    with (tmp_path / "head.log").open("w") as log:
        head = LocalRayHead.start(log, num_cpus=1, env=env)
        try:
            deploy = subprocess.run(
                ["serve", "deploy", str(tmp_path / "serve_config.yaml"), "-a", head.dashboard_url],
                env=head.env,
                capture_output=True,
                text=True,
                timeout=120,
                cwd=REPO,
            )
            assert deploy.returncode == 0, deploy.stdout + deploy.stderr
            deadline = time.monotonic() + 240
            while (app := serve_status(head)["applications"].get("facepass", {})).get(
                "status"
            ) != "DEPLOY_FAILED":
                assert time.monotonic() < deadline, app
                assert app.get("status") != "RUNNING", f"served open on 0.0.0.0: {app}"
                time.sleep(2)
            message = str(app["deployments"]["FacePassIngress"]["message"])
            assert "no API key is set" in message and "binds 0.0.0.0" in message, message
            assert "FACEPASS_ALLOW_OPEN_HTTP" in message
            url = f"http://127.0.0.1:{port}/api/v1/faces/mirror"
            try:
                assert httpx.get(url, timeout=10).status_code != 200
            except httpx.HTTPError:
                pass  # no proxy answers at all: closed as well
        finally:
            head.stop()
