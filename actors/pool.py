"""EmbeddingPool: the actors, the writer, and the routing of photos between them.

Actors and the writer are named and detached, so the Serve app and a bulk job
share one pool and there is exactly one writer. An actor that dies is restarted
by Ray (``max_restarts=-1``); the photo it held goes to another actor.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

from actors.decoder import ImageDecoderActor
from actors.embedding import EmbeddingActor
from actors.metrics import reindex_metrics
from actors.writer import IndexWriter
from facepass.errors import WorkerLost
from facepass.index.store import PruneResult
from facepass.models import DetectedFace, PhotoOutcome, PhotoRef, PhotoStatus
from facepass.runs.lanes import Lane, LaneGate
from facepass.settings import Settings
from facepass.vision.faces import ModelPack

log = logging.getLogger(__name__)

# ActorUnavailableError: the actor is restarting after a crash.
_ACTOR_LOST: tuple[type[BaseException], ...] = (RayActorError, ActorUnavailableError)


def embedding_actor_name(i: int) -> str:
    return f"facepass-embedder-{i}"


def decoder_actor_name(i: int) -> str:
    return f"facepass-decoder-{i}"


WRITER_NAME = "facepass-index-writer"

_Queued = tuple[PhotoRef, "asyncio.Future[PhotoOutcome]"]


class EmbeddingPool:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._model_name = ModelPack.from_settings(settings).name
        common: dict[str, Any] = {
            "namespace": settings.ray_namespace,
            "lifetime": "detached",
            "get_if_exists": True,
            "max_restarts": -1,
        }
        self.actors = [
            EmbeddingActor.options(  # type: ignore[attr-defined]
                name=embedding_actor_name(i),
                max_concurrency=settings.photos_in_flight_per_actor,  # >= batches in flight
                **settings.embedding_actor_options(),
                **common,
            ).remote(settings)
            for i in range(settings.embed_actors)
        ]
        self.decoders = [
            ImageDecoderActor.options(  # type: ignore[attr-defined]
                name=decoder_actor_name(i),
                max_concurrency=settings.photos_in_flight_per_actor * 2,
                **settings.decoder_actor_options(),
                **common,
            ).remote(settings)
            for i in range(settings.decode_actors)
        ]
        self._next_decoder = 0
        self.writer = IndexWriter.options(  # type: ignore[attr-defined]
            name=WRITER_NAME, num_cpus=0, max_concurrency=1000, **common
        ).remote(settings)
        self._in_flight = [0] * len(self.actors)
        self._init_lanes()

    def _init_lanes(self) -> None:
        """The queue: one per lane; background work only where the gate leaves room."""
        self._slots: dict[Lane, asyncio.Semaphore] = {}
        self._queues: dict[Lane, list[_Queued]] = {lane: [] for lane in Lane}
        self._dispatch_scheduled = False
        self._batches: set[asyncio.Future[None]] = set()
        background_cap = len(self.actors) * min(
            self.settings.background_photos_in_flight_per_actor, self.settings.photos_in_flight_per_actor
        )
        self.gate = LaneGate(
            background_cap=background_cap,
            background_floor=min(background_cap, self.settings.actor_batch_photos),
        )

    @property
    def capacity(self) -> int:
        return len(self.actors) * self.settings.photos_in_flight_per_actor

    def lane_capacity(self, lane: Lane) -> int:
        """Photos a caller of the lane keeps handed in at once."""
        return self.capacity if lane is Lane.INTERACTIVE else self.gate.background_cap

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def in_flight(self) -> int:
        return sum(self._in_flight)

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def _pick(self, avoid: set[int]) -> int:
        candidates = [i for i in range(len(self.actors)) if i not in avoid] or list(range(len(self.actors)))
        return min(candidates, key=lambda i: self._in_flight[i])

    async def process(self, photo: PhotoRef, lane: Lane = Lane.INTERACTIVE) -> PhotoOutcome:
        """One photo's outcome. Photos handed in together travel together: they are
        queued and sent to an actor in batches of ``actor_batch_photos`` (one call to the
        actor and one to the writer per batch, results passed on by ObjectRef).
        Interactive photos go first; background ones when the gate leaves room."""
        slots = self._slots.get(lane)
        if slots is None:
            slots = self._slots[lane] = asyncio.Semaphore(self.capacity)
        metrics = reindex_metrics()
        async with slots:
            future: asyncio.Future[PhotoOutcome] = asyncio.get_running_loop().create_future()
            self._queues[lane].append((photo, future))
            if lane is Lane.INTERACTIVE:
                self.gate.last_interactive = time.monotonic()
            if len(self._queues[lane]) >= self.settings.actor_batch_photos:
                self._dispatch()
            else:
                # Photos handed in during this turn of the event loop join the batch.
                self._schedule_dispatch()
            metrics.set_queue(self.in_flight, self.queued, self.gate.in_flight)
            metrics.set_queued(lane, len(self._queues[lane]))
            outcome = await future
        metrics.record(outcome)
        return outcome

    def _schedule_dispatch(self, delay: float = 0.0) -> None:
        loop = asyncio.get_running_loop()
        if delay > 0:
            loop.call_later(delay, self._dispatch)
        elif not self._dispatch_scheduled:
            self._dispatch_scheduled = True
            loop.call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._dispatch_scheduled = False
        size = self.settings.actor_batch_photos
        interactive = self._queues[Lane.INTERACTIVE]
        while interactive:
            batch, self._queues[Lane.INTERACTIVE] = interactive[:size], interactive[size:]
            interactive = self._queues[Lane.INTERACTIVE]
            self._launch(batch, Lane.INTERACTIVE)
        background = self._queues[Lane.BACKGROUND]
        while background:
            room = self.gate.background_room()
            if room <= 0:
                if self.gate.in_flight[Lane.BACKGROUND] == 0:  # only the grace holds it back
                    self._schedule_dispatch(self.gate.grace_s)
                break
            take = min(size, room)
            batch, self._queues[Lane.BACKGROUND] = background[:take], background[take:]
            background = self._queues[Lane.BACKGROUND]
            self._launch(batch, Lane.BACKGROUND)

    def _launch(self, batch: list[_Queued], lane: Lane) -> None:
        self.gate.started(lane, len(batch))
        task = asyncio.ensure_future(self._process_batch(batch, lane))
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    async def _process_batch(self, batch: list[_Queued], lane: Lane = Lane.INTERACTIVE) -> None:
        photos = [photo for photo, _ in batch]
        try:
            outcomes = await self._run_batch(photos)
        except BaseException as exc:  # never leave a caller waiting
            outcomes = [self._lost(p, f"{type(exc).__name__}: {exc}") for p in photos]
            if not isinstance(exc, Exception):
                raise
        finally:
            self.gate.finished(lane, len(batch))
            self._after_lane_work(lane)
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if not future.done():  # its caller may have been cancelled
                future.set_result(outcome)

    def _after_lane_work(self, lane: Lane) -> None:
        """Room for background work again: now, and once a person's grace has passed."""
        metrics = reindex_metrics()
        metrics.set_queue(self.in_flight, self.queued, self.gate.in_flight)
        for each in Lane:
            metrics.set_queued(each, len(self._queues[each]))
        if self._queues[Lane.BACKGROUND]:
            self._schedule_dispatch()
            if lane is Lane.INTERACTIVE:
                self._schedule_dispatch(self.gate.grace_s)

    async def _run_batch(self, photos: list[PhotoRef]) -> list[PhotoOutcome]:
        tried: set[int] = set()
        last_error = ""
        for _attempt in range(self.settings.max_attempts):
            i = self._pick(tried)
            self._in_flight[i] += len(photos)
            try:
                if self.decoders:
                    # CPU decoder -> GPU actor -> writer: refs chain, nothing passes through here.
                    decoder = self.decoders[self._next_decoder % len(self.decoders)]
                    self._next_decoder += 1
                    results_ref = self.actors[i].embed_decoded_batch.remote(decoder.load_batch.remote(photos))
                else:
                    results_ref = self.actors[i].process_batch.remote(photos)
                # The ref goes to the writer as is: the results never pass through here.
                outcomes: list[PhotoOutcome] = await self.writer.write_batch.remote(results_ref)
                return outcomes
            except _ACTOR_LOST as exc:
                # The embedding actor or the writer died: nothing of this batch was committed
                # (or, if it was, writing it again replaces the same rows).
                last_error = f"{type(exc).__name__}"
                log.warning("actor %d or the writer lost while holding %d photos; retrying", i, len(photos))
                tried.add(i)
            except RayTaskError as exc:
                # A bug, not a bad photo: report it, do not record it, keep serving.
                log.error("processing a batch of %d photos failed: %s", len(photos), exc)
                return [self._lost(p, f"{type(exc.cause).__name__}: {exc.cause}") for p in photos]
            finally:
                self._in_flight[i] -= len(photos)
        detail = f"worker lost {self.settings.max_attempts} times ({last_error})"
        return [self._lost(p, detail) for p in photos]

    async def prune(self, photo_ids: list[uuid.UUID]) -> PruneResult:
        """Deleted photos leave the index through the one writer, like every other write."""
        result: PruneResult = await self.writer.prune.remote(photo_ids)
        return result

    @staticmethod
    def _lost(photo: PhotoRef, detail: str) -> PhotoOutcome:
        error = WorkerLost(detail)
        return PhotoOutcome(
            photo_id=photo.id,
            filename=photo.filename,
            status=PhotoStatus.RETRY,
            error_code=error.code,
            error_message=error.message(photo.filename),
        )

    async def embed_image(self, data: bytes) -> list[DetectedFace]:
        """Faces of one uploaded image (a selfie: interactive), on the least busy actor
        (typed errors propagate)."""
        i = self._pick(set())
        self._in_flight[i] += 1
        self.gate.started(Lane.INTERACTIVE, 1)
        try:
            faces: list[DetectedFace] = await self.actors[i].embed_image.remote(data)
            return faces
        except RayTaskError as exc:
            if isinstance(exc.cause, Exception):
                raise exc.cause from None
            raise
        finally:
            self._in_flight[i] -= 1
            self.gate.finished(Lane.INTERACTIVE, 1)
            self._after_lane_work(Lane.INTERACTIVE)

    async def health(self, timeout_s: float = 10.0) -> dict[str, Any]:
        refs = [a.info.remote() for a in self.actors]
        infos = await asyncio.wait_for(asyncio.gather(*refs), timeout_s)
        writer_ok = await asyncio.wait_for(self.writer.ping.remote(), timeout_s)
        decoders = await asyncio.wait_for(
            asyncio.gather(*[d.ping.remote() for d in self.decoders]), timeout_s
        )
        return {"actors": list(infos), "decoders": len(decoders), "writer": bool(writer_ok)}

    def shutdown(self) -> None:
        """Kill the detached actors (tests and the demo clean up with this)."""
        for handle in [*self.actors, *self.decoders, self.writer]:
            ray.kill(handle, no_restart=True)


def kill_pool_actors(settings: Settings) -> None:
    """Kill every named, detached actor of a namespace (tests, demo and bench clean up)."""
    from actors.jobs import JOBS_ACTOR_NAME

    names = [embedding_actor_name(i) for i in range(settings.embed_actors)]
    names += [decoder_actor_name(i) for i in range(settings.decode_actors)]
    names += [WRITER_NAME, JOBS_ACTOR_NAME]
    for name in names:
        try:
            ray.kill(ray.get_actor(name, namespace=settings.ray_namespace), no_restart=True)
        except ValueError:  # not there
            pass
