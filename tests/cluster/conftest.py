"""Multi-node tier: a real Ray cluster of several nodes on this machine
(``ray.cluster_utils.Cluster``: a head and worker nodes, each its own raylet),
with Ray's health checks shortened so that a node removed without notice is
noticed in seconds. The bulk job runs the way the held-back probe runs it: its
own process, connected with ``RAY_ADDRESS``. Runs on its own (``make cluster-test``),
never beside another Ray cluster: each module builds its cluster and tears it down.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import ray
import sqlalchemy as sa
from ray.cluster_utils import Cluster

from facepass.demo.scenario import CatalogWriter, add_face_photos, new_catalog_database
from facepass.demo.storage import PhotoStorage
from facepass.index.store import VectorStore, face_embeddings, indexed_photos
from facepass.models import PhotoRef
from facepass.settings import Settings
from jobs.local_head import ensure_ray_token, project_env

REPO = Path(__file__).resolve().parents[2]
# A node lost without notice is declared dead after ~3 missed 1 s health checks (default ~15-55 s).
# FACEPASS_TEST_RAY_DEFAULT_HEALTH=1 runs the tier at Ray's own defaults instead (slower).
FAST_HEALTH: dict[str, int] = (
    {}
    if os.environ.get("FACEPASS_TEST_RAY_DEFAULT_HEALTH") == "1"
    else {
        "health_check_initial_delay_ms": 0,
        "health_check_period_ms": 1000,
        "health_check_timeout_ms": 1000,
        "health_check_failure_threshold": 3,
    }
)


def start_cluster(workers: int, worker_cpus: int = 1, env: dict[str, str] | None = None) -> Cluster:
    """A head with no CPUs for work (control only) and ``workers`` worker nodes."""
    ensure_ray_token(project_env())
    for key, value in (env or {}).items():
        os.environ[key] = value  # every node process of this cluster inherits it
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "_system_config": FAST_HEALTH, "include_dashboard": False},
    )
    for _ in range(workers):
        cluster.add_node(num_cpus=worker_cpus)
    cluster.wait_for_nodes()
    return cluster


def stop_cluster(cluster: Cluster, env: dict[str, str] | None = None) -> None:
    if ray.is_initialized():
        ray.shutdown()
    cluster.shutdown()
    for key in env or {}:
        os.environ.pop(key, None)


@dataclass
class Catalog:
    """A fresh catalog of sessions of real faces, served by the loopback storage."""

    dsn: str
    writer: CatalogWriter
    sessions: list[uuid.UUID] = field(default_factory=list)
    photos: list[PhotoRef] = field(default_factory=list)


def make_catalog(settings: Settings, storage: PhotoStorage, sessions: int, per_session: int) -> Catalog:
    dsn, writer = new_catalog_database(settings, prefix="cluster")
    catalog = Catalog(dsn, writer)
    for s in range(sessions):
        sid = writer.add_session(f"Кластерная сессия {s}")
        catalog.sessions.append(sid)
        catalog.photos += add_face_photos(writer, storage, sid, per_session, prefix=f"s{s}_")
    return catalog


def job_env(settings: Settings, catalog: Catalog, address: str, **extra: str) -> dict[str, str]:
    """The bulk job's environment: no pool size (the pool sizes itself from the cluster)."""
    env = project_env(
        {
            "RAY_ADDRESS": address,
            "FACEPASS_CLOUD_DSN": catalog.dsn,
            "FACEPASS_LOCAL_DSN": settings.local_url(),
            "FACEPASS_STORAGE_URL": settings.storage_url,
            "FACEPASS_RAY_NAMESPACE": settings.ray_namespace,
            "FACEPASS_PHOTOS_IN_FLIGHT_PER_ACTOR": "4",
            "FACEPASS_POOL_REFRESH_S": "2",
            **extra,
        }
    )
    env.pop("FACEPASS_EMBED_ACTORS", None)
    env["PYTHONPATH"] = str(REPO)
    return env


@dataclass
class BulkJob:
    process: subprocess.Popen[str]
    summary_path: Path
    log_path: Path
    started: float

    def wait(self, timeout_s: float) -> tuple[int, dict[str, Any], str]:
        code = self.process.wait(timeout=timeout_s)
        log = self.log_path.read_text()
        summary = json.loads(self.summary_path.read_text()) if self.summary_path.exists() else {}
        return code, summary, log


