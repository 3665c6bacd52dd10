"""facepass.vision.pipeline: one photo through fetch -> decode -> embed, never raising for a bad photo."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest

from facepass.demo import photos
from facepass.demo.storage import PhotoStorage
from facepass.index.store import VectorStore
from facepass.models import EMBEDDING_DIM, DetectedFace, PhotoOutcome, PhotoRef, PhotoResult, PhotoStatus
from facepass.settings import Settings
from facepass.vision.faces import FaceEmbedder
from facepass.vision.pipeline import LocalProcessor, PhotoPipeline


def put(storage: PhotoStorage, name: str, data: bytes | None) -> PhotoRef:
    session_id = uuid.uuid4()
    path = f"sessions/{session_id}/previews/{name}"
    if data is not None:
        storage.put(path, data)
    return PhotoRef(uuid.uuid4(), session_id, name, path)


def run(pipeline: PhotoPipeline, ref: PhotoRef) -> PhotoResult:
    async def go() -> PhotoResult:
        try:
            return await pipeline.run(ref)
        finally:
            await pipeline.aclose()

    return asyncio.run(go())


def test_group_photo(settings: Settings, storage: PhotoStorage, embedder: FaceEmbedder) -> None:
    ref = put(storage, "t1.jpg", photos.jpeg(photos.load("t1.jpg")))
    result = run(PhotoPipeline(settings, embedder), ref)
    assert result.status is PhotoStatus.INDEXED
    assert len(result.faces) == 6
    assert result.model_name == embedder.model_name
    assert result.model_name.startswith("model/scrfd_500m_bnkps+w600k_mbf#")
    assert result.variant == embedder.variant and embedder.choice is not None
    assert embedder.variant == embedder.choice.variant
    assert result.download_ms > 0 and result.inference_ms > 0
    assert all(f.embedding.shape == (EMBEDDING_DIM,) for f in result.faces)


@pytest.mark.parametrize(
    ("data", "status", "code", "message"),
    [
        (None, PhotoStatus.RETRY, "not_found", "Ошибка скачивания x.jpg: 404 Not Found"),
        (b"<html>oops</html>", PhotoStatus.FAILED, "not_an_image", None),
        (b"\xff\xd8\xff\xe0" + b"\x00junk" * 100, PhotoStatus.FAILED, "not_an_image", None),
        ("mask", PhotoStatus.NO_FACE, "no_face", "Лицо не обнаружено в фото x.jpg"),
    ],
)
def test_bad_photos_become_results(
    settings: Settings,
    storage: PhotoStorage,
    embedder: FaceEmbedder,
    data: bytes | str | None,
    status: PhotoStatus,
    code: str,
    message: str | None,
) -> None:
    payload = photos.jpeg(photos.no_face_photo()) if data == "mask" else data
    assert not isinstance(payload, str)
    result = run(PhotoPipeline(settings, embedder), put(storage, "x.jpg", payload))
    assert result.status is status
    assert result.error_code == code
    assert result.faces == []
    assert result.error_message
    if message is not None:
        assert result.error_message == message


def test_pixel_cap_is_permanent(settings: Settings, storage: PhotoStorage, embedder: FaceEmbedder) -> None:
    small = settings.model_copy(update={"max_image_pixels": 1000})
    result = run(PhotoPipeline(small, embedder), put(storage, "big.jpg", photos.jpeg(photos.load("t1.jpg"))))
    assert (result.status, result.error_code) == (PhotoStatus.FAILED, "too_many_pixels")


class ExplodingEmbedder:
    model_name = "exploding"
    variant = "exploding/cpu"

    def load(self) -> None: ...

    def embed(self, image: np.ndarray) -> list[DetectedFace]:
        raise ValueError("onnx went bang")


def test_unexpected_error_is_reported_and_retried(settings: Settings, storage: PhotoStorage) -> None:
    pipeline = PhotoPipeline(settings, ExplodingEmbedder())  # type: ignore[arg-type]
    result = run(pipeline, put(storage, "boom.jpg", photos.jpeg(photos.load("yaoming.jpg"))))
    assert result.status is PhotoStatus.RETRY
    assert result.error_code == "processing_error"
    assert result.error_message == "Ошибка обработки boom.jpg: ValueError: onnx went bang"


def test_local_processor_commits_and_reports(
    settings: Settings, storage: PhotoStorage, store: VectorStore, embedder: FaceEmbedder
) -> None:
    ref = put(storage, "gdp.jpg", photos.jpeg(photos.load("gdp.jpg")))

    async def go() -> PhotoOutcome:
        pipeline = PhotoPipeline(settings, embedder)
        processor = LocalProcessor(pipeline, store, capacity=3)
        assert processor.capacity == 3
        assert processor.model_name == embedder.model_name
        try:
            return await processor.process(ref)
        finally:
            await pipeline.aclose()

    outcome = asyncio.run(go())
    assert outcome.successful
    assert outcome.face_count == 5
    assert outcome.best_score > 0.8
    assert outcome.write_ms > 0
    assert store.count_embeddings(ref.session_id) == 5
    assert store.ledger(ref.session_id) == {ref.id: "indexed"}


def test_downloads_overlap(settings: Settings, embedder: FaceEmbedder) -> None:
    """Four photos on a storage with 0.4 s latency take about one latency, not four."""
    with PhotoStorage(latency_s=0.4) as slow:
        refs = [put(slow, f"p{i}.jpg", photos.jpeg(photos.load("yaoming.jpg"))) for i in range(4)]
        pipeline = PhotoPipeline(settings.model_copy(update={"storage_url": slow.url}), embedder)

        async def go() -> tuple[list[PhotoResult], float]:
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                results = await asyncio.gather(*(pipeline.run(r) for r in refs))
            finally:
                await pipeline.aclose()
            return list(results), loop.time() - started

        results, elapsed = asyncio.run(go())
    assert [len(r.faces) for r in results] == [1, 1, 1, 1]
    assert elapsed < 1.2
