"""JobBook: the state of reindex runs by job id, and which run each session has going.

Plain Python, no Ray: an in-memory book for unit tests and single-process callers
(``LocalJobRegistry``); production keeps the same contract in the index database
(``facepass.runs.job_store.SqlJobRegistry``). Each method is one atomic step of the
book, which is what makes "mark failed only if still running" safe.
"""

from __future__ import annotations

import dataclasses
import time

from facepass.runs.jobs import RUNNER_LOST, Job, RunProgress

_KEEP_FINISHED_S = 24 * 3600
TAKEN_OVER = "runner died: the session's lock was taken by a new run"


class JobBook:
    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._running: dict[str, str] = {}  # session id -> job id of its run

    def start(self, job: Job) -> None:
        """A new run of ``job.session_id``. Its runner holds the session's lock, so a job
        this book still has running for that session lost its runner."""
        previous = self._running.get(job.session_id)
        if previous is not None and previous != job.job_id:
            self.fail_if_running(previous, TAKEN_OVER, RUNNER_LOST)
        now = time.time()
        self._jobs[job.job_id] = dataclasses.replace(job.identity(), updated_at=now)
        self._running[job.session_id] = job.job_id
        self._forget_old(now)

    def progress(self, job_id: str, progress: RunProgress) -> None:
        """Counts so far; never brings a finished job back to running (messages may lag)."""
        current = self._jobs.get(job_id)
        if current is None or not current.running:
            return
        self._jobs[job_id] = current.with_progress(progress, time.time())

    def finish(self, job: Job) -> None:
        """The final state (``done`` with the report, or ``failed`` with the error)."""
        self._jobs[job.job_id] = dataclasses.replace(job, updated_at=time.time())
        if self._running.get(job.session_id) == job.job_id:
            del self._running[job.session_id]

    def fail_if_running(self, job_id: str, error: str, code: str) -> Job | None:
        """Mark a job whose runner is gone as failed; a job that ended meanwhile keeps its end."""
        current = self._jobs.get(job_id)
        if current is None:
            return None
        if current.running:
            self.finish(current.failed(error, code, time.time()))
        return self._jobs[job_id]

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def running_job(self, session_id: str) -> Job | None:
        job_id = self._running.get(session_id)
        return self._jobs.get(job_id) if job_id is not None else None

    def _forget_old(self, now: float) -> None:
        cutoff = now - _KEEP_FINISHED_S
        for job_id in [j for j, s in self._jobs.items() if not s.running and (s.updated_at or 0.0) < cutoff]:
            del self._jobs[job_id]
