"""What changed in the catalog, found without a full scan of ``photos``.

The catalog is someone else's read-only database: no triggers, no replication
slot, and one index, ``photos(session_id)``. A watermark on ``created_at`` misses a
photo whose transaction commits late and a photo whose ``created_at`` lies in the
past. So each session gets a signature over its live photos: their count and the
sum of a hash of their ids. Any insert (whenever it commits, whatever its
``created_at``), soft delete, undelete or hard delete changes it; reading it costs
one index scan of the session's rows, so a cycle checks a bounded set of sessions.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from facepass.catalog.cloud import CloudCatalog


@dataclass(frozen=True, slots=True)
class Signature:
    """A session's live photos in two numbers: equal signatures -> nothing to do."""

    live_photos: int
    id_hash: int

    @classmethod
    def empty(cls) -> Signature:
        return cls(0, 0)


@dataclass(frozen=True, slots=True)
class CatalogSession:
    id: uuid.UUID
    enabled: bool


class CatalogChanges:
    """The follower's reads of the catalog: sessions, signatures, photo times."""

    def __init__(self, catalog: CloudCatalog) -> None:
        self.catalog = catalog
        s = catalog.schema
        # hashtext() is PostgreSQL's own 32-bit string hash; the sum is a bigint, order-free.
        self._signatures = sa.text(
            f'SELECT "{s.photo_session}", count(*), sum(hashtext("{s.photo_id}"::text)) '
            f'FROM "{s.photos}" WHERE "{s.photo_session}" = ANY(:ids) AND "{s.photo_deleted}" IS NULL '
            f'GROUP BY "{s.photo_session}"'
        )
        self._sessions = sa.text(
            f'SELECT "{s.session_id}", "{s.session_enabled}" FROM "{s.sessions}" '
            f'WHERE "{s.session_id}" > :after ORDER BY "{s.session_id}" LIMIT :limit'
        )
        self._created = sa.text(
            f'SELECT "{s.photo_id}", "{s.photo_created}" FROM "{s.photos}" '
            f'WHERE "{s.photo_session}" = :sid AND "{s.photo_id}" = ANY(:ids)'
        )

    def sessions(self, page_size: int = 5000) -> list[CatalogSession]:
        """Every session with its FacePass switch (the sessions table, by its primary key)."""
        found: list[CatalogSession] = []
        after = uuid.UUID(int=0)
        with self.catalog.engine.connect() as conn:
            while True:
                rows = conn.execute(self._sessions, {"after": after, "limit": page_size}).all()
                found += [CatalogSession(r[0], bool(r[1])) for r in rows]
                if len(rows) < page_size:
                    return found
                after = rows[-1][0]

    def signatures(self, session_ids: list[uuid.UUID]) -> dict[uuid.UUID, Signature]:
        """The signature of each session asked for (a session with no live photo: empty)."""
        if not session_ids:
            return {}
        with self.catalog.engine.connect() as conn:
            rows = conn.execute(self._signatures, {"ids": session_ids}).all()
        found = {r[0]: Signature(int(r[1]), int(r[2] or 0)) for r in rows}
        return {sid: found.get(sid, Signature.empty()) for sid in session_ids}

    def created_at(self, session_id: uuid.UUID, photo_ids: list[uuid.UUID]) -> dict[uuid.UUID, datetime]:
        """``created_at`` of a session's photos (for the lag figure)."""
        if not photo_ids:
            return {}
        with self.catalog.engine.connect() as conn:
            rows = conn.execute(self._created, {"sid": session_id, "ids": photo_ids}).all()
        return {r[0]: r[1] for r in rows}
