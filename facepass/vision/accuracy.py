"""The accuracy gate of a model generation against the fp32 pack, on real faces.

Photos: players.jpg (22 faces), t1.jpg (6), gdp.jpg (5), yaoming.jpg (1), each
as shipped and in seven altered copies (flipped, rescaled down and up,
brighter, darker, and mixes), so that a few hundred face pairs are compared.
The gate (issue 16): every face the reference finds is found by the candidate
(box IoU >= 0.9) and the candidate finds no extra face; the per-face cosine
between the two embeddings has p1 >= 0.98; Yao Ming's selfie finds him first
in players.jpg with both; the top 20 of a selfie search over the real people
keeps the reference's order (``top20_swaps`` counts the differences, and
``top20_swap_max_gap`` says how far apart the swapped faces' scores were).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from facepass.models import DetectedFace
from facepass.vision import shipped
from facepass.vision.images import BgrImage

GATE_PHOTOS = ("players.jpg", "t1.jpg", "gdp.jpg", "yaoming.jpg")
SEARCH_PEOPLE = ("players.jpg", "t1.jpg", "gdp.jpg")
MIN_IOU = 0.9
MIN_COSINE_P1 = 0.98
TOP_K = 20

Embed = Callable[[list[BgrImage]], list[list[DetectedFace]]]


def _scaled(image: BgrImage, factor: float) -> BgrImage:
    return np.asarray(cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA), np.uint8)


def _lit(image: BgrImage, gain: float, shift: float) -> BgrImage:
    return np.asarray(cv2.convertScaleAbs(image, alpha=gain, beta=shift), np.uint8)


COPIES: dict[str, Callable[[BgrImage], BgrImage]] = {
    "original": lambda im: im,
    "flipped": lambda im: np.asarray(cv2.flip(im, 1), np.uint8),
    "down_0.6": lambda im: _scaled(im, 0.6),
    "up_1.3": lambda im: _scaled(im, 1.3),
    "brighter": lambda im: _lit(im, 1.0, 40),
    "darker": lambda im: _lit(im, 0.7, 0),
    "flipped_darker": lambda im: _lit(np.asarray(cv2.flip(im, 1), np.uint8), 0.8, -10),
    "down_0.8_brighter": lambda im: _lit(_scaled(im, 0.8), 1.1, 20),
}


def gate_images() -> list[tuple[str, BgrImage]]:
    return [
        (f"{name}:{copy}", make(shipped.load(name))) for name in GATE_PHOTOS for copy, make in COPIES.items()
    ]


@dataclass(frozen=True, slots=True)
class AccuracyReport:
    photos: int
    face_pairs: int  # reference faces matched to a candidate face
    faces_missed: int  # reference faces with no candidate box at IoU >= 0.9
    extra_faces: int  # candidate faces with no reference box at IoU >= 0.9
    box_iou_min: float
    embedding_cos_p1: float
    embedding_cos_min: float
    embedding_cos_mean: float
    identity_kept: bool  # the selfie's best match in players.jpg is the same face with both
    top20_swaps: int  # pairs of the reference's top 20 in another order, plus faces in/out
    # The widest reference-score gap between two faces whose order changed (0.0: no swap):
    # a swap of near-ties (gap ~1e-3) is noise; a swap across a real gap is a lost ranking.
    top20_swap_max_gap: float

    @property
    def passes(self) -> bool:
        return (
            self.faces_missed == 0
            and self.extra_faces == 0
            and self.embedding_cos_p1 >= MIN_COSINE_P1
            and self.identity_kept
        )

    def as_json(self) -> dict[str, Any]:
        return {f"accuracy_{key}": value for key, value in asdict(self).items()} | {
            "accuracy_gate_passed": self.passes
        }


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(reference: list[DetectedFace], candidate: list[DetectedFace]) -> dict[int, tuple[int, float]]:
    """Reference face -> (candidate face, IoU), greedy by IoU, only pairs at IoU >= MIN_IOU."""
    pairs = sorted(
        ((iou(r.bbox, c.bbox), i, j) for i, r in enumerate(reference) for j, c in enumerate(candidate)),
        reverse=True,
    )
    matched: dict[int, tuple[int, float]] = {}
    used: set[int] = set()
    for overlap, i, j in pairs:
        if overlap < MIN_IOU:
            break
        if i not in matched and j not in used:
            matched[i] = (j, overlap)
            used.add(j)
    return matched


def swap_max_gap(reference: list[int], candidate: list[int], scores: npt.NDArray[np.float32]) -> float:
    """The largest reference-score gap over the pairs ``candidate`` orders the other way; a
    face that left the top k is below every face that entered it."""
    faces = sorted(set(reference) | set(candidate), key=lambda face: -float(scores[face]))
    position = {face: i for i, face in enumerate(candidate)}
    gap = 0.0
    for i, a in enumerate(faces):
        for b in faces[i + 1 :]:
            if position.get(a, len(candidate)) > position.get(b, len(candidate)):
                gap = max(gap, float(scores[a] - scores[b]))
    return gap


def top_k_swaps(reference: list[int], candidate: list[int]) -> int:
    """Pairs of ``reference`` that ``candidate`` orders the other way, plus faces that left."""
    position = {face: i for i, face in enumerate(candidate)}
    left = sum(1 for face in reference if face not in position)
    kept = [position[face] for face in reference if face in position]
    inversions = sum(1 for i in range(len(kept)) for j in range(i + 1, len(kept)) if kept[i] > kept[j])
    return left + inversions


def compare(reference: Embed, candidate: Embed) -> AccuracyReport:
    return compare_to(faces_on_gate(reference), candidate)


def faces_on_gate(embed: Embed) -> list[list[DetectedFace]]:
    """The faces ``embed`` finds on each gate image, one image per call (the reference's are
    computed once when several candidates are compared to it)."""
    return [embed([image])[0] for _, image in gate_images()]


def compare_to(ref_faces: list[list[DetectedFace]], candidate: Embed) -> AccuracyReport:
    images = gate_images()
    cand_faces = [candidate([image])[0] for _, image in images]
    cosines: list[float] = []
    ious: list[float] = []
    missed = extra = 0
    for ref, cand in zip(ref_faces, cand_faces, strict=True):
        matched = match(ref, cand)
        missed += len(ref) - len(matched)
        extra += len(cand) - len(matched)
        for i, (j, overlap) in matched.items():
            ious.append(overlap)
            cosines.append(float(np.dot(ref[i].embedding, cand[j].embedding)))
    names = [name for name, _ in images]
    identity, swaps, gap = _search(names, ref_faces, cand_faces)
    cos = np.asarray(cosines, dtype=np.float64)
    return AccuracyReport(
        photos=len(images),
        face_pairs=len(cosines),
        faces_missed=missed,
        extra_faces=extra,
        box_iou_min=round(min(ious, default=0.0), 4),
        embedding_cos_p1=round(float(np.percentile(cos, 1)) if cos.size else 0.0, 5),
        embedding_cos_min=round(float(cos.min()) if cos.size else 0.0, 5),
        embedding_cos_mean=round(float(cos.mean()) if cos.size else 0.0, 5),
        identity_kept=identity,
        top20_swaps=swaps,
        top20_swap_max_gap=round(gap, 5),
    )


def _search(
    names: list[str], ref_faces: list[list[DetectedFace]], cand_faces: list[list[DetectedFace]]
) -> tuple[bool, int, float]:
    """Selfie search with each model over the real people (the originals of the group photos),
    one query per copy of yaoming.jpg; candidate faces are named by their reference twin."""
    people = [names.index(f"{name}:original") for name in SEARCH_PEOPLE]
    ref_gallery, cand_gallery, keys = [], [], []
    for p in people:
        twins = match(ref_faces[p], cand_faces[p])
        for i, (j, _) in twins.items():
            keys.append((p, i))
            ref_gallery.append(ref_faces[p][i].embedding)
            cand_gallery.append(cand_faces[p][j].embedding)
    ref_matrix: npt.NDArray[np.float32] = np.stack(ref_gallery)
    cand_matrix: npt.NDArray[np.float32] = np.stack(cand_gallery)
    identity, swaps, gap = True, 0, 0.0
    players = names.index("players.jpg:original")
    for q, name in enumerate(names):
        if not name.startswith("yaoming.jpg:") or not ref_faces[q] or not cand_faces[q]:
            continue
        ref_scores = ref_matrix @ ref_faces[q][0].embedding
        ref_order = list(np.argsort(-ref_scores, kind="stable")[:TOP_K])
        cand_order = list(np.argsort(-(cand_matrix @ cand_faces[q][0].embedding), kind="stable")[:TOP_K])
        identity = identity and keys[int(ref_order[0])][0] == players and bool(ref_order[0] == cand_order[0])
        ref_k, cand_k = [int(i) for i in ref_order], [int(i) for i in cand_order]
        swaps += top_k_swaps(ref_k, cand_k)
        gap = max(gap, swap_max_gap(ref_k, cand_k, ref_scores))
    return identity, swaps, gap
