"""EmbeddingActor: one loaded InsightFace model; fetch -> decode -> detect -> embed."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import ray

from facepass.models import DetectedFace, PhotoRef, PhotoResult
from facepass.settings import Settings
from facepass.vision.heap import HeapTrimmer
from facepass.vision.pipeline import DecodedPhoto, PhotoPipeline


@ray.remote
class EmbeddingActor:
    """Async actor: up to ``photos_in_flight_per_actor`` photos download at once while
    the model works on one, so storage latency hides behind inference."""

    def __init__(self, settings: Settings) -> None:
        logging.basicConfig(level=logging.INFO)
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per download is noise
        self.pipeline = PhotoPipeline(settings)
        self.pipeline.load()
        self._trim = HeapTrimmer()

    async def process(self, photo: PhotoRef) -> PhotoResult:
        with self._trim.photo():
            return await self.pipeline.run(photo)

    async def process_batch(self, photos: list[PhotoRef]) -> list[PhotoResult]:
        """Several photos in one call (one Ray round trip); their downloads overlap, and with
        model batching (FACEPASS_MODEL_BATCH_PHOTOS, auto on GPU) they share model calls."""
        if self.pipeline.model_batch <= 1:
            return list(await asyncio.gather(*(self.process(photo) for photo in photos)))
        with self._trim.photo():
            return await self.pipeline.run_batch(photos)

    async def embed_decoded(self, decoded: DecodedPhoto) -> PhotoResult:
        """The model half only: the photo was fetched and decoded by a decoder actor."""
        with self._trim.photo():
            return await self.pipeline.embed_decoded(decoded)

    async def embed_decoded_batch(self, decoded: list[DecodedPhoto]) -> list[PhotoResult]:
        if self.pipeline.model_batch <= 1:
            return list(await asyncio.gather(*(self.embed_decoded(d) for d in decoded)))
        with self._trim.photo():
            return await self.pipeline.embed_decoded_batch(decoded)

    async def embed_image(self, data: bytes) -> list[DetectedFace]:
        """Faces of an uploaded image (a selfie); raises the typed PhotoError on bad input."""
        return await self.pipeline.embed_bytes(data)

    async def info(self) -> dict[str, Any]:
        embedder = self.pipeline.embedder
        return {
            "pid": os.getpid(),
            "model_name": embedder.model_name,
            "providers_requested": embedder.requested_providers,
            "providers_active": embedder.active_providers,
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "intra_op_threads": embedder.threads,
            "runtime": embedder.runtime,
            "model_batch_photos": self.pipeline.model_batch,
        }
