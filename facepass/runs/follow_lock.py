"""Exactly one follower: a PostgreSQL advisory lock in the local index, on a connection
of its own (like a session's run lock, ``facepass.runs.session_lock``).

Every Serve replica (and any other process) may try; the one that holds the lock
follows, the others try again now and then. When the holder dies, the server
closes its connection and the lock is free for the next one.
"""

from __future__ import annotations

import hashlib
import logging

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from facepass.db import with_driver
from facepass.runs.session_lock import try_advisory_lock

log = logging.getLogger(__name__)

FOLLOWER_LOCK_KEY = int.from_bytes(
    hashlib.blake2b(b"facepass-catalog-follower", digest_size=8).digest(), "big", signed=True
)
_OPTIONS = (
    "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3 "
    "-c idle_session_timeout=0 -c statement_timeout=10000"
)


class FollowerLock:
    def __init__(self, dsn: str | None) -> None:
        if not dsn:
            raise RuntimeError("database DSN is not resolved; call resolve_databases() first")
        self._engine = sa.create_engine(
            with_driver(dsn),
            poolclass=NullPool,  # closing the connection frees the lock
            isolation_level="AUTOCOMMIT",
            connect_args={
                "connect_timeout": 10,
                "options": _OPTIONS,
                "application_name": "facepass-follower",
            },
        )
        self._conn: sa.Connection | None = None
        self.backend_pid: int | None = None

    @property
    def held(self) -> bool:
        return self._conn is not None

    def try_acquire(self) -> bool:
        """True if this process is (now) the follower; never waits."""
        if self._conn is not None:
            return True
        taken = try_advisory_lock(self._engine, FOLLOWER_LOCK_KEY)
        if taken is None:
            return False
        self._conn, self.backend_pid = taken
        return True

    def still_held(self) -> bool:
        """The lock's connection still answers (if it dropped, so did the lock)."""
        if self._conn is None:
            return False
        try:
            self._conn.execute(sa.text("SELECT 1"))
            return True
        except sa.exc.DBAPIError as exc:
            log.warning("follower lock connection lost (%s): no longer the follower", exc)
            self.release()
            return False

    def holder_pid(self) -> int | None:
        """The server pid holding the lock (any process), or None."""
        hi, lo = (FOLLOWER_LOCK_KEY & 0xFFFF_FFFF_FFFF_FFFF) >> 32, FOLLOWER_LOCK_KEY & 0xFFFF_FFFF
        with self._engine.connect() as conn:
            pid = conn.execute(
                sa.text(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                    "AND classid = CAST(:hi AS oid) AND objid = CAST(:lo AS oid) AND objsubid = 1"
                ),
                {"hi": hi, "lo": lo},
            ).scalar()
        return int(pid) if pid is not None else None

    def release(self) -> None:
        conn, self._conn = self._conn, None
        self.backend_pid = None
        if conn is None:
            return
        try:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": FOLLOWER_LOCK_KEY})
        except sa.exc.DBAPIError:
            pass  # the connection is gone: so is the lock
        finally:
            conn.close()

    def close(self) -> None:
        self.release()
        self._engine.dispose()
