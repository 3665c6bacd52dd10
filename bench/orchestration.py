"""(d) orchestration: the route end to end with the model and decoding taken out.

Same Serve app, coordinator, pool, writer and PostgreSQL as (c), and real
downloads from the loopback storage at its latency; the embedding actors are
``bench.standin`` stand-ins that return the faces the limit run found. The
pool runs with more photos in flight (what a GPU node would be given), so the
figure says how many photos/s everything around the model can carry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass
class Orchestration:
    """What the orchestration runs share: the photos (catalog rows may share a preview: the
    stand-in looks faces up by path, so N distinct rows), the stand-ins' faces, the knobs."""

    catalog_writer: CatalogWriter
    rows: list[tuple[str, str]]
    faces_by_path: dict[str, list[DetectedFace]]
    model_name: str
    in_flight: int
    batch: int

    @classmethod
    def of(
        cls,
        catalog_writer: CatalogWriter,
        session: SyntheticSession,
        precomputed: list[list[DetectedFace]],
        model_name: str,
        photos: int,
        in_flight: int,
        batch: int,
    ) -> Orchestration:
        known = session.names_paths(len(precomputed))
        faces_by_path = {path: faces for (_, path), faces in zip(known, precomputed, strict=True)}
        rows = [(f"o{j:06d}_{known[j % len(known)][0]}", known[j % len(known)][1]) for j in range(photos)]
        return cls(catalog_writer, rows, faces_by_path, model_name, in_flight, batch)

    def settings(self, settings: Settings, namespace: str, http_port: int) -> Settings:
        return settings.model_copy(
            update={
                "ray_namespace": namespace,
                "http_port": http_port,
                "photos_in_flight_per_actor": self.in_flight,
                "actor_batch_photos": self.batch,
            }
        )

    def stand_ins(self, settings: Settings) -> Callable[[], object]:
        return lambda: start_stand_ins(settings, self.faces_by_path, self.model_name)

    def service(self, settings: Settings, ray_logs: bool) -> BenchService:
        """Ray, these settings' stand-ins under the pool's names, Serve and the app: started."""
        return BenchService(settings, ray_logs=ray_logs, before_serve=self.stand_ins(settings)).start()

    def timed(
        self,
        service: BenchService,
        storage: PhotoStorage | None,
        latency_ms: float,
        source: str = "",
        rounds: int = 1,
        profile_dir: Path | None = None,
    ) -> tuple[RunResult, RunResult, list[str]]:
        """A warm-up, then ``rounds`` timed runs (more than one: the run that cost the pipeline
        least, noise being extra); the sessions' ids for clean-up."""
        ids: list[str] = []
        try:
            _set_latency(storage, 0.0)
            warm_rows = self.rows[: min(len(self.rows), 4 * self.in_flight)]
            warm, warm_id = run_pipeline(service, self.catalog_writer, warm_rows, 0.0, "warm-up")
            ids.append(str(warm_id))
            _set_latency(storage, latency_ms / 1000)
            label = (
                f"(d) orchestration: route, stand-in actors (at least {self.in_flight} in flight and batches"
                f" of {self.batch} an actor, more as the measured rate allows)"
            ) + (f", photos from {source}" if source else "")
            timed = []
            for _ in range(rounds):
                one, sid = run_pipeline(
                    service, self.catalog_writer, self.rows, latency_ms, label, profile_dir
                )
                ids.append(str(sid))
                timed.append(one)
        finally:
            _set_latency(storage, 0.0)
        run = min(timed, key=pipeline_cpu_ms_per_photo)
        run.kind = "orchestration"
        run.extra.update(stand_in=True, actor_batch_photos=self.batch, rounds=rounds)
        if source:
            run.extra["storage"] = source
        return warm, run, ids


def run_orchestration(
    settings: Settings,
    storage: PhotoStorage,
    plan: Orchestration,
    *,
    latency_ms: float,
    profile_dir: Path | None = None,
    ray_logs: bool = False,
) -> tuple[RunResult, RunResult, list[str]]:
    """A warm-up and the timed run; both sessions' ids for clean-up."""
    service = plan.service(plan.settings(settings, f"{settings.ray_namespace}-orch", free_port()), ray_logs)
    try:
        return plan.timed(service, storage, latency_ms, profile_dir=profile_dir)
    finally:
        service.stop()


def _set_latency(storage: PhotoStorage | None, seconds: float) -> None:
    if storage is not None:
        storage.latency_s = seconds


