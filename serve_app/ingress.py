"""The HTTP edge: Ray Serve + FastAPI. Typed errors become status codes here only.

No ``from __future__ import annotations`` here: FastAPI must see real types on
the class-based routes that Serve wraps.
"""

import asyncio
import logging
import time
import uuid
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve import Application

from actors.jobs import jobs_actor
from actors.metrics import reindex_metrics
from actors.pool import EmbeddingPool
from facepass.catalog import CloudCatalog
from facepass.db import resolve_databases
from facepass.errors import (
    BadSelfie,
    FacePassDisabled,
    FacePassError,
    JobNotFound,
    NoFaceDetected,
    NotAnImage,
    PhotoError,
    SelfieHasNoFace,
    SelfieNotAnImage,
    SelfieTooLarge,
    SessionNotFound,
)
from facepass.reindex import ReindexCoordinator, ReindexMode
from facepass.report import ReindexReport
from facepass.search import DEFAULT_THRESHOLD, find_photos, selfie_face
from facepass.settings import Settings
from facepass.store import VectorStore
from serve_app.schemas import ReindexResponse

log = logging.getLogger("facepass.serve")

api = FastAPI(
    title="FacePass reindexer",
    description="Keeps the pgvector face index in step with the cloud photo catalog.",
    version="0.1.0",
)

_STATUS: dict[type[FacePassError], int] = {
    SessionNotFound: 404,
    JobNotFound: 404,
    SelfieHasNoFace: 422,
    SelfieNotAnImage: 415,
    SelfieTooLarge: 413,
    BadSelfie: 400,
    FacePassDisabled: 403,
}


