"""ReindexJobs: the job book of every reindex run (Serve replicas and the bulk job).

A named, detached actor, so that any Serve replica can answer ``GET
/reindex-jobs/{id}`` for a job that another replica (or the bulk job) runs, and
a call for a session finds the run that session has going. The logic is the
plain ``JobBook``; the actor runs one call at a time, so each call is atomic.
"""

from __future__ import annotations

from typing import Any

import ray

from facepass.runs.job_book import JobBook, JobState

JOBS_ACTOR_NAME = "facepass-reindex-jobs"


@ray.remote(num_cpus=0)
class ReindexJobs:
    def __init__(self) -> None:
        self._book = JobBook()

    def start(self, job_id: str, state: JobState) -> None:
        self._book.start(job_id, state)

    def progress(self, job_id: str, state: JobState) -> None:
        self._book.progress(job_id, state)

    def finish(self, job_id: str, state: JobState) -> None:
        self._book.finish(job_id, state)

    def fail_if_running(self, job_id: str, error: str, code: str) -> JobState | None:
        return self._book.fail_if_running(job_id, error, code)

    def get(self, job_id: str) -> JobState | None:
        return self._book.get(job_id)

    def running_job(self, session_id: str) -> JobState | None:
        return self._book.running_job(session_id)


def jobs_actor(namespace: str) -> Any:
    return ReindexJobs.options(  # type: ignore[attr-defined]
        name=JOBS_ACTOR_NAME, namespace=namespace, lifetime="detached", get_if_exists=True
    ).remote()


class RayJobRegistry:
    """``facepass.runs.session_runs.JobRegistry`` over the named actor."""

    def __init__(self, namespace: str) -> None:
        self.actor = jobs_actor(namespace)

    async def start(self, job_id: str, state: JobState) -> None:
        await self.actor.start.remote(job_id, state)

    def progress(self, job_id: str, state: JobState) -> None:
        self.actor.progress.remote(job_id, state)  # calls from one caller run in order

    async def finish(self, job_id: str, state: JobState) -> None:
        await self.actor.finish.remote(job_id, state)

    async def fail_if_running(self, job_id: str, error: str, code: str) -> JobState | None:
        result: JobState | None = await self.actor.fail_if_running.remote(job_id, error, code)
        return result

    async def get(self, job_id: str) -> JobState | None:
        result: JobState | None = await self.actor.get.remote(job_id)
        return result

    async def running_job(self, session_id: str) -> JobState | None:
        result: JobState | None = await self.actor.running_job.remote(session_id)
        return result
