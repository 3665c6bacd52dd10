"""(d) orchestration: the route end to end with the model and decoding taken out.

Same Serve app, coordinator, pool, writer and PostgreSQL as (c), and real
downloads from the loopback storage at its latency; the embedding actors are
``bench.standin`` stand-ins that return the faces the limit run found. The
pool runs with more photos in flight (what a GPU node would be given), so the
figure says how many photos/s everything around the model can carry.
"""

from __future__ import annotations

from pathlib import Path

from bench.data import SyntheticSession
from bench.results import RunResult
from bench.service import BenchService, free_port, run_pipeline
from bench.standin import start_stand_ins
from facepass.demo.scenario import CatalogWriter
from facepass.demo.storage import PhotoStorage
from facepass.models import DetectedFace
from facepass.settings import Settings


def run_orchestration(
    settings: Settings,
    storage: PhotoStorage,
    catalog_writer: CatalogWriter,
    session: SyntheticSession,
    precomputed: list[list[DetectedFace]],
    model_name: str,
    *,
    photos: int,
    latency_ms: float,
    in_flight: int,
    batch: int,
    profile_dir: Path | None = None,
    ray_logs: bool = False,
) -> tuple[RunResult, RunResult, list[str]]:
    """A warm-up and the timed run; both sessions' ids for clean-up."""
    orch = settings.model_copy(
        update={
            "ray_namespace": f"{settings.ray_namespace}-orch",
            "http_port": free_port(),
            "photos_in_flight_per_actor": in_flight,
            "actor_batch_photos": batch,
        }
    )
    known = session.names_paths(len(precomputed))
    faces_by_path = {path: faces for (_, path), faces in zip(known, precomputed, strict=True)}
    # Catalog rows may share a preview (the stand-in looks faces up by path): N distinct rows.
    rows = [(f"o{j:06d}_{known[j % len(known)][0]}", known[j % len(known)][1]) for j in range(photos)]
    service = BenchService(
        orch, ray_logs=ray_logs, before_serve=lambda: start_stand_ins(orch, faces_by_path, model_name)
    )
    service.start()
    ids: list[str] = []
    try:
        storage.latency_s = 0.0
        warm, warm_id = run_pipeline(
            service, catalog_writer, rows[: min(photos, 4 * in_flight)], 0.0, "warm-up"
        )
        ids.append(str(warm_id))
        storage.latency_s = latency_ms / 1000
        label = (
            f"(d) orchestration: route, stand-in actors (at least {in_flight} in flight and batches of"
            f" {batch} an actor, more as the measured rate allows)"
        )
        run, sid = run_pipeline(service, catalog_writer, rows, latency_ms, label, profile_dir)
        ids.append(str(sid))
        run.kind = "orchestration"
        run.extra.update(stand_in=True, actor_batch_photos=batch)
    finally:
        service.stop()
        storage.latency_s = 0.0
    return warm, run, ids


def orchestration_figures(run: RunResult) -> dict[str, object]:
    return {
        "orchestration_photos_per_s": round(run.photos_per_s, 1),
        "orchestration_faces_per_s": round(run.faces_per_s, 1),
        "orchestration_photos": run.photos,
        "orchestration_latency_ms": run.latency_ms,
        "orchestration_in_flight_per_actor": run.extra.get("photos_in_flight_per_actor"),
        "orchestration_actor_batch_photos": run.extra.get("actor_batch_photos"),
    }
