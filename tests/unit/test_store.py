"""facepass.index.store: the local pgvector index and its ledger, on the embedded PostgreSQL."""

from __future__ import annotations

import dataclasses
import uuid

import numpy as np
import pytest
import sqlalchemy as sa

from facepass.index.migrations import current_revision, head_revision
from facepass.index.store import VectorStore, face_embeddings, indexed_photos
from facepass.models import EMBEDDING_DIM, DetectedFace, PhotoRef, PhotoResult, PhotoStatus, QualityGates

MODEL = "model/scrfd_500m_bnkps+w600k_mbf"


def unit_vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    raw = rng.standard_normal((n, EMBEDDING_DIM)).astype(np.float32)
    return raw / np.linalg.norm(raw, axis=1, keepdims=True)


def photo(session_id: uuid.UUID, name: str = "a.jpg") -> PhotoRef:
    return PhotoRef(uuid.uuid4(), session_id, name, f"sessions/{session_id}/previews/{name}")


def faces(n: int, seed: int = 0) -> list[DetectedFace]:
    vectors = unit_vectors(n, seed)
    return [
        DetectedFace(
            bbox=(10.0 * i, 20.0, 10.0 * i + 50, 90.0), det_score=0.9 - 0.1 * i, embedding=vectors[i]
        )
        for i in range(n)
    ]


def indexed(ref: PhotoRef, n: int, seed: int = 0) -> PhotoResult:
    return PhotoResult(photo=ref, model_name=MODEL, faces=faces(n, seed))


def failed(ref: PhotoRef, code: str, transient: bool) -> PhotoResult:
    return PhotoResult(
        photo=ref,
        model_name=MODEL,
        error_code=code,
        error_message=f"{code} for {ref.filename}",
        error_transient=transient,
    )


def rows_of(store: VectorStore, photo_id: uuid.UUID) -> list[sa.Row]:
    query = (
        sa.select(face_embeddings)
        .where(face_embeddings.c.photo_id == photo_id)
        .order_by(face_embeddings.c.face_index)
    )
    with store.engine.connect() as conn:
        return list(conn.execute(query))


def ledger_row(store: VectorStore, photo_id: uuid.UUID) -> sa.Row | None:
    with store.engine.connect() as conn:
        return conn.execute(sa.select(indexed_photos).where(indexed_photos.c.photo_id == photo_id)).first()


@pytest.fixture
def session_id() -> uuid.UUID:
    return uuid.uuid4()


def test_create_schema_is_idempotent(store: VectorStore) -> None:
    store.create_schema()
    store.create_schema()
    inspector = sa.inspect(store.engine)
    assert {"face_embeddings", "indexed_photos"} <= set(inspector.get_table_names())
    index_names = {ix["name"] for ix in inspector.get_indexes("face_embeddings")}
    # Searches are per session (exact scan + re-rank): a global HNSW index only taxed writes.
    assert "face_embeddings_embedding_hnsw" not in index_names
    assert "ix_face_embeddings_session_id" in index_names
    assert current_revision(store.engine) == head_revision()
    store.ping()


def test_write_indexed_photo(store: VectorStore, session_id: uuid.UUID) -> None:
    ref = photo(session_id)
    result = indexed(ref, 3)
    assert result.status is PhotoStatus.INDEXED
    write_ms = store.write_result(result)
    assert write_ms > 0

    rows = rows_of(store, ref.id)
    assert [r.face_index for r in rows] == [0, 1, 2]
    for row, face in zip(rows, result.faces, strict=True):
        assert row.session_id == session_id
        assert row.model_name == MODEL
        assert (row.bbox_x1, row.bbox_y1, row.bbox_x2, row.bbox_y2) == face.bbox
        assert row.det_score == pytest.approx(face.det_score)
        assert np.allclose(np.asarray(row.embedding), face.embedding, atol=1e-6)
    entry = ledger_row(store, ref.id)
    assert entry is not None
    assert (entry.status, entry.face_count, entry.error_code, entry.model_name) == ("indexed", 3, None, MODEL)
    assert store.count_embeddings(session_id) == 3
    assert store.ledger(session_id) == {ref.id: "indexed"}


