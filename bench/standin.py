"""A benchmark-only stand-in for the embedding actors: the orchestration without the model.

``StandInEmbeddingActor`` answers the calls the pool makes of an
``EmbeddingActor`` (same method names), downloads every photo for real with the
production ``ImageFetcher`` (loopback storage, its latency and bandwidth cap),
and then, instead of decoding and running the model, returns the faces that
the limit run found in that photo. What is left to measure is everything
around the model: Serve, the coordinator, the Ray calls, the writer,
PostgreSQL and the downloads.

It cannot be selected by any setting: nothing in ``facepass/``, ``actors/`` or
``serve_app/`` refers to it. The benchmark creates these actors itself, under
the pool's actor names, before the Serve app starts; the pool's
``get_if_exists`` then hands the app these instead of model-holding ones.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import ray

from actors.ray_calls import embedding_actor_name
from facepass.errors import NoFaceDetected, PhotoError
from facepass.models import DetectedFace, PhotoRef, PhotoResult
from facepass.settings import Settings
from facepass.vision.images import ImageFetcher
from facepass.wire import ResultBatch

STAND_IN_MODEL_TAG = "stand-in (precomputed faces, no decode, no model)"


def _found(result: PhotoResult, faces_by_path: dict[str, list[DetectedFace]]) -> PhotoResult:
    """The photo's result with the faces the limit run found in it (or why there are none)."""
    faces = faces_by_path.get(result.photo.preview_path)
    if faces is None:
        result.fail(PhotoError(f"no precomputed faces for {result.photo.preview_path}"))
    elif not faces:
        result.fail(NoFaceDetected())
    else:
        result.faces = list(faces)
    return result


@ray.remote
class StandInEmbeddingActor:
    def __init__(
        self, settings: Settings, faces_by_path: dict[str, list[DetectedFace]], model_name: str
    ) -> None:
        logging.getLogger("httpx").setLevel(logging.WARNING)
        self.fetcher = ImageFetcher(settings)
        self.faces_by_path = faces_by_path
        self.model_name = model_name

    async def process(self, photo: PhotoRef) -> PhotoResult:
        result = PhotoResult(photo=photo, model_name=self.model_name)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            await self.fetcher.fetch(photo.preview_path)
            result.download_ms = (loop.time() - t0) * 1000
        except PhotoError as exc:
            result.fail(exc)
            return result
        return _found(result, self.faces_by_path)

    async def process_batch(self, photos: list[PhotoRef]) -> list[PhotoResult]:
        return ResultBatch(await asyncio.gather(*(self.process(photo) for photo in photos)))

    async def embed_image(self, data: bytes) -> list[DetectedFace]:
        raise PhotoError("the stand-in embeds no uploaded image")

    async def info(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "model_name": self.model_name,
            "providers_requested": [],
            "providers_active": [STAND_IN_MODEL_TAG],
            "gpu_ids": [],
            "intra_op_threads": 0,
        }


def _as_pool(actor: Any, settings: Settings, num_cpus: float, *args: Any) -> list[Any]:
    """The pool's embedding actors, made as ``actor`` under the pool's names (after ray.init,
    before serve.run: the pool's ``get_if_exists`` then hands the app these)."""
    return [
        actor.options(
            name=embedding_actor_name(i),
            namespace=settings.ray_namespace,
            lifetime="detached",
            max_concurrency=settings.in_flight_ceiling_per_actor(),
            num_cpus=num_cpus,
            enable_task_events=settings.ray_task_events,
        ).remote(*args)
        for i in range(settings.local_pool_size())
    ]


def start_stand_ins(
    settings: Settings, faces_by_path: dict[str, list[DetectedFace]], model_name: str
) -> list[Any]:
    """Create the pool's embedding actors as stand-ins (call after ray.init, before serve.run)."""
    faces_ref = ray.put(faces_by_path)
    return _as_pool(StandInEmbeddingActor, settings, settings.cpus_per_actor, settings, faces_ref, model_name)


@ray.remote
class VirtualGpuActor:
    """Benchmark-only: an embedding actor shaped like a GPU ("a virtual GPU").

    A batch of n photos costs ``t0_s + t1_s * n`` of waiting and no CPU, one batch at a time
    (a device runs one batch after another), and answers the faces the limit run found; the
    photo bytes are held inside it (no download), so what is measured is everything between the
    route and the writer: Serve, the coordinator, the pool, Ray calls, the writer, PostgreSQL.
    Many fit on a 2-core machine. Like ``StandInEmbeddingActor`` nothing in the service refers
    to it; the bench creates it under the pool's actor names before the app starts.

    The device keeps its own clock, as a GPU runs the work queued on its stream: a batch starts
    when it arrives or when the one before it ends on the device, whichever is later, and the
    call answers at its end. So the device idles only while no batch is there; the host process
    waking late (eight of them and the whole service share this machine's two cores) delays an
    answer, not the next batch. With a lock around a sleep instead, each batch's start waited
    for the process to wake (~4 ms a batch here): the devices looked 0.93-0.97 busy with
    batches queued behind them all the time.
    """

    def __init__(
        self, faces_by_path: dict[str, list[DetectedFace]], model_name: str, t0_s: float, t1_s: float
    ) -> None:
        self.faces_by_path = faces_by_path
        self.model_name = model_name
        self.t0_s, self.t1_s = t0_s, t1_s
        self.free_at = 0.0  # monotonic time the device ends the last batch queued on it
        self.busy_s = 0.0
        self.photos = 0
        self.batches = 0
        self.first_start = self.last_end = 0.0  # wall clock of the device's first and last batch

    async def process_batch(self, photos: list[PhotoRef]) -> list[PhotoResult]:
        now = time.monotonic()
        cost = self.t0_s + self.t1_s * len(photos)
        start = max(now, self.free_at)
        self.free_at = start + cost
        wall = time.time() - now  # monotonic -> wall clock
        self.first_start = self.first_start or start + wall
        self.last_end = self.free_at + wall
        self.busy_s += cost
        self.photos += len(photos)
        self.batches += 1
        await asyncio.sleep(self.free_at - now)
        return ResultBatch(
            _found(PhotoResult(photo=photo, model_name=self.model_name), self.faces_by_path)
            for photo in photos
        )

    async def embed_image(self, data: bytes) -> list[DetectedFace]:
        raise PhotoError("the virtual GPU embeds no uploaded image")

    async def info(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "model_name": self.model_name,
            "providers_requested": [],
            "providers_active": [f"virtual GPU: {self.t0_s * 1000:g} ms + {self.t1_s * 1000:g} ms a photo"],
            "gpu_ids": [],
            "intra_op_threads": 0,
        }

    async def usage(self) -> dict[str, float]:
        """Busy seconds, photos and batches so far (the bench reads them before and after a run),
        and the wall clock of the first and last batch since the last reading."""
        usage = {
            "busy_s": self.busy_s,
            "photos": float(self.photos),
            "batches": float(self.batches),
            "first_start": self.first_start,
            "last_end": self.last_end,
        }
        self.first_start = 0.0
        return usage


def start_virtual_gpus(
    settings: Settings,
    faces_by_path: dict[str, list[DetectedFace]],
    model_name: str,
    *,
    t0_s: float,
    t1_s: float,
) -> list[Any]:
    """Create the pool's embedding actors as virtual GPUs (after ray.init, before serve.run)."""
    return _as_pool(VirtualGpuActor, settings, 0, ray.put(faces_by_path), model_name, t0_s, t1_s)
