"""JobBook: the state of reindex runs by job id, and which run each session has going.

Plain Python, no Ray: the named ``ReindexJobs`` actor (``actors/jobs.py``) holds
one, so every Serve replica and the bulk job see the same book; unit tests use
one directly. Each method is one atomic step of the book (the actor runs one
call at a time), which is what makes "mark failed only if still running" safe.
"""

from __future__ import annotations

import time
from typing import Any

RUNNING, DONE, FAILED = "running", "done", "failed"
RUNNER_LOST = "runner_lost"  # the code of a job whose runner died (its session lock was free)
# What a job keeps from its start through progress and its end.
IDENTITY = ("job_id", "session_id", "mode", "runner", "runner_pid", "started_at")
_KEEP_FINISHED_S = 24 * 3600

JobState = dict[str, Any]


class JobBook:
    def __init__(self) -> None:
        self._jobs: dict[str, JobState] = {}
        self._running: dict[str, str] = {}  # session id -> job id of its run

    def start(self, job_id: str, state: JobState) -> None:
        """A new run of ``state["session_id"]``. Its runner holds the session's lock, so
        a job this book still has running for that session lost its runner."""
        session_id = state["session_id"]
        previous = self._running.get(session_id)
        if previous is not None and previous != job_id:
            self.fail_if_running(
                previous, "runner died: the session's lock was taken by a new run", RUNNER_LOST
            )
        now = time.time()
        self._jobs[job_id] = {**state, "job_id": job_id, "status": RUNNING, "updated_at": now}
        self._running[session_id] = job_id
        self._forget_old(now)

    def progress(self, job_id: str, state: JobState) -> None:
        """Counts so far; never brings a finished job back to running (messages may lag)."""
        current = self._jobs.get(job_id)
        if current is None or current["status"] != RUNNING:
            return
        self._jobs[job_id] = {**current, **state, "status": RUNNING, "updated_at": time.time()}

    def finish(self, job_id: str, state: JobState) -> None:
        """The final state (``done`` with the report, or ``failed`` with the error)."""
        current = self._jobs.get(job_id, {})
        identity = {k: current[k] for k in IDENTITY if k in current}
        self._jobs[job_id] = {**identity, **state, "job_id": job_id, "updated_at": time.time()}
        self._forget_running(job_id, identity.get("session_id", state.get("session_id")))

    def fail_if_running(self, job_id: str, error: str, code: str) -> JobState | None:
        """Mark a job whose runner is gone as failed; a job that ended meanwhile keeps its end."""
        current = self._jobs.get(job_id)
        if current is None:
            return None
        if current["status"] == RUNNING:
            identity = {k: current[k] for k in IDENTITY if k in current}
            self.finish(job_id, {**identity, "status": FAILED, "error": error, "code": code})
        return self._jobs[job_id]

    def get(self, job_id: str) -> JobState | None:
        return self._jobs.get(job_id)

    def running_job(self, session_id: str) -> JobState | None:
        job_id = self._running.get(session_id)
        return self._jobs.get(job_id) if job_id is not None else None

    def _forget_running(self, job_id: str, session_id: str | None) -> None:
        if session_id is not None and self._running.get(session_id) == job_id:
            del self._running[session_id]

    def _forget_old(self, now: float) -> None:
        cutoff = now - _KEEP_FINISHED_S
        for job_id in [
            j for j, s in self._jobs.items() if s["status"] != RUNNING and s["updated_at"] < cutoff
        ]:
            del self._jobs[job_id]
