"""facepass.runs.lanes: interactive first, background never starved (plain logic, no Ray)."""

from __future__ import annotations

import asyncio
import uuid

from facepass.index.store import PruneResult
from facepass.models import Fence, PhotoOutcome, PhotoRef, PhotoStatus
from facepass.runs.lanes import Lane, LaneGate, LaneProcessor


def test_background_fills_an_idle_pool_and_shrinks_to_its_floor_for_a_person() -> None:
    gate = LaneGate(background_cap=16, background_floor=4, grace_s=5.0)
    assert gate.background_room(now=100.0) == 16
    gate.started(Lane.BACKGROUND, 16, now=100.0)
    assert gate.background_room(now=100.0) == 0
    gate.started(Lane.INTERACTIVE, 4, now=101.0)  # a person's call arrives
    gate.finished(Lane.BACKGROUND, 4, now=101.0)
    assert gate.background_room(now=101.0) == 0  # 12 background photos in flight > floor
    gate.finished(Lane.BACKGROUND, 12, now=101.5)
    assert gate.background_room(now=101.5) == 4  # never starved: the floor
    gate.finished(Lane.INTERACTIVE, 4, now=102.0)
    assert gate.background_room(now=104.0) == 4  # within the grace after the person's work
    assert gate.background_room(now=107.5) == 16  # then the whole pool again


class FakePool:
    model_name = "m"

    def __init__(self) -> None:
        self.lanes: list[Lane] = []

    batch = 3

    def lane_capacity(self, lane: Lane) -> int:
        return 8 if lane is Lane.INTERACTIVE else 2

    async def process_many(self, photos: list[PhotoRef], lane: Lane = Lane.INTERACTIVE) -> list[PhotoOutcome]:
        self.lanes.append(lane)
        return [PhotoOutcome(photo_id=p.id, filename=p.filename, status=PhotoStatus.INDEXED) for p in photos]

    async def prune(
        self, session_id: uuid.UUID, photo_ids: list[uuid.UUID], fence: Fence | None = None
    ) -> PruneResult:
        return PruneResult(len(photo_ids), 0)


def test_a_lane_processor_sends_everything_into_its_lane() -> None:
    pool = FakePool()
    background = LaneProcessor(pool, Lane.BACKGROUND)
    assert background.capacity == 2 and background.model_name == "m" and background.batch == 3
    photo = PhotoRef(uuid.uuid4(), uuid.uuid4(), "a.jpg", "a.jpg")
    asyncio.run(background.process_many([photo]))
    asyncio.run(LaneProcessor(pool, Lane.INTERACTIVE).process_many([photo, photo]))
    assert pool.lanes == [Lane.BACKGROUND, Lane.INTERACTIVE]
