"""The audit as a real Ray job: `ray job submit -- python -m jobs.audit` on the session's head."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import pytest

from facepass.settings import Settings
from jobs.local_head import LocalRayHead
from tests.conftest import secret_files
from tests.planted import Index, fresh_index, plant

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def submit_audit(head: LocalRayHead, index: Index, *job_args: str) -> subprocess.CompletedProcess[str]:
    """The README's command; this test's databases go in as files named in the runtime env's
    env_vars (Ray lists env_vars; never a password there)."""
    secrets = Path(tempfile.mkdtemp(prefix="audit-secrets-"))
    env_vars = secret_files(secrets, cloud_dsn=index.cloud_dsn, local_dsn=index.local_dsn)
    command = [
        *("ray", "job", "submit", "--working-dir", "."),
        *("--runtime-env-json", json.dumps({"env_vars": env_vars})),
        *("--", "python", "-m", "jobs.audit", *job_args),
    ]
    env = {**head.env, "RAY_ADDRESS": head.dashboard_url}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)


def test_audit_job_reports_defects_and_fix_leaves_a_clean_index(
    settings: Settings, ray_head: LocalRayHead, tmp_path: Path
) -> None:
    with fresh_index(settings) as index:
        planted = plant(index)
        found = submit_audit(ray_head, index, "--json", str(tmp_path / "found.json"))
        assert found.returncode != 0, found.stdout + found.stderr  # the job failed: exit code 1
        assert "TOTAL 2 sessions, 1 with defects" in found.stdout + found.stderr
        data = json.loads((tmp_path / "found.json").read_text())
        assert data["ok"] is False and data["found"]["totals"]["deleted"] == 2

        fixed = submit_audit(ray_head, index, "--fix", "--json", str(tmp_path / "fixed.json"))
        assert fixed.returncode == 0, fixed.stdout + fixed.stderr
        assert "The index is clean." in fixed.stdout + fixed.stderr
        data = json.loads((tmp_path / "fixed.json").read_text())
        assert data["ok"] is True and data["fix"]["removed_photos"] == 2
        assert index.auditor().audit().ok and planted.bad in {
            s.session_id for s in index.auditor().audit().sessions
        }
