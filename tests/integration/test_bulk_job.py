"""Bulk reindex as a real Ray job: `ray job submit` against the session's `ray start` head."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from ray import serve
from ray.job_submission import JobStatus, JobSubmissionClient
from ray.util.state import list_actors, list_jobs

from actors.ray_calls import kill_pool_actors
from facepass.demo.s3server import LocalS3Server
from facepass.demo.scenario import CatalogWriter, add_face_photos, index_locally, new_catalog_database
from facepass.demo.storage import PhotoStorage
from facepass.index.store import VectorStore, face_embeddings
from tests.conftest import secret_files
from tests.integration.conftest import INDEX_ROLE, Service, as_role, grant_catalog_reader, wait_for_ray_logs

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TERMINAL = {JobStatus.STOPPED, JobStatus.SUCCEEDED, JobStatus.FAILED}


def job_env(service: Service, cloud_dsn: str, secrets: Path) -> dict[str, str]:
    """The job's env_vars: the databases as files (the README's way: Ray lists env_vars), on
    the runtime roles (the index's rows only, the catalog's SELECT: no migration at start)."""
    s = service.settings
    catalog = grant_catalog_reader(cloud_dsn)
    return {
        **secret_files(secrets, cloud_dsn=catalog, local_dsn=as_role(s.local_url(), INDEX_ROLE)),
        "FACEPASS_STORAGE_URL": s.storage_url,
        "FACEPASS_RAY_NAMESPACE": s.ray_namespace,
        "FACEPASS_EMBED_ACTORS": str(s.embed_actors),
        "FACEPASS_PHOTOS_IN_FLIGHT_PER_ACTOR": str(s.photos_in_flight_per_actor),
        "FACEPASS_DOWNLOAD_TIMEOUT_S": str(s.download_timeout_s),
    }


def submit(
    service: Service,
    cloud_dsn: str,
    summary: Path,
    *job_args: str,
    wait: bool = True,
    job_id: str = "",
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """The README's command, from the repository: `ray` and the job's `python` come from PATH
    (the head was started with the project's bin first on it), RAY_ADDRESS names the head;
    this test's settings go in as the runtime env's env_vars, the databases as paths of files
    (next to the summary), as the README shows."""
    options = [
        "--working-dir",
        ".",
        "--runtime-env-json",
        json.dumps(
            {
                "env_vars": job_env(service, cloud_dsn, summary.parent / f"{summary.stem}-secrets")
                | (env or {})
            }
        ),
    ]
    if job_id:
        options += ["--submission-id", job_id]
    if not wait:
        options.append("--no-wait")
    entry = ["python", "-m", "jobs.reindex_all", "--summary-json", str(summary), *job_args]
    env = {**service.head.env, "RAY_ADDRESS": service.head.dashboard_url}
    command = ["ray", "job", "submit", *options, "--", *entry]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)


def embeddings_of(store: VectorStore, sid: uuid.UUID) -> list[tuple[uuid.UUID, int]]:
    query = sa.select(face_embeddings.c.photo_id, face_embeddings.c.face_index).where(
        face_embeddings.c.session_id == sid
    )
    with store.engine.connect() as conn:
        return [(r[0], r[1]) for r in conn.execute(query)]


def test_bulk_job_indexes_every_active_session_and_a_second_run_does_nothing(
    service: Service, storage: PhotoStorage, store: VectorStore, tmp_path: Path
) -> None:
    dsn, writer = new_catalog_database(service.settings)
    a, b = writer.add_session("Сессия A"), writer.add_session("Сессия B")
    inactive, complete = writer.add_session("Сессия C", enabled=False), writer.add_session("Сессия D")
    photos_a = add_face_photos(writer, storage, a, 5)
    photos_b = add_face_photos(writer, storage, b, 4)
    add_face_photos(writer, storage, inactive, 3)
    index_locally(service.settings, store, add_face_photos(writer, storage, complete, 2))

    dry = submit(service, dsn, tmp_path / "dry.json", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    planned = json.loads((tmp_path / "dry.json").read_text())
    assert planned["photos_planned"] == 9 and planned["photos_processed"] == 0
    assert embeddings_of(store, a) == []  # a dry run downloads and writes nothing

    first = submit(service, dsn, tmp_path / "first.json")
    assert first.returncode == 0, first.stdout + first.stderr
    summary = json.loads((tmp_path / "first.json").read_text())
    assert summary["sessions_seen"] == 4
    assert summary["sessions_inactive"] == 1 and summary["inactive_session_ids"] == [str(inactive)]
    assert summary["sessions_complete"] == 1
    assert (summary["photos_total"], summary["photos_skipped"]) == (11, 2)
    assert (summary["photos_processed"], summary["photos_successful"], summary["photos_failed"]) == (9, 9, 0)
    assert "Сессия валидирована: Сессия A" in first.stdout + first.stderr  # the seed's words, per session
    assert len({p for p, _ in embeddings_of(store, a)}) == 5
    assert len({p for p, _ in embeddings_of(store, b)}) == 4
    assert embeddings_of(store, inactive) == []

    second = submit(service, dsn, tmp_path / "second.json")
    assert second.returncode == 0, second.stdout + second.stderr
    again = json.loads((tmp_path / "second.json").read_text())
    assert again["photos_processed"] == 0 and again["sessions_complete"] == 3

    # Photos deleted from the catalog (soft and hard) leave the index on the next job run.
    complete_rows = embeddings_of(store, complete)
    writer.soft_delete(photos_a[0].id)
    writer.hard_delete(photos_b[1].id)
    gone = {photos_a[0].id, photos_b[1].id}
    gone_faces = sum(1 for p, _ in embeddings_of(store, a) + embeddings_of(store, b) if p in gone)
    third = submit(service, dsn, tmp_path / "third.json")
    assert third.returncode == 0, third.stdout + third.stderr
    pruned = json.loads((tmp_path / "third.json").read_text())
    assert (pruned["photos_pruned"], pruned["faces_pruned"], pruned["photos_processed"]) == (2, gone_faces, 0)
    assert "Удалено из индекса: 1 фото" in third.stdout + third.stderr
    assert not {p for p, _ in embeddings_of(store, a) + embeddings_of(store, b)} & gone
    assert not set(store.ledger(a)) & gone and not set(store.ledger(b)) & gone
    assert (
        len({p for p, _ in embeddings_of(store, a)}) == 4
        and len({p for p, _ in embeddings_of(store, b)}) == 3
    )
    assert embeddings_of(store, complete) == complete_rows  # other sessions untouched
    writer.close()


def test_bulk_job_indexes_a_private_bucket_and_a_wrong_secret_writes_nothing(
    service: Service, store: VectorStore, s3_server: LocalS3Server, tmp_path: Path
) -> None:
    """Photos in a private bucket of a real S3 server (signatures checked): with a wrong secret
    every photo is a per-photo storage_forbidden, nothing is written (no row, no ledger entry)
    and the secret is nowhere; once the secret's file holds the right one, every photo is
    indexed once."""
    dsn, writer = new_catalog_database(service.settings)
    sid = writer.add_session("Сессия в бакете")
    add_face_photos(writer, s3_server, sid, 4, prefix="s3")
    writer.close()
    # A namespace of its own: the pool's actors are named per namespace, and these fetch from S3.
    namespace = f"facepass-s3-job-{uuid.uuid4().hex[:8]}"
    wrong_secret = "wrong-secret-5b1d90"

    secrets = tmp_path / "s3-keys"
    keys = secret_files(secrets, s3_access_key_id=s3_server.access_key, s3_secret_access_key=wrong_secret)
    plain = {k: v for k, v in s3_server.environment().items() if "_KEY" not in k}
    bucket_env = plain | keys | {"FACEPASS_RAY_NAMESPACE": namespace}

    try:
        refused = submit(service, dsn, tmp_path / "wrong.json", env=bucket_env)
        assert refused.returncode == 0, refused.stdout + refused.stderr  # photos failed, not the job
        summary = json.loads((tmp_path / "wrong.json").read_text())
        assert (summary["photos_processed"], summary["photos_failed"], summary["photos_successful"]) == (
            4,
            4,
            0,
        )
        assert all("403 SignatureDoesNotMatch" in error for error in summary["errors"]), summary["errors"]
        assert embeddings_of(store, sid) == [] and store.ledger(sid) == {}
        shown = refused.stdout + refused.stderr + (tmp_path / "wrong.json").read_text()
        assert wrong_secret not in shown and s3_server.secret_key not in shown

        # The operator fixes the mounted secret in place: the pool's actors (alive since the first
        # job, shared by the jobs of the namespace) read it again; no restart.
        (secrets / "s3_secret_access_key").write_text(s3_server.secret_key)
        indexed = submit(service, dsn, tmp_path / "right.json", env=bucket_env)
        assert indexed.returncode == 0, indexed.stdout + indexed.stderr
        right = json.loads((tmp_path / "right.json").read_text())
        assert (right["photos_processed"], right["photos_successful"]) == (4, 4)
        rows = embeddings_of(store, sid)
        assert len({photo for photo, _ in rows}) == 4 and len(rows) == len(set(rows))
        assert s3_server.secret_key not in indexed.stdout + indexed.stderr
    finally:
        kill_pool_actors(service.settings.model_copy(update={"ray_namespace": namespace}))


def test_no_database_password_in_anything_a_run_shows(
    service: Service, storage: PhotoStorage, catalog_writer: CatalogWriter, tmp_path: Path
) -> None:
    """The DSNs carry a password (the session's is planted, tests/conftest.py). After a route
    call and a `ray job submit` run, it is in none of: the job's output, summary and JSON (the
    Jobs API), Ray's job and actor listings, Serve's status, /healthz (with and without a key),
    /mirror, and every log file of the head's session."""
    password = sa.make_url(service.settings.local_url()).password
    assert password and password in service.settings.cloud_url()
    dsn, writer = new_catalog_database(service.settings)
    assert password in dsn
    add_face_photos(writer, storage, writer.add_session("Пароль нигде"), 2)
    routed = catalog_writer.add_session("Пароль нигде (маршрут)")
    add_face_photos(catalog_writer, storage, routed, 1)
    assert service.reindex(routed).json()["successful_photos"] == 1
    job_id = f"secrets-{uuid.uuid4().hex[:8]}"
    run = submit(service, dsn, tmp_path / "run.json", job_id=job_id)
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads((tmp_path / "run.json").read_text())["photos_successful"] == 2

    client = JobSubmissionClient(service.head.dashboard_url)
    shown = {
        "job output": run.stdout + run.stderr,
        "summary": (tmp_path / "run.json").read_text(),
        "job info": repr(client.get_job_info(job_id)),
        "job logs": client.get_job_logs(job_id),
        "jobs list": repr(client.list_jobs()),
        "state jobs": repr(list_jobs(detail=True, limit=10_000)),
        "state actors": repr(list_actors(detail=True, limit=10_000)),
        "serve status": repr(serve.status()),
        "healthz": service.get("/healthz").text + httpx.get(f"{service.base_url}/healthz", timeout=60).text,
        "mirror": service.get("/api/v1/faces/mirror").text,
    }
    assert "cloud_dsn" in shown["job info"]  # the env_vars are listed: the files' paths only
    shown |= {str(path): text for path, text in wait_for_ray_logs(lambda text: job_id in text).items()}
    leaked = [where for where, text in shown.items() if password in text]
    assert not leaked, f"the database password is shown in {leaked}"


def test_stopped_job_resumes_and_indexes_every_photo_exactly_once(
    service: Service, storage: PhotoStorage, store: VectorStore, tmp_path: Path
) -> None:
    dsn, writer = new_catalog_database(service.settings)
    sessions = [writer.add_session(f"Большая сессия {i}") for i in range(2)]
    for sid in sessions:
        add_face_photos(writer, storage, sid, 60)
    storage.latency_s = 1.0  # slow storage, so that the job is still running when stopped
    job_id = f"facepass-resume-{uuid.uuid4().hex[:8]}"
    try:
        started = submit(service, dsn, tmp_path / "stopped.json", wait=False, job_id=job_id)
        assert started.returncode == 0, started.stdout + started.stderr
        deadline = time.monotonic() + 180
        while sum(len(store.ledger(s)) for s in sessions) < 5 and time.monotonic() < deadline:
            time.sleep(0.5)
        # The SDK call behind `ray job stop` (the CLI takes seconds just to start here).
        JobSubmissionClient(service.head.dashboard_url).stop_job(job_id)
        deadline = time.monotonic() + 60
        while JobSubmissionClient(service.head.dashboard_url).get_job_status(job_id) not in TERMINAL:
            assert time.monotonic() < deadline, "the job did not stop"
            time.sleep(0.2)
    finally:
        storage.latency_s = 0.0
    done_before = sum(len(store.ledger(s)) for s in sessions)
    assert 0 < done_before < 120, "the job should have been stopped mid-run"

    resumed = submit(service, dsn, tmp_path / "resumed.json")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    summary = json.loads((tmp_path / "resumed.json").read_text())
    assert summary["photos_processed"] <= 120 - done_before + 8  # at most the in-flight window again
    for sid in sessions:
        rows = embeddings_of(store, sid)
        assert len(rows) == len(set(rows))  # no face twice
        assert len({p for p, _ in rows}) == 60  # every photo indexed
        assert set(store.ledger(sid).values()) == {"indexed"}
    writer.close()
