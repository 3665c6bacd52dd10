"""Photos batched through the model (issue 16): one detector call for several photos, one
recognizer call for all their faces, with the same boxes and vectors as one by one."""

from __future__ import annotations

import asyncio
import re

import numpy as np
import pytest

from facepass.demo import photos
from facepass.demo.storage import PhotoStorage
from facepass.models import DetectedFace, PhotoRef, PhotoResult
from facepass.settings import Settings
from facepass.vision.faces import FaceEmbedder
from facepass.vision.images import BgrImage
from facepass.vision.pipeline import PhotoPipeline, model_batch_photos
from tests.unit.test_pipeline import put

RUNTIMES = ("onnxruntime", "openvino")


@pytest.fixture(scope="module")
def embedders(embedder: FaceEmbedder) -> dict[str, FaceEmbedder]:
    """Detection over up to 8 photos per call (the GPU default; 1 per call is the CPU's); the
    pins' gate verdicts are read from ``embedder``'s measurement."""
    return {
        runtime: FaceEmbedder(Settings(model_runtime=runtime, detector_batch_photos=8)).load()
        for runtime in RUNTIMES
    }


def test_detector_batch_defaults() -> None:
    assert FaceEmbedder(Settings()).detector_batch == 1  # CPU: one photo per detector call
    assert FaceEmbedder(Settings(gpus_per_actor=1)).detector_batch == 0  # GPU: the whole batch
    assert FaceEmbedder(Settings(detector_batch_photos=3)).detector_batch == 3


def test_detection_over_a_padded_batch_is_one_call(embedders: dict[str, FaceEmbedder]) -> None:
    embedder = embedders["onnxruntime"]
    assert embedder.detector is not None
    calls: list[int] = []
    session = embedder.detector.session
    real_run = session.run

    def counting(batch: np.ndarray) -> list[np.ndarray]:
        calls.append(int(batch.shape[0]))
        return real_run(batch)

    embedder.detector.session = type("Counting", (), {"run": staticmethod(counting), "providers": []})()
    try:
        embedder.embed_batch(mixed_photos())
    finally:
        embedder.detector.session = session
    assert calls == [6]


def test_fit_inputs_group_photos_by_shape(embedder: FaceEmbedder) -> None:
    """The fast path's detector input keeps each photo's aspect: photos of one input size
    share a call, and a call's input is the fitted size, not the 640 square."""
    fast = FaceEmbedder(Settings(detector_batch_photos=8, model_runtime="openvino")).load()
    assert fast.detector is not None and fast.detector.fit
    images = mixed_photos()
    sizes = [fast.detector.input_size(image) for image in images]
    assert all(w % 32 == 0 and h % 32 == 0 and max(w, h) == 640 for w, h in sizes)
    assert any(min(w, h) < 640 for w, h in sizes)
    calls: list[tuple[int, ...]] = []
    session = fast.detector.session
    real_run = session.run

    def counting(batch: np.ndarray) -> list[np.ndarray]:
        calls.append(tuple(batch.shape))
        return real_run(batch)

    fast.detector.session = type("Counting", (), {"run": staticmethod(counting), "providers": []})()
    try:
        fast.embed_batch(images)
    finally:
        fast.detector.session = session
    assert sorted(calls) == sorted((sizes.count(s), 3, s[1], s[0]) for s in set(sizes))


def mixed_photos() -> list[BgrImage]:
    """Group photos, a portrait, a photo with no face, a mirrored and a tall copy: different
    sizes and aspect ratios, all letterboxed into one padded input."""
    t1 = photos.load("t1.jpg")
    return [
        photos.load("players.jpg"),
        t1,
        photos.load("mask_blue.jpg"),
        photos.load("yaoming.jpg"),
        photos.variant(photos.load("gdp.jpg"), 3),
        np.ascontiguousarray(np.rot90(t1)),
    ]


