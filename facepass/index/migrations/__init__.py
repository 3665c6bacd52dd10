"""Schema migrations of the local index (Alembic), applied by ``python -m jobs.migrate``.

``migrate(engine)`` upgrades ``facepass_vector`` to the newest revision under a
PostgreSQL advisory lock (idempotent; safe from several processes at once), on the
index owner's role. The service, the writer and the bulk job only check the revision
at start (``require_current``: a typed error naming the command when the schema is
behind); only on the embedded default database do they migrate by themselves. An
index made before migrations existed (no ``alembic_version`` table) is picked up by
the baseline revision, which only creates what is missing, and then upgraded in
place, rows kept.
"""

from __future__ import annotations

import logging
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from facepass.errors import LOCAL_INDEX, DatabaseSchemaMissing

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
MIGRATE_COMMAND = "python -m jobs.migrate"
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
        # A migration may build an index for long, and waits for the service's locks: not the
        # run-time bounds of the URL.
        conn.execute(sa.text("SET LOCAL statement_timeout = 0"))
        conn.execute(sa.text("SET LOCAL lock_timeout = '300s'"))
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def require_current(engine: sa.Engine) -> str:
    """The schema's revision when this code can run on it; DatabaseSchemaMissing naming the
    migration command when it is behind (or has none). A revision this code does not know is
    a newer schema (migrations only add): served, with a warning."""
    head = head_revision()
    current = current_revision(engine)
    if current == head:
        return current
    known = {rev.revision for rev in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
    if current is not None and current not in known:
        log.warning("local index schema %s is newer than this code's %s; serving it", current, head)
        return current
    name = engine.url.database or "?"
    detail = (
        f"database {name} is at schema revision {current or 'none'}, this code needs {head}: "
        f"run `{MIGRATE_COMMAND}` (as the index's owner role)"
    )
    log.error("%s: %s", LOCAL_INDEX, detail)
    raise DatabaseSchemaMissing(LOCAL_INDEX, detail, ("alembic_version",) if current is None else ())
