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
from facepass.demo.s3server import LocalS3Server
from facepass.demo.scenario import CatalogWriter
from facepass.demo.storage import PhotoStorage
from facepass.models import DetectedFace
from facepass.settings import Settings


def run_orchestration(
    settings: Settings,
    storage: PhotoStorage | None,
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
    watched: dict[str, int] | None = None,
    source: str = "",
) -> tuple[RunResult, RunResult, list[str]]:
    """A warm-up and the timed run; both sessions' ids for clean-up. ``storage``: the loopback
    HTTP storage whose latency the run sets (None: photos elsewhere, e.g. an S3 server, as they
    are); ``watched``: other processes whose CPU the run names apart."""
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
    service.watched = dict(watched or {})
    ids: list[str] = []
    try:
        _set_latency(storage, 0.0)
        warm, warm_id = run_pipeline(
            service, catalog_writer, rows[: min(photos, 4 * in_flight)], 0.0, "warm-up"
        )
        ids.append(str(warm_id))
        _set_latency(storage, latency_ms / 1000)
        label = (
            f"(d) orchestration: route, stand-in actors (at least {in_flight} in flight and batches of"
            f" {batch} an actor, more as the measured rate allows)"
        ) + (f", photos from {source}" if source else "")
        run, sid = run_pipeline(service, catalog_writer, rows, latency_ms, label, profile_dir)
        ids.append(str(sid))
        run.kind = "orchestration"
        run.extra.update(stand_in=True, actor_batch_photos=batch)
    finally:
        service.stop()
        _set_latency(storage, 0.0)
    return warm, run, ids


def _set_latency(storage: PhotoStorage | None, seconds: float) -> None:
    if storage is not None:
        storage.latency_s = seconds


def service_cpu_ms_per_photo(run: RunResult) -> float:
    """CPU of the service's processes a photo (actors, replica, writer, PostgreSQL, Ray's own):
    the driver (it only POSTs, and hosts the loopback HTTP storage), an S3 server and a
    profiler left out, so that two storages are compared on what the service spends."""
    load = run.load
    apart = sum(load.get(f"cores:{name}", 0.0) for name in ("driver", "storage", "profiler"))
    cores = max(0.0, load.get("own_cores", 0.0) - apart)
    return round(cores * run.seconds / max(run.photos, 1) * 1000, 3)


def run_storage_comparison(
    settings: Settings,
    storage: PhotoStorage,
    catalog_writer: CatalogWriter,
    session: SyntheticSession,
    precomputed: list[list[DetectedFace]],
    model_name: str,
    *,
    photos: int,
    in_flight: int,
    batch: int,
    ray_logs: bool = False,
) -> tuple[RunResult, RunResult, list[str]]:
    """The orchestration run twice at no added storage latency (an S3 server has none to set):
    the photos from the plain loopback HTTP storage, then the same photos from a private bucket
    of a real S3 server on loopback (SeaweedFS), every GET SigV4-signed by the actors."""

    def run(
        at: Settings, where: PhotoStorage | None, watched: dict[str, int], source: str
    ) -> tuple[RunResult, list[str]]:
        _, timed, ids = run_orchestration(
            at,
            where,
            catalog_writer,
            session,
            precomputed,
            model_name,
            photos=photos,
            latency_ms=0.0,
            in_flight=in_flight,
            batch=batch,
            ray_logs=ray_logs,
            watched=watched,
            source=source,
        )
        timed.extra["storage"] = source
        return timed, ids

    plain, ids = run(settings, storage, {}, "http (loopback PhotoStorage, plain GETs)")
    with LocalS3Server() as s3:
        for _, path in session.names_paths(len(precomputed)):
            data = storage.files.get(path)
            assert data is not None, path
            s3.put(path, data)
        assert s3.pid is not None
        signed, more = run(
            s3.settings(settings), None, {"storage": s3.pid}, "s3 (SeaweedFS on loopback, SigV4-signed GETs)"
        )
    plain.kind, signed.kind = "orchestration_plain", "orchestration_s3"
    return plain, signed, ids + more


def storage_figures(plain: RunResult, signed: RunResult) -> dict[str, object]:
    plain_cpu, signed_cpu = service_cpu_ms_per_photo(plain), service_cpu_ms_per_photo(signed)
    return {
        "orchestration_plain_photos_per_s": round(plain.photos_per_s, 1),
        "orchestration_s3_photos_per_s": round(signed.photos_per_s, 1),
        "orchestration_plain_cpu_ms_per_photo": plain_cpu,
        "orchestration_s3_cpu_ms_per_photo": signed_cpu,
        "s3_vs_plain_cpu_per_photo": round(signed_cpu / plain_cpu, 3) if plain_cpu else None,
        "s3_vs_plain_photos_per_s": round(signed.photos_per_s / plain.photos_per_s, 3)
        if plain.photos_per_s
        else None,
        "orchestration_s3_server_cores": signed.load.get("cores:storage"),
        "orchestration_storage_photos": signed.photos,
    }


def orchestration_figures(run: RunResult) -> dict[str, object]:
    return {
        "orchestration_photos_per_s": round(run.photos_per_s, 1),
        "orchestration_faces_per_s": round(run.faces_per_s, 1),
        "orchestration_photos": run.photos,
        "orchestration_latency_ms": run.latency_ms,
        "orchestration_in_flight_per_actor": run.extra.get("photos_in_flight_per_actor"),
        "orchestration_actor_batch_photos": run.extra.get("actor_batch_photos"),
    }
