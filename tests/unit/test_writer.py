"""facepass.index.writer.GroupCommitter: many callers, few transactions, one outcome per photo."""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid

import numpy as np
import pytest

from facepass.errors import IndexCannotWrite
from facepass.index.copy_faces import faces_rows
from facepass.index.store import PreparedWrite, VectorStore
from facepass.index.writer import GroupCommitter
from facepass.models import PhotoOutcome, PhotoResult, PhotoStatus
from tests.conftest import InjectedDiskFull
from tests.unit.test_store import indexed, photo, rows_of


def test_concurrent_callers_share_transactions(store: VectorStore) -> None:
    session_id = uuid.uuid4()
    batches = [
        [indexed(photo(session_id, f"c{k}_{i}.jpg"), 1 + i, seed=k) for i in range(3)] for k in range(20)
    ]

    async def main() -> list[list[object]]:
        committer = GroupCommitter(store, max_photos=64)
        outcomes = await asyncio.gather(*(committer.write(batch) for batch in batches))
        assert committer.photos_written == 60
        # The first caller's transaction runs alone; the 19 that queued meanwhile share the next one.
        assert committer.transactions <= 3
        committer.close()
        return [list(o) for o in outcomes]

    outcomes = asyncio.run(main())
    for batch, got in zip(batches, outcomes, strict=True):
        assert [o.photo_id for o in got] == [r.photo.id for r in batch]  # type: ignore[attr-defined]
        assert all(o.status is PhotoStatus.INDEXED for o in got)  # type: ignore[attr-defined]
    assert store.count_embeddings(session_id) == 20 * (1 + 2 + 3)


def test_a_bad_photo_fails_alone_across_callers(store: VectorStore) -> None:
    session_id = uuid.uuid4()
    good = [indexed(photo(session_id, f"g{i}.jpg"), 2, seed=i) for i in range(4)]
    bad = indexed(photo(session_id, "bad.jpg"), 2, seed=9)
    bad.faces[0].embedding[0] = np.inf

    async def main() -> tuple[list[object], list[object]]:
        committer = GroupCommitter(store)
        first = committer.write(good[:2] + [bad])
        second = committer.write(good[2:])
        a, b = await asyncio.gather(first, second)
        committer.close()
        return list(a), list(b)

    a, b = asyncio.run(main())
    statuses = [o.status for o in a + b]  # type: ignore[attr-defined]
    assert (
        statuses == [PhotoStatus.INDEXED, PhotoStatus.INDEXED, PhotoStatus.RETRY] + [PhotoStatus.INDEXED] * 2
    )
    assert a[2].error_code == "write_error"  # type: ignore[attr-defined]
    assert rows_of(store, bad.photo.id) == []
    assert all(len(rows_of(store, r.photo.id)) == 2 for r in good)


def test_a_full_disk_refuses_the_write_at_once_and_clears_with_the_next_commit(store: VectorStore) -> None:
    """PostgreSQL's "disk full" (SQLSTATE 53100, from the server) in the writer's transaction:
    ``IndexCannotWrite`` to every caller of that transaction, no second try (it cannot help),
    nothing of the batch written, and the refusal kept for /healthz until a transaction commits."""
    session_id = uuid.uuid4()
    batch = [indexed(photo(session_id, f"full{i}.jpg"), 2, seed=i) for i in range(3)]

    async def write(committer: GroupCommitter) -> list[object]:
        return list(await committer.write(batch))

    committer = GroupCommitter(store)
    with InjectedDiskFull(store.engine, session_id) as disk:
        with pytest.raises(IndexCannotWrite) as refused:
            asyncio.run(write(committer))
        assert disk.calls() == 1  # the first row refused, the transaction rolled back, no retry
    assert refused.value.code == "index_cannot_write" and refused.value.database == "local index"
    assert "disk full, SQLSTATE 53100" in str(refused.value) and "No space left on device" in str(
        refused.value
    )
    assert all(rows_of(store, r.photo.id) == [] for r in batch)
    assert committer.transactions == 0
    now = committer.refusal()
    assert now is not None and "cleared by the next write that commits" in now.detail
    # Space freed (the trigger gone): the same batch commits, the refusal is gone.
    outcomes = asyncio.run(write(committer))
    assert all(o.status is PhotoStatus.INDEXED for o in outcomes)  # type: ignore[attr-defined]
    assert all(len(rows_of(store, r.photo.id)) == 2 for r in batch)
    assert committer.refusal() is None
    committer.close()


