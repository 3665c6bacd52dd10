"""A reindex job as a typed record: who runs which session, how far, and how it ended.

The job book (``JobBook`` in memory, ``SqlJobRegistry`` in the index database) keeps
``Job`` values; they become JSON only at the store (``Job.to_json``/``Job.from_json``)
and at the HTTP edge, which answers that same flat JSON: the identity, the status, then
the counts so far (``RunProgress``) or the run's final report (``RunResult``: the seed's
JSON, field for field), or the error of a failed job.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

Timings = dict[str, dict[str, float] | None]
JsonObject = dict[str, object]


class JobStatus(enum.StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


RUNNING, DONE, FAILED = JobStatus.RUNNING, JobStatus.DONE, JobStatus.FAILED
RUNNER_LOST = "runner_lost"  # the code of a job whose runner died (its session lock was free)


@dataclass(frozen=True, slots=True)
class RunProgress:
    """Counts so far and an estimate of the time left, for a job still running."""

    session_id: str
    session_name: str
    total_photos: int
    skipped_photos: int
    planned_photos: int
    processed_photos: int
    successful_photos: int
    failed_photos: int
    elapsed_s: float
    photos_per_s: float
    eta_s: float | None


@dataclass(frozen=True, slots=True)
class RunResult:
    """A run's final report: the seed's JSON, field for field, then our extra keys."""

    success: bool
    message: str
    session_id: str
    session_name: str
    total_photos: int
    processed_photos: int
    successful_photos: int
    skipped_photos: int
    failed_photos: int
    processing_time_ms: float
    errors: list[str]
    final_embedding_count: int
    error_codes: list[str]
    faces_indexed: int
    no_face_photos: int
    retry_photos: int
    model_name: str
    stale_photos: int
    pruned_photos: int
    pruned_faces: int
    timings_ms: Timings


R = TypeVar("R", RunProgress, RunResult)


def _fields(cls: type[R], data: Mapping[str, object]) -> R | None:
    names = [f.name for f in dataclasses.fields(cls)]
    if not all(name in data for name in names):
        return None
    return cls(**{name: data[name] for name in names})  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Job:
    job_id: str
    session_id: str
    mode: str
    status: JobStatus = RUNNING
    runner: str | None = None  # a Serve replica's id, the bulk job's host and pid, the follower
    runner_pid: int | None = None  # the backend pid that holds the session's lock
    started_at: float | None = None
    updated_at: float | None = None
    error: str | None = None
    code: str | None = None
    progress: RunProgress | None = None
    result: RunResult | None = None

    @property
    def running(self) -> bool:
        return self.status is RUNNING

    def identity(self) -> Job:
        """What a job keeps from its start through progress and its end."""
        return Job(
            self.job_id,
            self.session_id,
            self.mode,
            self.status,
            self.runner,
            self.runner_pid,
            self.started_at,
        )

    def with_progress(self, progress: RunProgress, now: float) -> Job:
        return dataclasses.replace(self, status=RUNNING, progress=progress, updated_at=now)

    def done(self, result: RunResult, now: float) -> Job:
        return dataclasses.replace(self.identity(), status=DONE, result=result, updated_at=now)

    def failed(self, error: str, code: str, now: float) -> Job:
        return dataclasses.replace(self.identity(), status=FAILED, error=error, code=code, updated_at=now)

    def to_json(self) -> JsonObject:
        """The flat JSON of the store and of ``GET /reindex-jobs/{id}``."""
        out: JsonObject = {
            "job_id": self.job_id,
            "session_id": self.session_id,
            "mode": self.mode,
            "status": self.status.value,
            "runner": self.runner,
            "runner_pid": self.runner_pid,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
        }
        if self.error is not None or self.code is not None:
            out["error"], out["code"] = self.error, self.code
        for part in (self.progress, self.result):
            if part is not None:
                out.update(dataclasses.asdict(part))
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Job:
        def text(key: str) -> str | None:
            value = data.get(key)
            return None if value is None else str(value)

        def number(key: str) -> float | None:
            value = data.get(key)
            return float(value) if isinstance(value, int | float) else None

        pid = data.get("runner_pid")
        return cls(
            job_id=str(data["job_id"]),
            session_id=str(data["session_id"]),
            mode=str(data.get("mode", "")),
            status=JobStatus(str(data.get("status", RUNNING))),
            runner=text("runner"),
            runner_pid=pid if isinstance(pid, int) else None,
            started_at=number("started_at"),
            updated_at=number("updated_at"),
            error=text("error"),
            code=text("code"),
            result=_fields(RunResult, data),
            progress=None if "success" in data else _fields(RunProgress, data),
        )
