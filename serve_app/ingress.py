"""The HTTP edge: Ray Serve + FastAPI. Typed errors become status codes here only.

No ``from __future__ import annotations`` here: FastAPI must see real types on
the class-based routes that Serve wraps.
"""

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import sqlalchemy.exc
from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve import Application
from starlette.exceptions import HTTPException as StarletteHTTPException

from actors.pool import EmbeddingPool
from facepass.catalog.cloud import CloudCatalog
from facepass.db import resolve_databases
from facepass.errors import (
    CLOUD_CATALOG,
    LOCAL_INDEX,
    BadSelfie,
    DatabaseError,
    DatabaseTimeout,
    FacePassDisabled,
    FacePassError,
    IndexCannotWrite,
    JobNotFound,
    JoinedRunFailed,
    NoFaceDetected,
    NotAnImage,
    PhotoError,
    PoolUnavailable,
    ScopeMissing,
    SearchRateLimited,
    SelfieHasNoFace,
    SelfieNotAnImage,
    SelfieTooLarge,
    SessionBusy,
    SessionNotFound,
    TooManyRuns,
    Unauthorized,
)
from facepass.health import DatabaseProbe, diagnose, is_database_failure
from facepass.index.follow_ledger import FollowLedger
from facepass.index.generations import Generations
from facepass.index.search import PhotoMatch, default_threshold, find_photos, selfie_face
from facepass.index.store import VectorStore, face_embeddings, indexed_photos
from facepass.models import DetectedFace
from facepass.runs.follow import mirror_report
from facepass.runs.follow_lock import FollowerLock
from facepass.runs.job_store import SqlJobRegistry
from facepass.runs.reindex import ReindexCoordinator, ReindexMode
from facepass.runs.session_lock import SessionLocks
from facepass.runs.session_runs import SessionRuns
from facepass.settings import Settings
from facepass.storage.s3 import PhotoLinks
from facepass.vision.generation_packs import GenerationPacks
from serve_app.auth import ADMIN, REINDEX, SEARCH, configure, presented_scopes
from serve_app.bind import require_closed_or_loopback
from serve_app.follow import ReplicaFollower
from serve_app.runs import RouteRuns
from serve_app.schemas import (
    HealthResponse,
    JobAccepted,
    MirrorResponse,
    ReindexResponse,
    SearchResponse,
    error_responses,
)

log = logging.getLogger("facepass.serve")

api = FastAPI(
    title="FacePass reindexer",
    description=(
        "Keeps the pgvector face index in step with the cloud photo catalog. When API keys are set "
        "(FACEPASS_API_KEY: every scope; FACEPASS_API_KEYS_FILE: keys with scopes), every /api route "
        "needs `Authorization: Bearer <key>` or `X-API-Key: <key>` with its scope: `search` for "
        "selfie search, `reindex` for force-reindex and its jobs, `admin` for /mirror and the "
        "details of /healthz; a key without the scope gets 403 naming it."
    ),
    version="0.1.0",
)

_STATUS: dict[type[FacePassError], int] = {
    Unauthorized: 401,
    ScopeMissing: 403,
    SessionNotFound: 404,
    JobNotFound: 404,
    SelfieHasNoFace: 422,
    SelfieNotAnImage: 415,
    SelfieTooLarge: 413,
    BadSelfie: 400,
    FacePassDisabled: 403,
    SessionBusy: 409,
    TooManyRuns: 429,
    SearchRateLimited: 429,
    DatabaseError: 503,
    PoolUnavailable: 503,
}
REPLICA_HEADER = "X-FacePass-Replica"
QUALITY_COUNT_EVERY_S = 60.0  # /mirror's count of faces below the gates: a pass over the face rows
# A joined run that failed answers like its owner did: 503 when a database failed it.
_DATABASE_ERRORS: list[type[DatabaseError]] = [DatabaseError, *DatabaseError.__subclasses__()]
_DATABASE_CODES = tuple(cls.code for cls in _DATABASE_ERRORS)

