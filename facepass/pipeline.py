"""One photo through fetch -> decode -> detect -> embed, as plain code.

The embedding actor wraps ``PhotoPipeline``; ``LocalProcessor`` runs the same
code in-process (unit tests, the seed-style baseline of the benchmark).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from facepass.errors import PhotoError
from facepass.faces import FaceEmbedder
from facepass.images import ImageFetcher, decode_image
from facepass.models import DetectedFace, PhotoOutcome, PhotoRef, PhotoResult
from facepass.settings import Settings
from facepass.store import VectorStore

log = logging.getLogger(__name__)


class PhotoPipeline:
    """Downloads overlap freely; decode + inference run one at a time on a worker thread,
    so a worker keeps its cores busy while the next photos are still downloading."""

    def __init__(self, settings: Settings, embedder: FaceEmbedder | None = None) -> None:
        self.settings = settings
        self.embedder = embedder or FaceEmbedder(settings)
        self.fetcher = ImageFetcher(settings)
        self._compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="facepass-infer")

    @property
    def model_name(self) -> str:
        return self.embedder.model_name

    def load(self) -> None:
        self.embedder.load()

    def _decode_and_embed(self, data: bytes) -> list[DetectedFace]:
        image = decode_image(data, self.settings.max_image_pixels)
        return self.embedder.embed(image)

    async def embed_bytes(self, data: bytes) -> list[DetectedFace]:
        """Decode + embed bytes already in memory (a selfie); typed errors propagate."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._compute, self._decode_and_embed, data)

    async def run(self, photo: PhotoRef) -> PhotoResult:
        """Never raises for a bad photo: the error goes into the result."""
        result = PhotoResult(photo=photo, model_name=self.model_name)
        t0 = time.perf_counter()
        try:
            data = await self.fetcher.fetch(photo.preview_path)
            t1 = time.perf_counter()
            result.download_ms = (t1 - t0) * 1000
            loop = asyncio.get_running_loop()
            result.faces = await loop.run_in_executor(self._compute, self._decode_and_embed, data)
            result.inference_ms = (time.perf_counter() - t1) * 1000
        except PhotoError as exc:
            result.fail(exc)
        except Exception as exc:  # an unexpected library error: report it, retry next run
            log.exception("processing %s failed", photo.filename)
            result.fail(PhotoError(f"{type(exc).__name__}: {exc}"), code="processing_error", transient=True)
        return result

    async def aclose(self) -> None:
        await self.fetcher.aclose()
        self._compute.shutdown(wait=False)


class LocalProcessor:
    """A ``PhotoProcessor`` in this process: pipeline, then the store, no Ray."""

    def __init__(self, pipeline: PhotoPipeline, store: VectorStore, capacity: int = 4) -> None:
        self.pipeline = pipeline
        self.store = store
        self._capacity = capacity

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def model_name(self) -> str:
        return self.pipeline.model_name

    async def process(self, photo: PhotoRef) -> PhotoOutcome:
        result = await self.pipeline.run(photo)
        write_ms = await asyncio.to_thread(self.store.write_result, result)
        return PhotoOutcome.from_result(result, write_ms)
