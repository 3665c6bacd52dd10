"""Search at scale: sessions of 10,000 faces inside an index of >= 500,000, and one of 50,000.

The embeddings are synthetic but clustered the way event photos are: each
session has one "person" per ~8 faces (a random unit vector); a face is that
vector plus Gaussian noise of norm ~0.88 (cosine ~0.75 to its person, ~0.56
between two faces of one person, ~0 between people: ArcFace-like). Photos
hold 1 to 5 faces. They are written through the production writer
(``VectorStore.write_results``) with deterministic session ids and kept in the
bench's database, so a second run reuses them. A query is a new noisy "selfie"
of a person of the session; the reference is an exact scan of the session
(``ORDER BY embedding <=> q`` on the full vectors), recall@20 is measured
against it, and latency is timed on ``VectorStore.search`` (what the route calls).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa

from facepass.index.store import VectorStore, face_embeddings
from facepass.models import EMBEDDING_DIM, DetectedFace, PhotoRef, PhotoResult

MODEL = "bench/synthetic-clustered"
_NS = uuid.UUID("6f1c5a9e-3a53-4c1e-9d59-5e0a1b2c3d4e")
FACES_PER_PERSON = 8
NOISE = 0.88


def _unit(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    out: npt.NDArray[np.float32] = (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
    return out


def _people(session_id: uuid.UUID, faces: int) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(session_id.int % 2**32)
    return _unit(rng.standard_normal((max(1, faces // FACES_PER_PERSON), EMBEDDING_DIM)).astype(np.float32))


def _noisy(rng: np.random.Generator, centers: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    noise = rng.standard_normal(centers.shape).astype(np.float32) * (NOISE / np.sqrt(EMBEDDING_DIM))
    return _unit(centers + noise)


def session_ids(sessions: int, big_faces: int) -> list[tuple[uuid.UUID, int]]:
    return [(uuid.uuid5(_NS, f"s{k}"), 0) for k in range(sessions)] + (
        [(uuid.uuid5(_NS, f"big{big_faces}"), big_faces)] if big_faces else []
    )


def _write_session(store: VectorStore, session_id: uuid.UUID, faces: int) -> None:
    people = _people(session_id, faces)
    rng = np.random.default_rng(session_id.int % 2**31 + 1)
    vectors = _noisy(rng, people[rng.integers(0, len(people), faces)])
    results: list[PhotoResult] = []
    i = p = 0
    while i < faces:
        k = min(int(rng.integers(1, 6)), faces - i)
        ref = PhotoRef(uuid.uuid5(session_id, str(p)), session_id, f"s{p}.jpg", f"bench/search/{p}.jpg")
        box = (0.0, 0.0, 1.0, 1.0)
        results.append(PhotoResult(ref, MODEL, [DetectedFace(box, 0.9, vectors[i + j]) for j in range(k)]))
        i, p = i + k, p + 1
        if len(results) == 256 or i >= faces:
            store.write_results(results)
            results = []


def build_index(store: VectorStore, sessions: int, faces_per_session: int, big_faces: int) -> float:
    """Write the sessions that are not there yet (or not whole); returns seconds spent."""
    t0 = time.perf_counter()
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(face_embeddings.c.session_id, sa.func.count())
            .where(face_embeddings.c.model_name == MODEL)
            .group_by(face_embeddings.c.session_id)
        )
        counts: dict[uuid.UUID, int] = {row[0]: int(row[1]) for row in rows}
    for sid, size in session_ids(sessions, big_faces):
        size = size or faces_per_session
        if counts.get(sid) != size:
            with store.engine.begin() as conn:
                for table in ("face_embeddings", "indexed_photos"):
                    conn.execute(sa.text(f"DELETE FROM {table} WHERE session_id = :s"), {"s": sid})
            _write_session(store, sid, size)
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE face_embeddings"))
    return time.perf_counter() - t0


def _exact(store: VectorStore, session_id: uuid.UUID, query: npt.NDArray[np.float32], k: int) -> list[Any]:
    fe = face_embeddings
    distance = fe.c.embedding.cosine_distance(query)
    statement = (
        sa.select(fe.c.photo_id, fe.c.face_index)
        .where(fe.c.session_id == session_id, fe.c.model_name == MODEL)
        .order_by(distance)
        .limit(k)
    )
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(statement)]


def measure(
    store: VectorStore, session_id: uuid.UUID, faces: int, queries: int, k: int = 20
) -> dict[str, float]:
    people = _people(session_id, faces)
    rng = np.random.default_rng(12345 + session_id.int % 1000)
    selfies = _noisy(rng, people[rng.integers(0, len(people), queries)])
    truth = [_exact(store, session_id, q, k) for q in selfies]  # also warms the session's pages
    times, recalls = [], []
    for q, exact in zip(selfies, truth, strict=True):
        t0 = time.perf_counter()
        hits = store.search(session_id, q, limit=k, model_name=MODEL)
        times.append((time.perf_counter() - t0) * 1000)
        recalls.append(len({(h.photo_id, h.face_index) for h in hits} & set(exact)) / max(1, len(exact)))
    return {"times_ms": times, "recall": float(np.mean(recalls))}  # type: ignore[dict-item]


def run_search(
    store: VectorStore,
    *,
    sessions: int = 50,
    faces_per_session: int = 10_000,
    big_faces: int = 50_000,
    queries_per_session: int = 4,
    big_queries: int = 30,
) -> dict[str, Any]:
    build_s = build_index(store, sessions, faces_per_session, big_faces)
    with store.engine.connect() as conn:
        total = int(conn.scalar(sa.select(sa.func.count()).select_from(face_embeddings)) or 0)
    times: list[float] = []
    recalls: list[float] = []
    for sid, size in session_ids(sessions, 0):
        figures = measure(store, sid, size or faces_per_session, queries_per_session)
        times += figures["times_ms"]  # type: ignore[arg-type]
        recalls.append(figures["recall"])
    out: dict[str, Any] = {
        "search_index_faces": total,
        "search_session_faces": faces_per_session,
        "search_queries": len(times),
        "search_p50_ms": round(float(np.percentile(times, 50)), 2),
        "search_p99_ms": round(float(np.percentile(times, 99)), 2),
        "search_recall_at_20": round(float(np.mean(recalls)), 4),
        "search_index_build_s": round(build_s, 1),
    }
    if big_faces:
        big_id = session_ids(0, big_faces)[0][0]
        big = measure(store, big_id, big_faces, big_queries)
        out["search_big_session_faces"] = big_faces
        out["search_p50_ms_big_session"] = round(float(np.percentile(big["times_ms"], 50)), 2)
        out["search_p99_ms_big_session"] = round(float(np.percentile(big["times_ms"], 99)), 2)
        out["search_recall_at_20_big_session"] = round(float(big["recall"]), 4)
    return out
