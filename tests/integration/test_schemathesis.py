"""schemathesis (every check) against the live service's OpenAPI, with the key: no server
error, no undocumented status, no valid request rejected, auth really enforced.

Two runs: blind (random ids: the 404 paths) and on real data (an indexed session, a job,
real face photos as selfies: the 200 paths, where a valid request must be accepted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from facepass.demo.scenario import CatalogWriter, add_face_photos
from facepass.demo.storage import PhotoStorage
from tests.integration.conftest import API_KEYS, Service

pytestmark = pytest.mark.slow

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
REPO = Path(__file__).resolve().parents[2]


def run_schemathesis(
    service: Service, workdir: Path, config: str = "", *options: str
) -> subprocess.CompletedProcess[str]:
    config_file = workdir / "schemathesis.toml"
    config_file.write_text(config)
    command = [
        str(SCHEMATHESIS), "--config-file", str(config_file), "run", f"{service.base_url}/openapi.json",
        "--checks", "all",
        "--header", f"Authorization: Bearer {API_KEYS[0]}",
        "--max-examples", "25",
        "--request-timeout", "120",
        "--report", "junit", "--report-dir", str(workdir),
        *options,
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "SCHEMATHESIS_HOOKS": "tests.integration.schemathesis_hooks",
    }
    run = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=workdir, env=env)
    print(run.stdout[-6000:])  # the summary, shown with -s and on failure
    return run


def assert_clean(run: subprocess.CompletedProcess[str]) -> None:
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    assert "Test cases:" in run.stdout and " passed" in run.stdout
    assert "failed" not in run.stdout.split("SUMMARY")[-1], run.stdout[-5000:]


def test_blind_run_is_clean(service: Service, tmp_path: Path) -> None:
    assert_clean(run_schemathesis(service, tmp_path))


@pytest.mark.parametrize("n_photos", [2])
def test_run_on_real_data_is_clean(
    service: Service, catalog_writer: CatalogWriter, storage: PhotoStorage, tmp_path: Path, n_photos: int
) -> None:
    sid = catalog_writer.add_session("Сессия для schemathesis")
    add_face_photos(catalog_writer, storage, sid, n_photos, prefix="st_")
    assert service.reindex(sid).json()["successful_photos"] == n_photos
    job = service.reindex(sid, wait="false").json()["job_id"]
    config = f'[parameters]\n"path.session_id" = "{sid}"\n"path.job_id" = "{job}"\n'
    # The stateful phase (in the blind run) would chain hundreds of real reindexes and searches
    # here, minutes of model time, until hypothesis gives up on the inferred links.
    run = run_schemathesis(service, tmp_path, config, "--phases", "examples,coverage,fuzzing")
    assert_clean(run)
