"""Typed HTTP answers (the seed's JSON, field for field, plus extras), and every error body."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class StepTiming(BaseModel):
    p50: float
    p95: float


class ReindexResponse(BaseModel):
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
    # extras: machine-readable codes (parallel to ``errors``), face and model details
    error_codes: list[str]
    faces_indexed: int
    no_face_photos: int
    retry_photos: int
    model_name: str
    # the index mirrors the catalog: photos of another model redone, deleted photos removed
    stale_photos: int = 0
    pruned_photos: int = 0
    pruned_faces: int = 0
    # p50/p95 over this run's photos of each step (null: no photo reached it), ms
    timings_ms: dict[str, StepTiming | None] = Field(default_factory=dict)
    # one run per session: the job that ran it, and whether this call shared another call's run
    job_id: str | None = None
    joined: bool = False


class JobAccepted(BaseModel):
    """``?wait=false``: the run goes on in the background; poll ``status_url``."""

    job_id: str
    status: str
    session_id: str
    mode: str
    status_url: str
    joined: bool = Field(default=False, description="true: the session's run already going, shared")


class SelfieFace(BaseModel):
    bbox: tuple[float, float, float, float]
    det_score: float


class SearchMatch(BaseModel):
    photo_id: str
    filename: str
    preview_path: str
    photo_url: str | None = Field(
        default=None,
        description="a presigned GET URL of the photo (s3 backend), valid photo_urls_expire_in_s; else null",
    )
    similarity: float
    face_index: int
    bbox: tuple[float, float, float, float]


class SearchResponse(BaseModel):
    session_id: str
    session_name: str
    selfie_face: SelfieFace
    threshold: float
    photo_urls_expire_in_s: int | None = Field(
        default=None, description="how long each match's photo_url stays valid; null: no URLs"
    )
    matches: list[SearchMatch]


class ErrorBody(BaseModel):
    """Every 4xx/5xx the service itself answers."""

    detail: str = Field(description="what went wrong, for a person")
    code: str = Field(description="what went wrong, for a program (e.g. session_not_found)")


class ForbiddenBody(ErrorBody):
    """403: the session is not active, or the API key lacks the route's scope."""

    scope: str | None = Field(default=None, description="the scope the key lacks (code scope_missing)")


class DatabaseErrorBody(ErrorBody):
    """503: a database the service needs is down or lacks its tables."""

    database: str = Field(description='"cloud catalog" or "local index"')
    missing: list[str] = Field(default_factory=list, description="tables (or columns) that are not there")


class RetryLaterBody(ErrorBody):
    """429: too many calls now; the Retry-After header says when to call again."""

    retry_after_s: int = Field(description="seconds to wait (the Retry-After header's value)")


class SessionBusyBody(ErrorBody):
    """409: the session has a run going that this call cannot share (it asked for another mode)."""

    job_id: str | None = Field(default=None, description="the running job (poll it, then call again)")
    mode: str | None = Field(default=None, description="the running job's mode")


class InvalidRequestBody(BaseModel):
    """422: a malformed parameter (FastAPI's list of errors) or a selfie with no face (a message)."""

    detail: str | list[dict[str, Any]]
    code: str | None = None


class HealthResponse(BaseModel):
    ok: bool
    cloud_db: str = Field(
        description='"ok" or, to a caller with an admin key, "error: ..." naming the database and '
        'the cause; "fail" to a caller without an admin key'
    )
    local_db: str
    pool: dict[str, Any] | str
    problems: list[DatabaseErrorBody] = Field(default_factory=list)


_MEANING = {
    400: "Bad request (e.g. an empty body where an image is needed)",
    401: "No API key, or a wrong one (when API keys are set)",
    403: "FacePass is not active for this session (code facepass_disabled), or the API key lacks "
    "the route's scope (code scope_missing; the body's scope names it)",
    404: "Not found (session or job)",
    409: "The session's run already going cannot be shared (another mode); the body gives its job",
    413: "Image too large (bytes or pixels)",
    415: "The body is not a decodable image (JPEG, PNG, WebP, HEIC/HEIF)",
    429: "Too many calls: this replica already runs its most runs at once (code too_many_runs), or "
    "the caller's API key searched more often than its rate limit (code rate_limited); try again "
    "after the Retry-After header's seconds",
    503: "A database is unreachable or lacks its tables; the body names which and what",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for the error statuses a route can answer, with their bodies."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        bodies: dict[int, type[BaseModel]] = {
            503: DatabaseErrorBody,
            409: SessionBusyBody,
            403: ForbiddenBody,
            429: RetryLaterBody,
        }
        model = bodies.get(status, ErrorBody)
        if status == 422:
            responses[422] = {"model": InvalidRequestBody, "description": "Invalid parameters"}
        elif status == 429:
            retry = {"description": "seconds to wait", "schema": {"type": "integer"}}
            responses[429] = {"model": model, "description": _MEANING[429], "headers": {"Retry-After": retry}}
        else:
            responses[status] = {"model": model, "description": _MEANING[status]}
    return responses


class LagWindow(BaseModel):
    p50_s: float | None
    p95_s: float | None
    max_s: float | None
    samples: int
    window_s: float


class MirrorResponse(BaseModel):
    """The follower's state (``GET /api/v1/faces/mirror``), from whichever replica answers."""

    follow_enabled: bool
    following: bool  # a follower holds the lock and wrote its state recently
    follower: str | None  # who follows: replica, host, pid
    follower_lock_pid: int | None  # the database backend holding the follower lock
    following_since: float | None
    state_age_s: float | None
    last_cycle: dict[str, Any] | None
    sessions_pending: int
    photos_pending: int
    deletions_pending: int
    oldest_pending_age_s: float
    lag: LagWindow  # catalog commit -> searchable
    sessions: dict[str, int]
    totals: dict[str, Any]
    generations: list[dict[str, Any]] = Field(default_factory=list)
    quality: dict[str, Any] | None = Field(
        default=None,
        description="the current generation's face rows, those below search's quality gates (left "
        "out of search) and those never measured; counted at most once a minute",
    )
