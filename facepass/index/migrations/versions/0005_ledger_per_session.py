"""The ledger keyed by (session, photo): a catalog that repeats a photo id in two sessions
gets one ledger row (and one set of face rows) per session, instead of two sessions taking
each other's row in a loop (each run saw the photo missing from its session and rewrote it).

``indexed_photos``: primary key ``(session_id, photo_id)`` (was ``photo_id``).
``face_embeddings``: unique ``(session_id, photo_id, model_name, face_index)`` (was
``(photo_id, model_name, face_index)``). Existing rows satisfy both (their photo ids were
unique), so the upgrade keeps every row; a downgrade fails if two sessions share a photo id.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE indexed_photos DROP CONSTRAINT IF EXISTS indexed_photos_pkey")
    op.execute(
        "ALTER TABLE indexed_photos ADD CONSTRAINT indexed_photos_pkey PRIMARY KEY (session_id, photo_id)"
    )
    op.execute("ALTER TABLE face_embeddings DROP CONSTRAINT IF EXISTS face_embeddings_photo_model_face_key")
    op.execute(
        "ALTER TABLE face_embeddings ADD CONSTRAINT face_embeddings_session_photo_model_face_key "
        "UNIQUE (session_id, photo_id, model_name, face_index)"
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE face_embeddings DROP CONSTRAINT IF EXISTS face_embeddings_session_photo_model_face_key"
    )
    op.execute(
        "ALTER TABLE face_embeddings ADD CONSTRAINT face_embeddings_photo_model_face_key "
        "UNIQUE (photo_id, model_name, face_index)"
    )
    op.execute("ALTER TABLE indexed_photos DROP CONSTRAINT IF EXISTS indexed_photos_pkey")
    op.execute("ALTER TABLE indexed_photos ADD CONSTRAINT indexed_photos_pkey PRIMARY KEY (photo_id)")
