"""facepass.wire: a batch pickles as columns and loads as the same list of the same records."""

from __future__ import annotations

import pickle
import uuid

import numpy as np
from ray import cloudpickle

from facepass.models import DetectedFace, PhotoOutcome, PhotoRef, PhotoResult
from facepass.wire import OutcomeBatch, PhotoBatch, ResultBatch


def refs(n: int) -> list[PhotoRef]:
    sessions = [uuid.uuid4(), uuid.uuid4()]
    return [
        PhotoRef(uuid.uuid4(), sessions[i % 2], f"п{i}.jpg", f"s/{i}.jpg", None if i % 3 else i)
        for i in range(n)
    ]


def results(photos: list[PhotoRef], dim: int = 512) -> list[PhotoResult]:
    rng = np.random.default_rng(3)
    out = []
    for i, photo in enumerate(photos):
        faces = [
            DetectedFace(
                (1.5 * k, 2.0, 3.0 + k, 4.25),
                0.5 + 0.01 * k,
                rng.random(dim, dtype=np.float32),
                *((None, None) if i % 2 else (40.5 + k, -0.125 * k)),  # measured, or not (a stand-in)
            )
            for k in range(i % 4)
        ]
        result = PhotoResult(photo, "pack/a", faces, download_ms=1.5 * i, inference_ms=0.25, variant="v")
        if i == 5:
            result.error_code, result.error_message, result.error_transient = "timeout", "slow", True
        out.append(result)
    return out


def again(obj: object) -> object:
    return pickle.loads(cloudpickle.dumps(obj, protocol=5))  # as Ray pickles an argument


def same(a: list[PhotoResult], b: list[PhotoResult]) -> bool:
    for x, y in zip(a, b, strict=True):
        assert (x.photo, x.model_name, x.error_code, x.error_message, x.error_transient) == (
            y.photo,
            y.model_name,
            y.error_code,
            y.error_message,
            y.error_transient,
        )
        assert (x.download_ms, x.inference_ms, x.variant, len(x.faces)) == (
            y.download_ms,
            y.inference_ms,
            y.variant,
            len(y.faces),
        )
        for f, g in zip(x.faces, y.faces, strict=True):
            assert f.bbox == g.bbox and f.det_score == g.det_score
            assert (f.sharpness, f.yaw) == (g.sharpness, g.yaw)
            assert f.embedding.dtype == g.embedding.dtype and np.array_equal(f.embedding, g.embedding)
    return True


def test_photos_results_and_outcomes_come_back_as_they_went() -> None:
    photos = refs(9)
    back = again(PhotoBatch(photos))
    assert isinstance(back, PhotoBatch) and back == photos
    made = results(photos)
    loaded = again(ResultBatch(made))
    assert isinstance(loaded, ResultBatch) and same(loaded, made)
    outcomes = [PhotoOutcome.from_result(r, write_ms=0.5) for r in made]
    assert again(OutcomeBatch(outcomes)) == outcomes
    assert again(PhotoBatch()) == [] and again(ResultBatch()) == [] and again(OutcomeBatch()) == []


def test_columns_are_smaller_to_pickle_than_the_records() -> None:
    made = results(refs(32))
    assert len(pickle.dumps(ResultBatch(made), protocol=5)) < len(pickle.dumps(made, protocol=5))
    as_columns = pickle.dumps(PhotoBatch(refs(32)), protocol=5)
    assert b"PhotoRef" not in as_columns  # no record per photo in the payload


def test_vectors_of_two_sizes_in_one_batch_still_travel() -> None:
    photos = refs(4)
    made = results(photos[:2]) + results(photos[2:], dim=128)
    assert same(again(ResultBatch(made)), made)  # type: ignore[arg-type]
