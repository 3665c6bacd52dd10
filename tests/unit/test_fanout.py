"""facepass.runs.fanout: one future per batch, batches taken back in the order they end."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from facepass.models import PhotoOutcome, PhotoRef, PhotoStatus
from facepass.runs.fanout import Fanout


def photos(n: int) -> list[PhotoRef]:
    sid = uuid.uuid4()
    return [PhotoRef(uuid.uuid4(), sid, f"p{i}.jpg", f"p{i}.jpg") for i in range(n)]


class Slow:
    """Answers each batch after as many ms as its first photo's number (p3: 3 ms)."""

    def __init__(self) -> None:
        self.calls = 0
        self.cancelled = 0

    async def __call__(self, batch: list[PhotoRef]) -> list[PhotoOutcome]:
        self.calls += 1
        try:
            await asyncio.sleep(int(batch[0].filename[1:-4]) / 1000)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return [PhotoOutcome(p.id, p.filename, PhotoStatus.INDEXED) for p in batch]


def test_batches_come_back_as_they_end_with_their_key_and_the_window_holds() -> None:
    slow = Slow()

    async def main() -> list[tuple[str, list[str]]]:
        fanout: Fanout[str] = Fanout(slow, lambda: 5, lambda: 2)
        refs = photos(40)
        assert fanout.room(10) == 2 and fanout.room(1) == 1  # a batch at most, or what is left
        fanout.send("late", refs[30:32])
        fanout.send("early", refs[2:4])
        assert fanout.in_flight == 4 and fanout.room(10) == 0  # 1 free < a batch: wait
        got = []
        while fanout.busy:
            key, outcomes = await fanout.next()
            got.append((key, [o.filename for o in outcomes]))
        assert fanout.in_flight == 0 and fanout.room(10) == 2
        return got

    assert asyncio.run(main()) == [("early", ["p2.jpg", "p3.jpg"]), ("late", ["p30.jpg", "p31.jpg"])]


def test_a_batch_that_raises_raises_at_next_and_close_cancels_the_rest() -> None:
    slow = Slow()

    async def broken(batch: list[PhotoRef]) -> list[PhotoOutcome]:
        raise RuntimeError("boom")

    async def main() -> None:
        fanout: Fanout[None] = Fanout(broken, lambda: 10, lambda: 5)
        fanout.send(None, photos(1))
        with pytest.raises(RuntimeError, match="boom"):
            await fanout.next()
        long: Fanout[None] = Fanout(slow, lambda: 10, lambda: 5)
        long.send(None, photos(200)[100:102])
        await asyncio.sleep(0)
        await long.close()
        assert not long.busy

    asyncio.run(main())
    assert slow.calls == 1 and slow.cancelled == 1
