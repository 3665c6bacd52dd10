"""Search on real faces: several real people in a session (players: 22, t1: 6, gdp: 5), a
selfie of one of them (yaoming.jpg; he is in players.jpg). The answer is exactly the exact
scan's (same faces, same order, same scores) and never holds another session's face."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from facepass.demo import photos
from facepass.index.search import selfie_face
from facepass.index.store import VectorStore
from facepass.models import PhotoRef, PhotoResult
from facepass.vision.faces import FaceEmbedder


def test_search_on_real_people_equals_an_exact_scan(store: VectorStore, embedder: FaceEmbedder) -> None:
    session, other = uuid.uuid4(), uuid.uuid4()
    stored: list[tuple[uuid.UUID, int, np.ndarray]] = []
    for sid in (session, other):
        results = []
        for name in ("players.jpg", "t1.jpg", "gdp.jpg"):
            faces = embedder.embed(photos.load(name))
            ref = PhotoRef(uuid.uuid4(), sid, name, f"real/{sid}/{name}")
            results.append(PhotoResult(photo=ref, model_name=embedder.model_name, faces=faces))
            if sid == session:
                stored += [(ref.id, i, f.embedding) for i, f in enumerate(faces)]
        store.write_results(results)
    assert len(stored) >= 30
    selfie = selfie_face(embedder.embed(photos.load("yaoming.jpg"))).embedding
    matrix = np.stack([v.astype(np.float64) for _, _, v in stored])
    scores = matrix @ selfie.astype(np.float64)
    for k in (1, 5, 20, len(stored)):
        exact = np.argsort(-scores, kind="stable")[:k]
        hits = store.search(session, selfie, limit=k, model_name=embedder.model_name)
        assert [(h.photo_id, h.face_index) for h in hits] == [(stored[i][0], stored[i][1]) for i in exact]
        assert [h.similarity for h in hits] == pytest.approx([float(scores[i]) for i in exact], abs=1e-5)
    best = store.search(session, selfie, limit=1, model_name=embedder.model_name)[0]
    assert best.similarity > 0.5  # Yao Ming is in players.jpg
    own_photos = {pid for pid, _, _ in stored}
    assert {h.photo_id for h in store.search(session, selfie, limit=100)} <= own_photos
