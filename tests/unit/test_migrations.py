"""facepass.index.migrations: an index built the way main built it before migrations is upgraded in place."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import sqlalchemy as sa
from pgvector.sqlalchemy import Vector
from sqlalchemy.dialects import postgresql as pg

from facepass.db import make_engine
from facepass.index.migrations import current_revision, head_revision, migrate
from facepass.index.store import VectorStore
from facepass.settings import Settings

# The schema exactly as main's VectorStore.create_schema() made it (metadata.create_all + HNSW).
old = sa.MetaData()
old_faces = sa.Table(
    "face_embeddings",
    old,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("session_id", pg.UUID(as_uuid=True), nullable=False, index=True),
    sa.Column("photo_id", pg.UUID(as_uuid=True), nullable=False),
    sa.Column("face_index", sa.Integer, nullable=False),
    sa.Column("bbox_x1", sa.Float, nullable=False),
    sa.Column("bbox_y1", sa.Float, nullable=False),
    sa.Column("bbox_x2", sa.Float, nullable=False),
    sa.Column("bbox_y2", sa.Float, nullable=False),
    sa.Column("det_score", sa.Float, nullable=False),
    sa.Column("embedding", Vector(512), nullable=False),
    sa.Column("model_name", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.UniqueConstraint("photo_id", "face_index", name="face_embeddings_photo_face_key"),
)
sa.Index(
    "face_embeddings_embedding_hnsw",
    old_faces.c.embedding,
    postgresql_using="hnsw",
    postgresql_ops={"embedding": "vector_cosine_ops"},
)
old_ledger = sa.Table(
    "indexed_photos",
    old,
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


@pytest.fixture
def fresh_db(settings: Settings) -> Iterator[str]:
    """A new, empty database on the embedded server."""
    name = f"migr_{uuid.uuid4().hex[:10]}"
    admin = make_engine(settings.local_url())
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(settings.local_url()).set(database=name)
    yield url.render_as_string(hide_password=False)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


def test_index_of_the_previous_schema_is_upgraded_and_keeps_its_rows(fresh_db: str) -> None:
    engine = make_engine(fresh_db)
    session_id = uuid.uuid4()
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((30, 512)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    photo_ids = [uuid.uuid4() for _ in range(10)]
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS vector"))
        old.create_all(conn)
        conn.execute(
            old_ledger.insert(),
            [
                {
                    "photo_id": p,
                    "session_id": session_id,
                    "status": "indexed",
                    "face_count": 3,
                    "model_name": "m",
                }
                for p in photo_ids
            ],
        )
        conn.execute(
            old_faces.insert(),
            [
                {
                    "session_id": session_id,
                    "photo_id": photo_ids[i // 3],
                    "face_index": i % 3,
                    "bbox_x1": 0.0,
                    "bbox_y1": 0.0,
                    "bbox_x2": 1.0,
                    "bbox_y2": 1.0,
                    "det_score": 0.9,
                    "embedding": vectors[i],
                    "model_name": "m",
                }  # fmt: skip
                for i in range(30)
            ],
        )
    assert current_revision(engine) is None

    store = VectorStore(fresh_db, pool_size=1)
    store.create_schema()  # what every process does at start
    store.create_schema()  # and again: nothing to do
    assert current_revision(engine) == head_revision()
    inspector = sa.inspect(engine)
    assert "face_embeddings_embedding_hnsw" not in {
        ix["name"] for ix in inspector.get_indexes("face_embeddings")
    }
    assert store.count_embeddings(session_id) == 30
    assert store.ledger(session_id) == dict.fromkeys(photo_ids, "indexed")
    with engine.connect() as conn:
        missing_half = conn.scalar(
            sa.text("SELECT count(*) FROM face_embeddings WHERE embedding_half IS NULL")
        )
    assert missing_half == 0
    hits = store.search(session_id, vectors[4], limit=3, model_name="m")
    assert (hits[0].photo_id, hits[0].face_index) == (photo_ids[1], 1)
    assert hits[0].similarity == pytest.approx(1.0, abs=1e-5)
    store.close()
    engine.dispose()


def test_an_empty_database_is_built_by_the_migrations(fresh_db: str) -> None:
    engine = make_engine(fresh_db)
    migrate(engine)
    migrate(engine)
    assert {"face_embeddings", "indexed_photos", "alembic_version"} <= set(
        sa.inspect(engine).get_table_names()
    )
    assert current_revision(engine) == head_revision()
    engine.dispose()