def test_writing_the_same_photo_again_makes_no_duplicates(store: VectorStore, session_id: uuid.UUID) -> None:
    ref = photo(session_id)
    store.write_result(indexed(ref, 3))
    store.write_result(indexed(ref, 3))
    assert store.count_embeddings(session_id) == 3
    assert len(rows_of(store, ref.id)) == 3
    # a re-run with a different model result replaces the photo's faces as a whole
    store.write_result(indexed(ref, 2, seed=7))
    rows = rows_of(store, ref.id)
    assert [r.face_index for r in rows] == [0, 1]
    assert np.allclose(np.asarray(rows[0].embedding), unit_vectors(2, 7)[0], atol=1e-6)
    assert store.ledger(session_id) == {ref.id: "indexed"}
    entry = ledger_row(store, ref.id)
    assert entry is not None and entry.face_count == 2


def test_no_face_photo_is_recorded_without_rows(store: VectorStore, session_id: uuid.UUID) -> None:
    ref = photo(session_id, "corrupted_image.jpg")
    result = failed(ref, "no_face", transient=False)
    assert result.status is PhotoStatus.NO_FACE
    store.write_result(result)
    assert store.count_embeddings(session_id) == 0
    entry = ledger_row(store, ref.id)
    assert entry is not None
    assert (entry.status, entry.face_count, entry.error_code) == ("no_face", 0, "no_face")


def test_permanent_failure_is_recorded(store: VectorStore, session_id: uuid.UUID) -> None:
    ref = photo(session_id, "bad.jpg")
    result = failed(ref, "not_an_image", transient=False)
    assert result.status is PhotoStatus.FAILED
    store.write_result(result)
    entry = ledger_row(store, ref.id)
    assert entry is not None
    assert (entry.status, entry.error_code, entry.error_message) == (
        "failed",
        "not_an_image",
        "not_an_image for bad.jpg",
    )


def test_transient_failure_writes_nothing(store: VectorStore, session_id: uuid.UUID) -> None:
    ref = photo(session_id, "missing_file.jpg")
    result = failed(ref, "not_found", transient=True)
    assert result.status is PhotoStatus.RETRY
    assert store.write_result(result) == 0.0
    assert ledger_row(store, ref.id) is None
    assert store.count_embeddings(session_id) == 0
    assert store.done_photo_ids(session_id) == set()


def test_transient_failure_keeps_earlier_faces(store: VectorStore, session_id: uuid.UUID) -> None:
    ref = photo(session_id)
    store.write_result(indexed(ref, 2))
    store.write_result(failed(ref, "timeout", transient=True))
    assert store.count_embeddings(session_id) == 2
    assert store.ledger(session_id) == {ref.id: "indexed"}


def test_later_success_replaces_a_recorded_failure(store: VectorStore, session_id: uuid.UUID) -> None:
    ref = photo(session_id)
    store.write_result(failed(ref, "not_an_image", transient=False))
    store.write_result(indexed(ref, 1))
    entry = ledger_row(store, ref.id)
    assert entry is not None
    assert (entry.status, entry.error_code, entry.error_message) == ("indexed", None, None)
    assert store.count_embeddings(session_id) == 1


def test_done_photo_ids(store: VectorStore, session_id: uuid.UUID) -> None:
    ok, no_face, bad, retry = (photo(session_id, f"{n}.jpg") for n in ("ok", "noface", "bad", "retry"))
    store.write_result(indexed(ok, 1))
    store.write_result(failed(no_face, "no_face", transient=False))
    store.write_result(failed(bad, "too_large", transient=False))
    store.write_result(failed(retry, "timeout", transient=True))
    assert store.done_photo_ids(session_id) == {ok.id, no_face.id, bad.id}
    assert store.done_photo_ids(session_id, retry_failed=True) == {ok.id, no_face.id}
    assert store.done_photo_ids(uuid.uuid4()) == set()


