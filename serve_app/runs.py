"""The route's side of one run per session: run it in this replica, or share the one going.

Every run is a background task of the replica that owns the session's lock, so
a blocking caller that goes away does not stop a run that others have joined;
the owner's caller awaits the task, joiners poll the job book.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager

from actors.metrics import reindex_metrics
from facepass.errors import SessionBusy, TooManyRuns
from facepass.runs.jobs import Job
from facepass.runs.reindex import ReindexCoordinator, ReindexMode
from facepass.runs.report import ReindexReport
from facepass.runs.session_runs import JobAnswer, OwnedRun, SessionRuns, covers

log = logging.getLogger("facepass.serve")

RunEnd = tuple[Job, BaseException | None]


class RouteRuns:
    """Runs this replica owns: at most ``max_runs`` at once (each holds its session's lock on a
    connection of its own); past it a call that would start one gets TooManyRuns (429), while a
    call that can join a running run is always let through."""

    def __init__(
        self,
        runs: SessionRuns,
        database_errors: Callable[[], AbstractAsyncContextManager[None]],
        *,
        max_runs: int = 8,
        retry_after_s: int = 10,
    ) -> None:
        self.runs = runs
        self._database_errors = database_errors
        self.max_runs = max_runs
        self.retry_after_s = retry_after_s
        self._background: set[asyncio.Task[RunEnd]] = set()
        self._claiming = 0  # calls between their admission and their run's task (or their join)

    @property
    def active(self) -> int:
        return len(self._background) + self._claiming

    async def _joinable(self, session_id: uuid.UUID, mode: ReindexMode) -> Job:
        """At capacity: the session's running job this call may join, else TooManyRuns."""
        job = await self.runs.registry.running_job(str(session_id))
        if job is not None:
            job = await self.runs.check(job)
            if job.running and covers(job.mode, mode):
                return job
        log.warning("refusing a run of session %s: %d runs already here", session_id, self.active)
        raise TooManyRuns(self.max_runs, self.retry_after_s)

    @contextmanager
    def _admitted(self) -> Iterator[Callable[[], None]]:
        """A reserved place among the runs until the run's task holds it (``launched()``) or the
        call ends without one (it joined, or failed)."""
        self._claiming += 1
        held = True

        def launched() -> None:
            nonlocal held
            if held:
                held = False
                self._claiming -= 1

        try:
            yield launched
        finally:
            launched()

    async def blocking(
        self, coordinator: ReindexCoordinator, session_id: uuid.UUID, mode: ReindexMode
    ) -> dict[str, object]:
        """The report of the run this call ran, or of the one it joined (``joined: true``)."""
        if self.active >= self.max_runs:
            await self._joinable(session_id, mode)
        with self._admitted() as launched:

            async def start(owned: OwnedRun) -> Job:
                task = self._launch(coordinator, owned, mode)
                launched()
                state, exc = await asyncio.shield(task)
                if exc is not None:
                    raise exc
                return state

            state, joined = await self.runs.run_or_join(session_id, mode, start)
        return {**state.to_json(), "joined": joined}

    async def background(
        self, coordinator: ReindexCoordinator, session_id: uuid.UUID, mode: ReindexMode
    ) -> JobAnswer:
        """``wait=false``: a new job, or the running job of the session (if its mode covers ours)."""
        if self.active >= self.max_runs:
            return JobAnswer.of(await self._joinable(session_id, mode), joined=True)
        with self._admitted() as launched:
            claim = await self.runs.claim(session_id, mode)
            if isinstance(claim, OwnedRun):
                self._launch(coordinator, claim, mode)
                launched()
                return JobAnswer.of(claim.job, joined=False)
        if covers(claim.job.mode, mode):
            return JobAnswer.of(claim.job, joined=True)
        raise SessionBusy(str(session_id), claim.job_id, claim.job.mode)

    def _launch(
        self, coordinator: ReindexCoordinator, owned: OwnedRun, mode: ReindexMode
    ) -> asyncio.Task[RunEnd]:
        task = asyncio.create_task(self._run(coordinator, owned, mode))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _run(self, coordinator: ReindexCoordinator, owned: OwnedRun, mode: ReindexMode) -> RunEnd:
        metrics = reindex_metrics()
        started = time.perf_counter()

        def hook(report: ReindexReport) -> None:
            metrics.progress(str(report.session_id), report.processed_photos, report.planned_photos)
            self.runs.progress(owned, report.progress(time.perf_counter() - started))

        async def work() -> ReindexReport:
            async with self._database_errors():  # the job fails with the typed error
                return await coordinator.run(owned.session_id, mode, hook, fence=owned.fence)

        try:
            job, _ = await self.runs.carry(owned, work())
        except BaseException as exc:  # the job failed (and freed the session); the service goes on
            log.exception("reindex job %s failed", owned.job_id)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return owned.job, exc
        return job, None
