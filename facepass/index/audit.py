"""Audit and repair of the local index against the catalog and the current model.

Per session: photos in the catalog, ledger rows by status, face rows, and five kinds
of defect, each a set of photo ids:

- ``deleted``: the index holds rows (ledger or faces) of a photo that is soft-deleted
  or gone from the catalog (biometric data its owner removed);
- ``stale_model``: rows made by another model than the current one (a ``failed``
  ledger row is a verdict on the image, not the model, and does not count);
- ``orphan_rows``: face rows of a photo that has no ledger row;
- ``count_mismatch``: a ledger row whose ``face_count`` disagrees with its face rows
  (an ``indexed`` photo without rows, a ``no_face`` one with rows);
- ``bad_norm``: face vectors whose L2 norm is not 1 (within a tolerance).

Not defects, counted beside them: face rows below search's quality gates (``below_gates_rows``:
search leaves them out; a gate is a setting, no repair) and rows whose quality was never
measured (``unmeasured_rows``: written before migration 0008; a ``mode=full`` run measures them).

Each session costs one set-based query on the index (everything computed in
PostgreSQL, defects returned as arrays of ids) and one id-only query on the catalog,
made *after* the index query: a photo the index held that the catalog no longer
lists was really deleted, not added meanwhile. A repair is always a prune
(``VectorStore.prune_photos``: a photo's faces and ledger row leave in one
transaction): deleted photos are gone for good, the others are re-planned, so the
next ``missing`` run embeds them again with the current model.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from facepass.catalog.cloud import CloudCatalog
from facepass.index.generations import COUNTS
from facepass.index.store import PruneResult, VectorStore
from facepass.models import QualityGates

NORM_TOLERANCE = 1e-3  # float32 vectors normalized by the model sit within ~1e-6 of 1
PRUNE_CHUNK = 1000  # photos per prune transaction


class Defect(enum.StrEnum):
    DELETED = "deleted"
    STALE_MODEL = "stale_model"
    ORPHAN_ROWS = "orphan_rows"
    COUNT_MISMATCH = "count_mismatch"
    BAD_NORM = "bad_norm"


@dataclass(frozen=True, slots=True)
class SessionAudit:
    session_id: uuid.UUID
    session_name: str | None  # None: the session is not in the catalog (only in the index)
    catalog_photos: int  # live photos
    ledger_indexed: int
    ledger_no_face: int
    ledger_failed: int
    face_rows: int
    unindexed_photos: int  # live photos the index holds nothing of (the next run's work, no defect)
    stale_rows: int  # face rows of another model
    bad_norm_rows: int
    defects: dict[Defect, tuple[uuid.UUID, ...]]  # every kind present, ids sorted
    # The current generation's photos per build of its weights ("openvino-f32/cpu": 12, ...):
    # a mix is no defect (every build that passed the accuracy gate writes into it).
    variants: dict[str, int] = field(default_factory=dict)
    below_gates_rows: int = 0  # face rows search leaves out (QualityGates): no defect
    unmeasured_rows: int = 0  # face rows without quality measures (before migration 0008)

    @property
    def ok(self) -> bool:
        return not any(self.defects.values())

    def count(self, kind: Defect) -> int:
        return len(self.defects[kind])

    def defect_photo_ids(self) -> set[uuid.UUID]:
        return {photo_id for ids in self.defects.values() for photo_id in ids}

    def as_dict(self, max_ids: int = 20) -> dict[str, Any]:
        return {
            "session_id": str(self.session_id),
            "session_name": self.session_name,
            "in_catalog": self.session_name is not None,
            "ok": self.ok,
            "catalog_photos": self.catalog_photos,
            "ledger": {
                "indexed": self.ledger_indexed,
                "no_face": self.ledger_no_face,
                "failed": self.ledger_failed,
            },
            "face_rows": self.face_rows,
            "unindexed_photos": self.unindexed_photos,
            "stale_rows": self.stale_rows,
            "bad_norm_rows": self.bad_norm_rows,
            "below_gates_rows": self.below_gates_rows,
            "unmeasured_rows": self.unmeasured_rows,
            "variants": dict(self.variants),
            "defects": {
                kind.value: {"photos": len(ids), "photo_ids": [str(i) for i in ids[:max_ids]]}
                for kind, ids in self.defects.items()
            },
        }


@dataclass(frozen=True, slots=True)
class AuditReport:
    model_name: str
    norm_tolerance: float
    sessions: list[SessionAudit]

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.sessions)

    def totals(self) -> dict[str, int]:
        fields = ("catalog_photos", "ledger_indexed", "ledger_no_face", "ledger_failed", "face_rows")
        totals = {name: sum(getattr(s, name) for s in self.sessions) for name in fields}
        totals.update(
            unindexed_photos=sum(s.unindexed_photos for s in self.sessions),
            stale_rows=sum(s.stale_rows for s in self.sessions),
            bad_norm_rows=sum(s.bad_norm_rows for s in self.sessions),
            below_gates_rows=sum(s.below_gates_rows for s in self.sessions),
            unmeasured_rows=sum(s.unmeasured_rows for s in self.sessions),
        )
        totals.update({kind.value: sum(s.count(kind) for s in self.sessions) for kind in Defect})
        return totals

    def variants(self) -> dict[str, int]:
        """The current generation's photos per build, over the sessions audited."""
        mix: dict[str, int] = {}
        for session in self.sessions:
            for variant, photos in session.variants.items():
                mix[variant] = mix.get(variant, 0) + photos
        return dict(sorted(mix.items()))

    def as_dict(self, max_ids: int = 20) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "sessions_audited": len(self.sessions),
            "sessions_with_defects": sum(not s.ok for s in self.sessions),
            "totals": self.totals(),
            "variants": self.variants(),
            "sessions": [s.as_dict(max_ids) for s in self.sessions],
        }


