"""Schema migrations of the local index (Alembic), applied at start by whoever starts first.

``migrate(engine)`` upgrades ``facepass_vector`` to the newest revision under a
PostgreSQL advisory lock, so the Serve replicas, the writer and a bulk job can
all call it at once. An index made before migrations existed (no
``alembic_version`` table) is picked up by the baseline revision, which only
creates what is missing, and then upgraded in place, rows kept.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

HERE = Path(__file__).resolve().parent
_LOCK_KEY = 4242001  # the same key the pre-migration create_schema() took


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: sa.Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def migrate(engine: sa.Engine, revision: str = "head") -> None:
    """Idempotent; safe from several processes at once (they queue on the lock)."""
    config = alembic_config()
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
