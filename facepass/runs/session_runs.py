"""One run per session: a call runs the session, or shares the run already going.

Ownership is the session's advisory lock (``facepass.runs.session_lock``): whoever
takes it runs the session and registers a job in the job book (the lock first,
then the job, and at the end the final state first, then the unlock). So a job
the book calls running while its session's lock is not held by its runner's
connection has lost its runner (a killed replica or driver): it is marked
failed and the session is free for the next call. No Ray here: the book is
reached through ``JobRegistry`` (the named actor in production).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from facepass.errors import JobNotFound, JoinedRunFailed, SessionBusy
from facepass.models import Fence
from facepass.runs.job_book import JobBook
from facepass.runs.jobs import DONE, RUNNER_LOST, Job, JobStatus, RunProgress, RunResult
from facepass.runs.reindex import ReindexMode
from facepass.runs.report import ReindexReport
from facepass.runs.session_lock import HeldSession, SessionLocks

log = logging.getLogger(__name__)

# A run of a mode also does what a weaker mode asks: full ⊇ retry_failed ⊇ missing.
_STRENGTH = {ReindexMode.MISSING: 0, ReindexMode.RETRY_FAILED: 1, ReindexMode.FULL: 2}


def covers(running: str, asked: ReindexMode) -> bool:
    return _STRENGTH[ReindexMode(running)] >= _STRENGTH[asked]


class JobRegistry(Protocol):
    """The job book, wherever it lives (a Ray actor, or this process)."""

    async def start(self, job: Job) -> None: ...
    def progress(self, job_id: str, progress: RunProgress) -> None: ...  # fire and forget
    async def finish(self, job: Job) -> None: ...
    async def fail_if_running(self, job_id: str, error: str, code: str) -> Job | None: ...
    async def get(self, job_id: str) -> Job | None: ...
    async def running_job(self, session_id: str) -> Job | None: ...


class LocalJobRegistry:
    """A job book in this process: unit tests, and any single-process caller."""

    def __init__(self, book: JobBook | None = None) -> None:
        self.book = book or JobBook()

    async def start(self, job: Job) -> None:
        self.book.start(job)

    def progress(self, job_id: str, progress: RunProgress) -> None:
        self.book.progress(job_id, progress)

    async def finish(self, job: Job) -> None:
        self.book.finish(job)

    async def fail_if_running(self, job_id: str, error: str, code: str) -> Job | None:
        return self.book.fail_if_running(job_id, error, code)

    async def get(self, job_id: str) -> Job | None:
        return self.book.get(job_id)

    async def running_job(self, session_id: str) -> Job | None:
        return self.book.running_job(session_id)


@dataclass(slots=True)
class OwnedRun:
    """This process runs the session: it holds the lock and the job is registered."""

    job: Job
    lock: HeldSession
    last_progress: float = field(default=0.0)

    @property
    def job_id(self) -> str:
        return self.job.job_id

    @property
    def session_id(self) -> uuid.UUID:
        return self.lock.session_id

    @property
    def fence(self) -> Fence:
        """What this run's writes carry: the writer refuses them once a newer run took the session."""
        return Fence(self.lock.session_id, self.lock.fence)


@dataclass(frozen=True, slots=True)
class JoinedRun:
    """Another process runs the session; this is its job."""

    job: Job

    @property
    def job_id(self) -> str:
        return self.job.job_id


