"""Follow mode over the real service: two Serve replicas with the follower on (defaults),
a catalog of their own (so "every session" is this module's), the real pool and model.
No route call is made: the index follows the catalog by itself."""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
import sqlalchemy as sa
from ray import serve

from facepass.demo import photos
from facepass.demo.scenario import CatalogWriter, new_catalog_database, preview_path
from facepass.demo.storage import PhotoStorage
from facepass.index.store import VectorStore
from facepass.settings import Settings
from serve_app import build_app
from tests.integration.conftest import Service

pytestmark = pytest.mark.slow

APP = "facepass-follow"
PREFIX = "/follow"


@dataclass
class Followed:
    base: str
    settings: Settings
    writer: CatalogWriter
    service: Service

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.base}{path}", headers=self.service.headers, timeout=60)

    def search(self, session_id: uuid.UUID, body: bytes) -> httpx.Response:
        headers = {"Content-Type": "image/jpeg", **self.service.headers}
        url = f"{self.base}/api/v1/faces/search/{session_id}"
        return httpx.post(url, content=body, headers=headers, timeout=120)


@pytest.fixture(scope="module")
def followed(service: Service) -> Iterator[Followed]:
    cloud_dsn, writer = new_catalog_database(service.settings, prefix="follow_it")
    settings = service.settings.with_databases(cloud=cloud_dsn, follow=True, serve_replicas=2)
    serve.run(build_app(settings), name=APP, route_prefix=PREFIX)
    try:
        yield Followed(f"{service.base_url}{PREFIX}", settings, writer, service)
    finally:
        serve.delete(APP)
        writer.close()


def wait_for(check: Callable[[], bool], timeout_s: float, every_s: float = 0.1) -> float:
    """Seconds until ``check()`` held (fails the test after ``timeout_s``)."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout_s, f"not within {timeout_s} s"
        time.sleep(every_s)
    return time.monotonic() - started


def add(writer: CatalogWriter, storage: PhotoStorage, sid: uuid.UUID, n: int, k: int) -> list[uuid.UUID]:
    crops = photos.single_face_crops()
    names = []
    for i in range(n):
        name = f"f{k:03d}_{i}.jpg"
        path = preview_path(sid, name)
        storage.put(path, photos.jpeg(photos.variant(crops[(k + i) % len(crops)].image, 500 + k * 7 + i)))
        names.append((name, path))
    return [r.id for r in writer.add_photos(sid, names)]


def test_the_index_follows_the_catalog_with_no_call(
    followed: Followed, storage: PhotoStorage, store: VectorStore
) -> None:
    writer = followed.writer
    sid = writer.add_session("Идёт событие")
    first = add(writer, storage, sid, 3, 0)
    wait_for(lambda: set(first) <= set(store.ledger(sid)), 60)

    # Photos added in small groups: committed -> in the index (searchable), per photo.
    lags: list[float] = []
    for k in range(1, 9):
        ids = add(writer, storage, sid, 2, k)
        committed = time.monotonic()
        pending = set(ids)
        while pending:
            assert time.monotonic() - committed < 60, "a photo was not indexed within 60 s"
            done = pending & set(store.ledger(sid))
            lags += [time.monotonic() - committed] * len(done)
            pending -= done
            time.sleep(0.1)
        time.sleep(0.7)
    lags.sort()
    p95 = lags[int(0.95 * (len(lags) - 1))]
    print(f"follow lag over {len(lags)} photos: p50 {statistics.median(lags):.2f} s, p95 {p95:.2f} s")
    assert p95 < 15

    # A photo whose created_at lies an hour in the past is indexed too.
    [old] = add(writer, storage, sid, 1, 50)
    with writer.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE photos SET created_at = now() - interval '1 hour' WHERE id = :id"), {"id": old}
        )
    wait_for(lambda: old in store.ledger(sid), 30)

    # Soft- and hard-deleted photos leave the index.
    writer.soft_delete(first[0])
    writer.hard_delete(first[1])
    wait_for(lambda: not {first[0], first[1]} & set(store.ledger(sid)), 60)
    assert store.count_embeddings(sid) == len(store.ledger(sid))

    # Idle: nothing changed, nothing is downloaded, over a discovery and several cycles.
    hits = sum(storage.hits.values())
    time.sleep(followed.settings.follow_discover_interval_s + 4 * followed.settings.follow_interval_s)
    assert sum(storage.hits.values()) == hits

    # What was followed is searchable: the photo itself as the selfie finds it.
    found = followed.search(sid, storage.files[preview_path(sid, "f050_0.jpg")])
    assert found.status_code == 200, found.text
    assert str(old) in [m["photo_id"] for m in found.json()["matches"]]

    mirror = followed.get("/api/v1/faces/mirror")
    assert mirror.status_code == 200, mirror.text
    body = mirror.json()
    assert body["following"] and body["follower"] and body["follower_lock_pid"]
    assert body["lag"]["samples"] >= 17 and body["lag"]["p95_s"] is not None
    assert body["sessions"]["sessions_followed"] == 1
    assert body["photos_pending"] == 0 and body["last_cycle"]["sessions_checked"] >= 1
    assert httpx.get(f"{followed.base}/api/v1/faces/mirror", timeout=30).status_code == 401


def test_one_follower_across_two_replicas(followed: Followed, store: VectorStore) -> None:
    with store.engine.connect() as conn:
        holders = conn.scalar(
            sa.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'facepass-follower'")
        )
    # Each replica opens its lock connection only while it holds the lock or tries for it.
    assert followed.get("/api/v1/faces/mirror").json()["following"]
    assert holders is not None and holders >= 1
    with store.engine.connect() as conn:
        granted = conn.scalar(
            sa.text(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                "WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = 'facepass-follower'"
            )
        )
    assert granted == 1


def test_a_person_goes_ahead_of_the_backlog(
    followed: Followed, storage: PhotoStorage, store: VectorStore
) -> None:
    writer = followed.writer

    def call(n_photos: int, k: int) -> float:
        sid = writer.add_session(f"Вызов {k}", enabled=False)  # enabled just before the call:
        add(writer, storage, sid, n_photos, k)  # the call, not the follower, indexes it
        with writer.engine.begin() as conn:
            conn.execute(sa.text("UPDATE sessions SET facepass_enabled = true WHERE id = :id"), {"id": sid})
        started = time.monotonic()
        response = httpx.post(
            f"{followed.base}/api/v1/faces/force-reindex-session/{sid}",
            headers=followed.service.headers,
            timeout=300,
        )
        assert response.status_code == 200, response.text
        assert response.json()["processed_photos"] == n_photos
        return time.monotonic() - started

    call(20, 100)  # warm
    idle = call(20, 101)
    backlog = writer.add_session("Бэклог")
    add(writer, storage, backlog, 400, 200)
    wait_for(lambda: len(store.ledger(backlog)) >= 20, 120)
    busy = call(20, 102)
    left = 400 - len(store.ledger(backlog))
    print(f"20-photo call: idle {idle:.2f} s, under the backlog {busy:.2f} s ({left} backlog photos left)")
    assert left > 0  # the backlog was still being worked on
    assert busy <= 2 * idle + 2
    wait_for(lambda: len(store.ledger(backlog)) == 400, 300)  # the background is not starved
