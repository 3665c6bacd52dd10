"""Face search by selfie over the local index: the reason the index exists."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from facepass.catalog.cloud import CloudCatalog
from facepass.errors import NoFaceDetected
from facepass.index.store import VectorStore
from facepass.models import DetectedFace, QualityGates
from facepass.vision.pack import weights_of

# The cosine a face must reach to count as the selfie's person, per recognizer (the weights of a
# generation: "<pack>/<detector>+<recognizer>#<weights id>"), measured on labeled people
# (docs/search-quality.md, `python -m bench.run --stages search_quality`). A generation answers
# with its own, also while a newer one is being built; FACEPASS_SEARCH_THRESHOLD overrides all.
PACK_THRESHOLDS = {
    "w600k_mbf": 0.40,  # measured: strangers <= 0.19, the same person >= 0.63 (AMD/Intel alike)
}
DEFAULT_THRESHOLD = 0.40  # a recognizer not measured here (w600k_r50, glintr100): the same cut-off


def default_threshold(generation: str) -> float:
    """The measured threshold of a generation's recognizer (``PACK_THRESHOLDS``), else the default."""
    recognizer = weights_of(generation).rsplit("/", 1)[-1].rsplit("+", 1)[-1]
    return PACK_THRESHOLDS.get(recognizer, DEFAULT_THRESHOLD)


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
