"""Search by an exact per-session scan over a half-precision copy; no global HNSW.

Measured on this machine (10 sessions x 10,000 clustered faces, EXPLAIN and
timings in docs/throughput.md): a search is always inside one session, and the planner
takes the ``session_id`` b-tree and sorts, so the global HNSW index only cost
~3 ms of upkeep per inserted face. The full-precision ``embedding`` (2 KB) is
TOASTed out of line, which made the exact scan ~6 us per face; a generated
``halfvec`` copy (1 KB) stays in the heap row: the scan is ~5x faster, and the
short list it returns is re-ranked on the full vectors (recall 1.0 against the
exact scan). Generated, so it can never disagree with ``embedding``.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DROP INDEX IF EXISTS face_embeddings_embedding_hnsw")
    op.execute(
        "ALTER TABLE face_embeddings ADD COLUMN IF NOT EXISTS embedding_half HALFVEC(512) "
        "GENERATED ALWAYS AS (embedding::halfvec(512)) STORED"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE face_embeddings DROP COLUMN IF EXISTS embedding_half")
    op.execute(
        "CREATE INDEX IF NOT EXISTS face_embeddings_embedding_hnsw "
        "ON face_embeddings USING hnsw (embedding vector_cosine_ops)"
    )