def test_legacy_embeddings_without_ledger_count_as_done(store: VectorStore, session_id: uuid.UUID) -> None:
    """Rows written before the ledger existed (the seed's 3 pre-indexed photos) are skipped."""
    legacy = uuid.uuid4()
    with store.engine.begin() as conn:
        conn.execute(
            face_embeddings.insert(),
            [
                {
                    "session_id": session_id,
                    "photo_id": legacy,
                    "face_index": i,
                    "bbox_x1": 0.0,
                    "bbox_y1": 0.0,
                    "bbox_x2": 1.0,
                    "bbox_y2": 1.0,
                    "det_score": 0.9,
                    "embedding": vec,
                    "model_name": "legacy",
                }
                for i, vec in enumerate(unit_vectors(2, 3))
            ],
        )
    assert store.ledger(session_id) == {}
    assert store.done_photo_ids(session_id) == {legacy}
    assert store.done_photo_ids(session_id, retry_failed=True) == {legacy}
    assert store.count_embeddings(session_id) == 2


def test_count_embeddings_is_per_session(store: VectorStore, session_id: uuid.UUID) -> None:
    other = uuid.uuid4()
    store.write_result(indexed(photo(session_id), 3))
    store.write_result(indexed(photo(session_id), 2, seed=1))
    store.write_result(indexed(photo(other), 4, seed=2))
    assert store.count_embeddings(session_id) == 5
    assert store.count_embeddings(other) == 4
    assert store.count_embeddings(uuid.uuid4()) == 0


