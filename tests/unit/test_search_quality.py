"""Selfie search on photos of labeled people (facepass/demo/search_quality.py): the default
threshold and quality gates hold what docs/search-quality.md measured."""

from __future__ import annotations

from facepass.demo import search_quality as sq
from facepass.index.search import DEFAULT_THRESHOLD, PACK_THRESHOLDS, default_threshold
from facepass.settings import Settings
from facepass.vision.faces import FaceEmbedder


def test_the_default_threshold_finds_every_photo_of_the_person_and_no_strangers(
    embedder: FaceEmbedder,
) -> None:
    session = sq.labeled_session(embedder)
    assert len(session.selfies) == 7 and len(session.photos) == 32 and session.face_count >= 70
    gates = Settings().quality_gates()
    threshold = default_threshold(embedder.pack.name)
    assert threshold == PACK_THRESHOLDS["w600k_mbf"] == 0.40
    at = sq.score(session, threshold, gates)
    # Measured (docs/search-quality.md): 31 of 31 photos of the person found, no stranger's.
    assert (at.true_matches, at.false_matches, at.missed) == (31, 0, 0)
    assert at.precision == 1.0 and at.recall == 1.0
    # The default sits inside the clean band with room on both sides: 0.1 lower or higher still
    # finds no stranger and misses nothing.
    for margin in (-0.1, 0.1):
        near = sq.score(session, round(threshold + margin, 2), gates)
        assert near.precision == 1.0 and near.recall == 1.0, near
    # Far too low a threshold lets strangers in, fewer with the gates than without.
    loose_gated, loose = sq.score(session, 0.15, gates), sq.score(session, 0.15, None)
    assert 0 < loose_gated.false_matches < loose.false_matches
    # Gates never cost precision at any threshold.
    for gated, bare in zip(*(iter(sq.table(session, gates)),) * 2, strict=True):
        assert gated.gated and not bare.gated and gated.precision >= bare.precision


def test_a_generation_uses_its_recognizers_threshold() -> None:
    assert default_threshold("model/scrfd_500m_bnkps+w600k_mbf#f040435b9514") == 0.40
    assert default_threshold("buffalo_l/det_10g+w600k_r50#0123456789ab") == DEFAULT_THRESHOLD
    assert default_threshold("model/scrfd_500m_bnkps+w600k_mbf@ov-f32") == 0.40  # a legacy name