class SlowStore:
    """A store whose commits wait until told."""

    def __init__(self, inner: VectorStore) -> None:
        self.inner = inner
        self.engine = inner.engine
        self.commits: list[int] = []
        self.release = threading.Event()

    def prepare(self, results: list[PhotoResult], rows: list[bytes] | None = None) -> PreparedWrite:
        return self.inner.prepare(results, rows)

    def write_prepared(self, prepared: PreparedWrite) -> list[PhotoOutcome]:
        self.commits.append(len(prepared.results))
        self.release.wait(10)
        return self.inner.write_prepared(prepared)


def test_a_batch_s_rows_are_built_while_the_transaction_before_it_commits(store: VectorStore) -> None:
    session_id = uuid.uuid4()
    slow = SlowStore(store)

    async def main() -> None:
        committer = GroupCommitter(slow, max_photos=64)  # type: ignore[arg-type]
        first = asyncio.ensure_future(committer.write([indexed(photo(session_id, "a.jpg"), 1)]))
        await asyncio.sleep(0.05)
        batch = [indexed(photo(session_id, f"b{i}.jpg"), 3, seed=i) for i in range(2)]
        second = asyncio.ensure_future(committer.write(batch))
        await asyncio.sleep(0.2)
        assert slow.commits == [1]  # the first still commits ...
        [(_, _, rows)] = committer._waiting
        assert rows.done() and rows.result() == faces_rows(batch)  # ... and the second's rows are ready
        slow.release.set()
        assert [o.status for o in await first] == [PhotoStatus.INDEXED]
        assert [o.status for o in await second] == [PhotoStatus.INDEXED] * 2
        assert [len(rows_of(store, r.photo.id)) for r in batch] == [3, 3]
        bad = indexed(photo(session_id, "c.jpg"), 1)
        bad.model_name = ""  # a face row needs its model's name: its rows cannot be built
        with pytest.raises(ValueError, match="model's name"):
            await committer.write([bad])
        assert [o.status for o in await committer.write([indexed(photo(session_id, "d.jpg"), 2)])] == [
            PhotoStatus.INDEXED
        ]

    asyncio.run(main())


def test_the_same_photo_in_two_batches_of_one_transaction_is_written_once(store: VectorStore) -> None:
    """Rows built per batch are joined only when no photo is in the transaction twice."""
    session_id = uuid.uuid4()
    ref = photo(session_id, "twice.jpg")
    first, last = [indexed(ref, 3, seed=1)], [indexed(ref, 2, seed=2)]
    prepared = store.prepare(first + last, [faces_rows(first), faces_rows(last)])
    store.write_prepared(prepared)
    rows = rows_of(store, ref.id)
    assert len(rows) == 2 and np.array_equal(
        np.asarray(rows[0].embedding, dtype=np.float32), last[0].faces[0].embedding
    )


def test_two_transactions_in_flight_overlap_and_both_commit(store: VectorStore) -> None:
    """With transactions=2 a second transaction starts while the first still commits (each on
    its own connection); with 1 it waits (the first test of this file)."""
    session_id = uuid.uuid4()
    slow = SlowStore(store)

    async def main() -> None:
        committer = GroupCommitter(slow, max_photos=64, transactions=2)  # type: ignore[arg-type]
        first = asyncio.ensure_future(committer.write([indexed(photo(session_id, "a.jpg"), 1)]))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(committer.write([indexed(photo(session_id, "b.jpg"), 2)]))
        await asyncio.sleep(0.2)
        assert slow.commits == [1, 1]  # both are in their transactions at once
        assert not committer._waiting
        slow.release.set()
        assert [o.status for o in await first] == [PhotoStatus.INDEXED]
        assert [o.status for o in await second] == [PhotoStatus.INDEXED]
        committer.close()

    asyncio.run(main())
    assert store.count_embeddings(session_id) == 3


def test_transactions_sharing_photos_in_any_order_never_deadlock(
    store: VectorStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Two transactions in flight upsert the same photos, handed in in opposite orders: the
    ledger rows are locked in key order, so one waits for the other; every photo is written and
    ends with the faces of the last write (no deadlock, so no transaction is written again)."""
    session_id = uuid.uuid4()
    photos = [photo(session_id, f"d{i}.jpg") for i in range(1500)]

    async def main() -> GroupCommitter:
        committer = GroupCommitter(store, max_photos=len(photos), transactions=2)
        for round_ in range(3):
            forward = [indexed(p, 1 + round_ % 2, seed=round_) for p in photos]
            backward = forward[::-1]
            done = await asyncio.gather(committer.write(forward), committer.write(backward))
            assert all(o.status is PhotoStatus.INDEXED for batch in done for o in batch)
        committer.close()
        return committer

    with caplog.at_level(logging.WARNING, logger="facepass.index"):
        committer = asyncio.run(main())
    assert committer.transactions == 6
    assert not [r.getMessage() for r in caplog.records]  # no deadlock: nothing retried
    assert store.count_embeddings(session_id) == len(photos)  # the last round's faces, once each