def assert_same_faces(batched: list[DetectedFace], single: list[DetectedFace]) -> None:
    assert len(batched) == len(single)
    for a, b in zip(batched, single, strict=True):
        assert np.allclose(a.bbox, b.bbox, atol=1e-2), (a.bbox, b.bbox)
        assert a.det_score == pytest.approx(b.det_score, abs=1e-4)
        assert float(np.dot(a.embedding, b.embedding)) >= 0.9999


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_batched_equals_one_by_one(embedders: dict[str, FaceEmbedder], runtime: str) -> None:
    embedder = embedders[runtime]
    images = mixed_photos()
    batched = embedder.embed_batch(images)
    single = [embedder.embed_batch([image])[0] for image in images]
    assert [len(f) for f in batched[:4]] == [22, 6, 0, 1]
    assert all(len(f) > 0 for f in batched[4:])
    for b, s in zip(batched, single, strict=True):
        assert_same_faces(b, s)


def test_an_empty_batch_is_empty(embedders: dict[str, FaceEmbedder]) -> None:
    assert embedders["openvino"].embed_batch([]) == []


def test_model_batch_defaults() -> None:
    """Auto: one photo per call on CPU with either runtime (batching measured no faster
    there), the actor's batch on GPU; an explicit value wins."""
    assert model_batch_photos(Settings(model_runtime="onnxruntime")) == 1
    assert model_batch_photos(Settings(model_runtime="auto", actor_batch_photos=6)) == 1
    assert model_batch_photos(Settings(gpus_per_actor=1, actor_batch_photos=8)) == 8
    assert model_batch_photos(Settings(model_runtime="onnxruntime", model_batch_photos=3)) == 3


def _run(pipeline: PhotoPipeline, refs: list[PhotoRef], batched: bool) -> list[PhotoResult]:
    async def go() -> list[PhotoResult]:
        try:
            if batched:
                return await pipeline.run_batch(refs)
            return [await pipeline.run(ref) for ref in refs]
        finally:
            await pipeline.aclose()

    return asyncio.run(go())


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_pipeline_batch_keeps_each_photos_outcome(
    settings: Settings, storage: PhotoStorage, embedders: dict[str, FaceEmbedder], runtime: str
) -> None:
    """A missing photo, a broken file and a photo without a face fail alone; the others get
    the faces they get one by one."""
    refs = [
        put(storage, "t1.jpg", photos.jpeg(photos.load("t1.jpg"))),
        put(storage, "missing.jpg", None),
        put(storage, "broken.jpg", b"\xff\xd8\xff\xe0" + b"\x00junk" * 100),
        put(storage, "mask.jpg", photos.jpeg(photos.no_face_photo())),
        put(storage, "gdp.jpg", photos.jpeg(photos.load("gdp.jpg"))),
    ]
    batched_settings = settings.model_copy(update={"model_runtime": runtime, "model_batch_photos": 3})
    single_settings = settings.model_copy(update={"model_runtime": runtime, "model_batch_photos": 1})
    batched = _run(PhotoPipeline(batched_settings, embedders[runtime]), refs, batched=True)
    single = _run(PhotoPipeline(single_settings, embedders[runtime]), refs, batched=False)
    assert [r.error_code for r in batched] == [None, "not_found", "not_an_image", "no_face", None]
    assert [r.error_code for r in batched] == [r.error_code for r in single]
    assert [r.error_transient for r in batched] == [r.error_transient for r in single]

    def messages(results: list[PhotoResult]) -> list[str]:  # PIL names a BytesIO by its address
        return [re.sub(r"0x[0-9a-f]+", "0x", r.error_message or "") for r in results]

    assert messages(batched) == messages(single)
    for b, s in zip(batched, single, strict=True):
        assert b.model_name == s.model_name == embedders[runtime].model_name
        assert_same_faces(b.faces, s.faces)
    assert all(r.inference_ms > 0 for r in batched if r.error_code in (None, "no_face"))