def pipeline_cpu_ms_per_photo(run: RunResult) -> float:
    """CPU a photo of the processes a photo passes through: the embedding actors (here the
    stand-ins: download, and with S3 the signing), the replica (the coordinator), the writer and
    PostgreSQL. Ray's own processes (raylet, GCS, Serve's controller and proxy) are left out:
    they cost about the same a second whatever the storage, so a slower run would seem to cost
    more a photo for that alone."""
    load = run.load
    cores = sum(
        cores
        for key, cores in load.items()
        if key.startswith("cores:embedder-")
        or key in ("cores:ingress-replica", "cores:index-writer", "cores:postgres")
    )
    return round(cores * run.seconds / max(run.photos, 1) * 1000, 3)


def service_cpu_ms_per_photo(run: RunResult) -> float:
    """All of the service's CPU a photo, Ray's own processes included: the driver (it only
    POSTs, and hosts the loopback HTTP storage), an S3 server and a profiler left out."""
    load = run.load
    apart = sum(load.get(f"cores:{name}", 0.0) for name in ("driver", "storage", "profiler"))
    cores = max(0.0, load.get("own_cores", 0.0) - apart)
    return round(cores * run.seconds / max(run.photos, 1) * 1000, 3)


def run_storage_comparison(
    settings: Settings,
    storage: PhotoStorage,
    plan: Orchestration,
    *,
    ray_logs: bool = False,
    rounds: int = 2,
) -> tuple[RunResult, RunResult, list[str]]:
    """The orchestration run on each storage at no added latency (an S3 server has none to set):
    the photos from the plain loopback HTTP storage, then the same photos from a private bucket
    of a real S3 server on loopback (SeaweedFS), every GET SigV4-signed by the actors. One Ray
    cluster for both: the app is deployed again with the S3 settings and its own stand-ins (a
    namespace of their own); the S3 server runs through both, its CPU named apart."""
    port = free_port()
    with LocalS3Server() as s3:
        for path in plan.faces_by_path:  # every preview the catalog rows name
            data = storage.files.get(path)
            assert data is not None, path
            s3.put(path, data)
        assert s3.pid is not None
        s3_settings = plan.settings(s3.settings(settings), f"{settings.ray_namespace}-s3", port)
        service = plan.service(plan.settings(settings, f"{settings.ray_namespace}-plain", port), ray_logs)
        service.watched = {"storage": s3.pid}
        try:
            _, plain, ids = plan.timed(service, storage, 0.0, PLAIN_SOURCE, rounds)
            service.redeploy(s3_settings, before_serve=plan.stand_ins(s3_settings))
            _, signed, more = plan.timed(service, None, 0.0, S3_SOURCE, rounds)
        finally:
            service.stop()
    plain.kind, signed.kind = "orchestration_plain", "orchestration_s3"
    return plain, signed, ids + more


PLAIN_SOURCE = "http (loopback PhotoStorage, plain GETs)"
S3_SOURCE = "s3 (SeaweedFS on loopback, SigV4-signed GETs)"


def storage_figures(plain: RunResult, signed: RunResult) -> dict[str, object]:
    plain_cpu, signed_cpu = pipeline_cpu_ms_per_photo(plain), pipeline_cpu_ms_per_photo(signed)
    plain_all, signed_all = service_cpu_ms_per_photo(plain), service_cpu_ms_per_photo(signed)
    return {
        "orchestration_plain_photos_per_s": round(plain.photos_per_s, 1),
        "orchestration_s3_photos_per_s": round(signed.photos_per_s, 1),
        "orchestration_plain_cpu_ms_per_photo": plain_cpu,
        "orchestration_s3_cpu_ms_per_photo": signed_cpu,
        "s3_vs_plain_cpu_per_photo": _ratio(signed_cpu, plain_cpu),
        "orchestration_plain_all_cpu_ms_per_photo": plain_all,
        "orchestration_s3_all_cpu_ms_per_photo": signed_all,
        "s3_vs_plain_all_cpu_per_photo": _ratio(signed_all, plain_all),
        "s3_vs_plain_photos_per_s": _ratio(signed.photos_per_s, plain.photos_per_s),
        "orchestration_s3_server_cores": signed.load.get("cores:storage"),
        "orchestration_storage_photos": signed.photos,
        "orchestration_storage_rounds": signed.extra.get("rounds"),
    }


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def orchestration_figures(run: RunResult) -> dict[str, object]:
    return {
        "orchestration_photos_per_s": round(run.photos_per_s, 1),
        "orchestration_faces_per_s": round(run.faces_per_s, 1),
        "orchestration_photos": run.photos,
        "orchestration_latency_ms": run.latency_ms,
        "orchestration_in_flight_per_actor": run.extra.get("photos_in_flight_per_actor"),
        "orchestration_actor_batch_photos": run.extra.get("actor_batch_photos"),
    }
