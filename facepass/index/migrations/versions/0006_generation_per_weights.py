"""One generation per set of weights: a generation is named by its pack, its detector and
recognizer files and a hash of their bytes (``<pack>/<det>+<rec>#<weights id>``), no longer by
the runtime and precision that ran them (``...@ov-f32``); which build made a photo's vectors is
recorded in the ledger's new ``variant`` column ("openvino-f32/cpu", "onnxruntime-fp32/cuda").

The upgrade renames the rows of every legacy generation whose pack is found here (the current
model root, ``FACEPASS_GENERATION_MODEL_ROOTS``, the packaged one) to its weights' generation:
no re-embedding, no search gap. A photo with rows of two builds of the same weights (mid-change
from one runtime to another) keeps one set: its ledger row's build, else the newest name. A
legacy generation whose pack is not here keeps its name: it stays a generation of its own, and
is rebuilt by the usual no-gap change. Rows of ``@ov-*`` builds get their variant from the
suffix; the fp32 pack's rows (no suffix) did not say their device: ``variant`` stays NULL.

The downgrade drops ``variant`` and leaves the names (code before 0006 then sees the weights'
generation as another model and rebuilds it, with no gap).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

log = logging.getLogger(__name__)

_NAMES = sa.text(
    "SELECT model_name FROM indexed_photos UNION SELECT model_name FROM face_embeddings "
    "UNION SELECT model_name FROM follow_sessions WHERE model_name IS NOT NULL"
)
_VARIANT_FROM_SUFFIX = (
    "UPDATE indexed_photos SET variant = 'openvino-' || substr(split_part(model_name, '@', 2), 4) || '/cpu' "
    "WHERE variant IS NULL AND split_part(model_name, '@', 2) LIKE 'ov-%'"
)
# Per photo and target generation, one source generation's face rows stay: the one its ledger
# row names, else the greatest name.
_DROP_SECOND_BUILDS = """
WITH sources AS (
    SELECT DISTINCT f.session_id, f.photo_id, f.model_name, m.new
    FROM face_embeddings f JOIN facepass_generation_map m ON m.old = f.model_name
), ranked AS (
    SELECT s.session_id, s.photo_id, s.model_name,
           row_number() OVER (
               PARTITION BY s.session_id, s.photo_id, s.new
               ORDER BY (l.model_name IS NOT DISTINCT FROM s.model_name) DESC, s.model_name DESC
           ) AS rank
    FROM sources s
    LEFT JOIN indexed_photos l ON l.session_id = s.session_id AND l.photo_id = s.photo_id
)
DELETE FROM face_embeddings f USING ranked r
WHERE r.rank > 1 AND f.session_id = r.session_id AND f.photo_id = r.photo_id AND f.model_name = r.model_name
"""


def _weights_generations(names: list[str]) -> dict[str, str]:
    """Legacy generation name -> its weights' generation, for the packs found here."""
    from facepass.settings import Settings
    from facepass.vision.generation_packs import pack_settings
    from facepass.vision.pack import WEIGHTS_MARK, ModelPack

    settings = Settings()
    mapping: dict[str, str] = {}
    for name in names:
        if WEIGHTS_MARK in name:
            continue
        found = pack_settings(settings, name)
        if found is None:
            log.warning("generation %s: its pack is not here; its rows keep their name", name)
            continue
        mapping[name] = ModelPack.from_settings(found).name
    return mapping


def upgrade() -> None:
    op.execute("ALTER TABLE indexed_photos ADD COLUMN IF NOT EXISTS variant text")
    op.execute(_VARIANT_FROM_SUFFIX)
    bind = op.get_bind()
    mapping = _weights_generations(sorted(bind.scalars(_NAMES)))
    if not mapping:
        return
    op.execute("CREATE TEMPORARY TABLE facepass_generation_map (old text PRIMARY KEY, new text NOT NULL)")
    bind.execute(
        sa.text("INSERT INTO facepass_generation_map (old, new) VALUES (:old, :new)"),
        [{"old": old, "new": new} for old, new in mapping.items()],
    )
    op.execute(_DROP_SECOND_BUILDS)
    for table in ("face_embeddings", "indexed_photos", "follow_sessions"):
        op.execute(
            f"UPDATE {table} t SET model_name = m.new "
            "FROM facepass_generation_map m WHERE t.model_name = m.old"
        )
    op.execute("DROP TABLE facepass_generation_map")
    for old, new in mapping.items():
        log.info("generation %s is now %s (its weights)", old, new)


def downgrade() -> None:
    op.execute("ALTER TABLE indexed_photos DROP COLUMN IF EXISTS variant")
