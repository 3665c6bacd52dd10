"""A batch's attempts on the pool's workers, and what to do after each (plain asyncio, no Ray).

An attempt ends as a value (``Written``, ``Moved``, ``Lost``, ``Refused``, ``Broken``),
made by the Ray layer from what Ray raised (``actors.ray_calls``). ``decide`` turns
one into a ``Decision`` with a reason: return these outcomes, or try another
worker, or give up. A lost worker (or writer, or node) means nothing of the batch
was committed, or writing it again replaces the same rows, so the batch goes to a
live worker, at least ``max_attempts`` times and for at least ``retry_window_s``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from facepass.errors import IndexCannotWrite, NotWritten, PoolUnavailable, WorkerLost
from facepass.models import PhotoOutcome, PhotoRef, PhotoStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Written:
    outcomes: list[PhotoOutcome]


@dataclass(frozen=True, slots=True)
class Moved:
    """The worker's node is about to be drained: the batch goes elsewhere too."""


@dataclass(frozen=True, slots=True)
class Lost:
    """The worker, the writer or a node went, with the batch or its results."""

    reason: str
    writer_suspect: bool = False  # the call itself failed: the writer may be the one gone


@dataclass(frozen=True, slots=True)
class Refused:
    """The index cannot write (a full disk): writing again cannot help."""

    refusal: IndexCannotWrite


@dataclass(frozen=True, slots=True)
class Broken:
    """A bug, not a bad photo: reported, not recorded, and the pool keeps serving."""

    detail: str


Attempt = Written | Moved | Lost | Refused | Broken


class Action(enum.Enum):
    RETURN = "return"  # these outcomes are the batch's
    RETRY = "retry"  # on another worker
    GIVE_UP = "give up"  # worker lost too often, for too long


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str
    outcomes: list[PhotoOutcome] | None = None
    forget_worker: bool = False  # the worker is gone: the pool stops sending to it
    check_writer: bool = False


def unwritten(photo: PhotoRef, error: WorkerLost | NotWritten) -> PhotoOutcome:
    return PhotoOutcome(
        photo_id=photo.id,
        filename=photo.filename,
        status=PhotoStatus.RETRY,
        error_code=error.code,
        error_message=error.message(photo.filename),
    )


def lost(photo: PhotoRef, detail: str) -> PhotoOutcome:
    return unwritten(photo, WorkerLost(detail))


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    retry_window_s: float

    def decide(self, attempt: Attempt, photos: list[PhotoRef], attempts: int, elapsed_s: float) -> Decision:
        match attempt:
            case Written(outcomes):
                return Decision(Action.RETURN, "written", outcomes)
            case Refused(refusal):
                outcomes = [unwritten(p, NotWritten(refusal.detail)) for p in photos]
                return Decision(Action.RETURN, "index cannot write", outcomes)
            case Broken(detail):
                return Decision(Action.RETURN, detail, [lost(p, detail) for p in photos])
            case Moved():
                return self._again("node drained", attempts, elapsed_s, forget=False, writer=False)
            case Lost(reason, writer_suspect):
                return self._again(reason, attempts, elapsed_s, forget=True, writer=writer_suspect)
        raise AssertionError(attempt)  # pragma: no cover

    def _again(self, reason: str, attempts: int, elapsed_s: float, *, forget: bool, writer: bool) -> Decision:
        done = attempts >= self.max_attempts and elapsed_s >= self.retry_window_s
        action = Action.GIVE_UP if done else Action.RETRY
        return Decision(action, reason, forget_worker=forget, check_writer=writer)

    @staticmethod
    def backoff_s(attempts: int) -> float:
        return min(5.0, 0.25 * 2.0 ** min(attempts, 5))


class Worker(Protocol):
    @property
    def name(self) -> str: ...

    in_flight: int


W = TypeVar("W", bound=Worker)
T = TypeVar("T")


class BatchRunner(Generic[W]):
    """Runs a batch (or a single call) on a live worker, deciding after each attempt."""

    def __init__(
        self,
        policy: RetryPolicy,
        pick: Callable[[set[str], float], Awaitable[W | None]],
        forget: Callable[[W], None],
        check_writer: Callable[[], Awaitable[None]],
    ) -> None:
        self.policy = policy
        self._pick = pick
        self._forget = forget
        self._check_writer = check_writer

    async def run(
        self, photos: list[PhotoRef], attempt: Callable[[W, list[PhotoRef]], Awaitable[Attempt]]
    ) -> list[PhotoOutcome]:
        tried: set[str] = set()
        reason = "no embedding actor could be placed"
        started = time.monotonic()
        attempts = 0
        while True:
            left = self.policy.retry_window_s - (time.monotonic() - started)
            worker = await self._pick(tried, max(left, 1.0))
            if worker is None:
                break
            attempts += 1
            worker.in_flight += len(photos)
            try:
                result = await attempt(worker, photos)
            finally:
                worker.in_flight -= len(photos)
            decision = self.policy.decide(result, photos, attempts, time.monotonic() - started)
            if decision.outcomes is not None:
                if isinstance(result, Broken):
                    log.error("processing a batch of %d photos failed: %s", len(photos), result.detail)
                return decision.outcomes
            reason = decision.reason
            log.warning("actor %s: %s while holding %d photos", worker.name, reason, len(photos))
            tried.add(worker.name)
            if decision.forget_worker:
                self._forget(worker)
            if decision.check_writer:
                await self._check_writer()
            if decision.action is Action.GIVE_UP:
                break
            await asyncio.sleep(self.policy.backoff_s(attempts))
        detail = f"worker lost {attempts} times in {time.monotonic() - started:.0f}s ({reason})"
        return [lost(p, detail) for p in photos]

    async def ask(self, call: Callable[[W], Awaitable[T | Lost]], timeout_s: float) -> T:
        """One answer from a live worker (a selfie), up to ``max_attempts`` workers."""
        tried: set[str] = set()
        for _ in range(self.policy.max_attempts):
            worker = await self._pick(tried, timeout_s)
            if worker is None:
                break
            worker.in_flight += 1
            try:
                answer = await call(worker)
            finally:
                worker.in_flight -= 1
            if not isinstance(answer, Lost):
                return answer
            self._forget(worker)
            tried.add(worker.name)
        raise PoolUnavailable("no embedding actor answers (none placed, or lost with their nodes)")
