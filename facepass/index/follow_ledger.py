"""The follower's memory in the local index (migration 0004): what each followed session
looked like when the index last mirrored it, the follower's state, and lag samples."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from facepass.catalog.changes import Signature


@dataclass(frozen=True, slots=True)
class FollowedSession:
    session_id: uuid.UUID
    signature: Signature | None  # None: never mirrored by the follower
    checked_at: datetime | None
    retry_due: bool  # a sync left transient failures and their retry time has come
    model_name: str | None = None  # the model of its last sync (another one: a new generation to build)


_PICK = sa.text(
    """
    WITH hot AS (
        SELECT session_id FROM follow_sessions
        WHERE changed_at > now() - make_interval(secs => :hot_window)
        ORDER BY changed_at DESC LIMIT :hot_max
    ), due AS (
        SELECT session_id FROM follow_sessions
        WHERE retry_at <= now() ORDER BY retry_at LIMIT :hot_max
    ), regenerate AS (
        SELECT session_id FROM follow_sessions
        WHERE model_name IS NOT NULL AND model_name <> :model ORDER BY session_id LIMIT :sweep
    ), sweep AS (
        SELECT session_id FROM follow_sessions
        WHERE session_id NOT IN (SELECT session_id FROM hot)
        ORDER BY checked_at NULLS FIRST, session_id LIMIT :sweep
    )
    SELECT f.session_id, f.live_photos, f.id_hash, f.checked_at, coalesce(f.retry_at <= now(), false),
           f.model_name
    FROM follow_sessions f
    WHERE f.session_id IN (SELECT session_id FROM hot UNION SELECT session_id FROM due
                           UNION SELECT session_id FROM regenerate UNION SELECT session_id FROM sweep)
    """
)


class FollowLedger:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    # --- sessions ------------------------------------------------------------------
    def known_sessions(self) -> set[uuid.UUID]:
        with self.engine.connect() as conn:
            return set(conn.scalars(sa.text("SELECT session_id FROM follow_sessions")))

    def add_sessions(self, session_ids: list[uuid.UUID]) -> None:
        """New sessions to follow: never checked, so the sweep checks them first (not hot:
        10,000 sessions found at the first start must not all be checked every cycle)."""
        if session_ids:
            with self.engine.begin() as conn:
                conn.execute(
                    sa.text(
                        "INSERT INTO follow_sessions (session_id) "
                        "SELECT unnest(CAST(:ids AS uuid[])) ON CONFLICT DO NOTHING"
                    ),
                    {"ids": session_ids},
                )

    def remove_sessions(self, session_ids: list[uuid.UUID]) -> None:
        if session_ids:
            with self.engine.begin() as conn:
                conn.execute(
                    sa.text("DELETE FROM follow_sessions WHERE session_id = ANY(:ids)"), {"ids": session_ids}
                )

    def pick(self, hot_window_s: float, hot_max: int, sweep: int, model: str = "") -> list[FollowedSession]:
        """This cycle's sessions: the hot ones, the ones whose retry is due, sessions last
        synced by another model than ``model`` and the next of the sweep (oldest check first)."""
        params = {"hot_window": hot_window_s, "hot_max": hot_max, "sweep": sweep, "model": model}
        with self.engine.connect() as conn:
            rows = conn.execute(_PICK, params).all()
        return [
            FollowedSession(
                session_id=r[0],
                signature=Signature(r[1], r[2]) if r[1] is not None else None,
                checked_at=r[3],
                retry_due=bool(r[4]),
                model_name=r[5],
            )
            for r in rows
        ]

    def checked(self, session_ids: list[uuid.UUID], changed: list[uuid.UUID]) -> None:
        """Checked now; the changed ones are hot from now on."""
        with self.engine.begin() as conn:
            if session_ids:
                conn.execute(
                    sa.text("UPDATE follow_sessions SET checked_at = now() WHERE session_id = ANY(:ids)"),
                    {"ids": session_ids},
                )
            if changed:
                conn.execute(
                    sa.text("UPDATE follow_sessions SET changed_at = now() WHERE session_id = ANY(:ids)"),
                    {"ids": changed},
                )

    def mark_hot(self, session_id: uuid.UUID) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE follow_sessions SET changed_at = now() WHERE session_id = :sid"),
                {"sid": session_id},
            )

    def synced(
        self,
        session_id: uuid.UUID,
        signature: Signature,
        retry_after_s: float | None,
        model: str | None = None,
    ) -> None:
        """The index mirrors ``signature``; with ``retry_after_s``, transient failures wait for a retry."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE follow_sessions SET live_photos = :n, id_hash = :h, synced_at = now(), "
                    "model_name = coalesce(CAST(:model AS text), model_name), "
                    "retry_at = CASE WHEN CAST(:retry AS float8) IS NULL THEN NULL "
                    "  ELSE now() + make_interval(secs => CAST(:retry AS float8)) END, "
                    "retries = CASE WHEN CAST(:retry AS float8) IS NULL THEN 0 ELSE retries + 1 END "
                    "WHERE session_id = :sid"
                ),
                {
                    "n": signature.live_photos,
                    "h": signature.id_hash,
                    "retry": retry_after_s,
                    "sid": session_id,
                    "model": model,
                },
            )

    def retries(self, session_id: uuid.UUID) -> int:
        with self.engine.connect() as conn:
            value = conn.scalar(
                sa.text("SELECT retries FROM follow_sessions WHERE session_id = :sid"), {"sid": session_id}
            )
        return int(value or 0)

    def counts(self) -> dict[str, int]:
        """Followed sessions, those never mirrored yet, those waiting for a retry."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.text(
                    "SELECT count(*), count(*) FILTER (WHERE live_photos IS NULL), "
                    "count(*) FILTER (WHERE retry_at IS NOT NULL) FROM follow_sessions"
                )
            ).one()
        return {"sessions_followed": row[0], "sessions_never_synced": row[1], "sessions_retrying": row[2]}

    # --- lag -------------------------------------------------------------------------
    def add_lag(self, samples: list[tuple[datetime, float]], window_s: float) -> None:
        with self.engine.begin() as conn:
            if samples:
                conn.execute(
                    sa.text("INSERT INTO follow_lag (indexed_at, lag_s) VALUES (:at, :lag)"),
                    [{"at": at, "lag": lag} for at, lag in samples],
                )
            conn.execute(
                sa.text("DELETE FROM follow_lag WHERE indexed_at < now() - make_interval(secs => :w)"),
                {"w": window_s},
            )

    def lag(self, window_s: float) -> dict[str, float | int | None]:
        """Catalog commit -> searchable over the window: p50, p95, max, samples."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.text(
                    "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lag_s), "
                    "percentile_cont(0.95) WITHIN GROUP (ORDER BY lag_s), max(lag_s), count(*) "
                    "FROM follow_lag WHERE indexed_at >= now() - make_interval(secs => :w)"
                ),
                {"w": window_s},
            ).one()
        rounded = [round(float(v), 2) if v is not None else None for v in row[:3]]
        return {"p50_s": rounded[0], "p95_s": rounded[1], "max_s": rounded[2], "samples": int(row[3])}

    # --- the follower's state ----------------------------------------------------------
    def write_state(self, state: Mapping[str, object]) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO follow_state (id, state, updated_at) VALUES (1, CAST(:s AS jsonb), now()) "
                    "ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, updated_at = now()"
                ),
                {"s": json.dumps(state, default=str)},
            )

    def read_state(self) -> tuple[Mapping[str, Any], datetime | None]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.text("SELECT state, updated_at FROM follow_state WHERE id = 1")).first()
        if row is None:
            return {}, None
        return dict(row[0]), row[1]

    def processed_since(self, session_id: uuid.UUID, since: datetime) -> list[tuple[uuid.UUID, datetime]]:
        """Photos of the session the index committed (indexed or no face) since ``since``."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT photo_id, processed_at FROM indexed_photos WHERE session_id = :sid "
                    "AND processed_at >= :since AND status IN ('indexed', 'no_face')"
                ),
                {"sid": session_id, "since": since},
            ).all()
        return [(r[0], r[1]) for r in rows]
