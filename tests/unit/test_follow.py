"""facepass.runs.follow: the follower on real PostgreSQL, a real model and loopback storage (no Ray)."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa

from facepass.catalog.changes import CatalogChanges, Signature
from facepass.catalog.cloud import CloudCatalog
from facepass.demo.scenario import CatalogWriter, add_face_photos, fresh_database, new_catalog_database
from facepass.demo.storage import PhotoStorage
from facepass.index.follow_ledger import FollowLedger
from facepass.index.store import VectorStore
from facepass.runs.follow import CycleStats, Follower, mirror_report
from facepass.runs.follow_lock import FollowerLock
from facepass.runs.reindex import ReindexCoordinator
from facepass.runs.session_lock import SessionLocks
from facepass.runs.session_runs import LocalJobRegistry, SessionRuns
from facepass.settings import Settings
from facepass.vision.faces import FaceEmbedder
from facepass.vision.pipeline import LocalProcessor, PhotoPipeline
from tests.conftest import InjectedDiskFull


async def follow_once(follower: Follower) -> CycleStats:
    """One cycle and its syncs, to the end."""
    stats = await follower.cycle()
    await follower.drain()
    return stats


@dataclass
class World:
    settings: Settings
    writer: CatalogWriter
    catalog: CloudCatalog
    store: VectorStore
    ledger: FollowLedger
    storage: PhotoStorage
    locks: SessionLocks
    follower_lock: FollowerLock
    embedder: FaceEmbedder

    def follower(self, **overrides: object) -> Follower:
        settings = self.settings.model_copy(update=overrides) if overrides else self.settings
        pipeline = PhotoPipeline(settings, self.embedder)
        coordinator = ReindexCoordinator(self.catalog, self.store, LocalProcessor(pipeline, self.store))
        runs = SessionRuns(self.locks, LocalJobRegistry(), runner="test-follower")
        return Follower(
            settings, CatalogChanges(self.catalog), self.ledger, coordinator, runs, self.follower_lock
        )

    def downloads(self) -> int:
        return sum(self.storage.hits.values())

    def ledger_ids(self, session_id: uuid.UUID) -> set[uuid.UUID]:
        return set(self.store.ledger(session_id))

    def add_photo_sql(self, session_id: uuid.UUID, created_at: str = "now()") -> uuid.UUID:
        """One face photo inserted by hand (``created_at`` an SQL expression)."""
        [ref] = add_face_photos(self.writer, self.storage, session_id, 1, prefix=f"x{uuid.uuid4().hex[:6]}")
        with self.writer.engine.begin() as conn:
            conn.execute(
                sa.text(f"UPDATE photos SET created_at = {created_at} WHERE id = :id"), {"id": ref.id}
            )
        return ref.id


@pytest.fixture
def world(settings: Settings, storage: PhotoStorage, embedder: FaceEmbedder) -> Iterator[World]:
    """A fresh catalog and a fresh index: the follower's "every session" is this test's."""
    cloud_dsn, writer = new_catalog_database(settings, prefix="follow_cloud")
    local_dsn = fresh_database(settings, f"follow_vector_{uuid.uuid4().hex[:10]}")
    store = VectorStore(local_dsn)
    store.create_schema()
    catalog = CloudCatalog(cloud_dsn)
    local = settings.with_databases(
        cloud=cloud_dsn,
        local=local_dsn,
        follow_discover_interval_s=0.001,
        follow_interval_s=0.05,
        follow_lock_retry_s=0.05,
    )
    locks = SessionLocks(local_dsn)
    lock = FollowerLock(local_dsn)
    yield World(local, writer, catalog, store, FollowLedger(store.engine), storage, locks, lock, embedder)
    lock.close()
    locks.close()
    catalog.close()
    store.close()
    writer.close()


async def once(follower: Follower) -> None:
    await follow_once(follower)


def sync_test(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """One event loop for a whole test (the follower's downloads keep a client on it)."""
    asyncio.run(body())


def test_new_photos_are_indexed_and_nothing_changed_means_no_download(world: World) -> None:
    async def body() -> None:
        sid = world.writer.add_session("Событие")
        refs = add_face_photos(world.writer, world.storage, sid, 3, prefix="f")
        follower = world.follower()
        stats = await follow_once(follower)
        assert stats.sessions_discovered == 1 and stats.sessions_changed == 1
        assert world.ledger_ids(sid) == {r.id for r in refs}
        assert world.store.count_embeddings(sid) == 3

        before = world.downloads()
        for _ in range(5):
            stats = await follow_once(follower)
            assert stats.sessions_checked == 1 and stats.sessions_changed == 0
        assert world.downloads() == before  # nothing changed: no plan, no download, no model call

        more = add_face_photos(world.writer, world.storage, sid, 2, prefix="g")
        await once(follower)
        assert world.ledger_ids(sid) == {r.id for r in [*refs, *more]}
        assert world.downloads() == before + 2  # only the new photos
        lag = world.ledger.lag(3600)
        assert lag["samples"] == 5 and lag["p95_s"] is not None and lag["p95_s"] < 60

    sync_test(body)


def test_a_photo_created_an_hour_ago_and_a_late_commit_are_caught(world: World) -> None:
    async def body() -> None:
        sid = world.writer.add_session("Событие")
        [first] = add_face_photos(world.writer, world.storage, sid, 1, prefix="a")
        follower = world.follower()
        await once(follower)

        backdated = world.add_photo_sql(sid, "now() - interval '1 hour'")
        await once(follower)
        assert backdated in world.ledger_ids(sid)

        # A transaction that began (and stamped created_at) before the follower's cycle,
        # and commits after it: a created_at watermark would have moved past it.
        late_id = uuid.uuid4()
        path = f"sessions/{sid}/previews/late.jpg"
        world.storage.put(path, world.storage.files[first.preview_path])
        with world.writer.engine.connect() as conn:
            tx = conn.begin()
            conn.execute(
                sa.text(
                    "INSERT INTO photos (id, session_id, filename, preview_path, created_at) "
                    "VALUES (:id, :sid, 'late.jpg', :path, now())"
                ),
                {"id": late_id, "sid": sid, "path": path},
            )
            add_face_photos(world.writer, world.storage, sid, 1, prefix="b")  # a later photo commits first
            await once(follower)
            assert late_id not in world.ledger_ids(sid)
            tx.commit()
        await once(follower)
        assert late_id in world.ledger_ids(sid)

    sync_test(body)


def test_soft_and_hard_deleted_photos_leave_the_index(world: World) -> None:
    async def body() -> None:
        sid = world.writer.add_session("Событие")
        refs = add_face_photos(world.writer, world.storage, sid, 3, prefix="d")
        follower = world.follower()
        await once(follower)
        assert world.store.count_embeddings(sid) == 3
        downloads = world.downloads()
        world.writer.soft_delete(refs[0].id)
        world.writer.hard_delete(refs[1].id)
        await once(follower)
        assert world.ledger_ids(sid) == {refs[2].id}
        assert world.store.count_embeddings(sid) == 1
        assert world.downloads() == downloads  # deletions download nothing

    sync_test(body)


def test_disabled_sessions_are_not_followed_and_deleted_sessions_leave_the_index(world: World) -> None:
    async def body() -> None:
        on = world.writer.add_session("Включена")
        off = world.writer.add_session("Выключена", enabled=False)
        add_face_photos(world.writer, world.storage, on, 2, prefix="o")
        add_face_photos(world.writer, world.storage, off, 2, prefix="n")
        follower = world.follower()
        await once(follower)
        assert world.store.count_embeddings(on) == 2
        assert world.store.count_embeddings(off) == 0
        assert world.ledger.known_sessions() == {on}

        with world.writer.engine.begin() as conn:  # the session is deleted, its photos with it
            conn.execute(sa.text("DELETE FROM sessions WHERE id = :id"), {"id": on})
        await once(follower)
        assert world.store.count_embeddings(on) == 0 and world.ledger_ids(on) == set()
        assert world.ledger.known_sessions() == set()

    sync_test(body)


def test_a_session_another_run_holds_is_skipped_then_synced(world: World) -> None:
    async def body() -> None:
        sid = world.writer.add_session("Занята")
        refs = add_face_photos(world.writer, world.storage, sid, 2, prefix="b")
        follower = world.follower()
        held = world.locks.try_acquire(sid)
        assert held is not None
        try:
            await once(follower)
            assert follower.totals.sessions_skipped_busy == 1
            assert world.ledger_ids(sid) == set()
        finally:
            held.release()
        await once(follower)
        assert world.ledger_ids(sid) == {r.id for r in refs}

    sync_test(body)


def test_transient_failures_wait_for_their_retry(world: World) -> None:
    async def body() -> None:
        sid = world.writer.add_session("Пропавшее фото")
        add_face_photos(world.writer, world.storage, sid, 1, prefix="t")
        missing = world.writer.add_photos(sid, [("missing.jpg", f"sessions/{sid}/previews/missing.jpg")])[0]
        follower = world.follower(follow_retry_after_s=3600)
        await once(follower)
        assert world.storage.hits[missing.preview_path] == 1
        for _ in range(3):
            await once(follower)
        assert world.storage.hits[missing.preview_path] == 1  # a 404 is not downloaded every cycle
        with world.store.engine.begin() as conn:  # its retry time comes
            conn.execute(
                sa.text("UPDATE follow_sessions SET retry_at = now() WHERE session_id = :s"), {"s": sid}
            )
        await once(follower)
        assert world.storage.hits[missing.preview_path] == 2

    sync_test(body)


def test_signatures_see_every_kind_of_change(world: World) -> None:
    sid = world.writer.add_session("Подписи")
    changes = CatalogChanges(world.catalog)
    assert changes.signatures([sid]) == {sid: Signature.empty()}
    refs = world.writer.add_photos(sid, [(f"p{i}.jpg", f"p{i}.jpg") for i in range(3)])
    seen = {changes.signatures([sid])[sid]}
    world.writer.soft_delete(refs[0].id)
    seen.add(changes.signatures([sid])[sid])
    world.writer.hard_delete(refs[1].id)
    seen.add(changes.signatures([sid])[sid])
    world.writer.add_photos(sid, [("q.jpg", "q.jpg")])
    seen.add(changes.signatures([sid])[sid])
    assert len(seen) == 4


def test_exactly_one_follower(world: World) -> None:
    other = FollowerLock(world.settings.local_url())
    try:
        assert world.follower_lock.try_acquire()
        assert not other.try_acquire()
        assert other.holder_pid() == world.follower_lock.backend_pid
        world.follower_lock.release()
        assert other.try_acquire()
        assert not world.follower_lock.try_acquire()
    finally:
        other.close()


def test_the_loop_follows_only_while_it_holds_the_lock(world: World) -> None:
    sid = world.writer.add_session("Цикл")
    refs = add_face_photos(world.writer, world.storage, sid, 1, prefix="l")
    other = FollowerLock(world.settings.local_url())
    assert other.try_acquire()  # someone else follows

    async def scenario() -> None:
        follower = world.follower()
        stop = asyncio.Event()
        task = asyncio.create_task(follower.run(stop))
        await asyncio.sleep(0.5)
        assert world.ledger_ids(sid) == set() and follower.following_since is None
        other.release()  # the other follower dies
        for _ in range(200):
            if world.ledger_ids(sid):
                break
            await asyncio.sleep(0.05)
        assert follower.following_since is not None
        state, _ = world.ledger.read_state()
        assert state["follower"] == follower.name
        stop.set()
        await task

    try:
        asyncio.run(scenario())
    finally:
        other.close()
    assert world.ledger_ids(sid) == {refs[0].id}


def test_the_mirror_report_says_who_follows_and_the_lag(world: World) -> None:
    sid = world.writer.add_session("Зеркало")

    async def body() -> None:
        add_face_photos(world.writer, world.storage, sid, 2, prefix="m")
        follower = world.follower()
        await follow_once(follower)
        report = mirror_report(world.settings, world.ledger, world.follower_lock)
        assert not report["following"] and report["follower"] is None  # nobody holds the lock
        assert report["lag"]["samples"] == 2 and report["sessions"]["sessions_followed"] == 1
        assert report["last_cycle"]["sessions_checked"] == 1 and report["photos_pending"] == 0
        assert world.follower_lock.try_acquire()
        await follow_once(follower)
        report = mirror_report(world.settings, world.ledger, world.follower_lock)
        assert report["following"] and report["follower"] == follower.name

    sync_test(body)


def test_hot_sessions_are_the_ones_with_work(world: World) -> None:
    idle = world.writer.add_session("Без новых фото")
    busy = world.writer.add_session("С новыми фото")

    async def body() -> None:
        follower = world.follower()
        await follow_once(follower)  # both found and mirrored: nothing to index, neither is hot
        hot = world.ledger.pick(3600, 10, 0)
        assert {p.session_id for p in hot} == set()
        add_face_photos(world.writer, world.storage, busy, 1, prefix="h")
        await follow_once(follower)  # the sweep of 100 finds it; now it is hot
        assert {p.session_id for p in world.ledger.pick(3600, 10, 0)} == {busy}
        assert idle in world.ledger.known_sessions()

    sync_test(body)


def test_a_locked_catalog_costs_cycles_and_the_follower_goes_on(world: World) -> None:
    """The catalog's `photos` table held by another connection (ACCESS EXCLUSIVE, in an open
    transaction): each cycle fails at the connection's lock timeout (0.5 s here, 10 s in the
    service), the follower keeps its lock and goes on; once the lock is gone it syncs the session."""
    sid = world.writer.add_session("Каталог занят")
    refs = add_face_photos(world.writer, world.storage, sid, 2, prefix="z")
    url = sa.make_url(world.settings.cloud_url())
    options = re.sub(r"lock_timeout=\d+", "lock_timeout=500", str(url.query["options"]))
    short = CloudCatalog(url.update_query_dict({"options": options}).render_as_string(hide_password=False))
    holder = world.writer.engine.connect()
    transaction = holder.begin()
    holder.execute(sa.text("SET LOCAL lock_timeout = 0"))
    holder.execute(sa.text("LOCK TABLE photos IN ACCESS EXCLUSIVE MODE"))

    async def scenario() -> None:
        follower = dataclasses.replace(world, catalog=short).follower()
        stop = asyncio.Event()
        task = asyncio.create_task(follower.run(stop))
        try:
            for _ in range(200):
                if follower.totals.errors >= 2:
                    break
                await asyncio.sleep(0.05)
            assert follower.totals.errors >= 2, follower.totals
            assert "lock timeout" in (follower.totals.last_error or ""), follower.totals.last_error
            assert follower.following_since is not None and world.ledger_ids(sid) == set()
            transaction.rollback()
            for _ in range(400):
                if world.ledger_ids(sid) == {r.id for r in refs}:
                    break
                await asyncio.sleep(0.05)
            assert world.ledger_ids(sid) == {r.id for r in refs}
        finally:
            stop.set()
            await task

    try:
        asyncio.run(scenario())
    finally:
        if transaction.is_active:
            transaction.rollback()
        holder.close()
        short.close()


def test_a_full_index_disk_holds_the_follower_syncs_for_a_while(world: World) -> None:
    """A sync whose writes the index refuses ("disk full", SQLSTATE 53100 from the server) stops;
    the follower starts no sync for ``follow_retry_after_s`` (no download meanwhile), then syncs
    the session once the space is back."""
    sid = world.writer.add_session("Диск полон")
    refs = add_face_photos(world.writer, world.storage, sid, 3, prefix="d")

    async def body() -> None:
        follower = world.follower(follow_retry_after_s=1.5)
        with InjectedDiskFull(world.store.engine, sid):
            await follow_once(follower)
            assert "cannot write (disk full, SQLSTATE 53100" in (follower.totals.last_error or "")
            assert world.ledger_ids(sid) == set()
            before = world.downloads()
            stats = await follow_once(follower)
            assert stats.sessions_started == 0 and world.downloads() == before
        await asyncio.sleep(1.6)
        await follow_once(follower)
        assert world.ledger_ids(sid) == {r.id for r in refs}

    sync_test(body)


def test_the_follower_state_reads_back_as_written() -> None:
    """The state row is typed in the follower and JSON only in the ledger: a round trip through
    the row's JSON gives the same record (and a row of an older version with extra keys reads)."""
    import json

    from facepass.index.generations import GenerationProgress
    from facepass.runs.follow import CycleStats, FollowerState, FollowTotals, Pending, SyncRecord

    state = FollowerState(
        follower="replica-1 (host pid 7)",
        following_since=1.5,
        last_cycle=CycleStats(at=2.0, duration_ms=3.5, sessions_checked=4),
        pending=Pending(sessions_pending=2, photos_pending=9, oldest_pending_age_s=1.25),
        totals=FollowTotals(sessions_synced=3, syncs=[SyncRecord(str(uuid.uuid4()), 2.5, 4, 1, 0, 12.5)]),
        generations=[
            GenerationProgress("m#1", True, 10, 2, {"v": 10}, sessions_building=1, photos_done_fraction=0.5),
            GenerationProgress("m#0", False, 10, 2, {"v": 10}),
        ],
    )
    row = json.loads(json.dumps(state.to_json()))
    assert FollowerState.from_json(row) == state
    assert "sessions_building" not in row["generations"][1]  # only the current one has it
    row["totals"]["a_key_of_a_later_version"] = 1
    assert FollowerState.from_json(row).totals == state.totals
