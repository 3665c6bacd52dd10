"""Group commit in front of the index: many callers, one transaction for all that waits.

Embedding results arrive in small batches from many places at once (every actor
call of every session). While one transaction is being written, the batches
that arrive queue up; the next transaction takes all of them (up to
``max_photos``). So the number of transactions follows the database's speed,
not the number of callers, and each caller still gets the outcome of each of
its photos. Plain asyncio, no Ray: the ``IndexWriter`` actor wraps it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import sqlalchemy.exc

from facepass.errors import IndexCannotWrite
from facepass.health import cannot_write
from facepass.index.copy_faces import faces_rows
from facepass.index.store import PreparedWrite, PruneResult, VectorStore
from facepass.models import Fence, PhotoOutcome, PhotoResult

log = logging.getLogger(__name__)

_CONNECTION_LOST = (sqlalchemy.exc.OperationalError, psycopg.OperationalError)

# A caller's batch, its answer, and its COPY rows (built as it came, off the event loop).
_Waiting = tuple[list[PhotoResult], "asyncio.Future[list[PhotoOutcome]]", "asyncio.Future[bytes]"]


class GroupCommitter:
    def __init__(self, store: VectorStore, max_photos: int = 256, transactions: int = 1) -> None:
        self.store = store
        self.max_photos = max(1, max_photos)
        self.in_flight = max(1, transactions)
        self.transactions = 0
        self.photos_written = 0
        # Set when a transaction failed for lack of room (a full disk); cleared by the next
        # transaction that commits. /healthz reports it: reads work, writes do not.
        self.cannot_write: IndexCannotWrite | None = None
        self.cannot_write_since: float | None = None
        self._waiting: list[_Waiting] = []
        self._flushers: set[asyncio.Task[None]] = set()
        self._counts = threading.Lock()
        # ``transactions`` threads (each its own connection): with two, one transaction's rows go
        # to the server while the other's commit waits for the disk. Locks are taken in key order
        # (``VectorStore._commit``), so two transactions sharing photos wait, never deadlock. The
        # event loop stays free to queue; one more thread builds each batch's COPY rows as it comes.
        self._thread = ThreadPoolExecutor(max_workers=self.in_flight, thread_name_prefix="facepass-write")
        self._builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="facepass-prepare")

    async def write(self, results: list[PhotoResult]) -> list[PhotoOutcome]:
        """Outcomes of ``results``, in order, once their transaction committed."""
        if not results:
            return []
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[PhotoOutcome]] = loop.create_future()
        batch = list(results)
        # Its face rows are built now, in a second thread, while the transaction before it commits.
        rows = loop.run_in_executor(self._builder, faces_rows, batch)
        self._waiting.append((batch, future, rows))
        # A flusher that has just ended may not have been discarded yet (its callback is due).
        self._flushers = {f for f in self._flushers if not f.done()}
        if len(self._flushers) < self.in_flight:
            self._flushers.add(asyncio.create_task(self._flush()))
        return await future

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            group = self._take()
            results = [r for batch, _, _ in group for r in batch]
            try:
                rows = [await built for _, _, built in group]
                prepared = self.store.prepare(results, rows)
                outcomes = await loop.run_in_executor(self._thread, self.write_now, prepared)
            except Exception as exc:  # every caller of this transaction learns it failed
                for _, future, _ in group:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for batch, future, _ in group:
                if not future.done():  # a caller that gave up (cancelled) is skipped
                    future.set_result(outcomes[start : start + len(batch)])
                start += len(batch)

    def _take(self) -> list[_Waiting]:
        """The waiting batches, oldest first, up to ``max_photos`` (at least one batch)."""
        group: list[_Waiting] = []
        count = 0
        while self._waiting and (not group or count + len(self._waiting[0][0]) <= self.max_photos):
            waiting = self._waiting.pop(0)
            group.append(waiting)
            count += len(waiting[0])
        return group

    async def prune(
        self, session_id: uuid.UUID, photo_ids: list[uuid.UUID], fence: Fence | None = None
    ) -> PruneResult:
        """Remove photos from the index, on the writes' threads (a write of one of the photos in
        flight on another commits before or after it, never between: both lock its ledger row)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self.store.prune_photos, session_id, photo_ids, fence)

    def write_now(self, prepared: PreparedWrite) -> list[PhotoOutcome]:
        """One transaction, retried once if the server dropped the connection (it rolled
        back, so writing again is safe and idempotent). A server with no room (SQLSTATE class
        53) raises ``IndexCannotWrite`` at once: writing again cannot help until space is freed."""
        results = prepared.results
        try:
            try:
                outcomes = self.store.write_prepared(prepared)
            except _CONNECTION_LOST as exc:
                if cannot_write(exc) is not None:
                    raise
                log.warning("write of %d photos failed (%s); retrying once", len(results), exc)
                self.store.engine.dispose()
                outcomes = self.store.write_prepared(prepared)
        except _CONNECTION_LOST as exc:
            full = cannot_write(exc)
            if full is None:
                raise
            if self.cannot_write is None:
                self.cannot_write_since = time.time()
            self.cannot_write = full
            log.error("write of %d photos refused: %s", len(results), full)
            raise full from None
        with self._counts:
            self.cannot_write = self.cannot_write_since = None
            self.transactions += 1
            self.photos_written += len(results)
        return outcomes

    def refusal(self) -> IndexCannotWrite | None:
        """Why the index cannot write now (the last transaction failed for lack of room, and
        none committed since), else None."""
        if self.cannot_write is None:
            return None
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.cannot_write_since or 0))
        full = self.cannot_write
        return IndexCannotWrite(
            full.database,
            f"{full.detail} since {since}: free space on its disk; cleared by the next write that commits",
        )

    def close(self) -> None:
        self._thread.shutdown(wait=True)