def start_bulk_job(env: dict[str, str], tmp: Path, *args: str) -> BulkJob:
    summary = tmp / f"summary-{uuid.uuid4().hex[:6]}.json"
    log = tmp / f"bulk-{uuid.uuid4().hex[:6]}.log"
    command = [sys.executable, "-m", "jobs.reindex_all", "--summary-json", str(summary), *args]
    out = log.open("w")
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, text=True)
    return BulkJob(process, summary, log, time.monotonic())


def wait_for_progress(job: BulkJob, store: VectorStore, catalog: Catalog, fraction: float) -> int:
    """Photos committed once ``fraction`` of the catalog is (the job must still be running)."""
    total = len(catalog.photos)
    wait_until(
        lambda: ledger_count(store, catalog) >= fraction * total or job.process.poll() is not None, 240
    )
    assert job.process.poll() is None, job.log_path.read_text()[-3000:]
    return ledger_count(store, catalog)


def ledger_count(store: VectorStore, catalog: Catalog) -> int:
    query = sa.select(sa.func.count()).select_from(indexed_photos)
    query = query.where(indexed_photos.c.session_id.in_(catalog.sessions))
    with store.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def assert_every_photo_once(store: VectorStore, catalog: Catalog) -> None:
    """Each photo has one ledger row, indexed, and exactly the face rows its ledger row
    counts (at least one: every photo holds a face): none lost, none doubled."""
    ids = [p.id for p in catalog.photos]
    with store.engine.connect() as conn:
        ledger = conn.execute(
            sa.select(indexed_photos.c.photo_id, indexed_photos.c.status, indexed_photos.c.face_count).where(
                indexed_photos.c.photo_id.in_(ids)
            )
        ).all()
        faces = conn.execute(
            sa.select(face_embeddings.c.photo_id, sa.func.count())
            .where(face_embeddings.c.photo_id.in_(ids))
            .group_by(face_embeddings.c.photo_id)
        ).all()
    assert len(ledger) == len(ids), f"{len(ids) - len(ledger)} photos lost"
    assert {row.status for row in ledger} == {"indexed"}, {row.status for row in ledger}
    per_photo = dict(faces)
    assert all(per_photo.get(row.photo_id) == row.face_count >= 1 for row in ledger), "a photo doubled"


def pool_actors(namespace: str) -> dict[str, dict[str, Any]]:
    """Alive embedding actors by name: their node and how many photos each processed."""
    from actors.ray_calls import WRITER_NAME
    from facepass.cluster.pool_plan import EMBEDDER_PREFIX

    out: dict[str, dict[str, Any]] = {}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        name = entry["name"]
        if entry["namespace"] != namespace or not name.startswith((EMBEDDER_PREFIX, WRITER_NAME)):
            continue
        handle = ray.get_actor(name, namespace=namespace)
        try:
            if name == WRITER_NAME:
                out[name] = {"node_id": ray.get(handle.node_id.remote(), timeout=20)}
            else:
                out[name] = ray.get(handle.info.remote(), timeout=20)
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
            continue  # dead or not placed
    return out


def wait_until(condition: Any, timeout_s: float, step_s: float = 0.5) -> float:
    """Seconds until ``condition()`` held; fails after ``timeout_s``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"not within {timeout_s}s")
        time.sleep(step_s)
    return time.monotonic() - start


def embedder_ready_on(namespace: str, node_id: str) -> bool:
    """An embedding actor on ``node_id`` answers (its model is loaded)."""
    from actors.ray_calls import WRITER_NAME

    actors = pool_actors(namespace)
    return any(name != WRITER_NAME and info.get("node_id") == node_id for name, info in actors.items())


@contextmanager
def held(storage: PhotoStorage) -> Iterator[None]:
    """The storage stalls for a while (requests wait, none fails: the job's download timeout
    is long, see ``HOLD_ENV``): a run lasts until a joining node's actor is ready, however
    long its model load takes on this host (5-30 s on 2 busy cores)."""
    storage.hold()
    try:
        yield
    finally:
        storage.release()


# A job whose storage may be held: downloads wait rather than time out.
HOLD_ENV = {"FACEPASS_DOWNLOAD_TIMEOUT_S": "300"}


@pytest.fixture(scope="module")
def slow_storage() -> Iterator[PhotoStorage]:
    """Storage at 300 ms per photo: runs last long enough to lose a node in the middle."""
    with PhotoStorage(latency_s=0.3) as server:
        yield server


@pytest.fixture(scope="module")
def cluster_settings(settings: Settings, slow_storage: PhotoStorage) -> Settings:
    return settings.model_copy(
        update={"storage_url": slow_storage.url, "ray_namespace": f"facepass-cluster-{uuid.uuid4().hex[:6]}"}
    )
