"""The local face index: PostgreSQL + pgvector (``facepass_vector``).

``face_embeddings`` holds one row per face; ``indexed_photos`` is the ledger of
processed photos (indexed / no face / permanent failure), so that a photo with
no face is never downloaded again. Writes are group commits: many photos per
transaction (one ledger upsert, one delete, one binary COPY of all their faces),
so a photo's faces and its ledger row still appear together or not at all. A
batch that a bad row breaks is written again photo by photo, so only the bad
photo fails. The schema is owned by the migrations (``facepass.index.migrations``).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
import sqlalchemy as sa
from pgvector.psycopg import register_vector
from pgvector.sqlalchemy import HALFVEC, Vector
from sqlalchemy.dialects import postgresql as pg

from facepass.db import make_engine
from facepass.errors import Fenced, WriteFailed
from facepass.index.copy_faces import COLUMNS as COPY_COLUMNS
from facepass.index.copy_faces import SIGNATURE as COPY_SIGNATURE
from facepass.index.copy_faces import faces_payload
from facepass.index.migrations import migrate, require_current
from facepass.models import (
    EMBEDDING_DIM,
    Fence,
    LedgerStatus,
    PhotoOutcome,
    PhotoResult,
    PhotoStatus,
    QualityGates,
)

log = logging.getLogger(__name__)

metadata = sa.MetaData()

face_embeddings = sa.Table(
    "face_embeddings",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("session_id", pg.UUID(as_uuid=True), nullable=False, index=True),
    sa.Column("photo_id", pg.UUID(as_uuid=True), nullable=False),
    sa.Column("face_index", sa.Integer, nullable=False),
    sa.Column("bbox_x1", sa.Float, nullable=False),
    sa.Column("bbox_y1", sa.Float, nullable=False),
    sa.Column("bbox_x2", sa.Float, nullable=False),
    sa.Column("bbox_y2", sa.Float, nullable=False),
    sa.Column("det_score", sa.Float, nullable=False),
    sa.Column("embedding", Vector(EMBEDDING_DIM), nullable=False),
    # A half-precision copy kept in the heap row (the 2 KB vector is TOASTed): the search scan.
    sa.Column(
        "embedding_half",
        HALFVEC(EMBEDDING_DIM),
        sa.Computed(f"embedding::halfvec({EMBEDDING_DIM})", persisted=True),
    ),
    sa.Column("model_name", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    # The face's quality (migration 0008; ``facepass/vision/quality.py``); NULL: not measured.
    sa.Column("sharpness", sa.Float),
    sa.Column("yaw", sa.Float),
    # Unique per model (migration 0004): a new model's rows are written beside the old ones;
    # per session (0005): a catalog may repeat a photo id in two sessions.
    sa.UniqueConstraint(
        "session_id",
        "photo_id",
        "model_name",
        "face_index",
        name="face_embeddings_session_photo_model_face_key",
    ),
)

indexed_photos = sa.Table(
    "indexed_photos",
    metadata,
    # Keyed by (session, photo) (migration 0005): a photo id repeated in two sessions is two rows.
    sa.Column("session_id", pg.UUID(as_uuid=True), primary_key=True, index=True),
    sa.Column("photo_id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("face_count", sa.Integer, nullable=False),
    sa.Column("error_code", sa.Text),
    sa.Column("error_message", sa.Text),
    sa.Column("model_name", sa.Text, nullable=False),
    sa.Column("processed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    # The build of the generation's weights that made the photo's vectors (migration 0006):
    # "openvino-f32/cpu", "onnxruntime-fp32/cuda"; NULL where it was not recorded.
    sa.Column("variant", sa.Text),
    sa.CheckConstraint("status IN ('indexed', 'no_face', 'failed')", name="indexed_photos_status_check"),
)


@dataclass(frozen=True, slots=True)
class PruneResult:
    photos: int  # ledger rows removed
    faces: int  # face rows removed

    def __add__(self, other: PruneResult) -> PruneResult:
        return PruneResult(self.photos + other.photos, self.faces + other.faces)


@dataclass(frozen=True, slots=True)
class SearchHit:
    photo_id: uuid.UUID
    face_index: int
    similarity: float
    bbox: tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class GateCounts:
    faces: int
    below: int  # below the quality gates: search leaves them out
    unmeasured: int  # no quality measures (rows older than migration 0008)


_Key = tuple[uuid.UUID, uuid.UUID]  # (session, photo): the ledger's key


@dataclass(frozen=True, slots=True)
class PreparedWrite:
    """A transaction's worth of results, its COPY payload built (``VectorStore.prepare``)."""

    results: list[PhotoResult]  # as handed in: one outcome each, in this order
    latest: dict[_Key, PhotoResult]  # what is written: the last result of each photo, no RETRY
    payload: bytes | None  # the COPY of ``latest``'s faces (None: no face)