def test_search_returns_nearest_face_first(store: VectorStore, session_id: uuid.UUID) -> None:
    group, single = photo(session_id, "group.jpg"), photo(session_id, "single.jpg")
    store.write_result(indexed(group, 3, seed=10))
    store.write_result(indexed(single, 1, seed=11))
    stranger = photo(uuid.uuid4(), "other-session.jpg")
    store.write_result(indexed(stranger, 3, seed=10))  # same vectors, another session

    target = unit_vectors(3, 10)[1]
    hits = store.search(session_id, target.tolist(), limit=10)
    assert len(hits) == 4
    assert (hits[0].photo_id, hits[0].face_index) == (group.id, 1)
    assert hits[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert hits[0].bbox == (10.0, 20.0, 60.0, 90.0)
    sims = [h.similarity for h in hits]
    assert sims == sorted(sims, reverse=True)
    assert all(h.similarity < 0.5 for h in hits[1:])
    assert stranger.id not in {h.photo_id for h in hits}

    near = target + 0.05 * unit_vectors(1, 99)[0]
    assert store.search(session_id, near, limit=1)[0].face_index == 1
    assert len(store.search(session_id, target, limit=2)) == 2
    assert store.search(uuid.uuid4(), target) == []


# --- group commit -------------------------------------------------------------------
def test_batch_commits_every_photo_with_its_ledger_row(store: VectorStore, session_id: uuid.UUID) -> None:
    refs = [photo(session_id, f"b{i}.jpg") for i in range(6)]
    results = [indexed(refs[0], 3), indexed(refs[1], 0), failed(refs[2], "no_face", transient=False)]
    results += [failed(refs[3], "timeout", transient=True), indexed(refs[4], 22, seed=4), indexed(refs[5], 1)]
    outcomes = store.write_results(results)
    assert [o.photo_id for o in outcomes] == [r.id for r in refs]
    assert [o.status for o in outcomes] == [r.status for r in results]
    assert all(
        o.write_ms > 0 for o, r in zip(outcomes, results, strict=True) if r.status is not PhotoStatus.RETRY
    )
    assert outcomes[3].write_ms == 0.0
    assert store.ledger(session_id) == {
        refs[0].id: "indexed",
        refs[1].id: "indexed",  # an indexed result with no faces is still a ledger row
        refs[2].id: "no_face",
        refs[4].id: "indexed",
        refs[5].id: "indexed",
    }
    assert [len(rows_of(store, r.id)) for r in refs] == [3, 0, 0, 0, 22, 1]
    assert store.count_embeddings(session_id) == 26


def test_one_bad_photo_does_not_sink_its_batch(store: VectorStore, session_id: uuid.UUID) -> None:
    """A NaN vector (a model bug) is refused by pgvector: that photo alone fails, unwritten."""
    refs = [photo(session_id, f"n{i}.jpg") for i in range(5)]
    results = [indexed(ref, 2, seed=i) for i, ref in enumerate(refs)]
    results[2].faces[1].embedding[7] = np.nan
    outcomes = store.write_results(results)
    assert [o.status for o in outcomes] == [PhotoStatus.INDEXED] * 2 + [PhotoStatus.RETRY] + [
        PhotoStatus.INDEXED
    ] * 2
    bad = outcomes[2]
    assert bad.error_code == "write_error"
    assert bad.error_message is not None and "n2.jpg" in bad.error_message
    # Nothing half written: the bad photo has neither faces nor a ledger row; the others have both.
    assert rows_of(store, refs[2].id) == [] and ledger_row(store, refs[2].id) is None
    for ref in refs[:2] + refs[3:]:
        assert len(rows_of(store, ref.id)) == 2
        entry = ledger_row(store, ref.id)
        assert entry is not None and entry.face_count == 2
    # The next run writes it once the result is sound.
    outcomes = store.write_results([indexed(refs[2], 2, seed=2)])
    assert outcomes[0].status is PhotoStatus.INDEXED and len(rows_of(store, refs[2].id)) == 2


def test_same_photo_twice_in_a_batch_keeps_the_last(store: VectorStore, session_id: uuid.UUID) -> None:
    ref = photo(session_id)
    outcomes = store.write_results([indexed(ref, 3), indexed(ref, 2, seed=9)])
    assert [o.status for o in outcomes] == [PhotoStatus.INDEXED, PhotoStatus.INDEXED]
    rows = rows_of(store, ref.id)
    assert len(rows) == 2
    assert np.allclose(np.asarray(rows[0].embedding), faces(2, seed=9)[0].embedding, atol=1e-6)


def test_search_equals_an_exact_scan_on_clustered_data(store: VectorStore) -> None:
    """Several faces per person, several sessions: the answer is the exact top-k of the
    session (same faces, same order), and never holds another session's face."""
    rng = np.random.default_rng(3)
    people = unit_vectors(60, seed=5)
    sessions = [uuid.uuid4() for _ in range(3)]
    for k, sid in enumerate(sessions):
        results = []
        for p in range(40):
            person = people[rng.integers(0, 60)]
            noisy = person + rng.standard_normal((3, EMBEDDING_DIM)).astype(np.float32) * 0.04
            noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
            ref = photo(sid, f"s{k}p{p}.jpg")
            faces_ = [DetectedFace((0.0, 0.0, 1.0, 1.0), 0.9, v.astype(np.float32)) for v in noisy]
            results.append(PhotoResult(photo=ref, model_name=MODEL, faces=faces_))
        store.write_results(results)
    for sid in sessions:
        with store.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    face_embeddings.c.photo_id, face_embeddings.c.face_index, face_embeddings.c.embedding
                ).where(face_embeddings.c.session_id == sid)
            ).all()
        matrix = np.stack([np.asarray(r[2], dtype=np.float64) for r in rows])
        for q in range(8):
            query = people[q * 7] + rng.standard_normal(EMBEDDING_DIM) * 0.03
            query /= np.linalg.norm(query)
            exact = np.argsort(-(matrix @ query), kind="stable")[:20]
            hits = store.search(sid, query.astype(np.float32), limit=20, model_name=MODEL)
            assert [(h.photo_id, h.face_index) for h in hits] == [(rows[i][0], rows[i][1]) for i in exact]
            assert hits[0].similarity == pytest.approx(float(matrix[exact[0]] @ query), abs=1e-5)
        assert store.search(sid, people[0], model_name="another/model") == []


def test_prune_removes_faces_and_ledger_rows_together(store: VectorStore, session_id: uuid.UUID) -> None:
    keep, drop, no_face = photo(session_id, "k.jpg"), photo(session_id, "d.jpg"), photo(session_id, "n.jpg")
    store.write_results([indexed(keep, 2), indexed(drop, 3), failed(no_face, "no_face", transient=False)])
    result = store.prune_photos(session_id, [drop.id, no_face.id, drop.id, uuid.uuid4()])
    assert (result.photos, result.faces) == (2, 3)
    assert store.ledger(session_id) == {keep.id: "indexed"}
    assert store.count_embeddings(session_id) == 2
    assert store.prune_photos(session_id, []).photos == 0


