"""One run per session over HTTP, on two Serve replicas of the ingress (their own app,
route prefix ``/runs``), the real pool, the real model and the loopback storage."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import ray
from ray import serve

from facepass.demo import photos
from facepass.demo.scenario import CatalogWriter, preview_path
from facepass.demo.storage import PhotoStorage
from facepass.index.store import VectorStore
from serve_app import build_app
from serve_app.ingress import REPLICA_HEADER
from tests.integration.conftest import Service
from tests.integration.test_force_reindex import rows_of

APP = "facepass-runs"
PREFIX = "/runs"


@pytest.fixture(scope="module")
def two_replicas(service: Service) -> Iterator[str]:
    """The ingress again, with two replicas, beside the shared one-replica app."""
    settings = service.settings.model_copy(update={"serve_replicas": 2})
    serve.run(build_app(settings), name=APP, route_prefix=PREFIX)
    replicas = serve.status().applications[APP].deployments["FacePassIngress"].replica_states
    assert replicas.get("RUNNING") == 2, replicas
    try:
        yield f"{service.base_url}{PREFIX}"
    finally:
        serve.delete(APP)


def reindex(service: Service, base: str, session_id: uuid.UUID, **params: str) -> httpx.Response:
    url = f"{base}/api/v1/faces/force-reindex-session/{session_id}"
    return httpx.post(url, params=params, headers=service.headers, timeout=300)


def job_state(service: Service, base: str, job_id: str) -> dict[str, object]:
    response = httpx.get(f"{base}/api/v1/faces/reindex-jobs/{job_id}", headers=service.headers, timeout=60)
    assert response.status_code == 200, response.text
    state: dict[str, object] = response.json()
    return state


def face_session(
    catalog_writer: CatalogWriter, storage: PhotoStorage, name: str, count: int
) -> tuple[uuid.UUID, list[str]]:
    """A session of ``count`` one-face photos, and their storage paths."""
    sid = catalog_writer.add_session(name)
    crops = photos.single_face_crops()
    names = []
    for i in range(count):
        path = preview_path(sid, f"r{i:03d}.jpg")
        storage.put(path, photos.jpeg(photos.variant(crops[i % len(crops)].image, i + 300)))
        names.append((f"r{i:03d}.jpg", path))
    catalog_writer.add_photos(sid, names)
    return sid, [path for _, path in names]


def test_ten_concurrent_calls_on_two_replicas_share_one_run(
    service: Service, two_replicas: str, catalog_writer: CatalogWriter, storage: PhotoStorage,
    store: VectorStore,
) -> None:  # fmt: skip
    sid, paths = face_session(catalog_writer, storage, "Десять вызовов", 40)
    storage.latency_s = 0.3  # the run lasts a few seconds: every call arrives while it runs
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=11) as pool:
            calls = [pool.submit(reindex, service, two_replicas, sid) for _ in range(10)]
            time.sleep(1.0)
            background = reindex(service, two_replicas, sid, wait="false")
            answers = [call.result(timeout=300) for call in calls]
        elapsed = time.monotonic() - started
    finally:
        storage.latency_s = 0.0

    downloads = Counter(storage.hits[p] for p in paths)
    print(f"10 concurrent calls: downloads per photo {dict(downloads)}, all answered in {elapsed:.1f} s")
    assert downloads == Counter({1: 40}), downloads  # each photo downloaded once
    assert [a.status_code for a in answers] == [200] * 10, [a.text for a in answers]
    bodies = [a.json() for a in answers]
    assert len({a.headers[REPLICA_HEADER] for a in answers}) == 2  # both replicas answered
    assert sorted(b["joined"] for b in bodies) == [False] + [True] * 9
    assert len({b["job_id"] for b in bodies}) == 1
    counts = {
        (b["total_photos"], b["processed_photos"], b["successful_photos"], b["skipped_photos"],
         b["failed_photos"], b["final_embedding_count"], b["faces_indexed"], b["processing_time_ms"])
        for b in bodies
    }  # fmt: skip
    assert len(counts) == 1 and next(iter(counts))[:5] == (40, 40, 40, 0, 0), counts
    # The wait=false caller during the run got that run's job, marked joined.
    assert background.status_code == 202, background.text
    accepted = background.json()
    assert accepted["job_id"] == bodies[0]["job_id"] and accepted["joined"] is True
    final = job_state(service, two_replicas, accepted["job_id"])
    assert final["status"] == "done" and final["successful_photos"] == 40
    rows = rows_of(store, sid)
    assert len(rows) == len(set(rows)) == bodies[0]["final_embedding_count"] == bodies[0]["faces_indexed"]
    assert len({photo for photo, _ in rows}) == 40
    # A call after the run runs anew (nothing to do) instead of joining the finished one.
    again = reindex(service, two_replicas, sid).json()
    assert again["joined"] is False and again["job_id"] != bodies[0]["job_id"]
    assert (again["skipped_photos"], again["processed_photos"]) == (40, 0)


def test_killed_replica_running_a_job_fails_it_and_frees_the_session(
    service: Service, two_replicas: str, catalog_writer: CatalogWriter, storage: PhotoStorage,
    store: VectorStore,
) -> None:  # fmt: skip
    sid, _ = face_session(catalog_writer, storage, "Реплика падает", 40)
    storage.latency_s = 1.0  # slow: the job is far from done when its replica dies
    try:
        accepted = reindex(service, two_replicas, sid, wait="false")
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["job_id"]
        assert accepted.json()["joined"] is False
        time.sleep(2.0)
        running = job_state(service, two_replicas, job_id)
        assert running["status"] == "running"
        runner = str(running["runner"])
        assert runner == accepted.headers[REPLICA_HEADER]
        ray.kill(ray.get_actor(runner, namespace="serve"), no_restart=True)

        deadline = time.monotonic() + 90
        while True:
            try:
                state = job_state(service, two_replicas, job_id)
            except (httpx.HTTPError, AssertionError):  # the proxy may still route to the dead one
                state = {"status": "unknown"}
            if state["status"] not in ("running", "unknown") or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        storage.latency_s = 0.0
    assert state["status"] == "failed", state
    assert state["code"] == "runner_lost" and "runner died" in str(state["error"])

    # The session is free: the next call runs it (not joins) and completes it.
    body = reindex(service, two_replicas, sid).json()
    assert body["joined"] is False and body["job_id"] != job_id
    assert body["skipped_photos"] + body["processed_photos"] == 40
    assert body["failed_photos"] == 0, body["errors"]
    ledger = store.ledger(sid)
    assert len(ledger) == 40 and set(ledger.values()) == {"indexed"}
    rows = rows_of(store, sid)
    assert len(rows) == len(set(rows)) == body["final_embedding_count"]  # nothing doubled
    assert len({photo for photo, _ in rows}) == 40  # nothing lost