@dataclass(frozen=True, slots=True)
class FixResult:
    removed: PruneResult  # deleted photos: gone from the index for good
    replanned: PruneResult  # live photos with a defect: the next `missing` run embeds them again

    def as_dict(self) -> dict[str, int]:
        return {
            "removed_photos": self.removed.photos,
            "removed_faces": self.removed.faces,
            "replanned_photos": self.replanned.photos,
            "replanned_faces": self.replanned.faces,
        }


class IndexAuditor:
    def __init__(
        self,
        catalog: CloudCatalog,
        store: VectorStore,
        model_name: str,
        norm_tolerance: float = NORM_TOLERANCE,
        gates: QualityGates | None = None,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.model_name = model_name
        self.norm_tolerance = norm_tolerance
        self.gates = gates or QualityGates()

    def audit(self, session_ids: Iterable[uuid.UUID] | None = None) -> AuditReport:
        """The named sessions, or every session of the catalog and of the index."""
        named = list(dict.fromkeys(session_ids or []))
        sessions = self._named_sessions(named) if named else self._all_sessions()
        audits = [self.audit_session(sid, name) for sid, name in sessions]
        return AuditReport(self.model_name, self.norm_tolerance, audits)

    def audit_session(self, session_id: uuid.UUID, session_name: str | None) -> SessionAudit:
        params = {"sid": session_id, "model": self.model_name, "tol": self.norm_tolerance}
        with self.store.engine.connect() as conn:
            row = conn.execute(_SESSION_AUDIT, params).one()
            variants = {str(v): int(n) for v, n in conn.execute(_SESSION_VARIANTS, params)}
        quality = self.store.count_below_gates(self.gates, session_id, self.model_name)
        live = self._live_photo_ids(session_id)  # after the index: see the module's docstring
        held = set(row.held or ())
        defects = {
            Defect.DELETED: _sorted(held - live),
            Defect.STALE_MODEL: _sorted(row.stale),
            Defect.ORPHAN_ROWS: _sorted(row.orphan),
            Defect.COUNT_MISMATCH: _sorted(row.mismatch),
            Defect.BAD_NORM: _sorted(row.bad_norm),
        }
        return SessionAudit(
            session_id=session_id,
            session_name=session_name,
            catalog_photos=len(live),
            ledger_indexed=row.indexed,
            ledger_no_face=row.no_face,
            ledger_failed=row.failed,
            face_rows=row.face_rows,
            unindexed_photos=len(live - held),
            stale_rows=row.stale_rows,
            bad_norm_rows=row.bad_norm_rows,
            defects=defects,
            variants=variants,
            below_gates_rows=quality.below,
            unmeasured_rows=quality.unmeasured,
        )

    def fix(self, report: AuditReport) -> FixResult:
        """Prune every defective photo the report names: deleted ones for good, the rest
        to be embedded again by the next run."""
        removed = replanned = PruneResult(0, 0)
        for session in report.sessions:  # a photo id may repeat in two sessions: each its own
            deleted = set(session.defects[Defect.DELETED])
            removed += self._prune(session.session_id, sorted(deleted))
            replanned += self._prune(session.session_id, sorted(session.defect_photo_ids() - deleted))
        return FixResult(removed=removed, replanned=replanned)

    def _prune(self, session_id: uuid.UUID, photo_ids: list[uuid.UUID]) -> PruneResult:
        """In chunks: after a model change every photo of the index may be stale, and one
        statement takes at most 65,535 parameters."""
        photos = faces = 0
        for start in range(0, len(photo_ids), PRUNE_CHUNK):
            pruned = self.store.prune_photos(session_id, photo_ids[start : start + PRUNE_CHUNK])
            photos, faces = photos + pruned.photos, faces + pruned.faces
        return PruneResult(photos=photos, faces=faces)

    def _named_sessions(self, session_ids: list[uuid.UUID]) -> list[tuple[uuid.UUID, str | None]]:
        s, t = self.catalog.schema, self.catalog.schema.tables()[0]
        query = sa.select(t.c[s.session_id], t.c[s.session_name]).where(t.c[s.session_id].in_(session_ids))
        with self.catalog.engine.connect() as conn:
            names: dict[uuid.UUID, str] = {r[0]: r[1] for r in conn.execute(query)}
        return [(sid, names.get(sid)) for sid in session_ids]

    def _all_sessions(self) -> Iterator[tuple[uuid.UUID, str | None]]:
        """The catalog's sessions, then the ones only the index knows (removed from the catalog)."""
        seen: set[uuid.UUID] = set()
        for page in self.catalog.iter_session_pages():
            for session in page:
                seen.add(session.id)
                yield session.id, session.name
        with self.store.engine.connect() as conn:
            indexed = set(conn.scalars(_INDEX_SESSIONS))
        for sid in sorted(indexed - seen):
            yield sid, None

    def _live_photo_ids(self, session_id: uuid.UUID) -> set[uuid.UUID]:
        s, t = self.catalog.schema, self.catalog.schema.tables()[1]
        query = sa.select(t.c[s.photo_id]).where(
            t.c[s.photo_session] == session_id, t.c[s.photo_deleted].is_(None)
        )
        with self.catalog.engine.connect() as conn:
            return set(conn.scalars(query))


def _sorted(ids: Iterable[uuid.UUID] | None) -> tuple[uuid.UUID, ...]:
    return tuple(sorted(ids or ()))


_INDEX_SESSIONS = sa.text(
    "SELECT session_id FROM indexed_photos UNION SELECT session_id FROM face_embeddings"
)

_SESSION_VARIANTS = sa.text(
    "SELECT coalesce(variant, 'unrecorded'), count(*) FROM indexed_photos "
    f"WHERE session_id = :sid AND model_name = :model AND {COUNTS} GROUP BY 1 ORDER BY 1"
)

# One pass over the session's ledger and face rows; one row back, defects as id arrays.
_SESSION_AUDIT = sa.text(f"""
WITH ledger AS (
    SELECT photo_id, status, face_count, model_name FROM indexed_photos WHERE session_id = :sid
), faces AS (
    SELECT photo_id, count(*) AS n,
           count(*) FILTER (WHERE model_name <> :model) AS stale_rows,
           count(*) FILTER (WHERE abs(vector_norm(embedding) - 1) > :tol) AS bad_norm_rows
    FROM face_embeddings WHERE session_id = :sid GROUP BY photo_id
), photos AS (
    SELECT photo_id, l.status, l.face_count, l.model_name AS ledger_model,
           coalesce(f.n, 0) AS n, coalesce(f.stale_rows, 0) AS stale_rows,
           coalesce(f.bad_norm_rows, 0) AS bad_norm_rows,
           -- rows of the ledger's model (a photo keeps an older generation's rows until retired)
           CASE WHEN l.model_name = :model THEN coalesce(f.n - f.stale_rows, 0)
                ELSE coalesce(f.n, 0) END AS n_ledger
    FROM ledger l FULL JOIN faces f USING (photo_id)
)
SELECT
    count(*) FILTER (WHERE status = 'indexed') AS indexed,
    count(*) FILTER (WHERE status = 'no_face') AS no_face,
    count(*) FILTER (WHERE status = 'failed') AS failed,
    coalesce(sum(n), 0)::bigint AS face_rows,
    coalesce(sum(stale_rows), 0)::bigint AS stale_rows,
    coalesce(sum(bad_norm_rows), 0)::bigint AS bad_norm_rows,
    array_agg(photo_id) AS held,
    array_agg(photo_id) FILTER (
        WHERE stale_rows > 0 OR (status IS NOT NULL AND {COUNTS} AND ledger_model <> :model)
    ) AS stale,
    array_agg(photo_id) FILTER (WHERE status IS NULL) AS orphan,
    array_agg(photo_id) FILTER (
        WHERE status IS NOT NULL AND (face_count <> n_ledger OR (status = 'indexed') <> (n_ledger > 0))
    ) AS mismatch,
    array_agg(photo_id) FILTER (WHERE bad_norm_rows > 0) AS bad_norm
FROM photos
""")
