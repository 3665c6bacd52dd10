"""Lanes, batching and back-pressure in one place (plain asyncio, no Ray).

Photos are handed in a batch at a time (``submit_many``: one future per batch handed in,
not per photo), queued per lane and sent on in batches of ``Sizes.batch``: one call per
batch (``run_batch``). Photos handed in during one turn of the event loop join one batch.
Back-pressure is here and only here: at most ``Sizes.capacity`` photos of a lane are held
at once (a caller waits for room), and background batches go only while the ``LaneGate``
leaves room (``facepass.runs.lanes``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from facepass.models import PhotoOutcome, PhotoRef
from facepass.runs.lanes import Lane, LaneGate
from facepass.settings import Settings

RunBatch = Callable[[list[PhotoRef]], Awaitable[list[PhotoOutcome]]]
Lost = Callable[[PhotoRef, str], PhotoOutcome]


class _Handed:
    """Photos handed in together: one future for all of their outcomes."""

    __slots__ = ("future", "left", "outcomes")

    def __init__(self, count: int) -> None:
        self.future: asyncio.Future[list[PhotoOutcome]] = asyncio.get_running_loop().create_future()
        self.outcomes: list[PhotoOutcome | None] = [None] * count
        self.left = count

    def answer(self, index: int, outcome: PhotoOutcome) -> None:
        self.outcomes[index] = outcome
        self.left -= 1
        if self.left == 0 and not self.future.done():  # its caller may have been cancelled
            self.future.set_result([o for o in self.outcomes if o is not None])


_Queued = tuple[PhotoRef, _Handed, int]  # a photo, who handed it in, its place there


@dataclass(frozen=True, slots=True)
class Sizes:
    """What the pool holds now (it follows the cluster)."""

    capacity: int  # photos of one lane held at once
    background_cap: int  # background photos in flight while no person's work is under way
    batch: int  # photos per call

    @classmethod
    def derive(cls, s: Settings, actors: int, rate: float) -> Sizes:
        """The sizes of a pool of ``actors`` finishing ``rate`` photos/s (measured): windows as
        many photos as it finishes in ``interactive_wait_s`` / ``background_wait_s``, within the
        settings' floor and ceiling an actor; batches of about a ``batches_in_flight_per_actor``-th
        of an actor's window, at least ``actor_batch_photos``, at most ``max_actor_batch_photos``;
        background work at least two batches an actor (a device never waits for the window to
        grow before its first batch)."""
        capacity = rate_window(
            actors * s.photos_in_flight_per_actor,
            actors * s.in_flight_ceiling_per_actor(),
            rate,
            s.interactive_wait_s,
        )
        batch = max(
            s.actor_batch_photos,
            min(s.max_actor_batch_photos, capacity // (actors * s.batches_in_flight_per_actor)),
        )
        # Background work keeps every device fed from the start: a batch running and one
        # queued behind it an actor, at least (8 an actor on CPU, with its batches of 4).
        per_actor = max(min(s.background_photos_in_flight_per_actor, s.photos_in_flight_per_actor), 2 * batch)
        floor = min(capacity, actors * per_actor)
        return cls(capacity, background_window(floor, capacity, rate, s.background_wait_s), batch)


def rate_window(floor: int, ceiling: int, rate: float, wait_s: float) -> int:
    """Photos in flight: as many as the pool finishes in ``wait_s`` at its measured rate, at
    least ``floor``, at most ``ceiling``. On CPU (a few photos/s an actor) the floor holds; on
    GPUs the window grows with the rate until the devices are busy or a batch's round trip
    reaches ``wait_s`` (a window-bound pool finishes window / round trip photos/s, so the window
    grows while the round trip is shorter than ``wait_s``; at the devices' rate it stays)."""
    return max(floor, min(ceiling, int(rate * wait_s)))


def background_window(floor: int, capacity: int, rate: float, wait_s: float) -> int:
    """Background photos in flight: ``rate_window`` up to the lane's ``capacity`` (a person's
    photo waits about ``wait_s`` behind them)."""
    return rate_window(floor, capacity, rate, wait_s)


class _Window:
    """At most ``limit()`` photos at once (more only for one caller alone); the limit is read
    again on every release."""

    def __init__(self, limit: Callable[[], int]) -> None:
        self._limit = limit
        self._used = 0
        self._freed = asyncio.Condition()

    @asynccontextmanager
    async def hold(self, photos: int) -> AsyncIterator[None]:
        async with self._freed:
            await self._freed.wait_for(lambda: self._used == 0 or self._used + photos <= self._limit())
            self._used += photos
        try:
            yield
        finally:
            async with self._freed:
                self._used -= photos
                self._freed.notify_all()


class RateMeter:
    """Photos finished per second over the last ``span_s`` (the pool's measured rate).

    Until a span has passed since the first batch counted was sent (a pool that just started,
    or was idle), over the time since then, but at least ``least_s``: the first batches back
    give the pool's rate at once (the window they went in, over their round trip), so a
    window grows as fast as its batches come back instead of over the first second; and a
    first batch that fails at once (photos not found: answered in milliseconds) does not read
    as thousands of photos a second, which would hand a CPU pool its whole ceiling at once.
    (0.25 s slowed the stand-in route's ramp by ~0.4 s of its 3 s; 0.1 s did not.)"""

    def __init__(self, span_s: float = 5.0, least_s: float = 0.1) -> None:
        self.span_s = span_s
        self.least_s = least_s
        self._done: deque[tuple[float, int]] = deque()
        self._photos = 0
        self._since: float | None = None  # when the first batch still counted was sent

    def done(self, photos: int, now: float | None = None, sent: float | None = None) -> None:
        """``photos`` finished ``now``; their batch was sent at ``sent`` (default: now)."""
        now = time.monotonic() if now is None else now
        self._forget(now)
        if self._since is None:
            self._since = now if sent is None else min(sent, now)
        self._done.append((now, photos))
        self._photos += photos

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self._forget(now)
        if self._since is None:
            return 0.0
        return self._photos / min(self.span_s, max(now - self._since, self.least_s))

    def _forget(self, now: float) -> None:
        while self._done and now - self._done[0][0] > self.span_s:
            self._photos -= self._done.popleft()[1]
        if not self._done:
            self._since = None


class Dispatcher:
    """Queues, batches and the lanes' rule; ``changed`` is told whenever a queue moves: with
    the lane a photo joined, or with None when a batch ended (every lane may have moved)."""

    def __init__(
        self,
        sizes: Callable[[], Sizes],
        run_batch: RunBatch,
        lost: Lost,
        changed: Callable[[Lane | None], None] = lambda lane: None,
        meter: RateMeter | None = None,
    ) -> None:
        self.meter = meter or RateMeter()
        self._sizes = sizes
        self._run_batch = run_batch
        self._lost = lost
        self._changed = changed
        self._windows: dict[Lane, _Window] = {}
        self._queues: dict[Lane, list[_Queued]] = {lane: [] for lane in Lane}
        self._scheduled = False
        self._batches: set[asyncio.Future[None]] = set()
        self.gate = LaneGate(background_cap=1, background_floor=1)
        self._size_gate()

    def _size_gate(self) -> None:
        """The background's share follows the pool's size (nodes join and leave)."""
        sizes = self._sizes()
        self.gate.background_cap = sizes.background_cap
        self.gate.background_floor = min(sizes.background_cap, sizes.batch)

    def lane_capacity(self, lane: Lane) -> int:
        """Photos a caller of the lane keeps handed in at once."""
        if lane is Lane.INTERACTIVE:
            return self._sizes().capacity
        self._size_gate()
        return self.gate.background_cap

    def queued(self, lane: Lane | None = None) -> int:
        lanes = list(Lane) if lane is None else [lane]
        return sum(len(self._queues[each]) for each in lanes)

    async def submit(self, photo: PhotoRef, lane: Lane) -> PhotoOutcome:
        """One photo's outcome (``submit_many`` of one)."""
        return (await self.submit_many([photo], lane))[0]

    async def submit_many(self, photos: list[PhotoRef], lane: Lane) -> list[PhotoOutcome]:
        """The photos' outcomes, in order; they wait for room in their lane, then for their
        batches (photos beyond ``Sizes.batch`` go in several)."""
        if not photos:
            return []
        window = self._windows.get(lane)
        if window is None:
            window = self._windows[lane] = _Window(lambda: self._sizes().capacity)
        async with window.hold(len(photos)):
            handed = _Handed(len(photos))
            queue = self._queues[lane]
            queue.extend((photo, handed, i) for i, photo in enumerate(photos))
            if lane is Lane.INTERACTIVE:
                self.gate.last_interactive = time.monotonic()
            if len(queue) >= self._sizes().batch:
                self._dispatch(whole_only=True)
            if self._queues[lane]:
                self._schedule()  # photos handed in during this turn of the loop join the batch
            self._changed(lane)
            try:
                return await handed.future
            except asyncio.CancelledError:
                # Its run stopped: a photo not yet sent on is never downloaded.
                self._queues[lane] = [q for q in self._queues[lane] if q[1] is not handed]
                raise

    @asynccontextmanager
    async def person(self) -> AsyncIterator[None]:
        """A person's single call (a selfie) outside the queues: background work makes room."""
        self.gate.started(Lane.INTERACTIVE, 1)
        try:
            yield
        finally:
            self.gate.finished(Lane.INTERACTIVE, 1)
            self._after(Lane.INTERACTIVE)

    def _schedule(self, delay: float = 0.0) -> None:
        loop = asyncio.get_running_loop()
        if delay > 0:
            loop.call_later(delay, self._dispatch)
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._dispatch)

    def _dispatch(self, whole_only: bool = False) -> None:
        """Queued photos sent on in batches, interactive first; with ``whole_only`` only whole
        batches (the rest waits for the end of this turn of the loop)."""
        if not whole_only:
            self._scheduled = False
        size = self._sizes().batch
        least = size if whole_only else 1
        while len(self._queues[Lane.INTERACTIVE]) >= least:
            self._launch(self._take(Lane.INTERACTIVE, size), Lane.INTERACTIVE)
        self._size_gate()
        while len(self._queues[Lane.BACKGROUND]) >= least:
            room = self.gate.background_room()
            if room <= 0:
                break
            self._launch(self._take(Lane.BACKGROUND, min(size, room)), Lane.BACKGROUND)

    def _take(self, lane: Lane, n: int) -> list[_Queued]:
        batch, self._queues[lane] = self._queues[lane][:n], self._queues[lane][n:]
        return batch

    def _launch(self, batch: list[_Queued], lane: Lane) -> None:
        self.gate.started(lane, len(batch))
        task = asyncio.ensure_future(self._process(batch, lane))
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    async def _process(self, batch: list[_Queued], lane: Lane) -> None:
        photos = [photo for photo, _, _ in batch]
        sent = time.monotonic()
        try:
            outcomes = await self._run_batch(photos)
        except BaseException as exc:  # never leave a caller waiting
            outcomes = [self._lost(p, f"{type(exc).__name__}: {exc}") for p in photos]
            if not isinstance(exc, Exception):
                raise
        finally:
            self.meter.done(len(batch), sent=sent)
            self.gate.finished(lane, len(batch))
            self._after(lane)
        for (_, handed, index), outcome in zip(batch, outcomes, strict=True):
            handed.answer(index, outcome)

    def _after(self, lane: Lane) -> None:
        """Room for background work again: now, and once a person's grace has passed."""
        self._changed(None)
        if self._queues[Lane.BACKGROUND]:
            self._schedule()
            if lane is Lane.INTERACTIVE:
                self._schedule(self.gate.grace_s)