@api.exception_handler(FacePassError)
async def _facepass_error(_: Request, exc: FacePassError) -> JSONResponse:
    status = next((code for cls, code in _STATUS.items() if isinstance(exc, cls)), 500)
    return JSONResponse(status_code=status, content={"detail": str(exc), "code": exc.code})


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=32)
@serve.ingress(api)
class FacePassIngress:
    def __init__(self, settings: Settings) -> None:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        self.settings = settings
        self.catalog = CloudCatalog(settings.cloud_dsn)
        self.store = VectorStore(settings.local_dsn)
        self.store.create_schema()
        self.pool = EmbeddingPool(settings)
        # keep_log=False: the lines go to the log; a 10,000-photo run must not keep them all.
        self.coordinator = ReindexCoordinator(
            self.catalog, self.store, self.pool, max_errors=settings.report_max_errors, keep_log=False
        )
        self.jobs = jobs_actor(settings.ray_namespace)
        self._background: set[asyncio.Task[None]] = set()

    @api.post(
        "/api/v1/faces/force-reindex-session/{session_id}",
        response_model=ReindexResponse,
        summary="Index the session's photos that the local index does not hold yet",
    )
    async def force_reindex(
        self,
        session_id: uuid.UUID,
        mode: Annotated[
            ReindexMode, Query(description="missing | retry_failed | full")
        ] = ReindexMode.MISSING,
        wait: Annotated[bool, Query(description="false: answer 202 with a job id at once")] = True,
    ) -> Any:
        if wait:
            report = await self.coordinator.run(session_id, mode, self._progress_hook())
            return report.to_response()
        # Validate now, so a bad request still gets its 404/403 and not a job id.
        await asyncio.to_thread(self.catalog.require_enabled_session, session_id)
        job_id = uuid.uuid4().hex
        state = {"job_id": job_id, "status": "running", "session_id": str(session_id), "mode": mode.value}
        await self.jobs.put.remote(job_id, state)
        task = asyncio.create_task(self._run_job(job_id, session_id, mode))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return JSONResponse(
            status_code=202,
            content={**state, "status_url": f"/api/v1/faces/reindex-jobs/{job_id}"},
        )

    @api.get("/api/v1/faces/reindex-jobs/{job_id}", summary="State of a non-blocking reindex job")
    async def reindex_job(self, job_id: str) -> dict[str, Any]:
        state: dict[str, Any] | None = await self.jobs.get.remote(job_id)
        if state is None:
            raise JobNotFound(job_id)
        return state

    def _progress_hook(self, job_id: str | None = None) -> Any:
        metrics = reindex_metrics()
        started = time.perf_counter()
        last_put = [0.0]

        def hook(report: ReindexReport) -> None:
            metrics.progress(str(report.session_id), report.processed_photos, report.planned_photos)
            now = time.perf_counter()
            if job_id is not None and now - last_put[0] >= 0.5:  # do not flood the registry
                last_put[0] = now
                state = {"job_id": job_id, "status": "running", **report.progress(now - started)}
                self.jobs.put.remote(job_id, state)

        return hook

    async def _run_job(self, job_id: str, session_id: uuid.UUID, mode: ReindexMode) -> None:
        try:
            report = await self.coordinator.run(session_id, mode, self._progress_hook(job_id))
            state = {**report.to_response(), "job_id": job_id, "status": "done"}
        except Exception as exc:  # the job fails; the service does not
            log.exception("reindex job %s failed", job_id)
            state = {"job_id": job_id, "status": "failed", "session_id": str(session_id), "error": str(exc)}
        await self.jobs.put.remote(job_id, state)

    @api.post(
        "/api/v1/faces/search/{session_id}",
        summary="Photos of the session that show the person in the selfie (image bytes as the body)",
    )
    async def search(
        self,
        session_id: uuid.UUID,
        request: Request,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        threshold: Annotated[float, Query(ge=-1.0, le=1.0)] = DEFAULT_THRESHOLD,
    ) -> dict[str, Any]:
        data = await request.body()
        if not data:
            raise BadSelfie("Пустое тело запроса: пришлите изображение (JPEG, PNG, WebP)")
        if len(data) > self.settings.max_download_bytes:
            raise SelfieTooLarge(f"Изображение больше {self.settings.max_download_bytes} байт")
        session = await asyncio.to_thread(self.catalog.require_enabled_session, session_id)
        try:
            face = selfie_face(await self.pool.embed_image(data))
        except NoFaceDetected as exc:
            raise SelfieHasNoFace() from exc
        except NotAnImage as exc:
            raise SelfieNotAnImage(f"Не удалось декодировать изображение: {exc.detail}") from exc
        except PhotoError as exc:  # too many pixels
            raise SelfieTooLarge(exc.detail) from exc
        matches = await asyncio.to_thread(
            find_photos, self.store, self.catalog, session_id, face, limit, threshold, self.pool.model_name
        )
        return {
            "session_id": str(session_id),
            "session_name": session.name,
            "selfie_face": {"bbox": face.bbox, "det_score": face.det_score},
            "threshold": threshold,
            "matches": [
                {
                    "photo_id": str(m.photo_id),
                    "filename": m.filename,
                    "preview_path": m.preview_path,
                    "similarity": round(m.similarity, 4),
                    "face_index": m.face_index,
                    "bbox": m.bbox,
                }
                for m in matches
            ],
        }

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        checks: dict[str, Any] = {}
        ok = True
        for name, ping in (("cloud_db", self.catalog.ping), ("local_db", self.store.ping)):
            try:
                await asyncio.wait_for(asyncio.to_thread(ping), 10)
                checks[name] = "ok"
            except Exception as exc:  # report every failing part, not just the first
                checks[name] = f"error: {exc}"
                ok = False
        try:
            checks["pool"] = await self.pool.health()
        except Exception as exc:
            checks["pool"] = f"error: {exc}"
            ok = False
        return JSONResponse(status_code=200 if ok else 503, content={"ok": ok, **checks})


def build_app(settings: Settings | None = None) -> Application:
    """The bound application; databases resolved here (embedded PostgreSQL if no DSN)."""
    resolved = resolve_databases(settings or Settings())
    app: Application = FacePassIngress.bind(resolved)  # type: ignore[attr-defined]
    return app
