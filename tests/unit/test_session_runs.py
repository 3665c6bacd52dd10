"""facepass.runs.session_runs + job_book: one run per session, on real PostgreSQL locks, no Ray."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator

import pytest

from facepass.errors import JoinedRunFailed, SessionBusy
from facepass.runs.job_book import JobBook
from facepass.runs.job_store import SqlJobRegistry
from facepass.runs.jobs import DONE, FAILED, RUNNER_LOST, RUNNING, Job, RunResult
from facepass.runs.reindex import ReindexMode
from facepass.runs.report import ReindexReport
from facepass.runs.session_lock import SessionLocks
from facepass.runs.session_runs import (
    JobRegistry,
    JoinedRun,
    LocalJobRegistry,
    OwnedRun,
    SessionRuns,
    covers,
)
from facepass.settings import Settings

MISSING, FULL = ReindexMode.MISSING, ReindexMode.FULL


@pytest.fixture(params=["memory", "postgres"])
def registry(request: pytest.FixtureRequest, settings: Settings) -> Iterator[JobRegistry]:
    """Every rule holds for the in-process book and for the one in PostgreSQL (production)."""
    if request.param == "memory":
        yield LocalJobRegistry()
        return
    sql = SqlJobRegistry(settings.local_url())
    yield sql
    sql.close()


def runs_of(locks: SessionLocks, registry: JobRegistry, runner: str = "r1") -> SessionRuns:
    return SessionRuns(locks, registry, runner=runner, poll_s=0.02, claim_timeout_s=0.5)


async def own(runs: SessionRuns, sid: uuid.UUID, mode: ReindexMode = MISSING) -> OwnedRun:
    owned = await runs.claim(sid, mode)
    assert isinstance(owned, OwnedRun)
    return owned


S = uuid.UUID(int=7)  # the session of the book's tests


def result(processed: int = 0, successful: int = 0) -> RunResult:
    report = ReindexReport(S, "s", processed_photos=processed, successful_photos=successful)
    return report.result()


def instant_run(runs: SessionRuns, ran: list[OwnedRun]) -> Callable[[OwnedRun], Awaitable[Job]]:
    """A run that is done at once (and says it ran)."""

    async def start(new: OwnedRun) -> Job:
        ran.append(new)
        return await runs.finish(new, result())

    return start


def job(
    job_id: str, session_id: str = str(S), runner: str | None = None, runner_pid: int | None = None
) -> Job:
    return Job(job_id, session_id, "missing", runner=runner, runner_pid=runner_pid)


def progress(processed: int) -> object:
    return ReindexReport(S, "s", planned_photos=10, processed_photos=processed).progress(1.0)


# --- the book -------------------------------------------------------------------------
def test_book_keeps_the_end_and_the_running_index() -> None:
    book = JobBook()
    started = job("a", runner="r", runner_pid=7)
    book.start(started)
    assert book.running_job(str(S)).job_id == "a"  # type: ignore[union-attr]
    book.progress("a", progress(3))  # type: ignore[arg-type]
    current = book.get("a")
    assert current is not None and current.progress is not None and current.progress.processed_photos == 3
    assert current.to_json()["processed_photos"] == 3 and current.to_json()["eta_s"] is not None
    book.finish(started.done(result(5, 5), 0.0))
    assert book.running_job(str(S)) is None
    book.progress("a", progress(4))  # type: ignore[arg-type]  # a late message does not revive it
    state = book.get("a")
    assert state is not None and state.status is DONE and state.result is not None
    assert state.result.processed_photos == 5 and state.progress is None
    assert state.runner == "r" and state.mode == "missing"  # identity kept
    assert Job.from_json(state.to_json()) == state  # what the store keeps reads back the same
    assert book.fail_if_running("a", "gone", RUNNER_LOST).status is DONE  # type: ignore[union-attr]
    assert book.fail_if_running("nope", "gone", RUNNER_LOST) is None


def test_book_a_new_run_of_the_session_ends_the_lost_one() -> None:
    book = JobBook()
    book.start(job("old"))
    book.start(job("new"))
    old = book.get("old")
    assert old is not None and old.status is FAILED and old.code == RUNNER_LOST
    assert book.running_job(str(S)).job_id == "new"  # type: ignore[union-attr]


def test_modes_cover_weaker_ones() -> None:
    assert covers("full", MISSING) and covers("retry_failed", MISSING) and covers("missing", MISSING)
    assert not covers("missing", FULL) and not covers("missing", ReindexMode.RETRY_FAILED)


# --- claims ----------------------------------------------------------------------------
def test_second_claim_joins_the_running_job(locks: SessionLocks, registry: JobRegistry) -> None:
    sid = uuid.uuid4()

    async def go() -> None:
        replica_a, replica_b = runs_of(locks, registry, "a"), runs_of(locks, registry, "b")
        owned = await own(replica_a, sid)
        joined = await replica_b.claim(sid, MISSING)
        assert isinstance(joined, JoinedRun) and joined.job_id == owned.job_id
        assert joined.job.runner == "a" and joined.job.runner_pid == owned.lock.backend_pid
        await replica_a.finish(owned, result(1, 1))
        assert not owned.lock.held
        again = await replica_b.claim(sid, MISSING)  # the session is free again
        assert isinstance(again, OwnedRun) and again.job_id != owned.job_id
        await replica_b.finish(again, result())

    asyncio.run(go())


def test_ten_blocking_calls_share_one_run(locks: SessionLocks, registry: JobRegistry) -> None:
    sid = uuid.uuid4()
    started: list[str] = []

    async def go() -> list[tuple[Job, bool]]:
        async def one(i: int) -> tuple[Job, bool]:
            runs = runs_of(locks, registry, f"replica-{i % 2}")

            async def start(owned: OwnedRun) -> Job:
                started.append(owned.job_id)
                await asyncio.sleep(0.3)  # the run
                return await runs.finish(owned, result(40, 40))

            return await runs.run_or_join(sid, MISSING, start)

        return await asyncio.gather(*(one(i) for i in range(10)))

    answers = asyncio.run(go())
    assert len(started) == 1
    assert sorted(joined for _, joined in answers) == [False] + [True] * 9
    assert {state.job_id for state, _ in answers} == set(started)
    finals = {(s.result.processed_photos, s.result.successful_photos) for s, _ in answers if s.result}
    assert finals == {(40, 40)} and all(s.status is DONE for s, _ in answers)


def test_a_dead_runner_reads_failed_and_the_next_call_runs(
    locks: SessionLocks, registry: JobRegistry
) -> None:
    sid = uuid.uuid4()

    async def go() -> None:
        runs = runs_of(locks, registry)
        owned = await own(runs, sid)
        assert (await runs.status(owned.job_id)).status is RUNNING
        owned.lock.release()  # the runner dies: its connection (and lock) go, the book is not told
        state = await runs.status(owned.job_id)
        assert state.status is FAILED and state.code == RUNNER_LOST
        assert "runner died" in (state.error or "") and state.runner == "r1"
        assert await registry.running_job(str(sid)) is None
        ran: list[OwnedRun] = []
        final, joined = await runs.run_or_join(sid, MISSING, instant_run(runs, ran))
        assert not joined and final.job_id == ran[0].job_id != owned.job_id

    asyncio.run(go())


def test_a_joiner_whose_runner_dies_runs_the_session_itself(
    locks: SessionLocks, registry: JobRegistry
) -> None:
    sid = uuid.uuid4()

    async def go() -> None:
        runs = runs_of(locks, registry)
        owned = await own(runs, sid)
        joiner = asyncio.create_task(runs.run_or_join(sid, MISSING, instant_run(runs, [])))
        await asyncio.sleep(1.0)
        assert not joiner.done()
        owned.lock.release()  # the runner dies
        final, joined = await asyncio.wait_for(joiner, 5)
        assert not joined and final.job_id != owned.job_id
        assert (await registry.get(owned.job_id)).code == RUNNER_LOST  # type: ignore[union-attr]

    asyncio.run(go())


def test_a_joined_run_that_fails_fails_the_joiner(locks: SessionLocks, registry: JobRegistry) -> None:
    sid = uuid.uuid4()

    async def go() -> None:
        runs = runs_of(locks, registry)
        owned = await own(runs, sid)

        async def never(_: OwnedRun) -> Job:
            raise AssertionError("the joiner must not run")

        # (a second for the joiner to find the run and join it: database calls, a busy machine)
        joiner = asyncio.create_task(runs.run_or_join(sid, MISSING, never))
        await asyncio.sleep(1.0)
        await runs.fail(owned, RuntimeError("boom"))
        with pytest.raises(JoinedRunFailed) as info:
            await joiner
        assert info.value.job_id == owned.job_id and info.value.cause_code == "error"

    asyncio.run(go())


def test_a_stronger_mode_waits_for_the_running_one_then_runs(
    locks: SessionLocks, registry: JobRegistry
) -> None:
    sid = uuid.uuid4()

    async def go() -> None:
        runs = runs_of(locks, registry)
        weak = await own(runs, sid)
        claim = await runs.claim(sid, FULL)  # wait=false callers see it is not theirs
        assert isinstance(claim, JoinedRun) and not covers(claim.job.mode, FULL)
        ran: list[OwnedRun] = []
        caller = asyncio.create_task(runs.run_or_join(sid, FULL, instant_run(runs, ran)))
        await asyncio.sleep(1.0)
        assert not ran
        await runs.finish(weak, result())
        final, joined = await asyncio.wait_for(caller, 5)
        assert [r.job.mode for r in ran] == ["full"] and not joined and final.mode == "full"

    asyncio.run(go())


def test_a_lock_held_without_a_job_is_busy(locks: SessionLocks, registry: JobRegistry) -> None:
    sid = uuid.uuid4()
    foreign = locks.try_acquire(sid)  # e.g. a runner whose book was lost
    assert foreign is not None
    try:
        with pytest.raises(SessionBusy):
            asyncio.run(runs_of(locks, registry).claim(sid, MISSING))
    finally:
        foreign.release()
