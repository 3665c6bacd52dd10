"""facepass.runs.session_lock: per-session run locks on the real embedded PostgreSQL."""

from __future__ import annotations

import time
import uuid

import sqlalchemy as sa

from facepass.runs.session_lock import SessionLocks, _key_halves, session_lock_key
from facepass.settings import Settings


def test_key_is_stable_signed_64_bit_and_per_session() -> None:
    sid = uuid.UUID("5f0c1c2e-8d7a-4a53-9f0e-3f1c2b7d9a10")
    assert session_lock_key(sid) == session_lock_key(uuid.UUID(str(sid)))
    assert -(2**63) <= session_lock_key(sid) < 2**63
    assert session_lock_key(sid) != session_lock_key(uuid.uuid4())
    hi, lo = _key_halves(-1)
    assert (hi, lo) == (0xFFFF_FFFF, 0xFFFF_FFFF)


def test_second_try_fails_until_released(settings: Settings, locks: SessionLocks) -> None:
    sid = uuid.uuid4()
    other_process = SessionLocks(settings.local_url())
    try:
        first = locks.try_acquire(sid)
        assert first is not None and first.held
        assert other_process.try_acquire(sid) is None  # another process
        assert locks.try_acquire(sid) is None  # the same process: not re-entrant (own connections)
        assert locks.holder(sid) == first.backend_pid
        assert locks.is_held_by(sid, first.backend_pid)
        assert other_process.try_acquire(uuid.uuid4()) is not None  # other sessions are free
        first.release()
        first.release()  # idempotent
        assert not first.held
        assert locks.holder(sid) is None
        second = other_process.try_acquire(sid)
        assert second is not None
        second.release()
    finally:
        other_process.close()


def test_a_closed_connection_frees_the_lock(locks: SessionLocks) -> None:
    sid = uuid.uuid4()
    held = locks.try_acquire(sid)
    assert held is not None and held._conn is not None
    held._conn.close()  # the process went away without unlocking
    assert locks.holder(sid) is None
    again = locks.try_acquire(sid)
    assert again is not None
    again.release()


def test_a_killed_backend_frees_the_lock(settings: Settings, locks: SessionLocks) -> None:
    """What a killed replica looks like to the server: its connection ends."""
    sid = uuid.uuid4()
    held = locks.try_acquire(sid)
    assert held is not None
    engine = sa.create_engine(settings.local_url())
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": held.backend_pid})
    engine.dispose()
    for _ in range(50):  # termination is asynchronous
        if locks.holder(sid) is None:
            break
        time.sleep(0.05)
    assert locks.holder(sid) is None
    held.release()  # the dead connection: logged, not raised
    fresh = locks.try_acquire(sid)
    assert fresh is not None
    fresh.release()
