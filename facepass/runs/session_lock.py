"""Who runs a session: a PostgreSQL session-level advisory lock in the local index.

The process that runs a session (a Serve replica, the bulk job's driver) holds
``pg_try_advisory_lock(key)`` on a connection of its own for the whole run. The
lock belongs to that connection: when the process dies, the server closes the
connection and the lock is free again, so a dead run frees its session by
itself. Locks are taken on a fresh connection each, never a pooled one: a
session-level advisory lock is re-entrant on one connection, so two runs of one
process sharing a connection would both "get" it.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from facepass.db import make_engine, with_driver

log = logging.getLogger(__name__)

# The server notices a vanished client (a node lost, not just a killed process) within
# ~25 s, and a deployment's idle_session_timeout never ends a run's lock connection.
_LOCK_CONNECTION_OPTIONS = (
    "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3 "
    "-c idle_session_timeout=0 -c statement_timeout=10000"
)

_NEW_FENCE = sa.text(
    "INSERT INTO session_fences (session_id, token) VALUES (:sid, nextval('session_fence_tokens')) "
    "ON CONFLICT (session_id) DO UPDATE SET token = EXCLUDED.token, updated_at = now() RETURNING token"
)
_HELD_BY = sa.text(
    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND classid = CAST(:hi AS oid) AND objid = CAST(:lo AS oid) AND objsubid = 1"
)


def session_lock_key(session_id: uuid.UUID) -> int:
    """A signed 64-bit advisory-lock key for the session (the same in every process)."""
    digest = hashlib.blake2b(b"facepass-session-run:" + session_id.bytes, digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _key_halves(key: int) -> tuple[int, int]:
    """How pg_locks shows a bigint advisory key: classid = high 32 bits, objid = low 32 bits."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


@dataclass(slots=True)
class HeldSession:
    """The lock of one session, held on its own connection until ``release()``."""

    session_id: uuid.UUID
    key: int
    backend_pid: int
    _conn: sa.Connection | None = field(repr=False)
    # This run's fencing token: larger than every earlier run's of the session. The writer
    # refuses a photo whose token is older than the session's (its run lost the lock).
    fence: int = 0

    @property
    def held(self) -> bool:
        return self._conn is not None

    def release(self) -> None:
        """Unlock and close the connection; idempotent (closing alone would free it too)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
        except sa.exc.DBAPIError as exc:  # the connection is gone: so is the lock
            log.warning(
                "session %s: unlock failed (%s); the closed connection frees it", self.session_id, exc
            )
        finally:
            conn.close()


def try_advisory_lock(engine: sa.Engine, key: int) -> tuple[sa.Connection, int] | None:
    """``pg_try_advisory_lock(key)`` on a new connection of ``engine``: the connection that
    holds it and its server pid, or None at once (connection closed) if another holds it."""
    conn = engine.connect()
    try:
        row = conn.execute(sa.text("SELECT pg_try_advisory_lock(:key), pg_backend_pid()"), {"key": key}).one()
    except BaseException:
        conn.close()
        raise
    if not row[0]:
        conn.close()
        return None
    return conn, int(row[1])


class SessionLocks:
    """Take, test and release the per-session run locks in one database."""

    def __init__(self, dsn: str | None) -> None:
        if not dsn:
            raise RuntimeError("database DSN is not resolved; call resolve_databases() first")
        connect_args = {"connect_timeout": 10, "options": _LOCK_CONNECTION_OPTIONS}
        # NullPool: closing a lock's connection really closes it (and frees the lock).
        self._locks = sa.create_engine(
            with_driver(dsn),
            poolclass=NullPool,
            isolation_level="AUTOCOMMIT",
            connect_args={**connect_args, "application_name": "facepass-session-run"},
        )
        self._checks = make_engine(dsn, pool_size=1, max_overflow=1)

    def try_acquire(self, session_id: uuid.UUID) -> HeldSession | None:
        """The session's lock on a new connection, or None at once if another connection holds it."""
        key = session_lock_key(session_id)
        taken = try_advisory_lock(self._locks, key)
        if taken is None:
            return None
        conn, backend_pid = taken
        try:
            # A new token for the session, under its lock: from now on, writes of any earlier
            # run of it are refused (its UPDATE waits for a write that holds the old token).
            token = conn.execute(_NEW_FENCE, {"sid": session_id}).scalar_one()
        except BaseException:
            conn.close()  # frees the lock
            raise
        return HeldSession(session_id, key, backend_pid, conn, int(token))

    def holder(self, session_id: uuid.UUID) -> int | None:
        """The server pid of the connection holding the session's lock, or None if it is free.

        Reads pg_locks, so asking never takes the lock (a check cannot make a real
        runner's try fail)."""
        hi, lo = _key_halves(session_lock_key(session_id))
        with self._checks.connect() as conn:
            pid = conn.execute(_HELD_BY, {"hi": hi, "lo": lo}).scalar()
        return int(pid) if pid is not None else None

    def is_held_by(self, session_id: uuid.UUID, backend_pid: int) -> bool:
        return self.holder(session_id) == backend_pid

    def close(self) -> None:
        self._locks.dispose()
        self._checks.dispose()
