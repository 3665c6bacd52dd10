"""Fencing: a runner whose lock connection dropped keeps writing, but a newer run of the
session has a newer token, and the writer refuses the old run's writes and prunes.
Real PostgreSQL (locks, fence rows, the writer's transactions), no Ray."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid

import pytest

from facepass.errors import Fenced
from facepass.index.generations import Generations
from facepass.index.store import VectorStore
from facepass.models import Fence, PhotoStatus
from facepass.runs.session_lock import SessionLocks
from tests.unit.test_store import indexed, photo, rows_of


def test_every_run_of_a_session_gets_a_newer_token(locks: SessionLocks) -> None:
    sid = uuid.uuid4()
    first = locks.try_acquire(sid)
    assert first is not None
    first.release()
    second = locks.try_acquire(sid)
    assert second is not None
    assert second.fence > first.fence > 0
    second.release()


def test_a_fenced_off_run_can_neither_write_nor_undo_the_new_runs_work(
    locks: SessionLocks, store: VectorStore
) -> None:
    sid = uuid.uuid4()
    old_run = locks.try_acquire(sid)
    assert old_run is not None
    before = photo(sid, "before.jpg")
    done = store.write_results([indexed(dataclasses.replace(before, fence=old_run.fence), 1)])
    assert done[0].status is PhotoStatus.INDEXED  # while it holds the session, it writes

    old_run.release()  # its database connection dropped: the lock is free, the runner goes on
    new_run = locks.try_acquire(sid)
    assert new_run is not None

    shared = photo(sid, "shared.jpg")
    [mine] = store.write_results([indexed(dataclasses.replace(shared, fence=new_run.fence), 2, seed=1)])
    assert mine.status is PhotoStatus.INDEXED
    # The old runner, late: it would write the same photo again (another vector) ...
    late = indexed(dataclasses.replace(shared, fence=old_run.fence), 3, seed=9)
    new_photo = indexed(dataclasses.replace(photo(sid, "late.jpg"), fence=old_run.fence), 1)
    outcomes = store.write_results([late, new_photo])
    assert [o.status for o in outcomes] == [PhotoStatus.RETRY, PhotoStatus.RETRY]
    assert {o.error_code for o in outcomes} == {"fenced"}
    assert len(rows_of(store, shared.id)) == 2  # the new run's rows, untouched
    assert rows_of(store, new_photo.photo.id) == []  # nothing doubled by the old run
    # ... and would prune what it thinks is deleted: refused, nothing removed.
    with pytest.raises(Fenced):
        store.prune_photos(sid, [before.id, shared.id], Fence(sid, old_run.fence))
    assert len(rows_of(store, shared.id)) == 2 and len(rows_of(store, before.id)) == 1
    # The current run prunes; unfenced writes (the seed's loop, audits) are not affected.
    assert store.prune_photos(sid, [before.id], Fence(sid, new_run.fence)).photos == 1
    assert store.write_results([indexed(photo(sid, "plain.jpg"), 1)])[0].status is PhotoStatus.INDEXED
    new_run.release()


def test_a_new_token_waits_for_a_write_of_the_old_run_in_flight(
    locks: SessionLocks, store: VectorStore
) -> None:
    """The writer share-locks the session's fence row in its transaction: a new run's token
    lands after that commit, never between the check and the commit."""
    sid = uuid.uuid4()
    old_run = locks.try_acquire(sid)
    assert old_run is not None
    old_run.release()
    with store.engine.begin() as conn:  # an old-run write, mid-transaction
        conn.exec_driver_sql("SELECT token FROM session_fences WHERE session_id = %s FOR SHARE", (sid,))
        took: list[float] = []
        started = time.monotonic()

        def take() -> None:
            held = locks.try_acquire(sid)
            assert held is not None
            took.append(time.monotonic() - started)
            held.release()

        thread = threading.Thread(target=take)
        thread.start()
        time.sleep(0.5)
        assert not took, "the new token must wait for the write in flight"
    thread.join(10)
    assert took and took[0] >= 0.5


def test_a_fenced_off_run_cannot_retire_a_generation(locks: SessionLocks, store: VectorStore) -> None:
    """A runner that lost its lock cannot take away the vectors search answers from: its
    retire of the session's older generation is refused while a newer run holds it."""
    sid = uuid.uuid4()
    old_run = locks.try_acquire(sid)
    assert old_run is not None
    kept = photo(sid, "kept.jpg")
    for model in ("gen-old", "gen-new"):  # the photo in both generations: complete in gen-new
        store.write_results([dataclasses.replace(indexed(kept, 1), model_name=model)])
    old_run.release()
    new_run = locks.try_acquire(sid)
    assert new_run is not None
    with pytest.raises(Fenced):
        Generations(store.engine, "gen-new").retire(sid, Fence(sid, old_run.fence))
    assert {r.model_name for r in rows_of(store, kept.id)} == {"gen-old", "gen-new"}  # nothing removed
    assert Generations(store.engine, "gen-new").retire(sid, Fence(sid, new_run.fence)) == 1
    assert {r.model_name for r in rows_of(store, kept.id)} == {"gen-new"}
    new_run.release()
