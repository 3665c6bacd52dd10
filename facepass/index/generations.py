"""Model generations in the index: a model change leaves no gap in search.

A generation is the vectors of one model (``model_name`` on every face row). When
the pack changes, the new generation is built beside the old one (a photo's rows
of one model replace only that model's rows; migration 0004), session by session.
A session is *complete* in the current model when no ledger row of it was written
by another model (a permanent failure never reached a model and does not count).
Until then search compares the selfie with the session's previous generation,
embedded by that generation's model; once complete, search switches to the
current model and the session's older vectors are removed (``retire``).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from facepass.index.store import check_fence
from facepass.models import Fence, LedgerStatus

# The generation rule, in one place: a ledger row belongs to its model's generation unless the
# photo failed for good (a permanent failure never reached a model: it is no model's, and never
# stale). ``COUNTS`` is the rule in SQL (the generations' queries here, the audit's); ``stale``
# and ``done`` in Python (the run's plan).
COUNTS = "status <> 'failed'"


def stale(status: str | None, row_model: str, model: str) -> bool:
    """Another model's row, and not a permanent failure: to be embedded again by ``model``."""
    return status != LedgerStatus.FAILED and row_model != model


def done(status: str | None, row_model: str, model: str, *, retry_failed: bool = False) -> bool:
    """Nothing to do for this photo in ``model``'s generation (a permanent failure is done in
    every generation, unless failures are retried)."""
    if status == LedgerStatus.FAILED:
        return not retry_failed
    return row_model == model


_STALE = sa.text(
    f"SELECT count(*) FROM indexed_photos WHERE session_id = :sid AND model_name <> :model AND {COUNTS}"
)
# The fullest generation of a session that is not complete in the current model: the one
# with the most face rows (the current one wins a tie). Mid-rebuild that is the old one; and a
# replica still on the old pack (a rolling update) keeps answering from its own, complete one,
# not from the new generation's first photos.
_FULLEST = sa.text(
    "SELECT model_name FROM face_embeddings WHERE session_id = :sid "
    "GROUP BY model_name ORDER BY count(*) DESC, model_name = :model DESC LIMIT 1"
)
_RETIRE = sa.text(
    "DELETE FROM face_embeddings WHERE session_id = :sid AND model_name <> :model "
    "AND NOT EXISTS (SELECT 1 FROM indexed_photos WHERE session_id = :sid AND model_name <> :model "
    f"AND {COUNTS})"
)
_PROGRESS = sa.text(
    f"SELECT model_name, count(*) FILTER (WHERE {COUNTS}), count(DISTINCT session_id) "
    "FROM indexed_photos GROUP BY model_name"
)
# Which builds of each generation's weights made its photos (migration 0006; NULL: not recorded).
_VARIANTS = sa.text(
    "SELECT model_name, coalesce(variant, 'unrecorded'), count(*) FROM indexed_photos "
    f"WHERE {COUNTS} GROUP BY 1, 2"
)
_BUILDING = sa.text(
    f"SELECT count(DISTINCT session_id) FROM indexed_photos WHERE model_name <> :model AND {COUNTS}"
)


@dataclass(slots=True)
class GenerationProgress:
    """One generation in the ledger (``GET /mirror``'s ``generations``, a metric)."""

    generation: str
    current: bool
    photos: int
    sessions: int
    variants: dict[str, int]  # photos per build of the weights
    sessions_building: int | None = None  # the current generation only
    photos_done_fraction: float | None = None  # the current generation only

    def to_json(self) -> dict[str, object]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GenerationProgress:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class Generations:
    def __init__(self, engine: sa.Engine, current_model: str) -> None:
        self.engine = engine
        self.current = current_model

    def complete(self, session_id: uuid.UUID) -> bool:
        with self.engine.connect() as conn:
            return not conn.scalar(_STALE, {"sid": session_id, "model": self.current})

    def search_model(self, session_id: uuid.UUID) -> str:
        """The generation a search of this session compares with (and embeds the selfie by)."""
        with self.engine.connect() as conn:
            stale = conn.scalar(_STALE, {"sid": session_id, "model": self.current})
            if not stale:
                return self.current
            fullest = conn.scalar(_FULLEST, {"sid": session_id, "model": self.current})
        return str(fullest) if fullest else self.current

    def retire(self, session_id: uuid.UUID, fence: Fence | None = None) -> int:
        """Remove the session's vectors of older models, if (and only if) it is complete in
        the current one: one statement, so a half-built session never loses its old vectors.
        With a fence, only while no newer run holds the session (else ``Fenced``): a runner
        of another pack that lost its lock cannot take away the vectors search answers from."""
        with self.engine.begin() as conn:
            check_fence(conn, fence)
            result = conn.execute(_RETIRE, {"sid": session_id, "model": self.current})
        return int(result.rowcount or 0)

    def progress(self) -> list[GenerationProgress]:
        """Per generation: photos and sessions of the ledger, and the builds of its weights that
        made them (``variants``: photos per variant); for the current one, how many
        sessions are still being built (they search an older generation meanwhile).
        One pass over the ledger (not over the face rows): the follower runs it now and then."""
        with self.engine.connect() as conn:
            rows = conn.execute(_PROGRESS).all()
            mix = conn.execute(_VARIANTS).all()
            building = int(conn.scalar(_BUILDING, {"model": self.current}) or 0)
        variants: dict[str, dict[str, int]] = {}
        for model, variant, photos in mix:
            variants.setdefault(model, {})[variant] = int(photos)
        found = [
            GenerationProgress(
                model, model == self.current, int(photos), int(sessions), variants.get(model, {})
            )
            for model, photos, sessions in rows
        ]
        current = next((g for g in found if g.current), None)
        if current is None:
            current = GenerationProgress(self.current, True, 0, 0, {})
            found.append(current)
        current.sessions_building = building  # they search their previous generation meanwhile
        total = sum(g.photos for g in found)
        current.photos_done_fraction = round(current.photos / total, 4) if total else 1.0
        return sorted(found, key=lambda g: not g.current)
