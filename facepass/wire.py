"""How a batch travels between processes: one compact record per batch, not objects per photo.

A batch of photos goes to an actor, its results go to the writer and the outcomes come back:
three pickles per batch. Pickled as lists of dataclasses, each photo costs a dozen objects
(its ids, a face's tuple and vector...) and a Python call per object: ~15 us a photo, ~100 us
a photo with its faces (measured: 32 results with 3 faces each, 2.5 ms to pickle, 1 ms to
load). These lists pickle as columns instead: the ids as one ``bytes``, the names as lists of
``str``, every face vector of the batch as one float32 array (out of band: Ray hands it over
without a copy). They are lists, so whoever receives one uses it as the list it was.
Plain Python, no Ray.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import numpy as np

from facepass.models import DetectedFace, PhotoOutcome, PhotoRef, PhotoResult, PhotoStatus

_PhotoColumns = tuple[bytes, bytes, list[str], list[str], list[int | None]]


def _ids(values: Iterable[uuid.UUID]) -> bytes:
    return b"".join(value.bytes for value in values)


def _uuid(raw: bytes) -> uuid.UUID:
    """``uuid.UUID(bytes=raw)`` without its argument checks (a third of the batch's load)."""
    value = object.__new__(uuid.UUID)
    object.__setattr__(value, "int", int.from_bytes(raw, "big"))
    object.__setattr__(value, "is_safe", uuid.SafeUUID.unknown)
    return value


def _uuids(data: bytes) -> list[uuid.UUID]:
    cache: dict[bytes, uuid.UUID] = {}  # a batch's photos share a session or a few
    out = []
    for start in range(0, len(data), 16):
        raw = data[start : start + 16]
        value = cache.get(raw)
        if value is None:
            value = cache[raw] = _uuid(raw)
        out.append(value)
    return out


def _photo_columns(photos: list[PhotoRef]) -> _PhotoColumns:
    return (
        _ids(p.id for p in photos),
        _ids(p.session_id for p in photos),
        [p.filename for p in photos],
        [p.preview_path for p in photos],
        [p.fence for p in photos],
    )


def _photos_of(columns: _PhotoColumns) -> list[PhotoRef]:
    ids, sessions, names, paths, fences = columns
    return list(map(PhotoRef, _uuids(ids), _uuids(sessions), names, paths, fences))


class PhotoBatch(list[PhotoRef]):
    """Photos handed to an actor."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_photo_batch, (_photo_columns(self),))


def _photo_batch(columns: _PhotoColumns) -> PhotoBatch:
    return PhotoBatch(_photos_of(columns))


class ResultBatch(list[PhotoResult]):
    """What an actor made of a batch, on its way to the writer."""

    def __reduce__(self) -> tuple[Any, ...]:
        faces = [face for result in self for face in result.faces]
        dims = {len(face.embedding) for face in faces}
        if len(dims) > 1:  # one model a batch: never, but then item by item
            return (ResultBatch, (list(self),))
        dim = dims.pop() if dims else 0
        vectors = np.empty((len(faces), dim), dtype=np.float32)
        for row, face in enumerate(faces):
            vectors[row] = face.embedding
        columns = (
            _photo_columns([r.photo for r in self]),
            [r.model_name for r in self],
            [len(r.faces) for r in self],
            [(*face.bbox, face.det_score, face.sharpness, face.yaw) for face in faces],
            vectors,
            [r.error_code for r in self],
            [r.error_message for r in self],
            [r.error_transient for r in self],
            [r.download_ms for r in self],
            [r.inference_ms for r in self],
            [r.variant for r in self],
        )
        return (_result_batch, columns)


def _result_batch(
    photos: _PhotoColumns,
    models: list[str],
    counts: list[int],
    boxes: list[tuple[float, float, float, float, float, float | None, float | None]],
    vectors: np.ndarray,
    codes: list[str | None],
    messages: list[str | None],
    transient: list[bool],
    download: list[float],
    inference: list[float],
    variants: list[str | None],
) -> ResultBatch:
    batch = ResultBatch()
    row = 0
    for i, photo in enumerate(_photos_of(photos)):
        faces = []
        for k in range(row, row + counts[i]):
            x1, y1, x2, y2, score, sharp, yaw = boxes[k]
            faces.append(DetectedFace((x1, y1, x2, y2), score, vectors[k], sharp, yaw))
        row += counts[i]
        batch.append(
            PhotoResult(
                photo,
                models[i],
                faces,
                codes[i],
                messages[i],
                transient[i],
                download[i],
                inference[i],
                variants[i],
            )
        )
    return batch


class OutcomeBatch(list[PhotoOutcome]):
    """The writer's outcomes of a batch, on their way back to the run."""

    def __reduce__(self) -> tuple[Any, ...]:
        columns = (
            _ids(o.photo_id for o in self),
            [o.filename for o in self],
            [o.status.value for o in self],
            [o.face_count for o in self],
            [o.best_score for o in self],
            [o.error_code for o in self],
            [o.error_message for o in self],
            [o.download_ms for o in self],
            [o.inference_ms for o in self],
            [o.write_ms for o in self],
        )
        return (_outcome_batch, columns)


def _outcome_batch(ids: bytes, names: list[str], statuses: list[str], *rest: list[Any]) -> OutcomeBatch:
    return OutcomeBatch(map(PhotoOutcome, _uuids(ids), names, map(PhotoStatus, statuses), *rest))
