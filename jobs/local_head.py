"""A local Ray head started the way the README says, for the bulk demo and the tests.

``ray start --head`` from the project's environment: the venv's ``bin`` first on PATH
(a job's ``python`` is whatever the raylet finds there) and ``RAY_AUTH_MODE=token``
(Ray >= 2.59 turns token auth on for local clusters; the CLI must be told). Ports are
free ones, so another cluster on the machine is left alone, and stopping kills this
head's process group only (never ``ray stop``, which stops every cluster of the user).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def project_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for ``ray start`` and the ``ray`` CLI: the project's Python first."""
    path = os.environ.get("PATH", "")
    return {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{path}" if path else str(VENV_BIN),
        "RAY_AUTH_MODE": "token",
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",  # workers run the project's venv (see Makefile)
        **(extra or {}),
    }


def ensure_ray_token(env: dict[str, str]) -> None:
    """`ray start --head` in token mode needs a token and, unlike ray.init(), makes none: on a
    fresh machine let Ray write one where it looks (~/.ray/auth_token). Never printed."""
    if env.get("RAY_AUTH_TOKEN") or env.get("RAY_AUTH_TOKEN_PATH"):
        return
    token = Path(env.get("HOME") or Path.home()) / ".ray" / "auth_token"
    if token.exists():
        return
    subprocess.run(["ray", "get-auth-token", "--generate"], env=env, capture_output=True, check=True)
    token.chmod(0o600)


@dataclass
class LocalRayHead:
    gcs_address: str
    dashboard_url: str
    metrics_url: str
    env: dict[str, str]
    process: subprocess.Popen[bytes] = field(repr=False)

    @classmethod
    def start(cls, log: IO[str], num_cpus: int = 4, env: dict[str, str] | None = None) -> LocalRayHead:
        """``ray start --head --block`` in its own process group; returns once the dashboard answers."""
        env = env or project_env()
        ensure_ray_token(env)
        gcs, dashboard, metrics = free_port(), free_port(), free_port()
        command = [
            "ray", "start", "--head", "--block", "--disable-usage-stats",
            f"--port={gcs}", f"--dashboard-port={dashboard}", f"--metrics-export-port={metrics}",
            f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
            "--dashboard-host=127.0.0.1", "--include-dashboard=true", f"--num-cpus={num_cpus}",
        ]  # fmt: skip
        # On SIGTERM a Ray >= 2.60 node first drains for RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S
        # (30 s) until its leases are returned, for a rolling update behind a proxy. This head
        # is stopped whole (its Serve replicas and detached actors never return theirs), so the
        # drain only ever waited out its timeout: measured, 30.0 s on every stop. No drain here.
        head_env = {**env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=head_env, start_new_session=True
        )
        head = cls(
            f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard}", f"http://127.0.0.1:{metrics}", env, process
        )
        try:
            head._wait_for_dashboard()
        except BaseException:
            head.stop()
            raise
        return head

    def _wait_for_dashboard(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.process.returncode}")
            try:
                httpx.get(f"{self.dashboard_url}/api/version", timeout=2)  # any answer (even 401): it is up
                return
            except httpx.HTTPError:
                time.sleep(0.5)
        raise TimeoutError(f"the Ray dashboard at {self.dashboard_url} did not come up")

    def stop(self) -> None:
        """SIGTERM to this head's processes (SIGKILL after 30 s); forget its address."""
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._forget_address()

    def _forget_address(self) -> None:
        """`ray start` leaves its address in /tmp/ray/ray_current_cluster; a later plain
        ray.init() would try to join the dead head. `ray stop` removes it; SIGTERM does not."""
        from ray._common.utils import get_ray_address_file

        path = Path(get_ray_address_file(None))
        if path.exists() and path.read_text().strip().endswith(self.gcs_address.split(":")[-1]):
            path.unlink()
