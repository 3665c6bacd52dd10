"""The follower inside a Serve replica: a thin shell around ``facepass.runs.follow``.

Every replica starts this task when ``FACEPASS_FOLLOW`` is on (the default); the
follower lock lets exactly one of them follow, the others wait for it to die.
Its photos go into the pool's background lane, behind route calls and selfies.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict

from actors.metrics import follow_metrics
from actors.pool import EmbeddingPool
from facepass.catalog.changes import CatalogChanges
from facepass.catalog.cloud import CloudCatalog
from facepass.index.follow_ledger import FollowLedger
from facepass.index.store import VectorStore
from facepass.runs.follow import Follower
from facepass.runs.follow_lock import FollowerLock
from facepass.runs.lanes import Lane, LaneProcessor
from facepass.runs.reindex import ReindexCoordinator
from facepass.runs.session_runs import SessionRuns
from facepass.settings import Settings

log = logging.getLogger("facepass.follow")


class ReplicaFollower:
    def __init__(
        self,
        settings: Settings,
        catalog: CloudCatalog,
        store: VectorStore,
        runs: SessionRuns,
        ready: Callable[[], Awaitable[EmbeddingPool]],
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.store = store
        self.runs = runs
        self._ready = ready  # the replica's pool, once the index answers
        self.stop = asyncio.Event()
        self.follower: Follower | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.task = self._loop.create_task(self._main())

    def request_stop(self) -> None:
        """From any thread: the follower ends after its current step."""
        loop = getattr(self, "_loop", None)
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.stop.set)

    async def _main(self) -> None:
        while not self.stop.is_set():
            try:
                pool = await self._ready()
                break
            except Exception as exc:  # the index is not there yet: the follower waits for it
                log.warning("follower waits for the local index: %s", exc)
                await asyncio.sleep(self.settings.follow_lock_retry_s)
        else:
            return
        coordinator = ReindexCoordinator(
            self.catalog,
            self.store,
            LaneProcessor(pool, Lane.BACKGROUND),
            max_errors=self.settings.report_max_errors,
            keep_log=False,
        )
        ledger = FollowLedger(self.store.engine)
        lock = FollowerLock(self.settings.local_url())
        self.follower = Follower(
            self.settings,
            CatalogChanges(self.catalog),
            ledger,
            coordinator,
            self.runs,
            lock,
            on_cycle=self._metrics,
        )
        try:
            await self.follower.run(self.stop)
        finally:
            follow_metrics().is_follower.set(0)
            lock.close()

    def _metrics(self, follower: Follower) -> None:
        metrics = follow_metrics()
        metrics.cycle_done(asdict(follower.last), asdict(follower.pending()))
        metrics.lag_window(_float(follower.lag.get("p50_s")), _float(follower.lag.get("p95_s")))
        metrics.generations(follower.generations)

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None
