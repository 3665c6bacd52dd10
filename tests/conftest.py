"""Fixtures shared by both tiers: one embedded PostgreSQL + pgvector and one
loopback photo server for the whole test session (real parts, no mocks)."""

from __future__ import annotations

import os

# Ray >= 2.59 runs local clusters with token auth; a client must be in token mode
# before ray is imported (its config is read at import time).
os.environ.setdefault("RAY_AUTH_MODE", "token")
# No `uv run` hook for workers (a venv built under running workers broke their imports; Makefile).
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

import uuid  # noqa: E402
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from facepass.db import resolve_databases
from facepass.demo.s3server import LocalS3Server
from facepass.demo.scenario import CatalogWriter
from facepass.demo.storage import PhotoStorage
from facepass.index.store import VectorStore
from facepass.settings import Settings
from jobs.local_head import free_port

# Every test connects with a password in its DSNs, so a test can look for it wherever the
# service shows something (settings, logs, /healthz, Ray's listings). The embedded server
# trusts its socket: the password is carried along and not needed.
PLANTED_PASSWORD = "planted-db-pw-7e51c0d2"


def plant_password(settings: Settings) -> Settings:
    """The embedded server's DSNs (``postgres:@``, no password) with PLANTED_PASSWORD in them;
    configured DSNs (a real server and its own password) as they are."""

    def planted(url: str) -> str:
        return url.replace("://postgres:@", f"://postgres:{PLANTED_PASSWORD}@", 1)

    return settings.with_databases(cloud=planted(settings.cloud_url()), local=planted(settings.local_url()))


def secret_files(folder: Path, **secrets: str) -> dict[str, str]:
    """``FACEPASS_<NAME>_FILE`` variables for secrets written to files (mode 0600) in ``folder``:
    what a job's ``env_vars`` may carry (a path, which Ray's listings may show), never the secret."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    env = {}
    for name, value in secrets.items():
        path = folder / name
        path.touch(mode=0o600)
        path.write_text(value)
        env[f"FACEPASS_{name.upper()}_FILE"] = str(path)
    return env


class InjectedDiskFull:
    """PostgreSQL's own "disk full" (SQLSTATE 53100, raised by the server in the writer's
    transaction) for the ledger rows of one session, from a trigger; ``calls`` counts the
    rows it refused (a sequence: it counts across rolled-back transactions)."""

    def __init__(self, engine: sa.Engine, session_id: uuid.UUID) -> None:
        self.engine = engine
        self.name = f"facepass_test_disk_full_{uuid.uuid4().hex[:8]}"
        self.session_id = session_id

    def __enter__(self) -> InjectedDiskFull:
        name = self.name
        with self.engine.begin() as conn:
            conn.execute(sa.text(f"CREATE SEQUENCE {name}_calls"))
            conn.execute(
                sa.text(
                    f"""CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
                    BEGIN
                        PERFORM nextval('{name}_calls');
                        RAISE EXCEPTION 'could not extend file "base/0/0": No space left on device'
                            USING ERRCODE = 'disk_full', HINT = 'Check free disk space.';
                    END $$"""
                )
            )
            conn.execute(
                sa.text(
                    f"CREATE TRIGGER {name} BEFORE INSERT ON indexed_photos FOR EACH ROW "
                    f"WHEN (NEW.session_id = '{self.session_id}') EXECUTE FUNCTION {name}()"
                )
            )
        return self

    def calls(self) -> int:
        with self.engine.connect() as conn:
            query = f"SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {self.name}_calls"
            return int(conn.scalar(sa.text(query)) or 0)

    def __exit__(self, *_: object) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text(f"DROP TRIGGER {self.name} ON indexed_photos"))
            conn.execute(sa.text(f"DROP FUNCTION {self.name}()"))
            conn.execute(sa.text(f"DROP SEQUENCE {self.name}_calls"))


@pytest.fixture(scope="session")
def storage() -> Iterator[PhotoStorage]:
    with PhotoStorage() as server:
        yield server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[LocalS3Server]:
    """A real S3-compatible server (SeaweedFS) on loopback with a private bucket, started on
    first use and shared by the test session; tests put photos under keys of their own."""
    with LocalS3Server() as server:
        yield server


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory, storage: PhotoStorage) -> Settings:
    """Resolved settings: embedded databases in a temp folder, the loopback storage."""
    data_dir: Path = tmp_path_factory.mktemp("facepass")
    base = Settings(
        data_dir=data_dir,
        storage_url=storage.url,
        http_port=free_port(),
        ray_namespace=f"facepass-test-{uuid.uuid4().hex[:8]}",
        embed_actors=2,
        photos_in_flight_per_actor=4,
        download_timeout_s=5,
        follow=False,  # tests that follow turn it on in their own settings
        # Tests wait on the follower's clock: cycles, session discovery and lock retries at a
        # test's pace (the defaults are 2 s, 10 s and 5 s; the assertions are the same).
        follow_interval_s=0.5,
        follow_discover_interval_s=2.0,
        follow_lock_retry_s=1.0,
    )
    resolved = plant_password(resolve_databases(base))
    writer = CatalogWriter(resolved.cloud_url())
    writer.create_schema()
    writer.close()
    store = VectorStore(resolved.local_url())
    store.create_schema()
    store.close()
    return resolved


@pytest.fixture(scope="session")
def catalog_writer(settings: Settings) -> Iterator[CatalogWriter]:
    writer = CatalogWriter(settings.cloud_url())
    yield writer
    writer.close()


@pytest.fixture(scope="session")
def store(settings: Settings) -> Iterator[VectorStore]:
    vector_store = VectorStore(settings.local_url())
    yield vector_store
    vector_store.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tiers are markers (pyproject.toml): a test in tests/cluster says `cluster`, no other does;
    the multi-node tier builds and stops clusters of its own, so it never shares a pytest process
    with the tiers that hold one Ray head for the whole session (`make test-all` runs each tier
    in its own process)."""
    cluster_dir = Path(__file__).parent / "cluster"
    misplaced = [
        item.nodeid
        for item in items
        if (item.get_closest_marker("cluster") is not None) != item.path.is_relative_to(cluster_dir)
    ]
    if misplaced:
        raise pytest.UsageError(
            "the `cluster` marker is for the tests in tests/cluster, and all of them: " + ", ".join(misplaced)
        )
    integration_dir = Path(__file__).parent / "integration"
    slow_elsewhere = [
        item.nodeid
        for item in items
        if item.get_closest_marker("slow") is not None and not item.path.is_relative_to(integration_dir)
    ]
    if slow_elsewhere:
        raise pytest.UsageError(
            "`slow` marks integration tests (the slow tier runs tests/integration -m slow): "
            + ", ".join(slow_elsewhere)
        )
    tiers = {item.get_closest_marker("cluster") is not None for item in items}
    if len(tiers) > 1:
        raise pytest.UsageError(
            "the multi-node tier (tests/cluster) runs in a pytest process of its own: "
            "`make test` (fast tiers), `make test-all` (every tier) or `make cluster-test`"
        )
