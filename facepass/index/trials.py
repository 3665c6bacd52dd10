"""The measured builds of each kind of machine, kept in the index database (``model_trials``).

A row per (machine, runtime versions, weights, trials version; the weights in the column
``generation``) with the record as jsonb
(``facepass/vision/trials.py``). The key's advisory lock, held on its own connection while a
process measures, makes every other actor of that kind of machine wait for the row rather than
measure again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from facepass.db import with_driver
from facepass.settings import Settings
from facepass.vision.trials import Change, FileTrialStore, Record, TrialKey, TrialStore, default_cache_dir

log = logging.getLogger(__name__)

LOCK_WAIT_S = 900.0  # a measurement takes ~30 s on 2 cores; past this a waiting process measures itself
_READ = sa.text(
    "SELECT record FROM model_trials WHERE machine = :machine AND runtimes = :runtimes "
    "AND generation = :generation AND version = :version"
)
_WRITE = sa.text(
    "INSERT INTO model_trials (machine, runtimes, generation, version, record, measured_at) "
    "VALUES (:machine, :runtimes, :generation, :version, CAST(:record AS jsonb), now()) "
    "ON CONFLICT (machine, runtimes, generation, version) DO UPDATE "
    "SET record = EXCLUDED.record, measured_at = now()"
)


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200]


def lock_key(key: TrialKey) -> int:
    """A signed 64-bit advisory lock key of its own (``trials:`` prefix: no run lock shares it)."""
    digest = hashlib.sha256(f"trials:{key.digest()}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class IndexTrialStore:
    def __init__(self, dsn: str, lock_wait_s: float = LOCK_WAIT_S) -> None:
        self.where = "index database (model_trials)"
        self.lock_wait_s = lock_wait_s
        # NullPool: a closed connection really closes (and frees its advisory lock).
        self._engine = sa.create_engine(
            with_driver(dsn),
            poolclass=NullPool,
            isolation_level="AUTOCOMMIT",
            connect_args={"connect_timeout": 10, "application_name": "facepass-model-trials"},
        )

    def _params(self, key: TrialKey) -> dict[str, object]:
        return {
            "machine": key.machine,
            "runtimes": key.runtimes,
            "generation": key.weights,  # the column keeps its name (migration 0007)
            "version": key.version,
        }

    def update(self, key: TrialKey, change: Change) -> Record | None:
        """Under the key's lock; where the database cannot be read (down, not migrated yet)
        the record is measured here and not kept (said once in the log), so an actor loads
        whatever the index's state; a record that cannot be written is still returned."""
        params = self._params(key)
        try:
            conn = self._engine.connect()
        except sa.exc.SQLAlchemyError as exc:
            return self._unkept(change, "cannot connect", exc)
        with conn:
            try:
                held = self._lock(conn, lock_key(key))
                kept = conn.execute(_READ, params).scalar_one_or_none()
            except sa.exc.SQLAlchemyError as exc:
                return self._unkept(change, "cannot read model_trials", exc)
            try:
                new = change(kept)
                if new is None:
                    return kept if isinstance(kept, dict) else None
                try:
                    conn.execute(_WRITE, {**params, "record": json.dumps(new)})
                except sa.exc.SQLAlchemyError as exc:
                    log.warning(
                        "model trials: the measurement is not kept (%s): the next load measures again",
                        _short(exc),
                    )
                return new
            finally:
                if held:
                    try:
                        conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": lock_key(key)})
                    except sa.exc.SQLAlchemyError:
                        pass  # the connection closes below: that frees it

    def _unkept(self, change: Change, what: str, exc: Exception) -> Record | None:
        log.warning("model trials: %s (%s); measuring in this process, not kept", what, _short(exc))
        return change(None)

    def _lock(self, conn: sa.Connection, key: int) -> bool:
        """Wait for the key's lock (polled: a statement timeout in the URL bounds each try)."""
        deadline = time.monotonic() + self.lock_wait_s
        said = False
        while True:
            if conn.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar_one():
                return True
            if time.monotonic() >= deadline:
                log.warning(
                    "model trials: waited %.0fs for another process's measurement; measuring here",
                    self.lock_wait_s,
                )
                return False
            if not said:
                log.info("model trials: another process of this kind of machine is measuring; waiting for it")
                said = True
            time.sleep(0.5)


def trial_store(settings: Settings) -> TrialStore:
    """The index database's store where the settings name it, else the folder store."""
    if settings.local_dsn is not None or settings.local_dsn_file is not None:
        return IndexTrialStore(settings.local_url())
    return FileTrialStore(default_cache_dir(settings))
