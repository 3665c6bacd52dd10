"""The local face index: PostgreSQL + pgvector (``facepass_vector``).

``face_embeddings`` holds one row per face; ``indexed_photos`` is the ledger of
processed photos (indexed / no face / permanent failure), so that a photo with
no face is never downloaded again. A photo's faces and its ledger row commit in
one transaction; unique keys make a second write of the same photo impossible.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa
from pgvector.sqlalchemy import Vector
from sqlalchemy.dialects import postgresql as pg

from facepass.db import make_engine
from facepass.models import EMBEDDING_DIM, LedgerStatus, PhotoResult, PhotoStatus

metadata = sa.MetaData()

face_embeddings = sa.Table(
    "face_embeddings",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("session_id", pg.UUID(as_uuid=True), nullable=False, index=True),
    sa.Column("photo_id", pg.UUID(as_uuid=True), nullable=False),
    sa.Column("face_index", sa.Integer, nullable=False),
    sa.Column("bbox_x1", sa.Float, nullable=False),
    sa.Column("bbox_y1", sa.Float, nullable=False),
    sa.Column("bbox_x2", sa.Float, nullable=False),
    sa.Column("bbox_y2", sa.Float, nullable=False),
    sa.Column("det_score", sa.Float, nullable=False),
    sa.Column("embedding", Vector(EMBEDDING_DIM), nullable=False),
    sa.Column("model_name", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.UniqueConstraint("photo_id", "face_index", name="face_embeddings_photo_face_key"),
)
sa.Index(
    "face_embeddings_embedding_hnsw",
    face_embeddings.c.embedding,
    postgresql_using="hnsw",
    postgresql_ops={"embedding": "vector_cosine_ops"},
)

indexed_photos = sa.Table(
    "indexed_photos",
    metadata,
    sa.Column("photo_id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("session_id", pg.UUID(as_uuid=True), nullable=False, index=True),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("face_count", sa.Integer, nullable=False),
    sa.Column("error_code", sa.Text),
    sa.Column("error_message", sa.Text),
    sa.Column("model_name", sa.Text, nullable=False),
    sa.Column("processed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.CheckConstraint("status IN ('indexed', 'no_face', 'failed')", name="indexed_photos_status_check"),
)


@dataclass(frozen=True, slots=True)
class SearchHit:
    photo_id: uuid.UUID
    face_index: int
    similarity: float
    bbox: tuple[float, float, float, float]


class VectorStore:
    def __init__(self, dsn: str | None, pool_size: int = 5) -> None:
        self.engine = make_engine(dsn, pool_size=pool_size)

    def create_schema(self) -> None:
        """Idempotent; safe to run from several processes at once."""
        with self.engine.begin() as conn:
            # Serialize concurrent starters: CREATE EXTENSION IF NOT EXISTS can race.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(4242001)"))
            conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS vector"))
            metadata.create_all(conn, checkfirst=True)

    def done_photo_ids(self, session_id: uuid.UUID, *, retry_failed: bool = False) -> set[uuid.UUID]:
        """Photos the next run must skip: the ledger, plus legacy rows with no ledger entry."""
        statuses = [LedgerStatus.INDEXED.value, LedgerStatus.NO_FACE.value]
        if not retry_failed:
            statuses.append(LedgerStatus.FAILED.value)
        ledger = sa.select(indexed_photos.c.photo_id).where(
            indexed_photos.c.session_id == session_id, indexed_photos.c.status.in_(statuses)
        )
        legacy = (
            sa.select(face_embeddings.c.photo_id).where(face_embeddings.c.session_id == session_id).distinct()
        )
        with self.engine.connect() as conn:
            return set(conn.scalars(sa.union(ledger, legacy)))

    def write_result(self, result: PhotoResult) -> float:
        """Commit one photo atomically; returns the time it took in ms.

        A transient failure writes nothing, so the next run retries the photo.
        """
        if result.status is PhotoStatus.RETRY:
            return 0.0
        started = time.perf_counter()
        photo_id, session_id = result.photo.id, result.photo.session_id
        ledger_row = {
            "photo_id": photo_id,
            "session_id": session_id,
            "status": LedgerStatus(result.status.value).value,
            "face_count": len(result.faces),
            "error_code": result.error_code if result.status is not PhotoStatus.INDEXED else None,
            "error_message": result.error_message,
            "model_name": result.model_name,
        }
        upsert = pg.insert(indexed_photos).values(ledger_row)
        upsert = upsert.on_conflict_do_update(
            index_elements=[indexed_photos.c.photo_id],
            set_={k: upsert.excluded[k] for k in ledger_row if k != "photo_id"}
            | {"processed_at": sa.func.now()},
        )
        with self.engine.begin() as conn:
            # The upsert locks the ledger row first: two writers of one photo serialize here.
            conn.execute(upsert)
            conn.execute(sa.delete(face_embeddings).where(face_embeddings.c.photo_id == photo_id))
            if result.faces:
                conn.execute(
                    face_embeddings.insert(),
                    [
                        {
                            "session_id": session_id,
                            "photo_id": photo_id,
                            "face_index": i,
                            "bbox_x1": face.bbox[0],
                            "bbox_y1": face.bbox[1],
                            "bbox_x2": face.bbox[2],
                            "bbox_y2": face.bbox[3],
                            "det_score": face.det_score,
                            "embedding": face.embedding,
                            "model_name": result.model_name,
                        }
                        for i, face in enumerate(result.faces)
                    ],
                )
        return (time.perf_counter() - started) * 1000

    def count_embeddings(self, session_id: uuid.UUID) -> int:
        query = sa.select(sa.func.count()).select_from(face_embeddings)
        query = query.where(face_embeddings.c.session_id == session_id)
        with self.engine.connect() as conn:
            return int(conn.scalar(query) or 0)

    def ledger(self, session_id: uuid.UUID) -> dict[uuid.UUID, str]:
        query = sa.select(indexed_photos.c.photo_id, indexed_photos.c.status).where(
            indexed_photos.c.session_id == session_id
        )
        with self.engine.connect() as conn:
            return {row[0]: row[1] for row in conn.execute(query)}

    def search(self, session_id: uuid.UUID, embedding: Iterable[float], limit: int = 20) -> list[SearchHit]:
        """Faces of the session nearest to ``embedding`` by cosine similarity."""
        query_vec = np.asarray(list(embedding), dtype=np.float32)
        distance = face_embeddings.c.embedding.cosine_distance(query_vec)
        query = (
            sa.select(
                face_embeddings.c.photo_id,
                face_embeddings.c.face_index,
                (1 - distance).label("similarity"),
                face_embeddings.c.bbox_x1,
                face_embeddings.c.bbox_y1,
                face_embeddings.c.bbox_x2,
                face_embeddings.c.bbox_y2,
            )
            .where(face_embeddings.c.session_id == session_id)
            .order_by(distance)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [SearchHit(r[0], r[1], float(r[2]), (r[3], r[4], r[5], r[6])) for r in conn.execute(query)]

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def close(self) -> None:
        self.engine.dispose()