IMAGE_TYPES = (
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/heic",
    "image/heif",
    "application/octet-stream",
)
IMAGE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The selfie: the image file's bytes as the body (JPEG, PNG or WebP).",
        "content": {
            media: {"schema": {"type": "string", "format": "binary", "minLength": 1}} for media in IMAGE_TYPES
        },
    }
}


@api.exception_handler(FacePassError)
async def _facepass_error(_: Request, exc: FacePassError) -> JSONResponse:
    status = next((code for cls, code in _STATUS.items() if isinstance(exc, cls)), 500)
    content: dict[str, Any] = {"detail": str(exc), "code": exc.code}
    if isinstance(exc, SessionBusy):
        content |= {"job_id": exc.job_id, "mode": exc.mode}
    if isinstance(exc, JoinedRunFailed):
        content |= {"job_id": exc.job_id, "cause_code": exc.cause_code}
        status = 503 if exc.cause_code in _DATABASE_CODES else 500
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if isinstance(exc, TooManyRuns | SearchRateLimited):
        content |= {"retry_after_s": exc.retry_after_s}
        headers = {"Retry-After": str(exc.retry_after_s)}
    if isinstance(exc, ScopeMissing):
        content |= {"scope": exc.scope}
    if isinstance(exc, DatabaseError):
        content |= {"database": exc.database, "missing": list(exc.missing)}
        log.error("answering 503: %s", exc)
    return JSONResponse(status_code=status, content=content, headers=headers)


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Routing errors (no such path, method not allowed) in the same body as ours."""
    content = {"detail": str(exc.detail), "code": f"http_{exc.status_code}"}
    return JSONResponse(status_code=exc.status_code, content=content, headers=exc.headers)


def _replica_name() -> str:
    """This replica's actor name (namespace ``serve``): who runs a job, for people and tests."""
    try:
        return serve.get_replica_context().replica_id.to_full_id_str()
    except Exception:  # not inside a Serve replica
        return f"serve-replica:{uuid.uuid4().hex[:8]}"


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=32)
@serve.ingress(api)
class FacePassIngress:
    def __init__(self, settings: Settings) -> None:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        require_closed_or_loopback(settings)  # before anything: no key on a public bind, no start
        configure(settings.keys_with_scopes(), settings.search_rate_per_s, settings.search_burst)
        self.settings = settings
        self.catalog = CloudCatalog(settings.cloud_url())
        self.store = VectorStore(settings.local_url())
        catalog_tables = (self.catalog.schema.sessions, self.catalog.schema.photos)
        self.probes = (
            DatabaseProbe(CLOUD_CATALOG, self.catalog.engine, catalog_tables),
            DatabaseProbe(LOCAL_INDEX, self.store.engine, (face_embeddings.name, indexed_photos.name)),
        )
        self.locks = SessionLocks(settings.local_url())
        # The job book lives in the index database (not in an actor): it outlives any node.
        self.runs = SessionRuns(self.locks, SqlJobRegistry(settings.local_url()), runner=_replica_name())
        self.route_runs = RouteRuns(
            self.runs,
            self._database_errors,
            max_runs=settings.max_runs_per_replica,
            retry_after_s=settings.busy_retry_after_s,
        )
        self._starting = threading.Lock()
        self._coordinator: ReindexCoordinator | None = None
        self.pool: EmbeddingPool | None = None
        try:
            self._start()
        except sqlalchemy.exc.DBAPIError as exc:  # serve anyway: 503s that say why, until it is back
            log.warning("local index not ready at start (%s); will retry on the next call", exc.orig)
        except DatabaseError as exc:  # a schema behind this code: 503s naming jobs.migrate until run
            log.warning("local index not ready at start (%s); will check again on the next call", exc)
        self.generation_packs = GenerationPacks(settings)  # earlier packs, loaded on first use
        self.photo_links = PhotoLinks(settings)
        self._quality_cache: tuple[float, dict[str, object] | None] = (0.0, None)
        self._follower_lock = FollowerLock(settings.local_url())  # asks who follows (never takes it here)
        self.follower: ReplicaFollower | None = None
        if settings.follow:
            self.follower = ReplicaFollower(settings, self.catalog, self.store, self.runs, self._ready_pool)
            self.follower.start()  # every replica tries; the follower lock lets one follow

    def _start(self) -> ReindexCoordinator:
        """The local schema, then the pool (its writer needs the schema): once, when the index answers."""
        with self._starting:
            if self._coordinator is not None:
                return self._coordinator
            self.store.ready_schema(bool(self.settings.migrate_at_start))
            self.pool = EmbeddingPool(self.settings)
            # keep_log=False: the lines go to the log; a 10,000-photo run must not keep them all.
            coordinator = ReindexCoordinator(
                self.catalog,
                self.store,
                self.pool,
                max_errors=self.settings.report_max_errors,
                keep_log=False,
            )
            self._coordinator = coordinator
            return coordinator

    async def _ready(self) -> ReindexCoordinator:
        if self._coordinator is not None:
            return self._coordinator
        return await asyncio.to_thread(self._start)

    async def _embed_selfie(self, model: str, data: bytes) -> list[DetectedFace]:
        """The pool's model (interactive lane) for the current generation; an earlier
        generation's pack, loaded in this replica, for a session not switched yet."""
        assert self.pool is not None
        if model != self.pool.model_name:
            faces = await asyncio.to_thread(self.generation_packs.embed_bytes, model, data)
            if faces is not None:
                return faces
            log.warning("search: generation %s has no pack here; the selfie uses the current model", model)
        return await self.pool.embed_image(data)

    async def _ready_pool(self) -> EmbeddingPool:
        await self._ready()
        assert self.pool is not None
        return self.pool

    def __del__(self) -> None:
        """Serve calls this when the replica stops: the follower ends (its lock goes with its
        connection, and another replica takes over)."""
        follower = getattr(self, "follower", None)
        if follower is not None:
            follower.request_stop()

    @asynccontextmanager
    async def _database_errors(self) -> AsyncIterator[None]:
        """A database that is down or lacks its tables becomes a typed error naming it (503)."""
        try:
            yield
        except sqlalchemy.exc.DBAPIError as exc:
            if not is_database_failure(exc):
                raise
            raise await asyncio.to_thread(diagnose, exc, self.probes) from exc
        except sqlalchemy.exc.TimeoutError as exc:  # every connection of an engine busy: its cap
            raise DatabaseTimeout("database", f"no free connection: {exc}; try again later") from exc

    @api.post(
        "/api/v1/faces/force-reindex-session/{session_id}",
        response_model=ReindexResponse,
        summary="Index the session's photos that the local index does not hold yet",
        dependencies=REINDEX,
        responses={
            202: {
                "model": JobAccepted,
                "description": "`?wait=false`: the job runs in the background (or the session's "
                "running job, `joined: true`)",
            },
            **error_responses(401, 403, 404, 409, 422, 429, 503),
        },
    )
    async def force_reindex(
        self,
        session_id: uuid.UUID,
        response: Response,
        mode: Annotated[
            ReindexMode, Query(description="missing | retry_failed | full")
        ] = ReindexMode.MISSING,
        wait: Annotated[bool, Query(description="false: answer 202 with a job id at once")] = True,
    ) -> Any:
        async with self._database_errors():
            coordinator = await self._ready()
            # Validate first, so a bad request gets its 404/403, whether it runs or joins.
            await asyncio.to_thread(self.catalog.require_enabled_session, session_id)
            served_by = {REPLICA_HEADER: self.runs.runner}  # which replica answered (ops, tests)
            if wait:
                response.headers.update(served_by)
                return await self.route_runs.blocking(coordinator, session_id, mode)
            job = await self.route_runs.background(coordinator, session_id, mode)
        return JSONResponse(
            status_code=202,
            content={**job.to_json(), "status_url": f"/api/v1/faces/reindex-jobs/{job.job_id}"},
            headers=served_by,
        )

    @api.get(
        "/api/v1/faces/reindex-jobs/{job_id}",
        summary="State of a reindex job (a job whose runner died reads failed)",
        dependencies=REINDEX,
        responses=error_responses(401, 403, 404, 422, 503),
    )
    async def reindex_job(self, job_id: str) -> dict[str, object]:
        async with self._database_errors():
            return (await self.runs.status(job_id)).to_json()

    @api.post(
        "/api/v1/faces/search/{session_id}",
        response_model=SearchResponse,
        summary="Photos of the session that show the person in the selfie (image bytes as the body)",
        dependencies=SEARCH,
        openapi_extra=IMAGE_BODY,
        responses=error_responses(400, 401, 403, 404, 413, 415, 422, 429, 503),
    )
    async def search(
        self,
        session_id: uuid.UUID,
        request: Request,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        threshold: Annotated[
            float | None,
            Query(ge=-1.0, le=1.0, description="cosine cut-off; unset: the searched generation's own"),
        ] = None,
    ) -> dict[str, Any]:
        data = await request.body()
        if not data:
            raise BadSelfie("Пустое тело запроса: пришлите изображение (JPEG, PNG, WebP)")
        if len(data) > self.settings.max_download_bytes:
            raise SelfieTooLarge(f"Изображение больше {self.settings.max_download_bytes} байт")
        async with self._database_errors():
            await self._ready()
            session = await asyncio.to_thread(self.catalog.require_enabled_session, session_id)
            assert self.pool is not None  # _ready() made it
            # The generation this session is searched in (the previous one until the session
            # is complete in the current model), and the selfie embedded by its model.
            generations = Generations(self.store.engine, self.pool.model_name)
            model = await asyncio.to_thread(generations.search_model, session_id)
            cut = self._threshold(model, threshold)
            face, matches = await self._search_in(model, data, session_id, limit, cut)
            if not matches and model != generations.current:
                # The session may have switched between the choice and the query (its old
                # vectors go in one statement): nothing found in a generation that is gone.
                now = await asyncio.to_thread(generations.search_model, session_id)
                if now != model:
                    cut = self._threshold(now, threshold)
                    face, matches = await self._search_in(now, data, session_id, limit, cut)
        urls = await asyncio.to_thread(self.photo_links.urls, [m.preview_path for m in matches])
        return {
            "session_id": str(session_id),
            "session_name": session.name,
            "selfie_face": {"bbox": face.bbox, "det_score": face.det_score},
            "threshold": cut,
            "photo_urls_expire_in_s": self.photo_links.expires_in_s,
            "matches": [
                {
                    "photo_id": str(m.photo_id),
                    "filename": m.filename,
                    "preview_path": m.preview_path,
                    "photo_url": url,
                    "similarity": round(m.similarity, 4),
                    "face_index": m.face_index,
                    "bbox": m.bbox,
                }
                for m, url in zip(matches, urls, strict=True)
            ],
        }

    def _threshold(self, generation: str, asked: float | None) -> float:
        """The caller's threshold, else FACEPASS_SEARCH_THRESHOLD, else the generation's own."""
        if asked is not None:
            return asked
        configured = self.settings.search_threshold
        return configured if configured is not None else default_threshold(generation)

    async def _search_in(
        self, model: str, data: bytes, session_id: uuid.UUID, limit: int, threshold: float
    ) -> tuple[DetectedFace, list[PhotoMatch]]:
        """The selfie embedded by ``model`` and the session's photos it finds in that generation."""
        try:
            face = selfie_face(await self._embed_selfie(model, data))
        except NoFaceDetected as exc:
            raise SelfieHasNoFace() from exc
        except NotAnImage as exc:
            raise SelfieNotAnImage(f"Не удалось декодировать изображение: {exc.detail}") from exc
        except PhotoError as exc:  # too many pixels
            raise SelfieTooLarge(exc.detail) from exc
        matches = await asyncio.to_thread(
            find_photos,
            self.store,
            self.catalog,
            session_id,
            face,
            limit,
            threshold,
            model,
            self.settings.quality_gates(),
        )
        return face, matches

    @api.get(
        "/api/v1/faces/mirror",
        response_model=MirrorResponse,
        summary="How the index follows the catalog: who follows, last cycle, pending work, lag",
        dependencies=ADMIN,
        responses=error_responses(401, 403, 503),
    )
    async def mirror(self) -> dict[str, object]:
        async with self._database_errors():
            await self._ready()  # the schema (its follow tables) exists
            assert self.pool is not None
            ledger = FollowLedger(self.store.engine)
            report = await asyncio.to_thread(mirror_report, self.settings, ledger, self._follower_lock)
            if not report["generations"]:  # no follower has counted them yet (follow off)
                generations = Generations(self.store.engine, self.pool.model_name)
                progress = await asyncio.to_thread(generations.progress)
                report["generations"] = [g.to_json() for g in progress]
            report["quality"] = await asyncio.to_thread(self._quality_counts, self.pool.model_name)
            return report

    def _quality_counts(self, model: str) -> dict[str, object]:
        """The current generation's face rows below search's quality gates (and unmeasured), at
        most once a minute per replica: one pass over the face rows' heap columns."""
        at, counts = self._quality_cache
        if counts is None or time.monotonic() - at > QUALITY_COUNT_EVERY_S:
            gates = self.settings.quality_gates()
            found = self.store.count_below_gates(gates, model_name=model)
            counts = {
                "gates": gates.as_json(),
                "faces": found.faces,
                "below_gates": found.below,
                "unmeasured": found.unmeasured,
                "counted_s_ago": 0.0,
            }
            self._quality_cache = (time.monotonic(), counts)
            return counts
        return {**counts, "counted_s_ago": round(time.monotonic() - at, 1)}

    @api.get(
        "/healthz",
        response_model=HealthResponse,
        summary="Both databases (reachable, with their tables), every embedding actor, the writer: "
        "ok or fail per part to anyone; the details (causes, actors) to a caller with an admin key",
        responses={
            503: {"model": HealthResponse, "description": "Something is not ready; the body says what"}
        },
    )
    async def healthz(self, request: Request) -> JSONResponse:
        checks, problems = await self._health_checks()
        ok = all(value == "ok" for key, value in checks.items() if key != "pool") and isinstance(
            checks["pool"], dict
        )
        if "admin" not in presented_scopes(request):
            # Open to load balancers and probes: no host, port, database, user or driver text.
            public = {
                key: "ok" if value == "ok" or isinstance(value, dict) else "fail"
                for key, value in checks.items()
            }
            return JSONResponse(status_code=200 if ok else 503, content={"ok": ok, **public, "problems": []})
        body = {"ok": ok, **checks, "problems": problems}
        return JSONResponse(status_code=200 if ok else 503, content=body)

    async def _health_checks(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        checks: dict[str, Any] = {}
        problems: list[dict[str, Any]] = []
        for key, probe in zip(("cloud_db", "local_db"), self.probes, strict=True):
            try:
                await asyncio.wait_for(asyncio.to_thread(probe.check), 15)
                checks[key] = "ok"
            except DatabaseError as exc:  # report every failing part, not just the first
                checks[key] = f"error: {exc}"
                problems.append(
                    {
                        "detail": str(exc),
                        "code": exc.code,
                        "database": exc.database,
                        "missing": list(exc.missing),
                    }
                )
            except TimeoutError:
                checks[key] = f"error: {probe.label}: database {probe.name} did not answer in 15 s"
        try:
            await self._ready()  # a pool that could not start with the index down starts now
            assert self.pool is not None
            checks["pool"] = await self.pool.health()
        except Exception as exc:
            checks["pool"] = f"error: {exc}"
        refusal = await self._index_refusal()
        if refusal is not None and checks["local_db"] == "ok":  # it reads, but cannot write
            checks["local_db"] = f"error: {refusal}"
            problems.append(
                {"detail": str(refusal), "code": refusal.code, "database": refusal.database, "missing": []}
            )
        return checks, problems

    async def _index_refusal(self) -> IndexCannotWrite | None:
        """The writer's word that the index refused its last write for lack of room."""
        if self.pool is None:
            return None
        try:
            return await self.pool.index_refusal()
        except Exception:  # the writer restarting or unreachable: the pool check says so
            return None


def build_app(settings: Settings | None = None) -> Application:
    """The bound application; databases resolved here (embedded PostgreSQL if no DSN)."""
    resolved = resolve_databases(settings or Settings())
    deployment = FacePassIngress.options(num_replicas=resolved.serve_replicas)  # type: ignore[attr-defined]
    app: Application = deployment.bind(resolved)
    return app
