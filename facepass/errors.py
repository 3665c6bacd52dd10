"""Typed errors. Domain code raises these; only serve_app maps them to HTTP.

Per-photo errors carry a machine-readable ``code`` and say whether they are
``transient`` (retried by the next run, never recorded as done) or permanent
(recorded in the ledger so the next run does not fetch the photo forever).
"""

from __future__ import annotations


class FacePassError(Exception):
    code = "facepass_error"


class _ById(FacePassError):
    """An error about one id; pickles by that id (errors cross actor boundaries)."""

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return (type(self), (self.ref,))

    def __init__(self, ref: str, message: str) -> None:
        super().__init__(message)
        self.ref = ref


# --- request level -----------------------------------------------------------
class SessionNotFound(_ById):
    code = "session_not_found"

    def __init__(self, session_id: str) -> None:
        super().__init__(session_id, f"Сессия {session_id} не найдена")
        self.session_id = session_id


class FacePassDisabled(_ById):
    code = "facepass_disabled"

    def __init__(self, session_id: str) -> None:
        super().__init__(session_id, "FacePass не активен")
        self.session_id = session_id


class JobNotFound(_ById):
    code = "job_not_found"

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id, f"Задача {job_id} не найдена")


class BadSelfie(FacePassError):
    """An uploaded selfie that cannot be searched with."""

    code = "bad_selfie"


class SelfieHasNoFace(BadSelfie):
    code = "no_face"

    def __init__(self, detail: str = "Лицо не обнаружено на селфи") -> None:
        super().__init__(detail)


class SelfieNotAnImage(BadSelfie):
    code = "not_an_image"


class SelfieTooLarge(BadSelfie):
    code = "too_large"


# --- service level: access and databases ---------------------------------------
class Unauthorized(FacePassError):
    """No API key, or one that is not among the configured keys."""

    code = "unauthorized"

    def __init__(
        self, detail: str = "API key required: Authorization: Bearer <key> or X-API-Key: <key>"
    ) -> None:
        super().__init__(detail)


class ScopeMissing(FacePassError):
    """A known API key that may not call this route: says which scope it needs."""

    code = "scope_missing"

    def __init__(self, scope: str) -> None:
        super().__init__(f"this API key lacks the {scope!r} scope that this route needs")
        self.scope = scope

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return (type(self), (self.scope,))


CLOUD_CATALOG = "cloud catalog"
LOCAL_INDEX = "local index"


class DatabaseError(FacePassError):
    """A database the service needs cannot serve it: says which one and what is wrong."""

    code = "database_error"

    def __init__(self, database: str, detail: str, missing: tuple[str, ...] = ()) -> None:
        super().__init__(f"{database}: {detail}")
        self.database = database
        self.detail = detail
        self.missing = tuple(missing)

    def __reduce__(self) -> tuple[type, tuple[str, str, tuple[str, ...]]]:
        return (type(self), (self.database, self.detail, self.missing))


class DatabaseUnavailable(DatabaseError):
    """The server does not answer (down, unreachable, refused the login)."""

    code = "database_unavailable"


class DatabaseSchemaMissing(DatabaseError):
    """The server answers, but a table (or column) the service needs is not there."""

    code = "database_schema_missing"


class DatabaseTimeout(DatabaseError):
    """A statement ran, or waited on a lock, past the connection's bounds (SQLSTATE 57014,
    55P03): the database answers but cannot serve this call now."""

    code = "database_timeout"


class IndexCannotWrite(DatabaseError):
    """The index refuses writes for lack of resources (SQLSTATE class 53: disk full, out of
    memory, too many connections): nothing more can be stored until an operator acts. A run
    that meets it stops (no more downloads or embedding); reads (search) still work."""

    code = "index_cannot_write"


class TooManyRuns(FacePassError):
    """This replica already runs its most runs at once: try again after ``retry_after_s``."""

    code = "too_many_runs"

    def __init__(self, limit: int, retry_after_s: int) -> None:
        super().__init__(
            f"this replica already runs {limit} reindex runs at once; try again in {retry_after_s} s"
        )
        self.limit = limit
        self.retry_after_s = retry_after_s

    def __reduce__(self) -> tuple[type, tuple[int, int]]:
        return (type(self), (self.limit, self.retry_after_s))


