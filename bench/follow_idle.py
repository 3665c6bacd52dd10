"""Idle minutes cost nothing: the follower's loop on the defaults, no catalog change.

    python -m bench.follow_idle [--minutes 10] [--sessions 20]

The follower core (no Ray: the same code the Serve replica runs, with the real model
in this process) follows a catalog of its own; once every session is mirrored, it runs
for ``--minutes`` with nothing changing, and counts downloads (storage requests), model
calls and cycles. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

from facepass.catalog.changes import CatalogChanges
from facepass.catalog.cloud import CloudCatalog
from facepass.db import resolve_databases
from facepass.demo.scenario import add_face_photos, new_catalog_database
from facepass.demo.storage import PhotoStorage
from facepass.index.follow_ledger import FollowLedger
from facepass.index.store import VectorStore
from facepass.models import DetectedFace
from facepass.runs.follow import Follower
from facepass.runs.follow_lock import FollowerLock
from facepass.runs.reindex import ReindexCoordinator
from facepass.runs.session_lock import SessionLocks
from facepass.runs.session_runs import LocalJobRegistry, SessionRuns
from facepass.settings import Settings
from facepass.vision.faces import FaceEmbedder
from facepass.vision.images import BgrImage
from facepass.vision.pipeline import LocalProcessor, PhotoPipeline


class CountingEmbedder(FaceEmbedder):
    calls = 0

    def embed(self, image: BgrImage) -> list[DetectedFace]:
        CountingEmbedder.calls += 1
        return super().embed(image)


async def measure(settings: Settings, storage: PhotoStorage, minutes: float, sessions: int) -> dict[str, Any]:
    cloud_dsn, writer = new_catalog_database(settings, prefix="follow_idle")
    settings = settings.with_databases(cloud=cloud_dsn, storage_url=storage.url)
    for i in range(sessions):
        add_face_photos(writer, storage, writer.add_session(f"idle {i}"), 3, prefix=f"s{i}_")
    store = VectorStore(settings.local_url())
    store.create_schema()
    catalog = CloudCatalog(cloud_dsn)
    pipeline = PhotoPipeline(settings, CountingEmbedder(settings).load())
    coordinator = ReindexCoordinator(catalog, store, LocalProcessor(pipeline, store), keep_log=False)
    locks, lock = SessionLocks(settings.local_url()), FollowerLock(settings.local_url())
    runs = SessionRuns(locks, LocalJobRegistry(), runner="bench-follow-idle")
    follower = Follower(
        settings, CatalogChanges(catalog), FollowLedger(store.engine), coordinator, runs, lock
    )
    stop = asyncio.Event()
    task = asyncio.create_task(follower.run(stop))
    started = time.monotonic()
    while follower.totals.sessions_synced < sessions:  # the first syncs: everything indexed
        await asyncio.sleep(0.5)
        if time.monotonic() - started > 600:
            raise RuntimeError("the catalog was not mirrored within 10 minutes")
    await asyncio.sleep(settings.follow_interval_s * 2)
    hits, calls, syncs = sum(storage.hits.values()), CountingEmbedder.calls, follower.totals.sessions_synced
    checked_before = follower._cycles
    await asyncio.sleep(minutes * 60)
    result = {
        "idle_minutes": minutes,
        "sessions": sessions,
        "cycles": follower._cycles - checked_before,
        "downloads": sum(storage.hits.values()) - hits,
        "model_calls": CountingEmbedder.calls - calls,
        "syncs": follower.totals.sessions_synced - syncs,  # plans (catalog reads), not downloads
        "last_cycle_ms": round(follower.last.duration_ms, 2),
        "last_cycle_catalog_ms": round(follower.last.catalog_ms, 2),
    }
    stop.set()
    await task
    await pipeline.aclose()
    for closeable in (lock, locks, catalog, store, writer):
        closeable.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--data-dir", type=Path, default=Path(".facepass/bench"))
    args = parser.parse_args(argv)
    settings = resolve_databases(
        Settings(data_dir=args.data_dir, ray_namespace=f"idle-{uuid.uuid4().hex[:6]}")
    )
    with PhotoStorage() as storage:
        result = asyncio.run(measure(settings, storage, args.minutes, args.sessions))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
