"""The job book in the local index database: it outlives any Ray node.

Same contract as the in-memory ``JobBook`` (``facepass.runs.job_book``), one SQL
statement (or one transaction) per step, so every step stays atomic with many
Serve replicas and bulk jobs writing at once. It used to be a named Ray actor:
losing the node that held it lost every job record and ended the bulk job.
Each job is one row of ``reindex_jobs`` (migration 0003): its status, the
session, and the whole state as JSON.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa

from facepass.db import make_engine
from facepass.runs.job_book import TAKEN_OVER
from facepass.runs.jobs import FAILED, RUNNER_LOST, RUNNING, Job, RunProgress

log = logging.getLogger(__name__)

KEEP_FINISHED_S = 24 * 3600

_GET = sa.text("SELECT state FROM reindex_jobs WHERE job_id = :job_id")
_RUNNING = sa.text(
    "SELECT state FROM reindex_jobs WHERE session_id = CAST(:session_id AS uuid) AND status = 'running' "
    "ORDER BY updated_at DESC LIMIT 1"
)
_INSERT = sa.text(
    "INSERT INTO reindex_jobs (job_id, session_id, status, state) "
    "VALUES (:job_id, CAST(:session_id AS uuid), :status, CAST(:state AS jsonb)) "
    "ON CONFLICT (job_id) DO UPDATE SET status = EXCLUDED.status, state = EXCLUDED.state, updated_at = now()"
)
# A progress message never brings a finished job back to running (messages may lag).
_PROGRESS = sa.text(
    "UPDATE reindex_jobs SET state = state || CAST(:state AS jsonb), updated_at = now() "
    "WHERE job_id = :job_id AND status = 'running'"
)
_FINISH = sa.text(
    "UPDATE reindex_jobs SET status = :status, state = CAST(:state AS jsonb), updated_at = now() "
    "WHERE job_id = :job_id"
)
_FORGET_OLD = sa.text(
    "DELETE FROM reindex_jobs WHERE status <> 'running' AND updated_at < now() - make_interval(secs => :keep)"
)


def _dump(job: Job) -> str:
    return json.dumps(job.to_json(), default=str)


def _job(state: Mapping[str, object] | None) -> Job | None:
    return Job.from_json(state) if state is not None else None


class SqlJobRegistry:
    """``facepass.runs.session_runs.JobRegistry`` over the ``reindex_jobs`` table."""

    def __init__(self, dsn: str | None, *, keep_finished_s: float = KEEP_FINISHED_S) -> None:
        self.engine = make_engine(dsn, pool_size=2)
        self.keep_finished_s = keep_finished_s
        # Progress is fire and forget, but in order: one thread writes it.
        self._progress_thread = ThreadPoolExecutor(1, thread_name_prefix="job-progress")

    # --- blocking steps (each one statement or one transaction) ----------------------
    def _start(self, job: Job) -> None:
        now = time.time()
        with self.engine.begin() as conn:
            # The new runner holds the session's lock, so a job still running for the
            # session lost its runner. FOR UPDATE: two starts of one session serialize here.
            previous = conn.execute(
                sa.text(
                    "SELECT state FROM reindex_jobs WHERE session_id = CAST(:sid AS uuid) "
                    "AND status = 'running' AND job_id <> :job_id FOR UPDATE"
                ),
                {"sid": job.session_id, "job_id": job.job_id},
            ).scalars()
            for old_state in previous:
                failed = Job.from_json(old_state).failed(TAKEN_OVER, RUNNER_LOST, now)
                conn.execute(
                    _FINISH, {"job_id": failed.job_id, "status": FAILED.value, "state": _dump(failed)}
                )
            row = dataclasses.replace(job.identity(), updated_at=now)
            conn.execute(
                _INSERT,
                {
                    "job_id": job.job_id,
                    "session_id": job.session_id,
                    "status": RUNNING.value,
                    "state": _dump(row),
                },
            )
            conn.execute(_FORGET_OLD, {"keep": self.keep_finished_s})

    def _progress(self, job_id: str, progress: RunProgress) -> None:
        update = {**dataclasses.asdict(progress), "status": RUNNING.value, "updated_at": time.time()}
        try:
            with self.engine.begin() as conn:
                conn.execute(_PROGRESS, {"job_id": job_id, "state": json.dumps(update)})
        except sa.exc.SQLAlchemyError as exc:  # progress is advisory: the final state is what counts
            log.warning("job %s: progress not recorded (%s)", job_id, exc.__class__.__name__)

    def _finish(self, job: Job) -> None:
        final = dataclasses.replace(job, updated_at=time.time())
        with self.engine.begin() as conn:
            # An upsert: a job whose start was never recorded still gets its end.
            conn.execute(
                _INSERT,
                {
                    "job_id": final.job_id,
                    "session_id": final.session_id,
                    "status": final.status.value,
                    "state": _dump(final),
                },
            )

    def _fail_if_running(self, job_id: str, error: str, code: str) -> Job | None:
        with self.engine.begin() as conn:
            current = _job(
                conn.execute(
                    sa.text("SELECT state FROM reindex_jobs WHERE job_id = :job_id FOR UPDATE"),
                    {"job_id": job_id},
                ).scalar()
            )
            if current is None or not current.running:
                return current
            failed = current.failed(error, code, time.time())
            conn.execute(_FINISH, {"job_id": job_id, "status": FAILED.value, "state": _dump(failed)})
            return failed

    def _get(self, job_id: str) -> Job | None:
        with self.engine.connect() as conn:
            return _job(conn.execute(_GET, {"job_id": job_id}).scalar())

    def _running_job(self, session_id: str) -> Job | None:
        with self.engine.connect() as conn:
            return _job(conn.execute(_RUNNING, {"session_id": session_id}).scalar())

    # --- the JobRegistry protocol -------------------------------------------------------
    async def start(self, job: Job) -> None:
        await asyncio.to_thread(self._start, job)

    def progress(self, job_id: str, progress: RunProgress) -> None:
        self._progress_thread.submit(self._progress, job_id, progress)

    async def finish(self, job: Job) -> None:
        await self._after_progress(self._finish, job)

    async def fail_if_running(self, job_id: str, error: str, code: str) -> Job | None:
        return await asyncio.to_thread(self._fail_if_running, job_id, error, code)

    async def get(self, job_id: str) -> Job | None:
        return await asyncio.to_thread(self._get, job_id)

    async def running_job(self, session_id: str) -> Job | None:
        return await asyncio.to_thread(self._running_job, session_id)

    async def _after_progress(self, step: Callable[..., Any], *args: Any) -> Any:
        """The final state goes through the progress thread: it lands after every progress
        message sent before it (a late one would be refused anyway, by its status check)."""
        return await asyncio.wrap_future(self._progress_thread.submit(step, *args))

    def close(self) -> None:
        self._progress_thread.shutdown(wait=True)
        self.engine.dispose()
