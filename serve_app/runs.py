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
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from actors.metrics import reindex_metrics
from facepass.errors import SessionBusy
from facepass.runs.job_book import DONE, JobState
from facepass.runs.reindex import ReindexCoordinator, ReindexMode
from facepass.runs.report import ReindexReport
from facepass.runs.session_runs import OwnedRun, SessionRuns, covers, job_answer

log = logging.getLogger("facepass.serve")

RunResult = tuple[JobState, BaseException | None]


class RouteRuns:
    def __init__(
        self, runs: SessionRuns, database_errors: Callable[[], AbstractAsyncContextManager[None]]
    ) -> None:
        self.runs = runs
        self._database_errors = database_errors
        self._background: set[asyncio.Task[RunResult]] = set()

    async def blocking(
        self, coordinator: ReindexCoordinator, session_id: uuid.UUID, mode: ReindexMode
    ) -> dict[str, Any]:
        """The report of the run this call ran, or of the one it joined (``joined: true``)."""

        async def start(owned: OwnedRun) -> JobState:
            state, exc = await asyncio.shield(self._launch(coordinator, owned, mode))
            if exc is not None:
                raise exc
            return state

        state, joined = await self.runs.run_or_join(session_id, mode, start)
        return {**state, "joined": joined}

    async def background(
        self, coordinator: ReindexCoordinator, session_id: uuid.UUID, mode: ReindexMode
    ) -> dict[str, Any]:
        """``wait=false``: a new job, or the running job of the session (if its mode covers ours)."""
        claim = await self.runs.claim(session_id, mode)
        if isinstance(claim, OwnedRun):
            self._launch(coordinator, claim, mode)
            return job_answer(claim.state, joined=False)
        if covers(claim.job["mode"], mode):
            return job_answer(claim.job, joined=True)
        raise SessionBusy(str(session_id), claim.job_id, claim.job["mode"])

    def _launch(
        self, coordinator: ReindexCoordinator, owned: OwnedRun, mode: ReindexMode
    ) -> asyncio.Task[RunResult]:
        task = asyncio.create_task(self._run(coordinator, owned, mode))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _run(self, coordinator: ReindexCoordinator, owned: OwnedRun, mode: ReindexMode) -> RunResult:
        metrics = reindex_metrics()
        started = time.perf_counter()

        def hook(report: ReindexReport) -> None:
            metrics.progress(str(report.session_id), report.processed_photos, report.planned_photos)
            self.runs.progress(owned, report.progress(time.perf_counter() - started))

        try:
            async with self._database_errors():
                session_id = uuid.UUID(owned.state["session_id"])
                report = await coordinator.run(session_id, mode, hook, fence=owned.fence)
        except BaseException as exc:  # the job fails (and frees the session); the service does not
            log.exception("reindex job %s failed", owned.job_id)
            await self.runs.fail(owned, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return owned.state, exc
        state: JobState = {**report.to_response(), "status": DONE}
        await self.runs.finish(owned, state)
        return {**owned.identity, **state}, None
