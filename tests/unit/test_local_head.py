"""jobs.local_head without starting Ray: the environment a head and its jobs get."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from jobs.local_head import VENV_BIN, ensure_ray_token, project_env


def test_project_env_puts_the_venv_first_and_token_mode_on() -> None:
    env = project_env({"FACEPASS_CLOUD_DSN": "postgresql://x/y"})
    assert env["PATH"].split(os.pathsep)[0] == str(VENV_BIN)
    assert (VENV_BIN / "ray").exists() and (VENV_BIN / "python").exists()
    assert env["RAY_AUTH_MODE"] == "token" and env["FACEPASS_CLOUD_DSN"] == "postgresql://x/y"


def test_a_fresh_machine_gets_a_private_token_once(tmp_path: Path) -> None:
    env = {
        k: v for k, v in project_env({"HOME": str(tmp_path)}).items() if not k.startswith("RAY_AUTH_TOKEN")
    }
    ensure_ray_token(env)
    token = tmp_path / ".ray" / "auth_token"
    first = token.read_text()
    assert len(first.strip()) >= 32
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    ensure_ray_token(env)  # an existing token is kept
    assert token.read_text() == first
