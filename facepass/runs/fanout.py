"""Batches of photos handed to a processor, and their outcomes as each batch ends.

One task (one future) per batch, never per photo; a batch that ends puts itself in a
completion queue, so taking the next finished batch costs the same however many are in
flight (``asyncio.wait`` over the photos in flight scanned them all on every wake). The
route's run and the bulk job's stream share it (plain asyncio, no Ray).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from facepass.models import PhotoOutcome, PhotoRef

K = TypeVar("K")
ProcessMany = Callable[[list[PhotoRef]], Awaitable[list[PhotoOutcome]]]


class Fanout(Generic[K]):
    """Batches in flight, each with a key (its run), at most ``capacity()`` photos at once."""

    def __init__(
        self, process_many: ProcessMany, capacity: Callable[[], int], batch: Callable[[], int]
    ) -> None:
        self._process_many = process_many
        self._capacity = capacity
        self._batch = batch
        self.in_flight = 0  # photos handed in, their batch not yet taken back
        self._tasks: set[asyncio.Task[list[PhotoOutcome]]] = set()
        self._ended: asyncio.Queue[tuple[K, asyncio.Task[list[PhotoOutcome]], int]] = asyncio.Queue()

    @property
    def busy(self) -> bool:
        """Batches handed in and not yet taken back with ``next``."""
        return bool(self._tasks)

    def room(self, wanted: int) -> int:
        """Photos that may be handed in now, up to ``wanted`` and a batch; 0 while a batch's worth
        of room is not free (the window follows the pool's size: nodes join and leave)."""
        size = min(wanted, max(1, self._batch()))
        free = max(1, self._capacity()) - self.in_flight
        if self.in_flight and free < size:
            return 0
        return size

    def send(self, key: K, photos: list[PhotoRef]) -> None:
        task = asyncio.ensure_future(self._process_many(photos))
        self.in_flight += len(photos)
        self._tasks.add(task)
        count = len(photos)
        task.add_done_callback(lambda done: self._ended.put_nowait((key, done, count)))

    async def next(self) -> tuple[K, list[PhotoOutcome]]:
        """The next batch to end: its key and outcomes (its error, if it raised)."""
        key, task, count = await self._ended.get()
        self._tasks.discard(task)
        self.in_flight -= count
        return key, task.result()

    async def close(self) -> None:
        """A failed run (or a cancelled request) must not leave photos running behind it."""
        tasks, self._tasks = list(self._tasks), set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
