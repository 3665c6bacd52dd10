"""ReindexJobs: where non-blocking reindex jobs keep their state.

A named actor, so that any Serve replica can answer ``GET /reindex-jobs/{id}``
for a job that another replica runs.
"""

from __future__ import annotations

import time
from typing import Any

import ray

JOBS_ACTOR_NAME = "facepass-reindex-jobs"
_KEEP_FINISHED_S = 24 * 3600


@ray.remote(num_cpus=0)
class ReindexJobs:
    def __init__(self) -> None:
        self._jobs: dict[str, dict[str, Any]] = {}

    def put(self, job_id: str, state: dict[str, Any]) -> None:
        self._jobs[job_id] = {**state, "updated_at": time.time()}
        self._forget_old()

    def get(self, job_id: str) -> dict[str, Any] | None:
        return self._jobs.get(job_id)

    def _forget_old(self) -> None:
        cutoff = time.time() - _KEEP_FINISHED_S
        for job_id in [
            j for j, s in self._jobs.items() if s["status"] != "running" and s["updated_at"] < cutoff
        ]:
            del self._jobs[job_id]


def jobs_actor(namespace: str) -> Any:
    return ReindexJobs.options(  # type: ignore[attr-defined]
        name=JOBS_ACTOR_NAME, namespace=namespace, lifetime="detached", get_if_exists=True
    ).remote()
