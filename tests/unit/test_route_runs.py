"""serve_app.runs.RouteRuns: a replica owns at most max_runs runs; past it a call that would
start one gets TooManyRuns (429 + Retry-After), one that can join a running run still joins.
Real PostgreSQL locks, an in-process job book, a coordinator that runs until told to stop."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from facepass.errors import TooManyRuns
from facepass.runs.reindex import ReindexMode
from facepass.runs.report import ReindexReport
from facepass.runs.session_lock import SessionLocks
from facepass.runs.session_runs import LocalJobRegistry, SessionRuns
from serve_app import runs as route_runs_module
from serve_app.runs import RouteRuns

MISSING = ReindexMode.MISSING


def _Report(session_id: uuid.UUID) -> ReindexReport:
    return ReindexReport(session_id, "s", processed_photos=1, successful_photos=1)


class HeldCoordinator:
    """Each run lasts until ``release`` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started: list[uuid.UUID] = []

    async def run(
        self, session_id: uuid.UUID, mode: ReindexMode, hook: Any, fence: Any = None
    ) -> ReindexReport:
        self.started.append(session_id)
        await self.release.wait()
        return _Report(session_id)


@asynccontextmanager
async def _no_database_errors() -> AsyncIterator[None]:
    yield


class _Metrics:
    def progress(self, *args: object) -> None:
        pass


def test_runs_past_the_cap_get_too_many_runs_and_joins_still_join(
    locks: SessionLocks, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(route_runs_module, "reindex_metrics", _Metrics)
    s1, s2, s3 = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()

    async def go() -> None:
        runs = SessionRuns(locks, LocalJobRegistry(), runner="replica", poll_s=0.02, claim_timeout_s=0.5)
        route = RouteRuns(runs, _no_database_errors, max_runs=2, retry_after_s=7)
        coordinator: Any = HeldCoordinator()
        first = await route.background(coordinator, s1, MISSING)
        second = await route.background(coordinator, s2, MISSING)
        assert not first.joined and not second.joined and route.active == 2
        with pytest.raises(TooManyRuns) as refused:
            await route.background(coordinator, s3, MISSING)
        assert (refused.value.limit, refused.value.retry_after_s) == (2, 7)
        with pytest.raises(TooManyRuns):
            await route.blocking(coordinator, s3, MISSING)
        joined = await route.background(coordinator, s1, MISSING)  # at the cap, but s1 runs: join
        assert joined.joined and joined.job_id == first.job_id
        await asyncio.sleep(0.05)
        assert sorted(map(str, coordinator.started)) == sorted([str(s1), str(s2)])  # s3 never ran

        coordinator.release.set()
        while route.active:
            await asyncio.sleep(0.02)
        third = await route.blocking(coordinator, s3, MISSING)  # room again
        assert not third["joined"] and third["processed_photos"] == 1 and route.active == 0

    asyncio.run(go())
