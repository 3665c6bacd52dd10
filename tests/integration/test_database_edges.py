"""A catalog or index that is down or lacks its tables: 503 naming the database and what is
missing, /healthz naming the cause, and the service recovering by itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from ray import serve

from actors.ray_calls import kill_pool_actors
from facepass import db
from facepass.demo import photos
from facepass.demo.scenario import CatalogWriter, add_face_photos, fresh_database
from facepass.index.store import VectorStore
from facepass.settings import Settings
from serve_app import build_app
from tests.conftest import InjectedDiskFull, secret_files
from tests.integration.conftest import API_KEYS, Service

pytestmark = pytest.mark.slow


@contextmanager
def table_moved_away(engine: sa.Engine, table: str) -> Iterator[None]:
    with engine.begin() as conn:
        conn.execute(sa.text(f'ALTER TABLE "{table}" RENAME TO "{table}_away"'))
    try:
        yield
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'ALTER TABLE "{table}_away" RENAME TO "{table}"'))


def search(service: Service, session_id: object) -> httpx.Response:
    url = f"{service.base_url}/api/v1/faces/search/{session_id}"
    headers = {"Content-Type": "image/jpeg", **service.headers}
    return httpx.post(url, content=photos.jpeg(photos.load("yaoming.jpg")), headers=headers, timeout=120)


def health(service: Service) -> httpx.Response:
    """/healthz with a key: the details (causes, actors)."""
    return service.get("/healthz")


def open_health(service: Service, prefix: str = "") -> dict[str, Any]:
    """/healthz without a key: ok / fail per part and nothing else, whatever is down (no host,
    port, database name or driver text for a caller without a key)."""
    answer = httpx.get(f"{service.base_url}{prefix}/healthz", timeout=60)
    body: dict[str, Any] = answer.json()
    assert set(body) == {"ok", "cloud_db", "local_db", "pool", "problems"}, body
    assert {body["cloud_db"], body["local_db"], body["pool"]} <= {"ok", "fail"} and body["problems"] == []
    assert answer.status_code == (200 if body["ok"] else 503)
    return body


def assert_503(response: httpx.Response, database: str, code: str, missing: list[str]) -> dict[str, Any]:
    assert response.status_code == 503, response.text
    body: dict[str, Any] = response.json()
    assert (body["database"], body["code"], body["missing"]) == (database, code, missing), body
    assert body["detail"].startswith(f"{database}: ")
    return body


def test_catalog_without_its_sessions_table(service: Service, catalog_writer: CatalogWriter) -> None:
    sid = catalog_writer.add_session("Каталог без таблицы")
    with table_moved_away(catalog_writer.engine, "sessions"):
        body = assert_503(service.reindex(sid), "cloud catalog", "database_schema_missing", ["sessions"])
        assert 'has no table "sessions"' in body["detail"]
        assert_503(search(service, sid), "cloud catalog", "database_schema_missing", ["sessions"])
        checked = health(service)
        assert checked.status_code == 503
        assert (
            checked.json()["cloud_db"].startswith("error: cloud catalog")
            and "sessions" in checked.json()["cloud_db"]
        )
        assert checked.json()["local_db"] == "ok"
        assert [p["missing"] for p in checked.json()["problems"]] == [["sessions"]]
        assert open_health(service) == {
            "ok": False, "cloud_db": "fail", "local_db": "ok", "pool": "ok", "problems": []
        }  # fmt: skip
    assert service.reindex(sid).status_code == 200  # back as soon as the table is
    assert health(service).status_code == 200


def test_index_without_its_ledger_table(
    service: Service, catalog_writer: CatalogWriter, store: VectorStore
) -> None:
    sid = catalog_writer.add_session("Индекс без таблицы")
    with table_moved_away(store.engine, "indexed_photos"):
        body = assert_503(service.reindex(sid), "local index", "database_schema_missing", ["indexed_photos"])
        assert "facepass_vector" in body["detail"]
        checked = health(service).json()
        assert checked["ok"] is False and checked["cloud_db"] == "ok"
        assert "indexed_photos" in checked["local_db"]
        assert open_health(service)["local_db"] == "fail"
    assert service.reindex(sid).status_code == 200


def test_stopped_database_gives_503_and_the_service_recovers_when_it_is_back(
    service: Service, catalog_writer: CatalogWriter
) -> None:
    sid = catalog_writer.add_session("Сессия переживёт остановку базы")
    assert service.reindex(sid).status_code == 200
    server = next(iter(db._SERVERS.values()))  # the embedded PostgreSQL of this test session
    server.stop()
    try:
        body = assert_503(service.reindex(sid), "cloud catalog", "database_unavailable", [])
        assert "does not answer" in body["detail"]
        assert search(service, sid).status_code == 503
        assert service.reindex(uuid.uuid4(), wait="false").status_code == 503
        down = health(service)
        assert down.status_code == 503
        assert down.json()["cloud_db"].startswith(
            "error: cloud catalog: database facepass_cloud does not answer"
        )
        assert down.json()["local_db"].startswith(
            "error: local index: database facepass_vector does not answer"
        )
        closed = open_health(service)  # the same, to a caller without a key: no driver text
        assert (closed["ok"], closed["cloud_db"], closed["local_db"]) == (False, "fail", "fail")
        raw = httpx.get(f"{service.base_url}/healthz", timeout=60).text
        assert not any(word in raw for word in ("127.0.0.1", "facepass_", "answer", "psycopg", "error"))
    finally:
        server.ensure_postgres_running()
    deadline = time.monotonic() + 60
    while (answer := service.reindex(sid)).status_code != 200:  # no restart of anything: pool_pre_ping
        assert time.monotonic() < deadline, answer.text
        time.sleep(1)
    assert answer.json()["session_id"] == str(sid)
    assert health(service).status_code == 200


def test_service_started_without_its_index_answers_503_then_starts_when_it_appears(
    service: Service, catalog_writer: CatalogWriter
) -> None:
    """A second app whose index database does not exist yet: it starts anyway, says so, and
    creates its schema and pool on the first call after the database appears."""
    later = f"index_later_{uuid.uuid4().hex[:8]}"
    settings = Settings.model_validate(
        {
            **service.settings.model_dump(),
            "local_dsn": service.settings.local_url().replace("/facepass_vector?", f"/{later}?"),
            "ray_namespace": f"{service.settings.ray_namespace}-later",
            "embed_actors": 1,
            "api_key": API_KEYS,
        }
    )
    serve.run(build_app(settings), name="facepass-later", route_prefix="/later")
    url = f"{service.base_url}/later/api/v1/faces/force-reindex-session"
    sid = catalog_writer.add_session("Индекс появится позже")
    try:
        missing = httpx.post(f"{url}/{sid}", headers=service.headers, timeout=120)
        body = assert_503(missing, "local index", "database_unavailable", [])
        assert f"database {later} does not answer" in body["detail"]
        down = service.get("/later/healthz")
        assert down.status_code == 503 and later in down.json()["local_db"]
        assert open_health(service, "/later")["local_db"] == "fail"
        assert down.json()["pool"].startswith("error:")

        fresh_database(service.settings, later)
        deadline = time.monotonic() + 120
        while (answer := httpx.post(f"{url}/{sid}", headers=service.headers, timeout=300)).status_code != 200:
            assert time.monotonic() < deadline, answer.text
            time.sleep(1)
        assert answer.json()["session_name"] == "Индекс появится позже"
        # Healthy once its actor has loaded: on a new index database the first actor of this
        # kind of machine measures its variant first (issue 31, ~25 s here), then /healthz is 200.
        deadline = time.monotonic() + 180
        while (health := service.get("/later/healthz")).status_code != 200:
            assert time.monotonic() < deadline, health.text
            time.sleep(2)
        [actor] = health.json()["pool"]["actors"]
        assert actor["variant_choice"]["store"] == "index database (model_trials)"
    finally:
        serve.delete("facepass-later")
        kill_pool_actors(settings)


def test_a_configured_index_behind_this_code_answers_503_naming_jobs_migrate(
    service: Service, catalog_writer: CatalogWriter, tmp_path: Any
) -> None:
    """A second app on an index database nobody migrated, configured (not the embedded default):
    the replica does not migrate it (its role may not, on a real deployment), every call answers
    503 naming `python -m jobs.migrate`, and once the command ran (as its own step, the owner's
    DSN from a file) the next call is served, with no restart."""
    name = f"index_unmigrated_{uuid.uuid4().hex[:8]}"
    index_dsn = fresh_database(service.settings, name)
    settings = Settings.model_validate(
        {
            **service.settings.model_dump(),
            "ray_namespace": f"{service.settings.ray_namespace}-unmigrated",
            "embed_actors": 1,
            "migrate_at_start": False,
        }
    ).with_databases(local=index_dsn)
    serve.run(build_app(settings), name="facepass-unmigrated", route_prefix="/unmigrated")
    url = f"{service.base_url}/unmigrated/api/v1/faces/force-reindex-session"
    sid = catalog_writer.add_session("Схема отстала")
    try:
        behind = httpx.post(f"{url}/{sid}", headers=service.headers, timeout=120)
        body = assert_503(behind, "local index", "database_schema_missing", ["alembic_version"])
        assert f"database {name} is at schema revision none" in body["detail"]
        assert "python -m jobs.migrate" in body["detail"]
        with sa.create_engine(index_dsn).connect() as conn:  # nothing was created at run time
            assert not sa.inspect(conn).get_table_names()

        env = {
            **secret_files(tmp_path / "owner", migrate_dsn=index_dsn),
            "FACEPASS_CLOUD_DSN": service.settings.cloud_url(),
            "FACEPASS_LOCAL_DSN": index_dsn,
            "PATH": os.environ["PATH"],
        }
        migrated = subprocess.run(
            [sys.executable, "-m", "jobs.migrate"], env={**os.environ, **env}, capture_output=True, text=True
        )
        assert migrated.returncode == 0, migrated.stderr
        assert "schema revision none ->" in migrated.stdout
        deadline = time.monotonic() + 120
        while (answer := httpx.post(f"{url}/{sid}", headers=service.headers, timeout=300)).status_code != 200:
            assert time.monotonic() < deadline, answer.text
            time.sleep(1)
        assert answer.json()["session_name"] == "Схема отстала"
    finally:
        serve.delete("facepass-unmigrated")
        kill_pool_actors(settings)


def test_a_locked_catalog_table_gets_a_503_in_bounded_time_and_the_service_keeps_serving(
    service: Service, catalog_writer: CatalogWriter, storage: Any
) -> None:
    """The catalog's `photos` table held by another connection (`LOCK TABLE photos IN ACCESS
    EXCLUSIVE MODE` in an open transaction): a force-reindex call answers within the connection's
    lock timeout (+ margin) with a 503 naming the catalog (it used to hang until the lock went),
    /healthz stays 200 throughout, and once the lock is gone the same call indexes the session."""
    sid = catalog_writer.add_session("Каталог занят")
    add_face_photos(catalog_writer, storage, sid, 1)
    bound = service.settings.db_lock_timeout_s
    holder = sa.create_engine(service.settings.cloud_url()).connect()
    transaction = holder.begin()
    holder.execute(sa.text("SET LOCAL lock_timeout = 0"))
    holder.execute(sa.text("LOCK TABLE photos IN ACCESS EXCLUSIVE MODE"))
    try:
        started = time.monotonic()
        answer = service.reindex(sid)
        waited = time.monotonic() - started
        body = assert_503(answer, "cloud catalog", "database_timeout", [])
        assert "waited for a lock past its limit" in body["detail"], body
        assert waited < bound + 20, f"answered after {waited:.1f} s (lock timeout {bound} s)"
        healthy = httpx.get(f"{service.base_url}/healthz", timeout=60)
        assert healthy.status_code == 200, healthy.text
    finally:
        transaction.rollback()
        holder.close()
    done = service.reindex(sid)
    assert done.status_code == 200 and done.json()["successful_photos"] == 1, done.text


def index_connections_cap(settings: Settings) -> int:
    """docs/operations.md "Connections": what one replica and one index writer may hold on the index."""
    replica = (
        (5 + 2) + (2 + 2) + (1 + 1) + 2 + settings.max_runs_per_replica + settings.follow_parallel_sessions
    )
    return replica + (2 + 2)


def test_fifty_background_calls_at_once_are_each_answered_and_each_session_is_indexed_once(
    service: Service, catalog_writer: CatalogWriter, storage: Any, store: VectorStore
) -> None:
    """50 `?wait=false` calls for 50 sessions at once: each is answered at once, 202 (a job) or
    429 with Retry-After (past the replica's max_runs_per_replica runs); the index database's
    connections stay under the documented cap; calling again after Retry-After, every session
    ends indexed exactly once (one ledger row and one face per photo, no job failed)."""
    sessions = [catalog_writer.add_session(f"Наплыв {i:02d}") for i in range(50)]
    for sid in sessions:
        add_face_photos(catalog_writer, storage, sid, 1)
    peak, samples, stop = [0], [0], threading.Event()
    # AUTOCOMMIT: pg_stat_activity is a snapshot per transaction; each count its own.
    probe = sa.create_engine(
        service.settings.local_url(), poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT"
    )

    def watch() -> None:
        with probe.connect() as conn:
            while not stop.is_set():
                count = conn.scalar(
                    sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
                )
                peak[0] = max(peak[0], int(count or 0))
                samples[0] += 1
                time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    jobs: dict[uuid.UUID, str] = {}
    refused = [0]
    pending = list(sessions)
    deadline = time.monotonic() + 300
    try:
        while pending:
            assert time.monotonic() < deadline, f"{len(pending)} sessions never accepted"
            with ThreadPoolExecutor(50) as executor:
                answers = list(executor.map(lambda sid: (sid, service.reindex(sid, wait="false")), pending))
            retry_after = []
            for sid, answer in answers:
                assert answer.status_code in (202, 429), answer.text
                assert answer.elapsed.total_seconds() < 30, answer.elapsed
                if answer.status_code == 202:
                    jobs[sid] = answer.json()["job_id"]
                else:
                    assert answer.json()["code"] == "too_many_runs"
                    retry_after.append(int(answer.headers["Retry-After"]))
                    refused[0] += 1
            pending = [sid for sid, answer in answers if answer.status_code == 429]
            if pending:
                time.sleep(min(retry_after))
        for job_id in jobs.values():
            while (job := service.get(f"/api/v1/faces/reindex-jobs/{job_id}").json())["status"] == "running":
                assert time.monotonic() < deadline, job
                time.sleep(0.5)
            assert job["status"] == "done", job
    finally:
        stop.set()
        watcher.join()
        probe.dispose()
    for sid in sessions:
        ledger = store.ledger(sid)
        assert list(ledger.values()) == ["indexed"], ledger
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT session_id, count(*) FROM face_embeddings WHERE session_id = ANY(:s) GROUP BY 1"),
            {"s": sessions},
        ).all()
    assert sorted(n for _, n in rows) == [1] * 50
    print(f"answers: {len(jobs)} jobs, {refused[0]} refused with 429; index connections peak {peak[0]}")
    assert samples[0] > 10, "the connection count was not watched"
    # The test process's own engines hold a few more (the store fixture: at most 5 + 2, the probe: 1).
    assert peak[0] <= index_connections_cap(service.settings) + 8, peak[0]


class SmallDisk:
    """The index's two tables on a filesystem of their own that a test fills and empties: a
    tmpfs tablespace (a real full disk: PostgreSQL fails to extend the tables' files, SQLSTATE
    53100). Where this machine lets no test mount (not root), PostgreSQL raises the same
    SQLSTATE from a trigger on the session's ledger rows (``InjectedDiskFull``) instead."""

    TABLES = ("indexed_photos", "face_embeddings")

    def __init__(self, owner: sa.Engine, session_id: uuid.UUID, size_mb: int = 64) -> None:
        self.owner = owner.execution_options(isolation_level="AUTOCOMMIT")
        self.session_id = session_id
        self.size_mb = size_mb
        self.mount = Path(tempfile.mkdtemp(prefix="facepass-small-disk-"))
        self.tablespace = f"facepass_small_{uuid.uuid4().hex[:8]}"
        self.injected: InjectedDiskFull | None = None
        self.mounted = True  # a real tmpfs tablespace; False: the trigger stands in
        self.kind = "tmpfs tablespace"

    def __enter__(self) -> SmallDisk:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m,mode=0755", "tmpfs", str(self.mount)],
            capture_output=True,
            text=True,
        )
        if mounted.returncode != 0:
            self.mounted = False
            self.kind = f"a trigger raising SQLSTATE 53100 (no mount here: {mounted.stderr.strip()})"
            self.mount.rmdir()
            return self
        try:
            with self.owner.connect() as conn:
                data = Path(str(conn.scalar(sa.text("SHOW data_directory"))))
                folder = self.mount / "pg"
                folder.mkdir()
                os.chown(folder, data.stat().st_uid, data.stat().st_gid)
                conn.execute(sa.text(f"CREATE TABLESPACE {self.tablespace} LOCATION '{folder}'"))
                for table in self.TABLES:  # moved, then compacted: no free room left in their pages
                    conn.execute(sa.text(f"ALTER TABLE {table} SET TABLESPACE {self.tablespace}"))
                    conn.execute(sa.text(f"VACUUM FULL {table}"))
        except BaseException:
            self.__exit__()
            raise
        return self

    def fill(self) -> None:
        if not self.mounted:
            self.injected = InjectedDiskFull(self.owner, self.session_id).__enter__()
            return
        with open(self.mount / "filler", "wb", buffering=0) as filler:
            for chunk in (1 << 20, 4096):
                try:
                    while True:
                        filler.write(b"\0" * chunk)
                except OSError:  # ENOSPC: the next, smaller chunk fills the rest
                    pass
        assert shutil.disk_usage(self.mount).free < 64 * 1024

    def free(self) -> None:
        if self.injected is not None:
            self.injected.__exit__()
            self.injected = None
        elif self.mounted:
            (self.mount / "filler").unlink(missing_ok=True)

    def __exit__(self, *_: object) -> None:
        self.free()
        if not self.mounted:
            return
        try:
            with self.owner.connect() as conn:
                for table in self.TABLES:
                    conn.execute(sa.text(f"ALTER TABLE {table} SET TABLESPACE pg_default"))
                conn.execute(sa.text(f"DROP TABLESPACE IF EXISTS {self.tablespace}"))
        finally:
            subprocess.run(["umount", str(self.mount)], check=True)
            self.mount.rmdir()


def ledger_and_faces(engine: sa.Engine, session_id: uuid.UUID) -> tuple[int, int, int, int]:
    """(ledger rows, faces the ledger counts, face rows, distinct (photo, face) keys) of a session."""
    with engine.connect() as conn:
        ledger, counted = conn.execute(
            sa.text(
                "SELECT count(*), coalesce(sum(face_count), 0) FROM indexed_photos WHERE session_id = :s"
            ),
            {"s": session_id},
        ).one()
        rows, keys = conn.execute(
            sa.text(
                "SELECT count(*), count(DISTINCT (photo_id, face_index)) FROM face_embeddings "
                "WHERE session_id = :s"
            ),
            {"s": session_id},
        ).one()
    return int(ledger), int(counted), int(rows), int(keys)


def test_a_full_index_disk_stops_the_run_and_healthz_says_the_index_cannot_write(
    service: Service, catalog_writer: CatalogWriter, storage: Any
) -> None:
    """The index's tables on a small disk, filled: a force-reindex of 40 photos answers 503
    index_cannot_write naming the local index and where the run stopped; the photos it had not
    started are never downloaded; what committed is whole (every ledger row with its faces);
    /healthz says the index cannot write while search still answers; space freed, the next call
    indexes the rest, each photo once, and /healthz is 200 again."""
    searched = catalog_writer.add_session("Поиск при полном диске")
    add_face_photos(catalog_writer, storage, searched, 1)
    assert service.reindex(searched).status_code == 200
    sid = catalog_writer.add_session("Диск индекса полон")
    refs = add_face_photos(catalog_writer, storage, sid, 40)
    owner = sa.create_engine(service.settings.local_url(), poolclass=sa.pool.NullPool)
    capacity = service.settings.embed_actors * service.settings.photos_in_flight_per_actor
    try:
        with SmallDisk(owner, sid) as disk:
            print(f"full disk made with: {disk.kind}")
            disk.fill()
            before = sum(storage.hits[r.preview_path] for r in refs)
            stopped = service.reindex(sid)
            downloaded = sum(storage.hits[r.preview_path] for r in refs) - before
            body = assert_503(stopped, "local index", "index_cannot_write", [])
            assert "SQLSTATE 53100" in body["detail"] and "of 40 photos" in body["detail"], body
            print(f"stopped: {body['detail']}; {downloaded} photos downloaded")
            assert downloaded <= 2 * capacity < 40, f"{downloaded} photos downloaded after the disk filled"
            ledger, counted, rows, keys = ledger_and_faces(owner, sid)
            assert ledger < 40 and counted == rows == keys, (ledger, counted, rows, keys)
            answer = health(service)
            assert answer.status_code == 503, answer.text
            checked = answer.json()
            assert checked["local_db"].startswith("error: local index: cannot write (disk full"), checked
            assert checked["cloud_db"] == "ok" and isinstance(checked["pool"], dict), checked
            assert [p["code"] for p in checked["problems"]] == ["index_cannot_write"], checked
            assert open_health(service)["local_db"] == "fail"
            assert search(service, searched).status_code == 200  # reads still work
            disk.free()
            done = service.reindex(sid)
            assert done.status_code == 200, done.text
            report = done.json()
            assert report["skipped_photos"] == ledger and report["failed_photos"] == 0, report
            assert report["successful_photos"] == 40 - ledger, report
            assert health(service).status_code == 200
        ledger, counted, rows, keys = ledger_and_faces(owner, sid)
        assert ledger == 40 and counted == rows == keys >= 40, (ledger, counted, rows, keys)
    finally:
        owner.dispose()
