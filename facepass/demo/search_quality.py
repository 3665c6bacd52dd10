"""Precision and recall of selfie search on photos of labeled people (``labeled.py``), per threshold.

The session: every labeled photo, each labeled person's photo again with strangers' faces in its
background (small and sharp, as in a real group photo; small and blurred), the stranger group
photos and two crowds of tiny blurred strangers. The selfies: the largest face of each labeled
person's own photos. A selfie of A should find every other photo showing A and no photo without
A; its own photo and the photos made from it (one "family": the partial-face crops of
``obama.jpg`` are near-copies of it, cosine 0.9) are not counted either way.

Scored as the route scores: a photo is found when one of its faces that passes the quality gates
reaches the threshold (``facepass.index.search.find_photos``; here in numpy, with the same
``QualityGates.passes`` rule). Precision = found photos that show the person / found photos;
recall = found photos that show the person / photos that show the person; both pooled over
every selfie. Two people have other photos (Obama: 3 independent photos and 2 crops, Yao Ming:
one group photo), the rest only distract.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from facepass.demo.labeled import LabeledPhoto, labeled_photos, with_background_strangers
from facepass.demo.photos import single_face_crops
from facepass.models import DetectedFace, QualityGates
from facepass.vision.faces import FaceEmbedder
from facepass.vision.images import BgrImage

THRESHOLDS = tuple(round(0.15 + 0.05 * k, 2) for k in range(12))  # 0.15 .. 0.70
# The partial-face crops are near-copies of obama.jpg (cosine 0.9): one family, never scored together.
_FAMILIES = {"obama_partial_face": "obama", "obama_partial_face2": "obama"}


def family(name: str) -> str:
    """The original photo a photo of the session was made from (by its name's stem)."""
    stem = name.split("+", 1)[0].rsplit(".", 1)[0]
    return _FAMILIES.get(stem, stem)


@dataclass(frozen=True, slots=True)
class Selfie:
    photo: str
    person: str
    face: DetectedFace


@dataclass(slots=True)
class LabeledSession:
    photos: list[LabeledPhoto]
    faces: list[list[DetectedFace]]  # per photo, as the embedder found them
    selfies: list[Selfie]
    people: list[str] = field(default_factory=list)

    @property
    def face_count(self) -> int:
        return sum(len(f) for f in self.faces)


@dataclass(frozen=True, slots=True)
class Score:
    threshold: float
    gated: bool
    true_matches: int
    false_matches: int
    missed: int

    @property
    def precision(self) -> float:
        found = self.true_matches + self.false_matches
        return self.true_matches / found if found else 1.0

    @property
    def recall(self) -> float:
        relevant = self.true_matches + self.missed
        return self.true_matches / relevant if relevant else 1.0

    def as_dict(self) -> dict[str, float | int | bool]:
        return {
            "threshold": self.threshold,
            "gated": self.gated,
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
            "true_matches": self.true_matches,
            "false_matches": self.false_matches,
            "missed": self.missed,
        }


def _strangers(embedder: FaceEmbedder, people: list[LabeledPhoto]) -> list[BgrImage]:
    """Crops of the group photos' faces that are none of the labeled people (Yao Ming's is left out)."""
    known = [f.embedding for p in people for f in embedder.embed_batch([p.image])[0][:1]]
    crops = []
    for crop in single_face_crops():
        [faces] = embedder.embed_batch([crop.image])
        if faces and max(float(np.dot(faces[0].embedding, k)) for k in known) < 0.45:
            crops.append(crop.image)
    return crops


def _crowd(strangers: list[BgrImage], seed: int) -> LabeledPhoto:
    canvas = np.full((480, 720, 3), 120, np.uint8)
    base = LabeledPhoto(f"crowd{seed}.jpg", canvas, frozenset())
    return with_background_strangers(base, strangers, size_px=26, blur=1.5, seed=seed)


@lru_cache(maxsize=2)
def labeled_session(embedder: FaceEmbedder) -> LabeledSession:
    """The set's photos, their faces and the selfies (cached per embedder)."""
    originals = list(labeled_photos())
    singles = [p for p in originals if p.people and p.name != "players.jpg"]
    strangers = _strangers(embedder, singles)
    photos = list(originals)
    for k, p in enumerate(singles):
        photos.append(with_background_strangers(p, strangers[:8], size_px=36, blur=0, seed=k))
        photos.append(with_background_strangers(p, strangers[8:16], size_px=28, blur=1.5, seed=100 + k))
    photos += [_crowd(strangers[:10], 1), _crowd(strangers[10:], 2)]
    faces = [embedder.embed_batch([p.image])[0] for p in photos]
    selfies = []
    for p, found in zip(photos, faces, strict=True):
        if p in singles and found and not p.name.startswith("obama_partial"):
            largest = max(found, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
            selfies.append(Selfie(p.name, next(iter(p.people)), largest))
    people = sorted({s.person for s in selfies})
    return LabeledSession(photos, faces, selfies, people)


def score(session: LabeledSession, threshold: float, gates: QualityGates | None) -> Score:
    true_matches = false_matches = missed = 0
    for selfie in session.selfies:
        own = family(selfie.photo)
        for photo, faces in zip(session.photos, session.faces, strict=True):
            if family(photo.name) == own:
                continue
            kept = [f for f in faces if gates is None or gates.passes(f)]
            found = any(float(np.dot(f.embedding, selfie.face.embedding)) >= threshold for f in kept)
            shows = selfie.person in photo.people
            true_matches += found and shows
            false_matches += found and not shows
            missed += shows and not found
    return Score(threshold, gates is not None, true_matches, false_matches, missed)


def table(
    session: LabeledSession, gates: QualityGates, thresholds: tuple[float, ...] = THRESHOLDS
) -> list[Score]:
    """Every threshold with the gates and without them."""
    return [score(session, t, g) for t in thresholds for g in (gates, None)]
