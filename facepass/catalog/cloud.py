"""Read-only access to the cloud photo catalog (schema: shared/cloud_schema.sql)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import sqlalchemy as sa

from facepass.db import make_engine
from facepass.errors import FacePassDisabled, SessionNotFound
from facepass.models import PhotoRef, SessionInfo


@dataclass(frozen=True, slots=True)
class CatalogSchema:
    """Table and column names of the catalog: a deployment maps its own here."""

    sessions: str = "sessions"
    session_id: str = "id"
    session_name: str = "name"
    session_enabled: str = "facepass_enabled"
    photos: str = "photos"
    photo_id: str = "id"
    photo_session: str = "session_id"
    photo_filename: str = "filename"
    photo_path: str = "preview_path"
    photo_deleted: str = "deleted_at"
    photo_created: str = "created_at"

    def tables(self) -> tuple[sa.TableClause, sa.TableClause]:
        sessions = sa.table(
            self.sessions,
            sa.column(self.session_id),
            sa.column(self.session_name),
            sa.column(self.session_enabled),
        )
        photos = sa.table(
            self.photos,
            sa.column(self.photo_id),
            sa.column(self.photo_session),
            sa.column(self.photo_filename),
            sa.column(self.photo_path),
            sa.column(self.photo_deleted),
        )
        return sessions, photos


class CloudCatalog:
    def __init__(self, dsn: str | None, schema: CatalogSchema | None = None) -> None:
        self.schema = schema or CatalogSchema()
        self.engine = make_engine(dsn, read_only=True)
        self._sessions, self._photos = self.schema.tables()

    def get_session(self, session_id: uuid.UUID) -> SessionInfo:
        s, t = self.schema, self._sessions
        query = sa.select(t.c[s.session_id], t.c[s.session_name], t.c[s.session_enabled]).where(
            t.c[s.session_id] == session_id
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            raise SessionNotFound(str(session_id))
        return SessionInfo(id=row[0], name=row[1], facepass_enabled=bool(row[2]))

    def require_enabled_session(self, session_id: uuid.UUID) -> SessionInfo:
        session = self.get_session(session_id)
        if not session.facepass_enabled:
            raise FacePassDisabled(str(session_id))
        return session

    def list_photos(self, session_id: uuid.UUID) -> list[PhotoRef]:
        return [p for page in self.iter_photo_pages(session_id) for p in page]

    def iter_photo_pages(self, session_id: uuid.UUID, page_size: int = 1000) -> Iterator[list[PhotoRef]]:
        """Live (not soft-deleted) photos of a session, in id order, a page at a time."""
        s, t = self.schema, self._photos
        after: uuid.UUID | None = None
        while True:
            query = (
                sa.select(t.c[s.photo_id], t.c[s.photo_filename], t.c[s.photo_path])
                .where(t.c[s.photo_session] == session_id, t.c[s.photo_deleted].is_(None))
                .order_by(t.c[s.photo_id])
                .limit(page_size)
            )
            if after is not None:
                query = query.where(t.c[s.photo_id] > after)
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
            if not rows:
                return
            yield [PhotoRef(id=r[0], session_id=session_id, filename=r[1], preview_path=r[2]) for r in rows]
            after = rows[-1][0]

    def photos_by_id(self, session_id: uuid.UUID, photo_ids: list[uuid.UUID]) -> dict[uuid.UUID, PhotoRef]:
        """The live photos among ``photo_ids`` (soft-deleted ones are left out)."""
        if not photo_ids:
            return {}
        s, t = self.schema, self._photos
        query = sa.select(t.c[s.photo_id], t.c[s.photo_filename], t.c[s.photo_path]).where(
            t.c[s.photo_session] == session_id,
            t.c[s.photo_id].in_(photo_ids),
            t.c[s.photo_deleted].is_(None),
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return {
            r[0]: PhotoRef(id=r[0], session_id=session_id, filename=r[1], preview_path=r[2]) for r in rows
        }

    def iter_session_pages(self, page_size: int = 1000) -> Iterator[list[SessionInfo]]:
        """All sessions in id order, a page at a time (memory does not grow with the catalog)."""
        s, t = self.schema, self._sessions
        after: uuid.UUID | None = None
        while True:
            query = (
                sa.select(t.c[s.session_id], t.c[s.session_name], t.c[s.session_enabled])
                .order_by(t.c[s.session_id])
                .limit(page_size)
            )
            if after is not None:
                query = query.where(t.c[s.session_id] > after)
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
            if not rows:
                return
            yield [SessionInfo(id=r[0], name=r[1], facepass_enabled=bool(r[2])) for r in rows]
            after = rows[-1][0]

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def close(self) -> None:
        self.engine.dispose()