class SessionRuns:
    def __init__(
        self,
        locks: SessionLocks,
        registry: JobRegistry,
        *,
        runner: str,
        poll_s: float = 0.5,
        claim_timeout_s: float = 15.0,
        progress_every_s: float = 0.5,
    ) -> None:
        self.locks = locks
        self.registry = registry
        self.runner = runner  # who runs: a Serve replica's id, the bulk job's host and pid
        self.poll_s = poll_s
        self.claim_timeout_s = claim_timeout_s
        self.progress_every_s = progress_every_s

    async def try_own(self, session_id: uuid.UUID, mode: ReindexMode) -> OwnedRun | None:
        """Take the session's lock and register a job, or None if someone holds the lock."""
        held = await asyncio.to_thread(self.locks.try_acquire, session_id)
        if held is None:
            return None
        job = Job(
            job_id=uuid.uuid4().hex,
            session_id=str(session_id),
            mode=mode.value,
            runner=self.runner,
            runner_pid=held.backend_pid,
            started_at=time.time(),
        )
        try:
            await self.registry.start(job)
        except BaseException:
            await asyncio.to_thread(held.release)
            raise
        return OwnedRun(job, held)

    async def claim(self, session_id: uuid.UUID, mode: ReindexMode) -> OwnedRun | JoinedRun:
        """Own the session's run, or get the run that is going (whatever its mode)."""
        deadline = time.monotonic() + self.claim_timeout_s
        while True:
            owned = await self.try_own(session_id, mode)
            if owned is not None:
                return owned
            job = await self.registry.running_job(str(session_id))
            if job is not None:
                job = await self.check(job)
                if job.running:
                    return JoinedRun(job)
                continue  # its runner was gone: the lock is free, try again at once
            # The lock is held but no job says so yet (its runner is between lock and register).
            if time.monotonic() > deadline:
                raise SessionBusy(str(session_id))
            await asyncio.sleep(min(0.05, self.poll_s))

    async def check(self, job: Job) -> Job:
        """A running job whose runner no longer holds the session's lock reads failed."""
        if not job.running:
            return job
        holder = await asyncio.to_thread(self.locks.holder, uuid.UUID(job.session_id))
        if holder is not None and holder == job.runner_pid:
            return job
        reason = f"runner died: {job.runner or 'its runner'} no longer holds the session's lock"
        log.warning("job %s of session %s: %s", job.job_id, job.session_id, reason)
        failed = await self.registry.fail_if_running(job.job_id, reason, RUNNER_LOST)
        return failed or job.failed(reason, RUNNER_LOST, time.time())

    async def status(self, job_id: str) -> Job:
        """The job's state, checked: never ``running`` for a job whose runner is gone."""
        job = await self.registry.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return await self.check(job)

    async def wait(self, job_id: str) -> Job:
        """Poll until the job ends (done, failed, or found without its runner)."""
        while True:
            job = await self.status(job_id)
            if not job.running:
                return job
            await asyncio.sleep(self.poll_s)

    def progress(self, owned: OwnedRun, progress: RunProgress, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - owned.last_progress >= self.progress_every_s:  # do not flood the book
            owned.last_progress = now
            self.registry.progress(owned.job_id, progress)

    async def _end(self, owned: OwnedRun, final: Job) -> Job:
        """The final state into the book first, then the unlock (so no one reads a live run as dead)."""
        try:
            await self.registry.finish(final)
        finally:
            await asyncio.to_thread(owned.lock.release)
        return final

    async def finish(self, owned: OwnedRun, result: RunResult) -> Job:
        return await self._end(owned, owned.job.done(result, time.time()))

    async def fail(self, owned: OwnedRun, exc: BaseException) -> Job:
        code = getattr(exc, "code", "cancelled" if isinstance(exc, asyncio.CancelledError) else "error")
        return await self._end(
            owned, owned.job.failed(str(exc) or type(exc).__name__, str(code), time.time())
        )

    async def carry(self, owned: OwnedRun, work: Awaitable[ReindexReport]) -> tuple[Job, ReindexReport]:
        """The one way a run of an owned session ends, for the route, the follower and the bulk
        job alike: its job done with the report, or failed with the error (raised again); either
        way the final state is in the book before the session's lock is released."""
        try:
            report = await work
        except BaseException as exc:
            await self.fail(owned, exc)
            raise
        return await self.finish(owned, report.result()), report

    async def run_or_join(
        self,
        session_id: uuid.UUID,
        mode: ReindexMode,
        start: Callable[[OwnedRun], Awaitable[Job]],
        max_rounds: int = 5,
    ) -> tuple[Job, bool]:
        """A blocking call: the final state of the run it ran or joined, and whether it joined.

        A run of a weaker mode is waited for, then this call runs its own; a joined run
        whose runner died is run again by this call."""
        for _ in range(max_rounds):
            claim = await self.claim(session_id, mode)
            if isinstance(claim, OwnedRun):
                return await start(claim), False
            final = await self.wait(claim.job_id)
            if not covers(claim.job.mode, mode):
                continue
            if final.status is DONE:
                return final, True
            if final.code != RUNNER_LOST:
                raise JoinedRunFailed(claim.job_id, final.error or "", final.code)
        raise SessionBusy(str(session_id))


@dataclass(frozen=True, slots=True)
class JobAnswer:
    """What a ``wait=false`` caller gets: the job it started, or the running one it joined."""

    job_id: str
    status: JobStatus
    session_id: str
    mode: str
    joined: bool

    @classmethod
    def of(cls, job: Job, *, joined: bool) -> JobAnswer:
        return cls(job.job_id, job.status, job.session_id, job.mode, joined)

    def to_json(self) -> dict[str, object]:
        return {
            "job_id": self.job_id,
            "status": self.status.value,
            "session_id": self.session_id,
            "mode": self.mode,
            "joined": self.joined,
        }
