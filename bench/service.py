"""(c) ours: the real service (Ray + Serve + the pool) started the way the integration tests do."""

from __future__ import annotations

import math
import os
import socket
import time
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import httpx
import psutil
import ray
from ray import serve

from actors.ray_calls import embedding_actor_name, kill_pool_actors
from bench.cpu import OtherLoad
from bench.memory import RssSampler
from bench.profiling import SpyRecorder
from bench.results import RunResult
from facepass.demo.scenario import CatalogWriter
from facepass.settings import Settings
from serve_app.ingress import build_app

APP_NAME = "facepass"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BenchService:
    """ray.init + serve.start + serve.run(build_app(settings)); ``stop()`` tears all of it down."""

    def __init__(
        self,
        settings: Settings,
        *,
        ray_logs: bool = False,
        before_serve: Callable[[], object] | None = None,
    ) -> None:
        self.settings = settings
        self.before_serve = before_serve  # e.g. bench.standin.start_stand_ins
        self.base_url = f"http://{settings.http_host}:{settings.http_port}"
        self.ray_logs = ray_logs
        self.actor_pids: dict[str, int] = {}
        # Other processes whose CPU a run names apart (e.g. {"storage": pid of an S3 server}).
        self.watched: dict[str, int] = {}
        self.startup_s: dict[str, float] = {}
        self._http = httpx.Client(timeout=httpx.Timeout(None, connect=30), trust_env=False)

    def start(self, ready_timeout_s: float = 600) -> BenchService:
        s = self.settings
        num_cpus = max(os.cpu_count() or 1, math.ceil(s.local_pool_size() * s.cpus_per_actor))
        t0 = time.perf_counter()
        ray.init(
            address="local",  # always a cluster of our own, never one that `ray start` left running
            namespace=s.ray_namespace,
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=self.ray_logs,  # the replica logs a line per photo: noise at N=10,000
        )
        t1 = time.perf_counter()
        if self.before_serve is not None:
            self.before_serve()
        serve.start(http_options=s.serve_http_options())
        t2 = time.perf_counter()
        serve.run(build_app(s), name=APP_NAME, route_prefix="/")
        t3 = time.perf_counter()
        self._wait_healthy(ready_timeout_s)
        t4 = time.perf_counter()
        self.actor_pids = self._actor_pids()
        self.startup_s = {
            "ray_init": round(t1 - t0, 1),
            "serve_start": round(t2 - t1, 1),
            "serve_run": round(t3 - t2, 1),
            "pool_healthy": round(t4 - t3, 1),
        }
        return self

    def redeploy(
        self,
        settings: Settings,
        before_serve: Callable[[], object] | None = None,
        ready_timeout_s: float = 600,
    ) -> BenchService:
        """The app again with other settings (another storage) on the same Ray cluster: one Ray
        session for runs that are compared (no shutdown and start between them). The settings'
        namespace should be another: its pool is created by ``before_serve`` once the earlier
        namespace's pool is killed."""
        earlier = self.settings
        assert settings.http_port == earlier.http_port, "Serve's HTTP port is fixed at its start"
        kill_pool_actors(earlier)  # first: the new pool needs the CPUs the earlier one holds
        self.settings = settings
        if before_serve is not None:
            before_serve()
        serve.run(build_app(settings), name=APP_NAME, route_prefix="/")
        self._wait_healthy(ready_timeout_s)
        self.actor_pids = self._actor_pids()
        return self

    def _wait_healthy(self, timeout_s: float) -> None:
        """/healthz answers 200 once an embedding actor is up; wait until every one is."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            try:
                # With a key: the pool's details are for callers that hold one.
                headers = self.settings.api_headers()
                response = self._http.get(f"{self.base_url}/healthz", headers=headers, timeout=30)
                pool = response.json().get("pool") if response.status_code == 200 else None
                if isinstance(pool, dict) and pool.get("ready_actors", 0) >= pool.get("planned_actors", 1):
                    return  # every actor of the pool has its model loaded
                last = f"{response.status_code} {response.text[:300]}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.5)
        raise RuntimeError(f"service not healthy after {timeout_s:g}s: {last}")

    def _actor_pids(self) -> dict[str, int]:
        pids: dict[str, int] = {}
        for i in range(self.settings.local_pool_size()):
            handle = ray.get_actor(embedding_actor_name(i), namespace=self.settings.ray_namespace)
            info: Any = ray.get(handle.info.remote())
            pids[f"embedder-{i}"] = int(info["pid"])
        # The replica (where the coordinator runs) and the writer, found by their process titles
        # among this driver's descendants (other Ray clusters on the machine are not ours).
        # After a redeploy the earlier replica may still be stopping: the newest process wins.
        newest: dict[str, tuple[float, int]] = {}
        for proc in psutil.Process().children(recursive=True):
            try:
                title = " ".join(proc.cmdline())
                born = proc.create_time()
            except psutil.Error:
                continue
            if "ServeReplica:" in title and "FacePassIngress" in title:
                role = "ingress-replica"
            elif "IndexWriter" in title:
                role = "index-writer"
            else:
                continue
            if born >= newest.get(role, (-1.0, 0))[0]:
                newest[role] = (born, proc.pid)
        return pids | {role: pid for role, (_, pid) in newest.items()}

    def pids(self) -> dict[str, int]:
        return {"driver": os.getpid(), **self.actor_pids, **self.watched}

    def reindex(self, session_id: uuid.UUID, photos: int, mode: str = "missing") -> dict[str, Any]:
        """POST the route; the answer may take a while (a generous 300 s + 2 s per photo)."""
        url = f"{self.base_url}/api/v1/faces/force-reindex-session/{session_id}"
        timeout = httpx.Timeout(300 + 2.0 * photos, connect=30)
        response = self._http.post(url, params={"mode": mode}, timeout=timeout)
        if response.status_code != 200:
            raise RuntimeError(f"reindex of {session_id}: HTTP {response.status_code} {response.text[:500]}")
        body: dict[str, Any] = response.json()
        return body

    def stop(self) -> None:
        self._http.close()
        if not ray.is_initialized():
            return
        try:
            serve.shutdown()  # type: ignore[no-untyped-call]
        finally:
            kill_pool_actors(self.settings)
            ray.shutdown()


def _report_extra(body: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "session_id",
        "total_photos",
        "processed_photos",
        "successful_photos",
        "skipped_photos",
        "failed_photos",
        "processing_time_ms",
        "final_embedding_count",
        "faces_indexed",
        "no_face_photos",
        "retry_photos",
        "error_codes",
        "errors",
        "model_name",
    )
    return {k: body[k] for k in keys if k in body}


def run_pipeline(
    service: BenchService,
    catalog_writer: CatalogWriter,
    names_paths: list[tuple[str, str]],
    latency_ms: float,
    label: str = "(c) ours: force-reindex route over HTTP, Ray Serve + actor pool",
    profile_dir: Path | None = None,
) -> tuple[RunResult, uuid.UUID]:
    """A fresh session of the given photos, indexed by one POST; timed from request to answer.
    With ``profile_dir``, py-spy samples every process of the pipeline meanwhile."""
    session_id = catalog_writer.add_session(f"bench pipeline {latency_ms:g}ms {uuid.uuid4().hex[:6]}")
    catalog_writer.add_photos(session_id, names_paths)
    pids = service.pids()
    spy = (
        SpyRecorder(pids, profile_dir, f"pipeline-{len(names_paths)}-{latency_ms:g}ms")
        if profile_dir
        else None
    )
    # The profiler outermost: it is still running when the load is read, so its CPU shows apart.
    with spy or nullcontext(), RssSampler(pids) as memory, OtherLoad(pids) as load:
        t0 = time.perf_counter()
        body = service.reindex(session_id, len(names_paths))
        elapsed = time.perf_counter() - t0
    extra = _report_extra(body)
    if spy is not None:
        extra["profile"] = spy.summary()
    extra.update(
        embed_actors=service.settings.local_pool_size(),
        photos_in_flight_per_actor=service.settings.photos_in_flight_per_actor,
        ort_threads_per_actor=service.settings.intra_op_threads(),
    )
    run = RunResult(
        kind="pipeline",
        label=label,
        photos=int(body.get("processed_photos", 0)),
        faces=int(body.get("final_embedding_count", 0)),
        seconds=elapsed,
        latency_ms=latency_ms,
        session_photos=len(names_paths),
        memory=memory.summary(),
        load=load.figures(),
        extra=extra,
    )
    return run, session_id


def run_rerun(service: BenchService, session_id: uuid.UUID, photos: int, latency_ms: float) -> RunResult:
    """A second call on a session that is fully indexed: it must skip everything."""
    with RssSampler(service.pids()) as memory:
        t0 = time.perf_counter()
        body = service.reindex(session_id, photos)
        elapsed = time.perf_counter() - t0
    return RunResult(
        kind="pipeline_rerun",
        label="(c) rerun on the already-indexed session",
        photos=int(body.get("processed_photos", 0)),
        faces=int(body.get("final_embedding_count", 0)),
        seconds=elapsed,
        latency_ms=latency_ms,
        session_photos=int(body.get("total_photos", 0)),
        memory=memory.summary(),
        extra=_report_extra(body),
    )


def seed_indexed_session(settings: Settings, catalog_writer: CatalogWriter, photos: int) -> uuid.UUID:
    """A session of ``photos`` catalog rows that the index already holds (one face each, by
    the current model), written straight into both databases: the rerun path reads exactly
    these tables."""
    import numpy as np

    from facepass.db import make_engine
    from facepass.index.store import face_embeddings, indexed_photos
    from facepass.vision.pack import ModelPack

    model_name = ModelPack.from_settings(settings).name  # another model's rows would be stale

    sid = catalog_writer.add_session(f"bench rerun {photos}")
    refs = catalog_writer.add_photos(
        sid, [(f"r{i:05d}.jpg", f"rerun/{sid}/r{i:05d}.jpg") for i in range(photos)]
    )
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((photos, 512)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    engine = make_engine(settings.local_url())
    with engine.begin() as conn:
        for start in range(0, photos, 1000):
            chunk = refs[start : start + 1000]
            conn.execute(
                indexed_photos.insert(),
                [
                    {
                        "photo_id": r.id,
                        "session_id": sid,
                        "status": "indexed",
                        "face_count": 1,
                        "model_name": model_name,
                    }
                    for r in chunk
                ],
            )
            conn.execute(
                face_embeddings.insert(),
                [
                    {
                        "session_id": sid,
                        "photo_id": r.id,
                        "face_index": 0,
                        "bbox_x1": 0.0,
                        "bbox_y1": 0.0,
                        "bbox_x2": 1.0,
                        "bbox_y2": 1.0,
                        "det_score": 0.9,
                        "embedding": vectors[start + k],
                        "model_name": model_name,
                    }  # fmt: skip
                    for k, r in enumerate(chunk)
                ],
            )
    engine.dispose()
    return sid


def run_rerun_large(service: BenchService, session_id: uuid.UUID, photos: int) -> RunResult:
    """The route on a fully indexed session of ``photos`` photos: plan, skip all, count."""
    with RssSampler(service.pids()) as memory:
        t0 = time.perf_counter()
        body = service.reindex(session_id, photos)
        elapsed = time.perf_counter() - t0
    if body.get("skipped_photos") != photos or body.get("processed_photos") != 0:
        raise RuntimeError(f"rerun of an indexed session processed photos: {body}")
    return RunResult(
        kind="pipeline_rerun_large",
        label=f"(c) rerun on an indexed session of {photos} photos",
        photos=0,
        faces=int(body.get("final_embedding_count", 0)),
        seconds=elapsed,
        latency_ms=0.0,
        session_photos=photos,
        memory=memory.summary(),
        extra=_report_extra(body),
    )
