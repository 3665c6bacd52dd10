"""One photo through fetch -> decode -> detect -> embed, as plain code.

The embedding actor wraps ``PhotoPipeline``; ``LocalProcessor`` runs the same
code in-process (unit tests, the seed-style baseline of the benchmark).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from facepass.errors import IndexCannotWrite, NoFaceDetected, NotWritten, PhotoError
from facepass.index.store import PruneResult, VectorStore
from facepass.index.writer import GroupCommitter
from facepass.models import DetectedFace, Fence, PhotoOutcome, PhotoRef, PhotoResult
from facepass.runs.reindex import OneByOne
from facepass.settings import Settings
from facepass.vision.faces import FaceEmbedder
from facepass.vision.images import BgrImage, ImageFetcher, decode_image

log = logging.getLogger(__name__)


@dataclass(slots=True)
class DecodedPhoto:
    """A photo fetched and decoded (or the error that stopped it), ready for the model."""

    photo: PhotoRef
    image: BgrImage | None = None
    error: PhotoError | None = None
    error_code: str | None = None
    error_transient: bool | None = None
    download_ms: float = 0.0
    decode_ms: float = 0.0


class ImageLoader:
    """Fetch + decode, no model: the CPU half of the pipeline. Runs inside the embedding
    actor by default, or in separate decoder actors (FACEPASS_DECODE_ACTORS) on GPU clusters."""

    def __init__(self, settings: Settings, decode_threads: int = 1) -> None:
        self.settings = settings
        self.fetcher = ImageFetcher(settings)
        self._decode = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="facepass-decode")

    async def load(self, photo: PhotoRef) -> DecodedPhoto:
        """Never raises for a bad photo: the error travels with the result."""
        decoded = DecodedPhoto(photo)
        t0 = time.perf_counter()
        try:
            data = await self.fetcher.fetch(photo.preview_path)
            t1 = time.perf_counter()
            decoded.download_ms = (t1 - t0) * 1000
            loop = asyncio.get_running_loop()
            decoded.image = await loop.run_in_executor(
                self._decode, decode_image, data, self.settings.max_image_pixels
            )
            decoded.decode_ms = (time.perf_counter() - t1) * 1000
        except PhotoError as exc:
            decoded.error = exc
        except Exception as exc:  # an unexpected library error: report it, retry next run
            log.exception("loading %s failed", photo.filename)
            decoded.error = PhotoError(f"{type(exc).__name__}: {exc}")
            decoded.error_code, decoded.error_transient = "processing_error", True
        return decoded

    async def aclose(self) -> None:
        await self.fetcher.aclose()
        self._decode.shutdown(wait=False)


class PhotoPipeline:
    """Downloads overlap freely; decode + inference run on one thread, one photo at a time,
    so a worker keeps its core busy while the next photos download."""

    def __init__(self, settings: Settings, embedder: FaceEmbedder | None = None) -> None:
        self.settings = settings
        self.embedder = embedder or FaceEmbedder(settings)
        self.loader = ImageLoader(settings)
        self.model_batch = model_batch_photos(settings)
        self._compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="facepass-infer")

    @property
    def model_name(self) -> str:
        return self.embedder.model_name

    def load(self) -> None:
        self.embedder.load()

    def _result(self, photo: PhotoRef) -> PhotoResult:
        """A photo's result, named for the generation and the build that make its vectors."""
        return PhotoResult(photo=photo, model_name=self.model_name, variant=self.embedder.variant)

    def _decode_and_embed(self, data: bytes) -> list[DetectedFace]:
        image = decode_image(data, self.settings.max_image_pixels)
        return self.embedder.embed(image)

    async def embed_bytes(self, data: bytes) -> list[DetectedFace]:
        """Decode + embed bytes already in memory (a selfie); typed errors propagate."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._compute, self._decode_and_embed, data)

    async def run(self, photo: PhotoRef) -> PhotoResult:
        """Download (overlapping with the other photos in flight), then decode + detect +
        embed on the one compute thread, as the bare model does. Never raises for a bad photo.

        On CPU, a decode thread of its own only competes with inference for the same core
        and holds decoded images (MBs) instead of JPEG bytes (KBs) for every photo waiting.
        With a GPU (and no decoder actors) decoding ahead on its own thread keeps the GPU fed.
        """
        if self.settings.uses_gpu:
            return await self.embed_decoded(await self.loader.load(photo))
        result = self._result(photo)
        data = await self._fetch(result)
        if data is None:
            return result
        t1 = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            faces = await loop.run_in_executor(self._compute, self._decode_and_embed, data)
        except Exception as exc:
            _settle(result, exc)
            return result
        _settle(result, faces)
        result.inference_ms = (time.perf_counter() - t1) * 1000
        return result

    async def run_batch(self, photos: list[PhotoRef]) -> list[PhotoResult]:
        """Several photos: their downloads overlap; with ``model_batch`` > 1 the model then
        sees them together (one detector call per ``model_batch`` photos, one recognizer call
        for all their faces). Never raises for a bad photo."""
        if self.model_batch <= 1:
            return list(await asyncio.gather(*(self.run(photo) for photo in photos)))
        if self.settings.uses_gpu:
            decoded = await asyncio.gather(*(self.loader.load(photo) for photo in photos))
            return await self.embed_decoded_batch(list(decoded))
        results = [self._result(photo) for photo in photos]
        fetched = await asyncio.gather(*(self._fetch(result) for result in results))
        ready = [(result, data) for result, data in zip(results, fetched, strict=True) if data is not None]
        if ready:
            t0 = time.perf_counter()
            loop = asyncio.get_running_loop()
            outcomes = await loop.run_in_executor(
                self._compute, self._decode_and_embed_batch, [data for _, data in ready]
            )
            per_photo_ms = (time.perf_counter() - t0) * 1000 / len(ready)
            for (result, _), outcome in zip(ready, outcomes, strict=True):
                _settle(result, outcome)
                result.inference_ms = per_photo_ms
        return results

    async def _fetch(self, result: PhotoResult) -> bytes | None:
        t0 = time.perf_counter()
        try:
            data = await self.loader.fetcher.fetch(result.photo.preview_path)
        except PhotoError as exc:
            result.fail(exc)
            return None
        except Exception as exc:  # an unexpected library error: report it, retry next run
            log.exception("fetching %s failed", result.photo.filename)
            result.fail(PhotoError(f"{type(exc).__name__}: {exc}"), code="processing_error", transient=True)
            return None
        result.download_ms = (time.perf_counter() - t0) * 1000
        return data

    def _decode_and_embed_batch(self, datas: list[bytes]) -> list[list[DetectedFace] | Exception]:
        """Decode each photo (a bad one fails alone), then the model over the good ones."""
        images: list[BgrImage] = []
        outcomes: list[list[DetectedFace] | Exception] = []
        for data in datas:
            try:
                images.append(decode_image(data, self.settings.max_image_pixels))
                outcomes.append([])
            except Exception as exc:
                outcomes.append(exc)
        faces = iter(self._embed_images(images))
        return [next(faces) if not isinstance(outcome, Exception) else outcome for outcome in outcomes]

    def _embed_images(self, images: list[BgrImage]) -> list[list[DetectedFace] | Exception]:
        """``model_batch`` photos per model call; if a call fails, its photos go one by one
        so that one bad photo does not fail the others."""
        outcomes: list[list[DetectedFace] | Exception] = []
        for start in range(0, len(images), self.model_batch):
            chunk = images[start : start + self.model_batch]
            try:
                outcomes.extend(self.embedder.embed_batch(chunk))
            except Exception:
                log.exception("a batch of %d photos failed in the model; retrying one by one", len(chunk))
                for image in chunk:
                    try:
                        outcomes.extend(self.embedder.embed_batch([image]))
                    except Exception as exc:
                        outcomes.append(exc)
        return outcomes

    async def embed_decoded_batch(self, decoded: list[DecodedPhoto]) -> list[PhotoResult]:
        """The model half for several decoded photos at once (see ``run_batch``)."""
        if self.model_batch <= 1:
            return list(await asyncio.gather(*(self.embed_decoded(d) for d in decoded)))
        results = []
        images: list[BgrImage] = []
        for item in decoded:
            result = self._result(item.photo)
            result.download_ms = item.download_ms
            results.append(result)
            if item.error is not None or item.image is None:
                result.fail(
                    item.error or PhotoError("no image"), code=item.error_code, transient=item.error_transient
                )
            else:
                images.append(item.image)
        if images:
            t0 = time.perf_counter()
            loop = asyncio.get_running_loop()
            outcomes = iter(await loop.run_in_executor(self._compute, self._embed_images, images))
            per_photo_ms = (time.perf_counter() - t0) * 1000 / len(images)
            for item, result in zip(decoded, results, strict=True):
                if result.error_code is None:
                    _settle(result, next(outcomes))
                    result.inference_ms = item.decode_ms + per_photo_ms
        return results

    async def embed_decoded(self, decoded: DecodedPhoto) -> PhotoResult:
        """The model half: faces of a decoded photo (or its loading error, passed on)."""
        result = self._result(decoded.photo)
        result.download_ms = decoded.download_ms
        if decoded.error is not None or decoded.image is None:
            error = decoded.error or PhotoError("no image")
            result.fail(error, code=decoded.error_code, transient=decoded.error_transient)
            return result
        t0 = time.perf_counter()
        try:
            loop = asyncio.get_running_loop()
            result.faces = await loop.run_in_executor(self._compute, self.embedder.embed, decoded.image)
        except PhotoError as exc:
            result.fail(exc)
        except Exception as exc:  # an unexpected library error: report it, retry next run
            log.exception("processing %s failed", decoded.photo.filename)
            result.fail(PhotoError(f"{type(exc).__name__}: {exc}"), code="processing_error", transient=True)
        result.inference_ms = decoded.decode_ms + (time.perf_counter() - t0) * 1000
        return result

    async def aclose(self) -> None:
        await self.loader.aclose()
        self._compute.shutdown(wait=False)


class LocalProcessor(OneByOne):
    """A ``PhotoProcessor`` in this process: pipeline, then the store's group commit, no Ray
    (photo by photo: the committer groups whatever waits)."""

    def __init__(self, pipeline: PhotoPipeline, store: VectorStore, capacity: int = 4) -> None:
        self.pipeline = pipeline
        self.store = store
        self.committer = GroupCommitter(store)
        self._capacity = capacity

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def model_name(self) -> str:
        return self.pipeline.model_name

    async def process(self, photo: PhotoRef) -> PhotoOutcome:
        result = await self.pipeline.run(photo)
        try:
            [outcome] = await self.committer.write([result])
        except IndexCannotWrite as refused:  # as the pool says it: the run stops on it
            return PhotoOutcome.failed_write(result, NotWritten(refused.detail))
        return outcome

    async def prune(
        self, session_id: uuid.UUID, photo_ids: list[uuid.UUID], fence: Fence | None = None
    ) -> PruneResult:
        return await self.committer.prune(session_id, photo_ids, fence)


def model_batch_photos(settings: Settings) -> int:
    """Photos per model call: the setting, or auto: the actor's batch on GPU, one photo per
    call on CPU (batched measured no faster there, with either runtime: see docs/model.md's
    "Photos batched through the model")."""
    if settings.model_batch_photos:
        return settings.model_batch_photos
    return settings.actor_batch_photos if settings.uses_gpu else 1


def _settle(result: PhotoResult, outcome: list[DetectedFace] | Exception) -> None:
    """A photo's model outcome into its result: faces, no face, or the error (typed or not)."""
    if isinstance(outcome, PhotoError):
        result.fail(outcome)
    elif isinstance(outcome, Exception):
        log.error("processing %s failed", result.photo.filename, exc_info=outcome)
        result.fail(
            PhotoError(f"{type(outcome).__name__}: {outcome}"), code="processing_error", transient=True
        )
    elif not outcome:
        result.fail(NoFaceDetected())
    else:
        result.faces = outcome
