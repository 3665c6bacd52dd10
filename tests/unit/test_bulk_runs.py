"""facepass.runs.bulk with one run per session: the bulk job takes each session's run lock,
registers its run, and skips (reports) a session another run holds. No Ray."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from facepass.catalog.cloud import CloudCatalog
from facepass.demo.scenario import CatalogWriter
from facepass.errors import IndexCannotWrite, NotWritten
from facepass.index.store import VectorStore
from facepass.models import PhotoOutcome, PhotoRef, PhotoStatus
from facepass.runs.bulk import BulkReindexer
from facepass.runs.jobs import DONE, FAILED, Job
from facepass.runs.reindex import OneByOne, ReindexCoordinator, ReindexMode
from facepass.runs.report import ReindexReport
from facepass.runs.session_lock import SessionLocks
from facepass.runs.session_runs import LocalJobRegistry, OwnedRun, SessionRuns
from facepass.settings import Settings


class FakeProcessor(OneByOne):
    """Says every photo was indexed (writes nothing); ``hold`` keeps photos in flight."""

    def __init__(self) -> None:
        self.hold = asyncio.Event()
        self.hold.set()
        self.photos: list[str] = []

    @property
    def capacity(self) -> int:
        return 4

    @property
    def model_name(self) -> str:
        return "fake"

    async def process(self, photo: PhotoRef) -> PhotoOutcome:
        self.photos.append(photo.filename)
        await self.hold.wait()
        return PhotoOutcome(photo.id, photo.filename, PhotoStatus.INDEXED, face_count=1, best_score=0.9)


@pytest.fixture(scope="module")
def catalog(settings: Settings) -> Iterator[CloudCatalog]:
    cloud = CloudCatalog(settings.cloud_url())
    yield cloud
    cloud.close()


def new_session(catalog_writer: CatalogWriter, name: str, count: int) -> uuid.UUID:
    sid = catalog_writer.add_session(name)
    catalog_writer.add_photos(sid, [(f"{name}-{i}.jpg", f"{sid}/{i}.jpg") for i in range(count)])
    return sid


def test_bulk_skips_a_session_another_run_holds_and_registers_its_own(
    catalog: CloudCatalog, store: VectorStore, catalog_writer: CatalogWriter, locks: SessionLocks
) -> None:
    free, held = new_session(catalog_writer, "free", 3), new_session(catalog_writer, "held", 2)
    registry = LocalJobRegistry()
    processor = FakeProcessor()
    route = SessionRuns(locks, registry, runner="replica")
    bulk_runs = SessionRuns(locks, registry, runner="bulk")

    async def go() -> None:
        other = await route.claim(held, ReindexMode.MISSING)  # a route call runs `held`
        assert isinstance(other, OwnedRun)
        bulk = BulkReindexer(ReindexCoordinator(catalog, store, processor, keep_log=False), runs=bulk_runs)
        summary = await bulk.run([free, held])
        assert (summary.sessions_done, summary.sessions_busy) == (1, 1)
        assert summary.busy_session_ids == [str(held)]
        assert summary.photos_processed == 3 and len(processor.photos) == 3
        assert "заняты другим запуском 1" in summary.lines()[1]
        await route.finish(other, ReindexReport(held, "held").result())

    asyncio.run(go())
    jobs = [j for j in registry.book._jobs.values() if j.session_id == str(free)]
    assert len(jobs) == 1 and jobs[0].status is DONE and jobs[0].runner == "bulk"
    assert jobs[0].result is not None
    assert (jobs[0].result.processed_photos, jobs[0].result.successful_photos) == (3, 3)
    assert locks.holder(free) is None and locks.holder(held) is None


def test_a_stopped_bulk_job_fails_its_runs_and_frees_their_sessions(
    catalog: CloudCatalog, store: VectorStore, catalog_writer: CatalogWriter, locks: SessionLocks
) -> None:
    sid = new_session(catalog_writer, "stopped", 3)
    registry = LocalJobRegistry()
    processor = FakeProcessor()
    processor.hold.clear()  # photos stay in flight until the job is stopped

    async def go() -> None:
        bulk = BulkReindexer(
            ReindexCoordinator(catalog, store, processor, keep_log=False),
            runs=SessionRuns(locks, registry, runner="bulk"),
        )
        task = asyncio.create_task(bulk.run([sid]))
        while len(processor.photos) < 3:
            await asyncio.sleep(0.01)
        assert locks.holder(sid) is not None
        task.cancel()  # `ray job stop`
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    (job,) = registry.book._jobs.values()
    assert job.status is FAILED and job.code == "cancelled"
    assert registry.book.running_job(str(sid)) is None and locks.holder(sid) is None


def test_a_dry_run_takes_no_lock(
    catalog: CloudCatalog, store: VectorStore, catalog_writer: CatalogWriter, locks: SessionLocks
) -> None:
    sid = new_session(catalog_writer, "dry", 2)
    held = locks.try_acquire(sid)
    assert held is not None
    registry = LocalJobRegistry()
    try:
        bulk = BulkReindexer(
            ReindexCoordinator(catalog, store, FakeProcessor(), keep_log=False),
            runs=SessionRuns(locks, registry, runner="bulk"),
        )
        summary = asyncio.run(bulk.run([sid], dry_run=True))
    finally:
        held.release()
    assert summary.photos_planned == 2 and summary.sessions_busy == 0
    assert not registry.book._jobs


def test_a_route_call_joins_the_bulk_jobs_run_of_its_session(
    catalog: CloudCatalog, store: VectorStore, catalog_writer: CatalogWriter, locks: SessionLocks
) -> None:
    sid = new_session(catalog_writer, "shared", 3)
    registry = LocalJobRegistry()
    processor = FakeProcessor()
    processor.hold.clear()

    async def go() -> None:
        bulk = BulkReindexer(
            ReindexCoordinator(catalog, store, processor, keep_log=False),
            runs=SessionRuns(locks, registry, runner="bulk"),
        )
        task = asyncio.create_task(bulk.run([sid]))
        while len(processor.photos) < 3:
            await asyncio.sleep(0.01)
        route = SessionRuns(locks, registry, runner="replica", poll_s=0.02)
        joiner = asyncio.create_task(route.run_or_join(sid, ReindexMode.MISSING, never_runs))
        await asyncio.sleep(0.1)
        assert not joiner.done()
        processor.hold.set()
        summary = await task
        final, joined = await asyncio.wait_for(joiner, 5)
        assert joined and final.runner == "bulk" and final.result and final.result.processed_photos == 3
        assert summary.sessions_done == 1 and len(processor.photos) == 3  # nothing twice

    asyncio.run(go())


async def never_runs(_: OwnedRun) -> Job:
    raise AssertionError("the route call must join, not run")


class FullDiskProcessor(FakeProcessor):
    """The index refuses every write for lack of room: each photo comes back as the pool says
    it then (``index_cannot_write``, not written)."""

    async def process(self, photo: PhotoRef) -> PhotoOutcome:
        self.photos.append(photo.filename)
        error = NotWritten("cannot write (disk full, SQLSTATE 53100: No space left on device)")
        return PhotoOutcome(
            photo.id,
            photo.filename,
            PhotoStatus.RETRY,
            error_code=error.code,
            error_message=error.message(photo.filename),
        )


def test_a_full_index_disk_stops_the_bulk_job_and_frees_its_sessions(
    catalog: CloudCatalog, store: VectorStore, catalog_writer: CatalogWriter, locks: SessionLocks
) -> None:
    """The first photo the index refuses stops the whole job (every other session would meet the
    same disk): ``IndexCannotWrite``, no photo handed in after it, its runs failed with that code
    and their sessions free."""
    first, second = new_session(catalog_writer, "full-1", 6), new_session(catalog_writer, "full-2", 6)
    registry = LocalJobRegistry()
    processor = FullDiskProcessor()
    bulk = BulkReindexer(
        ReindexCoordinator(catalog, store, processor, keep_log=False),
        runs=SessionRuns(locks, registry, runner="bulk"),
    )
    with pytest.raises(IndexCannotWrite, match=r"stopped after 1 of 6 photos \(0 written"):
        asyncio.run(bulk.run([first, second]))
    assert len(processor.photos) <= processor.capacity < 12
    jobs = list(registry.book._jobs.values())
    assert jobs and all(j.status is FAILED and j.code == "index_cannot_write" for j in jobs), jobs
    assert locks.holder(first) is None and locks.holder(second) is None