def test_the_copy_buffer_stores_every_field_of_every_face_as_given(
    store: VectorStore, session_id: uuid.UUID
) -> None:
    """The numpy-built binary COPY payload (one buffer a batch) round-trips each field, for two
    models (two record layouts) in one transaction."""
    refs = [photo(session_id, f"c{i}.jpg") for i in range(3)]
    other = PhotoResult(photo=refs[2], model_name="another/model-ü", faces=faces(2, seed=7))
    measured = indexed(refs[0], 3, seed=5)
    measured.faces = [
        dataclasses.replace(f, sharpness=12.5 * (i + 1), yaw=0.1 - 0.2 * i)
        for i, f in enumerate(measured.faces)
    ]
    # Measured faces (quality columns), unmeasured ones (NULLs: a stand-in), and a mix in one batch.
    results = [measured, indexed(refs[1], 1, seed=6), other]
    store.write_results(results)
    for result in results:
        rows = rows_of(store, result.photo.id)
        assert [r.face_index for r in rows] == list(range(len(result.faces)))
        for row, face in zip(rows, result.faces, strict=True):
            assert row.session_id == session_id and row.model_name == result.model_name
            assert (row.bbox_x1, row.bbox_y1, row.bbox_x2, row.bbox_y2) == face.bbox
            assert row.det_score == face.det_score
            assert np.array_equal(np.asarray(row.embedding, dtype=np.float32), face.embedding)
            assert (row.sharpness, row.yaw) == (face.sharpness, face.yaw)


def test_search_leaves_out_faces_below_the_quality_gates(store: VectorStore, session_id: uuid.UUID) -> None:
    """Each gate on its own drops its face; unmeasured sharpness/yaw (older rows) pass those two;
    the counts say what search leaves out; no gate: every face."""
    query = unit_vectors(1, seed=42)[0]
    near = [query + 0.01 * v for v in unit_vectors(6, seed=43)]
    near = [(v / np.linalg.norm(v)).astype(np.float32) for v in near]
    shapes = {  # name: (box, det score, sharpness, yaw)
        "good": ((0.0, 0.0, 60.0, 70.0), 0.9, 80.0, 0.05),
        "tiny": ((0.0, 0.0, 15.0, 18.0), 0.9, 80.0, 0.05),
        "unsure": ((0.0, 0.0, 60.0, 70.0), 0.55, 80.0, 0.05),
        "blurred": ((0.0, 0.0, 60.0, 70.0), 0.9, 4.0, 0.05),
        "profile": ((0.0, 0.0, 60.0, 70.0), 0.9, 80.0, -0.8),
        "unmeasured": ((0.0, 0.0, 60.0, 70.0), 0.9, None, None),
    }
    refs = {name: photo(session_id, f"{name}.jpg") for name in shapes}
    store.write_results(
        [
            PhotoResult(refs[name], MODEL, [DetectedFace(box, score, near[i], sharp, yaw)])
            for i, (name, (box, score, sharp, yaw)) in enumerate(shapes.items())
        ]
    )
    gates = QualityGates(min_face_px=24, min_det_score=0.6, min_sharpness=10, max_abs_yaw=0.6)
    found = {hit.photo_id for hit in store.search(session_id, query, limit=10, gates=gates)}
    assert found == {refs["good"].id, refs["unmeasured"].id}
    assert len(store.search(session_id, query, limit=10)) == 6
    assert len(store.search(session_id, query, limit=10, gates=QualityGates())) == 6
    counts = store.count_below_gates(gates, session_id)
    assert (counts.faces, counts.below, counts.unmeasured) == (6, 4, 1)
    assert store.count_below_gates(gates, session_id, model_name="other").faces == 0
    # The Python rule is the SQL rule.
    kept = {
        name
        for name, (box, score, sharp, yaw) in shapes.items()
        if gates.passes(DetectedFace(box, score, query, sharp, yaw))
    }
    assert kept == {"good", "unmeasured"}
