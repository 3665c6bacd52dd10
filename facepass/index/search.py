"""Face search by selfie over the local index: the reason the index exists."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from facepass.catalog.cloud import CloudCatalog
from facepass.errors import NoFaceDetected
from facepass.index.store import VectorStore
from facepass.models import DetectedFace, QualityGates

DEFAULT_THRESHOLD = 0.35  # ArcFace cosine: the same person is typically > 0.4, others < 0.2


@dataclass(frozen=True, slots=True)
class PhotoMatch:
    photo_id: uuid.UUID
    filename: str
    preview_path: str
    similarity: float
    face_index: int
    bbox: tuple[float, float, float, float]


def selfie_face(faces: list[DetectedFace]) -> DetectedFace:
    """The person taking a selfie is the largest face in it."""
    if not faces:
        raise NoFaceDetected()
    return max(faces, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))


def find_photos(
    store: VectorStore,
    catalog: CloudCatalog,
    session_id: uuid.UUID,
    face: DetectedFace,
    limit: int = 20,
    threshold: float = DEFAULT_THRESHOLD,
    model_name: str | None = None,
    gates: QualityGates | None = None,
) -> list[PhotoMatch]:
    """Photos of the session that show this face, best first, one entry per photo.
    Photos deleted from the catalog since they were indexed are left out; with
    ``model_name``, only faces embedded by that model (the selfie's) are compared; with
    ``gates``, only faces that pass them (big, certain, sharp and frontal enough)."""
    # A photo may hold several faces: ask for more faces than photos.
    hits = store.search(session_id, face.embedding, limit=limit * 4, model_name=model_name, gates=gates)
    best: dict[uuid.UUID, tuple[float, int, tuple[float, float, float, float]]] = {}
    for hit in hits:
        if hit.similarity >= threshold and hit.similarity > best.get(hit.photo_id, (-2.0, 0, ()))[0]:
            best[hit.photo_id] = (hit.similarity, hit.face_index, hit.bbox)
    live = catalog.photos_by_id(session_id, list(best))
    matches = [
        PhotoMatch(pid, live[pid].filename, live[pid].preview_path, sim, idx, bbox)
        for pid, (sim, idx, bbox) in best.items()
        if pid in live
    ]
    return sorted(matches, key=lambda m: m.similarity, reverse=True)[:limit]