class SearchRateLimited(FacePassError):
    """The caller (an API key, or a client address) searched more often than its rate limit."""

    code = "rate_limited"

    def __init__(self, rate_per_s: float, burst: int, retry_after_s: int) -> None:
        super().__init__(
            f"too many searches: at most {rate_per_s:g} a second ({burst} at once) per API key; "
            f"try again in {retry_after_s} s"
        )
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.retry_after_s = retry_after_s

    def __reduce__(self) -> tuple[type, tuple[float, int, int]]:
        return (type(self), (self.rate_per_s, self.burst, self.retry_after_s))


class ModelLoadError(FacePassError):
    """The model pack cannot be loaded as configured (a runtime or precision this node lacks)."""

    code = "model_load_error"


# --- photo level ---------------------------------------------------------------
class PhotoError(FacePassError):
    """A failure of one photo; goes into the report, never fails the request."""

    code = "photo_error"
    transient = False

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def message(self, filename: str) -> str:
        return f"Ошибка обработки {filename}: {self.detail}"


class DownloadError(PhotoError):
    code = "download_error"
    transient = True

    def message(self, filename: str) -> str:
        return f"Ошибка скачивания {filename}: {self.detail}"


class PhotoNotFound(DownloadError):
    code = "not_found"


class DownloadTimeout(DownloadError):
    code = "timeout"


class StorageUnavailable(DownloadError):
    code = "storage_unavailable"


class StorageForbidden(DownloadError):
    """The bucket refused a signed request (403: wrong key or secret, an expired token, a clock
    off by minutes, no read permission): a fault of the service's credentials, not of the
    photo, so it is not recorded as done and the next run after the fix fetches it."""

    code = "storage_forbidden"


class PhotoTooLarge(DownloadError):
    code = "too_large"
    transient = False


class UrlNotAllowed(DownloadError):
    code = "url_not_allowed"
    transient = False


class NotAnImage(PhotoError):
    code = "not_an_image"

    def message(self, filename: str) -> str:
        return f"Не удалось декодировать изображение {filename}: {self.detail}"


class NoFaceDetected(PhotoError):
    code = "no_face"

    def __init__(self, detail: str = "no face") -> None:  # a default: pickling re-calls it
        super().__init__(detail)

    def message(self, filename: str) -> str:
        return f"Лицо не обнаружено в фото {filename}"


class WriteFailed(PhotoError):
    """The index refused this photo's rows (the other photos of its batch were written)."""

    code = "write_error"
    transient = True

    def message(self, filename: str) -> str:
        return f"Ошибка записи {filename} в индекс: {self.detail}"


class NotWritten(PhotoError):
    """The index could not store this photo (SQLSTATE class 53, e.g. a full disk): nothing of
    it was written; the run stops and the next run after space is freed picks it up."""

    code = "index_cannot_write"
    transient = True

    def message(self, filename: str) -> str:
        return f"Фото {filename} не записано в индекс: {self.detail}"


class Fenced(PhotoError):
    """A newer run took the session (this run lost its lock): its rows are not written."""

    code = "fenced"
    transient = True

    def message(self, filename: str) -> str:
        return f"Фото {filename} не записано: сессию уже переиндексирует новый запуск ({self.detail})"


class WorkerLost(PhotoError):
    """The actor holding the photo died more times than ``max_attempts``."""

    code = "worker_lost"
    transient = True


class PoolUnavailable(FacePassError):
    """No embedding actor answers (none placed yet, or all lost with their nodes): 503."""

    code = "pool_unavailable"


# --- one run per session ---------------------------------------------------------
class SessionBusy(_ById):
    """The session has a run going that this call cannot share (another mode, or a
    runner that does not say its job id)."""

    code = "session_busy"

    def __init__(self, session_id: str, job_id: str | None = None, mode: str | None = None) -> None:
        running = f" (задача {job_id}, режим {mode})" if job_id else ""
        super().__init__(session_id, f"Сессия {session_id} уже переиндексируется{running}")
        self.session_id = session_id
        self.job_id = job_id
        self.mode = mode

    def __reduce__(self) -> tuple[type, tuple[str, str | None, str | None]]:  # type: ignore[override]
        return (type(self), (self.session_id, self.job_id, self.mode))


class JoinedRunFailed(_ById):
    """The run this call waited for ended in failure (not because its runner died)."""

    code = "joined_run_failed"

    def __init__(self, job_id: str, detail: str, cause_code: str | None = None) -> None:
        super().__init__(
            job_id, f"Переиндексация {job_id}, к которой присоединился запрос, не удалась: {detail}"
        )
        self.job_id = job_id
        self.detail = detail
        self.cause_code = cause_code

    def __reduce__(self) -> tuple[type, tuple[str, str, str | None]]:  # type: ignore[override]
        return (type(self), (self.job_id, self.detail, self.cause_code))
