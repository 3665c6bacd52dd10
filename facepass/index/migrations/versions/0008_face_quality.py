"""Quality of each face (issue 45): ``face_embeddings.sharpness`` (the Laplacian variance of its
aligned crop) and ``yaw`` (the nose's offset from the eyes' middle, in eye distances), measured
by the embedder (``facepass/vision/quality.py``). Search leaves out faces below the gates
(settings), so a gate changes without embedding again; the box's size and the detector's score
were in the row already.

Both columns are nullable and added without a default (no table rewrite): rows written before
this revision have NULLs and pass the sharpness and yaw gates (unmeasured, not bad) until their
photo is embedded again; the size and score gates hold for them as for every row.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE face_embeddings "
        "ADD COLUMN IF NOT EXISTS sharpness double precision, "
        "ADD COLUMN IF NOT EXISTS yaw double precision"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE face_embeddings DROP COLUMN IF EXISTS sharpness, DROP COLUMN IF EXISTS yaw")
