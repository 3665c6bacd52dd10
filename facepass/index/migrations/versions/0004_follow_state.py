"""The follower's memory: per-session catalog signatures, its own state, lag samples.

``follow_sessions``: one row per followed session: the signature of its live photos
(count, sum of id hashes) when the index last mirrored it, when it was last checked,
when it last changed (hot sessions are checked every cycle) and when a session whose
sync left transient failures may be tried again. Kept in the index database so a
restart, or a new follower on another replica, does not re-read every session.

``follow_state``: one row, written by the follower after each cycle, read by any
replica for ``GET /api/v1/faces/mirror``. ``follow_lag``: one row per photo the
follower indexed (catalog commit -> searchable, in seconds), pruned to a window.

Generations: a photo's face rows are unique per model, ``(photo_id, model_name,
face_index)``, so a new model's rows are written beside the old model's (search keeps
answering from the old generation until the session is complete in the new one).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE TABLE IF NOT EXISTS follow_sessions ("
        " session_id uuid PRIMARY KEY,"
        " live_photos integer,"
        " id_hash bigint,"
        " checked_at timestamptz,"
        " changed_at timestamptz,"
        " synced_at timestamptz,"
        " retry_at timestamptz,"
        " retries integer NOT NULL DEFAULT 0)"
    )
    op.execute("CREATE INDEX IF NOT EXISTS follow_sessions_checked_at ON follow_sessions (checked_at)")
    op.execute("CREATE INDEX IF NOT EXISTS follow_sessions_changed_at ON follow_sessions (changed_at)")
    op.execute(
        "CREATE TABLE IF NOT EXISTS follow_state ("
        " id integer PRIMARY KEY CHECK (id = 1),"
        " state jsonb NOT NULL,"
        " updated_at timestamptz NOT NULL DEFAULT now())"
    )
    op.execute(
        "CREATE TABLE IF NOT EXISTS follow_lag ("
        " indexed_at timestamptz NOT NULL,"
        " lag_s double precision NOT NULL)"
    )
    op.execute("CREATE INDEX IF NOT EXISTS follow_lag_indexed_at ON follow_lag (indexed_at)")
    op.execute("ALTER TABLE follow_sessions ADD COLUMN IF NOT EXISTS model_name text")
    op.execute("ALTER TABLE face_embeddings DROP CONSTRAINT IF EXISTS face_embeddings_photo_face_key")
    op.execute(
        "DO $$ BEGIN "
        "IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'face_embeddings_photo_model_face_key') "
        "THEN ALTER TABLE face_embeddings ADD CONSTRAINT face_embeddings_photo_model_face_key "
        "UNIQUE (photo_id, model_name, face_index); END IF; END $$"
    )


def downgrade() -> None:
    # Back to one model per photo: keep each photo's newest model's rows only.
    op.execute(
        "DELETE FROM face_embeddings f USING indexed_photos l "
        "WHERE l.photo_id = f.photo_id AND l.model_name <> f.model_name"
    )
    op.execute("ALTER TABLE face_embeddings DROP CONSTRAINT IF EXISTS face_embeddings_photo_model_face_key")
    op.execute(
        "ALTER TABLE face_embeddings ADD CONSTRAINT face_embeddings_photo_face_key "
        "UNIQUE (photo_id, face_index)"
    )
    op.execute("DROP TABLE IF EXISTS follow_lag")
    op.execute("DROP TABLE IF EXISTS follow_state")
    op.execute("DROP TABLE IF EXISTS follow_sessions")
