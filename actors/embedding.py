"""EmbeddingActor: one loaded InsightFace model; fetch -> decode -> detect -> embed."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray

from actors.metrics import model_metrics
from facepass.index.trials import trial_store
from facepass.models import DetectedFace, PhotoRef, PhotoResult
from facepass.settings import Settings
from facepass.vision.faces import FaceEmbedder
from facepass.vision.heap import HeapTrimmer
from facepass.vision.pipeline import DecodedPhoto, PhotoPipeline
from facepass.wire import ResultBatch


@ray.remote
class EmbeddingActor:
    """Async actor: up to ``photos_in_flight_per_actor`` photos download at once while
    the model works on one, so storage latency hides behind inference."""

    def __init__(self, settings: Settings, idle_exit_s: float | None = None) -> None:
        logging.basicConfig(level=logging.INFO)
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per download is noise
        self.pipeline = PhotoPipeline(settings, FaceEmbedder(settings, trials=trial_store(settings)))
        self.pipeline.load()
        model_metrics().loaded(self.pipeline.embedder)
        self._trim = HeapTrimmer()
        # An actor beyond the pool's minimum leaves when it had no work this long, so its
        # node can go idle (and the autoscaler can take it away).
        self._idle_exit_s = idle_exit_s
        self._busy = 0
        self._photos_done = 0
        self._last_work = time.monotonic()
        self._watch: asyncio.Task[None] | None = None

    @contextmanager
    def _working(self) -> Iterator[None]:
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1
            self._last_work = time.monotonic()

    def _start_watch(self) -> None:
        if self._idle_exit_s is not None and self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(self._exit_when_idle(self._idle_exit_s))

    async def _exit_when_idle(self, idle_exit_s: float) -> None:
        me = ray.get_runtime_context().current_actor
        while True:
            await asyncio.sleep(min(10.0, idle_exit_s / 4))
            if self._busy == 0 and time.monotonic() - self._last_work >= idle_exit_s:
                await me.exit_if_idle.remote()

    async def exit_if_idle(self) -> None:
        """Exit for good (no restart) if still idle: called by the actor's own idle timer."""
        if self._idle_exit_s is not None and self._busy == 0:
            if time.monotonic() - self._last_work >= self._idle_exit_s:
                logging.getLogger(__name__).info("idle for %.0fs: leaving the pool", self._idle_exit_s)
                ray.actor.exit_actor()  # type: ignore[no-untyped-call]

    async def _one(self, photo: PhotoRef) -> PhotoResult:
        with self._trim.photo():
            return await self.pipeline.run(photo)

    async def process_batch(self, photos: list[PhotoRef]) -> list[PhotoResult]:
        """Several photos in one call (one Ray round trip); their downloads overlap, and with
        model batching (FACEPASS_MODEL_BATCH_PHOTOS, auto on GPU) they share model calls."""
        with self._working():
            if self.pipeline.model_batch <= 1:
                results = list(await asyncio.gather(*(self._one(photo) for photo in photos)))
            else:
                with self._trim.photo():
                    results = await self.pipeline.run_batch(photos)
        self._photos_done += len(results)
        return ResultBatch(results)  # to the writer as columns (facepass.wire)

    async def _one_decoded(self, decoded: DecodedPhoto) -> PhotoResult:
        """The model half only: the photo was fetched and decoded by a decoder actor."""
        with self._trim.photo():
            return await self.pipeline.embed_decoded(decoded)

    async def embed_decoded_batch(self, decoded: list[DecodedPhoto]) -> list[PhotoResult]:
        with self._working():
            if self.pipeline.model_batch <= 1:
                results = list(await asyncio.gather(*(self._one_decoded(d) for d in decoded)))
            else:
                with self._trim.photo():
                    results = await self.pipeline.embed_decoded_batch(decoded)
        self._photos_done += len(results)
        return ResultBatch(results)

    async def embed_image(self, data: bytes) -> list[DetectedFace]:
        """Faces of an uploaded image (a selfie); raises the typed PhotoError on bad input."""
        with self._working():
            return await self.pipeline.embed_bytes(data)

    async def info(self) -> dict[str, Any]:
        self._start_watch()  # the pool pings every new actor: its idle timer starts here
        embedder = self.pipeline.embedder
        return {
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "photos_done": self._photos_done,
            "model_name": embedder.model_name,
            "providers_requested": embedder.requested_providers,
            "providers_active": embedder.active_providers,
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "intra_op_threads": embedder.threads,
            "runtime": embedder.runtime,
            "variant": embedder.variant,
            "variant_requested": embedder.requested_variant,
            # The sharing gate's verdict on this build (None: the reference build needs none).
            "gate": embedder.gate.as_json() if embedder.gate else None,
            # Which variant runs and why: measured here, kept from an earlier load of this kind
            # of machine, or pinned; the timings and verdicts behind it (issue 31).
            "variant_choice": embedder.choice.as_json() if embedder.choice else None,
            "model_batch_photos": self.pipeline.model_batch,
        }