def _key(result: PhotoResult) -> _Key:
    return (result.photo.session_id, result.photo.id)


class VectorStore:
    def __init__(self, dsn: str | None, pool_size: int = 5) -> None:
        self.engine = make_engine(dsn, pool_size=pool_size)

    def ready_schema(self, migrate: bool) -> None:
        """At start: migrate (the embedded default database, ``migrate_at_start``), or only check
        that the schema is this code's (DatabaseSchemaMissing naming ``python -m jobs.migrate``)."""
        if migrate:
            self.create_schema()
        else:
            require_current(self.engine)

    def create_schema(self) -> None:
        """Apply the migrations; idempotent and safe from several processes at once."""
        migrate(self.engine)

    def done_photo_ids(self, session_id: uuid.UUID, *, retry_failed: bool = False) -> set[uuid.UUID]:
        """Photos the next run must skip: the ledger, plus legacy rows with no ledger entry."""
        statuses = [LedgerStatus.INDEXED.value, LedgerStatus.NO_FACE.value]
        if not retry_failed:
            statuses.append(LedgerStatus.FAILED.value)
        ledger = sa.select(indexed_photos.c.photo_id).where(
            indexed_photos.c.session_id == session_id, indexed_photos.c.status.in_(statuses)
        )
        legacy = (
            sa.select(face_embeddings.c.photo_id).where(face_embeddings.c.session_id == session_id).distinct()
        )
        with self.engine.connect() as conn:
            return set(conn.scalars(sa.union(ledger, legacy)))

    def index_state(self, session_id: uuid.UUID) -> dict[uuid.UUID, tuple[str | None, str]]:
        """Every photo of the session the index knows: (ledger status, model that embedded it).
        Photos with face rows and no ledger row (written before the ledger) have status None."""
        fe, ip = face_embeddings, indexed_photos
        ledger = sa.select(ip.c.photo_id, ip.c.status, ip.c.model_name).where(ip.c.session_id == session_id)
        legacy = (
            sa.select(fe.c.photo_id, sa.null().label("status"), fe.c.model_name)
            .where(
                fe.c.session_id == session_id,
                ~sa.exists().where(ip.c.session_id == fe.c.session_id, ip.c.photo_id == fe.c.photo_id),
            )
            .distinct()
        )
        with self.engine.connect() as conn:
            return {row[0]: (row[1], row[2]) for row in conn.execute(sa.union_all(ledger, legacy))}

    # --- writes ------------------------------------------------------------------
    def write_result(self, result: PhotoResult) -> float:
        """One photo in its own transaction (the seed's loop); returns its write time in ms."""
        return self.write_results([result])[0].write_ms

    def write_results(self, results: Sequence[PhotoResult]) -> list[PhotoOutcome]:
        """Commit a batch of photos in one transaction; one outcome per result, in order.

        Transient failures write nothing (the next run retries them). If the batch
        fails on its data (a bad vector, a constraint), every photo is written again
        in its own transaction and only the ones that still fail are reported, as
        ``write_error`` (not recorded: retried by the next run). A lost connection
        raises: nothing of the batch was committed, so the caller may write it again.
        """
        return self.write_prepared(self.prepare(results))

    def prepare(self, results: Sequence[PhotoResult], rows: Sequence[bytes] | None = None) -> PreparedWrite:
        """What a transaction of ``results`` needs, built without the database; ``rows``: the
        COPY rows of each batch in it, built as the batches came (``faces_rows`` of each),
        joined when no photo is in the transaction twice."""
        # The last result of a photo wins (the same photo twice in one batch cannot upsert twice).
        latest = {_key(r): r for r in results if r.status is not PhotoStatus.RETRY}
        written = list(latest.values())
        if not any(r.faces for r in written):
            return PreparedWrite(list(results), latest, None)
        if rows is not None and len(written) == sum(r.status is not PhotoStatus.RETRY for r in results):
            return PreparedWrite(list(results), latest, COPY_SIGNATURE + b"".join(rows))
        return PreparedWrite(list(results), latest, faces_payload(written))

    def write_prepared(self, prepared: PreparedWrite) -> list[PhotoOutcome]:
        """``write_results`` of a prepared batch."""
        started = time.perf_counter()
        latest = prepared.latest
        errors: dict[_Key, str] = {}
        fenced: set[_Key] = set()
        if latest:
            try:
                fenced = self._commit(list(latest.values()), prepared.payload)
            except psycopg.OperationalError:
                raise
            except psycopg.Error as exc:
                if len(latest) == 1:
                    errors = {next(iter(latest)): _short(exc)}
                else:
                    log.warning("batch of %d photos failed (%s); writing them one by one", len(latest), exc)
                    errors, fenced = self._commit_one_by_one(list(latest.values()))
        write_ms = (time.perf_counter() - started) * 1000 / max(1, len(latest))
        outcomes = []
        for result in prepared.results:
            key = _key(result)
            if key in fenced and latest.get(key) is result:
                outcomes.append(PhotoOutcome.failed_write(result, Fenced(f"token {result.photo.fence}")))
            elif key in errors:
                outcomes.append(PhotoOutcome.failed_write(result, WriteFailed(errors[key])))
            elif result.status is PhotoStatus.RETRY or latest.get(key) is not result:
                outcomes.append(PhotoOutcome.from_result(result))
            else:
                outcomes.append(PhotoOutcome.from_result(result, write_ms))
        return outcomes

    def prune_photos(
        self, session_id: uuid.UUID, photo_ids: Sequence[uuid.UUID], fence: Fence | None = None
    ) -> PruneResult:
        """Remove photos of a session from the index: their face rows and ledger rows, in one
        transaction (a photo never loses its faces without its ledger row, or the reverse); the
        same photo id in another session stays. With a fence (of this session), only while no
        newer run holds the session (else ``Fenced``: nothing is removed)."""
        ids = list(dict.fromkeys(photo_ids))
        if not ids:
            return PruneResult(0, 0)
        if fence is not None and fence.session_id != session_id:
            raise ValueError(f"a fence of session {fence.session_id} cannot prune session {session_id}")
        ip, fe = indexed_photos, face_embeddings
        with self.engine.begin() as conn:
            check_fence(conn, fence)
            # Ledger rows first, as a write takes them (its upsert): a write of one of these
            # photos in flight commits before the deletes below see its faces, never after them
            # (that left face rows without a ledger row when a second writer raced a prune).
            conn.execute(
                sa.select(ip.c.photo_id)
                .where(ip.c.session_id == session_id, ip.c.photo_id.in_(ids))
                .order_by(ip.c.photo_id)
                .with_for_update()
            ).all()
            gone_faces = list(
                conn.scalars(
                    sa.delete(fe)
                    .where(fe.c.session_id == session_id, fe.c.photo_id.in_(ids))
                    .returning(fe.c.photo_id)
                )
            )
            gone_ledger = set(
                conn.scalars(
                    sa.delete(ip)
                    .where(ip.c.session_id == session_id, ip.c.photo_id.in_(ids))
                    .returning(ip.c.photo_id)
                )
            )
        return PruneResult(photos=len(gone_ledger | set(gone_faces)), faces=len(gone_faces))

    def _commit_one_by_one(self, results: list[PhotoResult]) -> tuple[dict[_Key, str], set[_Key]]:
        errors: dict[_Key, str] = {}
        fenced: set[_Key] = set()
        for result in results:
            try:
                fenced |= self._commit([result])
            except psycopg.OperationalError:
                raise
            except psycopg.Error as exc:
                log.error("write of photo %s failed: %s", result.photo.id, exc)
                errors[_key(result)] = _short(exc)
        return errors, fenced

    @staticmethod
    def _fenced(cur: psycopg.Cursor[Any], results: list[PhotoResult]) -> set[_Key]:
        """Photos of runs that a newer run of their session replaced. The session's fence row
        stays share-locked until this transaction ends, so a new run's token cannot land
        between this check and the commit (its UPDATE waits for it)."""
        sessions = list({r.photo.session_id for r in results if r.photo.fence is not None})
        if not sessions:
            return set()
        cur.execute(_FENCES_FOR_SHARE, (sessions,))
        current: dict[uuid.UUID, int] = {row[0]: row[1] for row in cur.fetchall()}
        return {
            _key(r)
            for r in results
            if r.photo.fence is not None and current.get(r.photo.session_id, r.photo.fence) > r.photo.fence
        }

    def _commit(self, results: list[PhotoResult], payload: bytes | None = None) -> set[_Key]:
        """Ledger upsert + delete of old faces + binary COPY of new faces, one transaction
        (``payload``: the COPY of ``results``' faces, if built already). Returns the photos left
        out because their run was fenced off."""
        raw = self.engine.raw_connection()
        try:
            conn: psycopg.Connection[Any] = raw.driver_connection  # type: ignore[assignment]
            if conn.adapters.types.get("vector") is None:  # once per pooled connection
                register_vector(conn)
            with conn.cursor() as cur:
                fenced = self._fenced(cur, results)
                if fenced:  # the payload was built with them
                    results = [r for r in results if _key(r) not in fenced]
                    payload = None
                if payload is None and any(r.faces for r in results):
                    payload = faces_payload(results)
                # Ledger rows locked in key order: transactions sharing photos wait, never deadlock.
                results = sorted(results, key=_key)
                ids = [r.photo.id for r in results]
                sessions = [r.photo.session_id for r in results]
                # The upsert locks the ledger rows first: two writers of one photo serialize here.
                cur.execute(
                    _LEDGER_UPSERT,
                    (
                        ids,
                        sessions,
                        [LedgerStatus(r.status.value).value for r in results],
                        [len(r.faces) for r in results],
                        [r.error_code if r.status is not PhotoStatus.INDEXED else None for r in results],
                        [r.error_message for r in results],
                        [r.model_name for r in results],
                        [r.variant for r in results],
                    ),
                )
                # Only this model's rows: an older generation stays searchable until retired.
                cur.execute(_FACES_DELETE, (sessions, ids, [r.model_name for r in results]))
                if payload is not None:  # every face row in one buffer (numpy)
                    with cur.copy(_FACES_COPY) as copy:
                        copy.write(payload)
            raw.commit()
            return fenced
        except BaseException:
            try:
                raw.rollback()
            except psycopg.Error:
                raw.invalidate()  # the connection is gone: do not hand it out again
            raise
        finally:
            raw.close()

    def count_embeddings(self, session_id: uuid.UUID, model_name: str | None = None) -> int:
        """Face rows of the session (of one model's vectors, if given: what search compares)."""
        query = sa.select(sa.func.count()).select_from(face_embeddings)
        query = query.where(face_embeddings.c.session_id == session_id)
        if model_name is not None:
            query = query.where(face_embeddings.c.model_name == model_name)
        with self.engine.connect() as conn:
            return int(conn.scalar(query) or 0)

    def ledger(self, session_id: uuid.UUID) -> dict[uuid.UUID, str]:
        query = sa.select(indexed_photos.c.photo_id, indexed_photos.c.status).where(
            indexed_photos.c.session_id == session_id
        )
        with self.engine.connect() as conn:
            return {row[0]: row[1] for row in conn.execute(query)}

    def ledger_rows(self, session_id: uuid.UUID) -> list[sa.Row[Any]]:
        query = sa.select(indexed_photos).where(indexed_photos.c.session_id == session_id)
        with self.engine.connect() as conn:
            return list(conn.execute(query))

    def count_below_gates(
        self, gates: QualityGates, session_id: uuid.UUID | None = None, model_name: str | None = None
    ) -> GateCounts:
        """Face rows of a session or the whole index (of one model's vectors, if given), those
        below the gates (what search leaves out) and those never measured. One pass over the
        rows' heap columns."""
        fe = face_embeddings
        query = sa.select(
            sa.func.count(),
            sa.func.count().filter(sa.not_(sa.and_(*gate_clauses(gates)))),
            sa.func.count().filter(fe.c.sharpness.is_(None)),
        )
        if session_id is not None:
            query = query.where(fe.c.session_id == session_id)
        if model_name is not None:
            query = query.where(fe.c.model_name == model_name)
        with self.engine.connect() as conn:
            total, below, unmeasured = conn.execute(query.select_from(fe)).one()
        return GateCounts(int(total), int(below), int(unmeasured))

    def search(
        self,
        session_id: uuid.UUID,
        embedding: Iterable[float],
        limit: int = 20,
        model_name: str | None = None,
        gates: QualityGates | None = None,
    ) -> list[SearchHit]:
        """Faces of the session nearest to ``embedding`` by cosine similarity, exactly.

        An exact scan of the session's half-precision copies picks a short list
        (2x the limit, at least 32 more), which is re-ranked on the full vectors:
        the order of the answer is the exact one, and no approximate index can
        drop true matches under the session filter. ``model_name`` keeps vectors
        of other models out (their scores mean nothing against this one); ``gates`` the faces
        too small, uncertain, blurred or turned away to be trusted.
        """
        query_vec = np.asarray(list(embedding), dtype=np.float32)
        fe = face_embeddings
        shortlist = max(2 * limit, limit + 32)
        coarse = fe.c.embedding_half.cosine_distance(sa.bindparam("q_half", query_vec, type_=HALFVEC()))
        where = [fe.c.session_id == session_id]
        if model_name is not None:
            where.append(fe.c.model_name == model_name)
        if gates is not None and not gates.open:
            where += gate_clauses(gates)
        candidates = (
            sa.select(
                fe.c.photo_id,
                fe.c.face_index,
                fe.c.embedding,
                fe.c.bbox_x1,
                fe.c.bbox_y1,
                fe.c.bbox_x2,
                fe.c.bbox_y2,
            )  # fmt: skip
            .where(*where)
            .order_by(coarse)
            .limit(shortlist)
            .subquery()
        )
        distance = candidates.c.embedding.cosine_distance(query_vec)
        query = (
            sa.select(
                candidates.c.photo_id,
                candidates.c.face_index,
                (1 - distance).label("similarity"),
                candidates.c.bbox_x1,
                candidates.c.bbox_y1,
                candidates.c.bbox_x2,
                candidates.c.bbox_y2,
            )
            .order_by(distance)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [SearchHit(r[0], r[1], float(r[2]), (r[3], r[4], r[5], r[6])) for r in conn.execute(query)]

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def close(self) -> None:
        self.engine.dispose()


def gate_clauses(gates: QualityGates) -> list[sa.ColumnElement[bool]]:
    """``QualityGates.passes`` in SQL, on ``face_embeddings``."""
    fe = face_embeddings
    size = sa.func.least(fe.c.bbox_x2 - fe.c.bbox_x1, fe.c.bbox_y2 - fe.c.bbox_y1)
    clauses: list[sa.ColumnElement[bool]] = [size >= gates.min_face_px, fe.c.det_score >= gates.min_det_score]
    clauses.append(sa.or_(fe.c.sharpness.is_(None), fe.c.sharpness >= gates.min_sharpness))
    if gates.max_abs_yaw != float("inf"):
        clauses.append(sa.or_(fe.c.yaw.is_(None), sa.func.abs(fe.c.yaw) <= gates.max_abs_yaw))
    return clauses


_FENCES_FOR_SHARE = "SELECT session_id, token FROM session_fences WHERE session_id = ANY(%s) FOR SHARE"
_FENCE_OF_SESSION = sa.text("SELECT token FROM session_fences WHERE session_id = :sid FOR SHARE")


def check_fence(conn: sa.Connection, fence: Fence | None) -> None:
    """Raise ``Fenced`` if a newer run holds the fence's session. Share-locks the session's
    fence row for the rest of the transaction: a new token waits until it commits."""
    if fence is None:
        return
    current = conn.execute(_FENCE_OF_SESSION, {"sid": fence.session_id}).scalar()
    if current is not None and current > fence.token:
        raise Fenced(f"token {fence.token}, the session's is {current}")


_LEDGER_UPSERT = """
INSERT INTO indexed_photos
    (photo_id, session_id, status, face_count, error_code, error_message, model_name, variant)
SELECT * FROM unnest(
    %s::uuid[], %s::uuid[], %s::text[], %s::int[], %s::text[], %s::text[], %s::text[], %s::text[]
)
ON CONFLICT (session_id, photo_id) DO UPDATE SET
    status = EXCLUDED.status, face_count = EXCLUDED.face_count,
    error_code = EXCLUDED.error_code, error_message = EXCLUDED.error_message,
    model_name = EXCLUDED.model_name, variant = EXCLUDED.variant, processed_at = now()
"""
_FACES_DELETE = (
    "DELETE FROM face_embeddings f "
    "USING unnest(%s::uuid[], %s::uuid[], %s::text[]) AS r(session_id, photo_id, model_name) "
    "WHERE f.session_id = r.session_id AND f.photo_id = r.photo_id AND f.model_name = r.model_name"
)
_FACES_COPY = f"COPY face_embeddings ({', '.join(COPY_COLUMNS)}) FROM STDIN (FORMAT BINARY)"


def _short(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
