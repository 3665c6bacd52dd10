"""Interactive first: two lanes into the embedding pool, and the rule between them.

A person's work (a route call, a selfie) is the interactive lane; the follower and
the bulk job are the background lane. Interactive photos are sent to the actors at
once. Background photos go only while there is room: at most
``background_cap`` photos in flight when no person's work is under way, and only
``background_floor`` (at least one batch, so the background never starves) while
it is, and for ``grace_s`` after it (a person who searched once searches again).
Each actor works through what it was sent in order, so what matters is how much
background work sits in an actor when a person's photo arrives: at most the floor.
"""

from __future__ import annotations

import enum
import time
import uuid
from dataclasses import dataclass, field
from typing import Protocol

from facepass.index.store import PruneResult
from facepass.models import Fence, PhotoOutcome, PhotoRef


class Lane(enum.IntEnum):
    INTERACTIVE = 0
    BACKGROUND = 1


@dataclass(slots=True)
class LaneGate:
    background_cap: int
    background_floor: int
    grace_s: float = 5.0
    in_flight: dict[Lane, int] = field(default_factory=lambda: {Lane.INTERACTIVE: 0, Lane.BACKGROUND: 0})
    last_interactive: float = float("-inf")

    def started(self, lane: Lane, photos: int, now: float | None = None) -> None:
        self.in_flight[lane] += photos
        if lane is Lane.INTERACTIVE:
            self.last_interactive = time.monotonic() if now is None else now

    def finished(self, lane: Lane, photos: int, now: float | None = None) -> None:
        self.in_flight[lane] -= photos
        if lane is Lane.INTERACTIVE:
            self.last_interactive = time.monotonic() if now is None else now

    def interactive_active(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return self.in_flight[Lane.INTERACTIVE] > 0 or now - self.last_interactive < self.grace_s

    def background_room(self, now: float | None = None) -> int:
        """Background photos that may be sent now."""
        cap = self.background_floor if self.interactive_active(now) else self.background_cap
        return max(0, cap - self.in_flight[Lane.BACKGROUND])


class LanedPool(Protocol):
    """The pool seen by a lane (``actors.pool.EmbeddingPool``, or a test's stand-in)."""

    @property
    def model_name(self) -> str: ...

    @property
    def batch(self) -> int: ...

    def lane_capacity(self, lane: Lane) -> int: ...

    async def process_many(
        self, photos: list[PhotoRef], lane: Lane = Lane.INTERACTIVE
    ) -> list[PhotoOutcome]: ...

    async def prune(
        self, session_id: uuid.UUID, photo_ids: list[uuid.UUID], fence: Fence | None = None
    ) -> PruneResult: ...


class LaneProcessor:
    """A ``PhotoProcessor`` whose photos all go into one lane of the pool."""

    def __init__(self, pool: LanedPool, lane: Lane) -> None:
        self.pool = pool
        self.lane = lane

    @property
    def capacity(self) -> int:
        return self.pool.lane_capacity(self.lane)

    @property
    def model_name(self) -> str:
        return self.pool.model_name

    @property
    def batch(self) -> int:
        return self.pool.batch

    async def process_many(self, photos: list[PhotoRef]) -> list[PhotoOutcome]:
        return await self.pool.process_many(photos, self.lane)

    async def prune(
        self, session_id: uuid.UUID, photo_ids: list[uuid.UUID], fence: Fence | None = None
    ) -> PruneResult:
        return await self.pool.prune(session_id, photo_ids, fence)
