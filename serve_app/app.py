"""The HTTP edge: Ray Serve + FastAPI. Typed errors become status codes here only.

No ``from __future__ import annotations`` here: FastAPI must see real types on
the class-based routes that Serve wraps.
"""

import asyncio
import logging
import uuid
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve import Application

from actors.pool import EmbeddingPool
from facepass.catalog import CloudCatalog
from facepass.db import resolve_databases
from facepass.errors import FacePassDisabled, FacePassError, ServiceUnavailable, SessionNotFound
from facepass.reindex import ReindexCoordinator, ReindexMode
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
    FacePassDisabled: 403,
    ServiceUnavailable: 503,
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
        self.coordinator = ReindexCoordinator(
            self.catalog, self.store, self.pool, max_errors=settings.report_max_errors
        )

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
    ) -> dict[str, Any]:
        report = await self.coordinator.run(session_id, mode)
        return report.to_response()

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
