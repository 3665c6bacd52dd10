"""The pool's plain parts without Ray: the dispatcher (lanes, batching, back-pressure) and the
batch runner (attempts, decisions with a reason, retries on another worker)."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

import pytest

from facepass.errors import IndexCannotWrite, PoolUnavailable
from facepass.models import PhotoOutcome, PhotoRef, PhotoStatus
from facepass.runs.attempts import (
    Action,
    Attempt,
    BatchRunner,
    Broken,
    Lost,
    Moved,
    Refused,
    RetryPolicy,
    Written,
    lost,
)
from facepass.runs.dispatch import Dispatcher, RateMeter, Sizes, background_window
from facepass.runs.lanes import Lane
from facepass.settings import Settings


def photos(n: int) -> list[PhotoRef]:
    sid = uuid.uuid4()
    return [PhotoRef(uuid.uuid4(), sid, f"p{i}.jpg", f"p{i}.jpg") for i in range(n)]


def indexed(photo: PhotoRef) -> PhotoOutcome:
    return PhotoOutcome(photo_id=photo.id, filename=photo.filename, status=PhotoStatus.INDEXED)


class Recorder:
    def __init__(self, hold: asyncio.Event | None = None) -> None:
        self.batches: list[list[str]] = []
        self.hold = hold

    async def __call__(self, batch: list[PhotoRef]) -> list[PhotoOutcome]:
        self.batches.append([p.filename for p in batch])
        if self.hold is not None:
            await self.hold.wait()
        return [indexed(p) for p in batch]


def test_photos_handed_in_together_travel_in_batches_and_every_caller_gets_its_outcome() -> None:
    run = Recorder()

    async def main() -> list[PhotoOutcome]:
        dispatcher = Dispatcher(lambda: Sizes(capacity=100, background_cap=8, batch=4), run, lost)
        refs = photos(10)
        outcomes = await asyncio.gather(*(dispatcher.submit(p, Lane.INTERACTIVE) for p in refs))
        assert [o.photo_id for o in outcomes] == [p.id for p in refs]
        return list(outcomes)

    outcomes = asyncio.run(main())
    assert all(o.status is PhotoStatus.INDEXED for o in outcomes)
    assert sorted(len(b) for b in run.batches) == [2, 4, 4]


def test_background_waits_for_room_while_a_person_is_served_and_a_cancelled_photo_is_never_sent() -> None:
    hold = asyncio.Event()
    run = Recorder(hold)

    async def main() -> None:
        dispatcher = Dispatcher(lambda: Sizes(capacity=100, background_cap=8, batch=2), run, lost)
        background = [asyncio.ensure_future(dispatcher.submit(p, Lane.BACKGROUND)) for p in photos(12)]
        await asyncio.sleep(0.01)
        assert sum(len(b) for b in run.batches) == 8  # the background cap, the rest queued
        assert dispatcher.queued(Lane.BACKGROUND) == 4
        person = asyncio.ensure_future(dispatcher.submit(photos(1)[0], Lane.INTERACTIVE))
        await asyncio.sleep(0.01)
        assert run.batches[-1] == ["p0.jpg"] and len(run.batches[-1]) == 1  # at once, ahead of the queue
        background[-1].cancel()
        hold.set()
        await person
        await asyncio.sleep(0.01)
        # The person's grace holds the background to its floor (one batch) at a time.
        assert dispatcher.gate.background_room() <= 2
        dispatcher.gate.last_interactive = float("-inf")
        dispatcher._dispatch()
        await asyncio.gather(*background[:-1])
        assert dispatcher.queued() == 0

    asyncio.run(main())
    sent = sum(len(b) for b in run.batches)
    assert sent == 12  # 11 background + 1 person: the cancelled one never went


def test_a_batch_that_raises_answers_every_caller_with_a_retry_outcome() -> None:
    async def broken(batch: list[PhotoRef]) -> list[PhotoOutcome]:
        raise RuntimeError("boom")

    async def main() -> list[PhotoOutcome]:
        dispatcher = Dispatcher(lambda: Sizes(capacity=10, background_cap=4, batch=4), broken, lost)
        return list(await asyncio.gather(*(dispatcher.submit(p, Lane.INTERACTIVE) for p in photos(3))))

    outcomes = asyncio.run(main())
    assert all(o.status is PhotoStatus.RETRY and "boom" in (o.error_message or "") for o in outcomes)


def test_decisions_carry_their_reason() -> None:
    policy = RetryPolicy(max_attempts=3, retry_window_s=10.0)
    refs = photos(2)
    lost_once = policy.decide(Lost("ActorDiedError", writer_suspect=True), refs, attempts=1, elapsed_s=0.5)
    assert lost_once.action is Action.RETRY and lost_once.forget_worker and lost_once.check_writer
    assert lost_once.reason == "ActorDiedError"
    moved = policy.decide(Moved(), refs, attempts=1, elapsed_s=0.5)
    assert moved.action is Action.RETRY and not moved.forget_worker and moved.reason == "node drained"
    # Given up only when both the attempts and the window are spent.
    assert policy.decide(Lost("x"), refs, attempts=3, elapsed_s=5.0).action is Action.RETRY
    assert policy.decide(Lost("x"), refs, attempts=2, elapsed_s=11.0).action is Action.RETRY
    assert policy.decide(Lost("x"), refs, attempts=3, elapsed_s=11.0).action is Action.GIVE_UP
    refused = policy.decide(
        Refused(IndexCannotWrite("local index", "disk full")), refs, attempts=1, elapsed_s=0.1
    )
    assert refused.action is Action.RETURN and refused.outcomes is not None
    assert {o.error_code for o in refused.outcomes} == {"index_cannot_write"}
    broken = policy.decide(Broken("KeyError: 'x'"), refs, attempts=1, elapsed_s=0.1)
    assert broken.outcomes is not None and {o.error_code for o in broken.outcomes} == {"worker_lost"}
    written = policy.decide(Written([indexed(p) for p in refs]), refs, attempts=1, elapsed_s=0.1)
    assert written.action is Action.RETURN and written.outcomes is not None and len(written.outcomes) == 2


@dataclass
class FakeWorker:
    label: str
    in_flight: int = 0

    @property
    def name(self) -> str:
        return self.label


class Workers:
    def __init__(self, *names: str) -> None:
        self.live = {n: FakeWorker(n) for n in names}
        self.forgotten: list[str] = []
        self.writer_checks = 0

    async def pick(self, avoid: set[str], timeout_s: float) -> FakeWorker | None:
        free = [w for n, w in self.live.items() if n not in avoid] or list(self.live.values())
        return free[0] if free else None

    def forget(self, worker: FakeWorker) -> None:
        self.forgotten.append(worker.name)
        self.live.pop(worker.name, None)

    async def check_writer(self) -> None:
        self.writer_checks += 1


def test_a_batch_lost_with_its_worker_goes_to_a_live_one(monkeypatch: pytest.MonkeyPatch) -> None:
    workers = Workers("a", "b")
    runner = BatchRunner(RetryPolicy(3, 0.0), workers.pick, workers.forget, workers.check_writer)
    monkeypatch.setattr(RetryPolicy, "backoff_s", staticmethod(lambda attempts: 0.0))
    seen: list[tuple[str, int]] = []

    async def attempt(worker: FakeWorker, batch: list[PhotoRef]) -> Attempt:
        seen.append((worker.name, worker.in_flight))
        if worker.name == "a":
            return Lost("ActorDiedError", writer_suspect=True)
        return Written([indexed(p) for p in batch])

    outcomes = asyncio.run(runner.run(photos(3), attempt))
    assert [o.status for o in outcomes] == [PhotoStatus.INDEXED] * 3
    assert seen == [("a", 3), ("b", 3)] and workers.forgotten == ["a"] and workers.writer_checks == 1
    assert all(w.in_flight == 0 for w in workers.live.values())


def test_with_no_worker_left_the_batch_is_reported_lost_with_the_last_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    workers = Workers("a")
    runner = BatchRunner(RetryPolicy(2, 0.0), workers.pick, workers.forget, workers.check_writer)
    monkeypatch.setattr(RetryPolicy, "backoff_s", staticmethod(lambda attempts: 0.0))

    async def attempt(worker: FakeWorker, batch: list[PhotoRef]) -> Attempt:
        return Lost("ObjectLostError")

    outcomes = asyncio.run(runner.run(photos(2), attempt))
    assert {o.error_code for o in outcomes} == {"worker_lost"}
    assert all("ObjectLostError" in (o.error_message or "") for o in outcomes)

    async def answer(worker: FakeWorker) -> list[int] | Lost:
        return Lost("ActorDiedError")

    with pytest.raises(PoolUnavailable):
        asyncio.run(runner.ask(answer, 0.1))


def test_photos_handed_in_as_one_batch_share_one_future_and_split_into_the_pool_batches() -> None:
    run = Recorder()

    async def main() -> None:
        dispatcher = Dispatcher(lambda: Sizes(capacity=100, background_cap=8, batch=4), run, lost)
        first, second = photos(10), photos(3)
        a, b = await asyncio.gather(
            dispatcher.submit_many(first, Lane.INTERACTIVE), dispatcher.submit_many(second, Lane.INTERACTIVE)
        )
        assert [o.photo_id for o in a] == [p.id for p in first]  # in the order handed in
        assert [o.photo_id for o in b] == [p.id for p in second]
        assert await dispatcher.submit_many([], Lane.INTERACTIVE) == []

    asyncio.run(main())
    assert [len(b) for b in run.batches] == [4, 4, 4, 1]  # 13 photos of one turn: batches of 4


def test_a_caller_larger_than_the_window_goes_alone_and_others_wait_for_room() -> None:
    hold = asyncio.Event()
    run = Recorder(hold)

    async def main() -> None:
        dispatcher = Dispatcher(lambda: Sizes(capacity=4, background_cap=4, batch=2), run, lost)
        big = asyncio.ensure_future(dispatcher.submit_many(photos(6), Lane.INTERACTIVE))
        await asyncio.sleep(0.01)
        small = asyncio.ensure_future(dispatcher.submit_many(photos(1), Lane.INTERACTIVE))
        await asyncio.sleep(0.01)
        assert sum(len(b) for b in run.batches) == 6  # the big one alone, the small one waits
        hold.set()
        assert len(await big) == 6 and len(await small) == 1

    asyncio.run(main())
    assert sum(len(b) for b in run.batches) == 7


def test_cancelled_callers_photos_not_yet_sent_leave_the_queue() -> None:
    hold = asyncio.Event()
    run = Recorder(hold)

    async def main() -> None:
        dispatcher = Dispatcher(lambda: Sizes(capacity=100, background_cap=2, batch=2), run, lost)
        waiting = asyncio.ensure_future(dispatcher.submit_many(photos(6), Lane.BACKGROUND))
        await asyncio.sleep(0.01)
        assert dispatcher.queued(Lane.BACKGROUND) == 4  # 2 sent (the background cap), 4 queued
        waiting.cancel()
        await asyncio.sleep(0.01)
        assert dispatcher.queued() == 0
        hold.set()
        await asyncio.sleep(0.01)

    asyncio.run(main())
    assert [len(b) for b in run.batches] == [2]


def test_the_measured_rate_and_the_background_window_it_gives() -> None:
    meter = RateMeter(span_s=5.0)
    assert meter.rate(now=100.0) == 0.0
    for k in range(10):  # 40 photos a second for 2.5 s
        meter.done(10, now=100.0 + 0.25 * k)
    assert meter.rate(now=102.5) == pytest.approx(100 / 2.5)
    assert meter.rate(now=110.0) == 0.0  # all older than the span: forgotten
    # A pool just started (or idle for a span): its first batches back give its rate at once,
    # the photos over the time since the first of them was sent (at least 0.1 s), not over a
    # whole second.
    meter.done(64, now=120.1, sent=120.0)
    assert meter.rate(now=120.1) == pytest.approx(64 / 0.1)
    meter.done(64, now=120.2, sent=120.1)
    assert meter.rate(now=120.2) == pytest.approx(128 / 0.2)
    meter.done(128, now=120.4, sent=120.2)
    assert meter.rate(now=120.4) == pytest.approx(256 / 0.4)
    assert meter.rate(now=124.0) == pytest.approx(256 / 4.0)  # since the first was sent
    assert meter.rate(now=125.05) == pytest.approx(256 / 5.0)  # a whole span since then
    # Four photos failing at once (not found, in 2 ms) are not 2,000 photos a second.
    fresh = RateMeter(span_s=5.0)
    fresh.done(4, now=200.002, sent=200.0)
    assert fresh.rate(now=200.002) == pytest.approx(40.0)
    # A CPU pool (a few photos/s): the floor; GPUs: rate x wait, up to the lane's capacity.
    assert background_window(floor=16, capacity=48, rate=12.0, wait_s=0.5) == 16
    assert background_window(floor=16, capacity=4000, rate=4000.0, wait_s=0.5) == 2000
    assert background_window(floor=16, capacity=768, rate=4000.0, wait_s=0.5) == 768


def test_the_pools_windows_and_batches_follow_its_measured_rate() -> None:
    """CPU actors (a few photos/s each) keep the settings' floor: 24 in flight an actor,
    batches of 4. A fast pool's window grows to what it finishes in interactive_wait_s, up to
    the ceiling an actor, and its batches grow with the window (up to max_actor_batch_photos)."""
    s = Settings(
        photos_in_flight_per_actor=24,
        max_photos_in_flight_per_actor=256,
        interactive_wait_s=1.0,
        background_photos_in_flight_per_actor=8,
        background_wait_s=0.5,
        actor_batch_photos=4,
        batches_in_flight_per_actor=6,
        max_actor_batch_photos=64,
    )
    assert Sizes.derive(s, actors=2, rate=0.0) == Sizes(capacity=48, background_cap=16, batch=4)
    assert Sizes.derive(s, actors=2, rate=30.0) == Sizes(capacity=48, background_cap=16, batch=4)
    fast = Sizes.derive(s, actors=2, rate=300.0)  # window 300, background 150, batches of 25
    assert fast == Sizes(capacity=300, background_cap=150, batch=25)
    assert Sizes.derive(s, actors=2, rate=5000.0) == Sizes(capacity=512, background_cap=512, batch=42)
    big = s.model_copy(update={"max_photos_in_flight_per_actor": 4096})
    assert Sizes.derive(big, actors=1, rate=9000.0).batch == 64  # max_actor_batch_photos
    # Batches of 32 (a GPU's): background work starts with two batches an actor, not 8 photos
    # (two batches for the whole pool would leave six of its eight devices waiting).
    gpu = s.model_copy(update={"actor_batch_photos": 32, "photos_in_flight_per_actor": 96})
    assert Sizes.derive(gpu, actors=8, rate=0.0) == Sizes(capacity=768, background_cap=512, batch=32)
    # A ceiling under the floor never shrinks the floor.
    low = s.model_copy(update={"max_photos_in_flight_per_actor": 8})
    assert Sizes.derive(low, actors=2, rate=5000.0).capacity == 48


def test_a_dispatcher_measures_what_it_finishes() -> None:
    run = Recorder()

    async def main() -> tuple[float, float]:
        dispatcher = Dispatcher(lambda: Sizes(capacity=100, background_cap=8, batch=4), run, lost)
        started = time.monotonic()
        await dispatcher.submit_many(photos(12), Lane.INTERACTIVE)
        now = time.monotonic()
        return dispatcher.meter.rate(now), now - started

    rate, took = asyncio.run(main())
    # 12 photos since the first batch was sent (at least 0.1 s), not over a whole second
    assert 12 / max(took, 0.1) <= rate <= 12 / 0.1 + 1e-9
