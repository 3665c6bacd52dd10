"""EmbeddingPool: the actors, the writer, and the routing of photos between them.

Actors and the writer are named and detached, so the Serve app and a bulk job
share one pool and there is exactly one writer. Which embedding actors exist is
``PoolMembers``' job (``actors/membership.py``): sized from the cluster, pinned
to its nodes, following nodes that join, leave or drain. An actor that dies is
restarted by Ray (``max_restarts=-1``); the batch it held goes to a live actor,
for as long as ``retry_window_s`` (a lost node is noticed after 15-55 s).
The writer sits on the head node (soft affinity) and is restarted the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import ray
from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    ActorUnschedulableError,
    ObjectLostError,
    OwnerDiedError,
    RayActorError,
    RayTaskError,
)
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.decoder import ImageDecoderActor
from actors.embedding import EmbeddingActor
from actors.membership import Member, PoolMembers, cluster_nodes, head_node_id
from actors.metrics import reindex_metrics
from actors.writer import IndexWriter
from facepass.cluster.pool_plan import EMBEDDER_PREFIX, Slot, fixed_slot_name
from facepass.errors import IndexCannotWrite, NotWritten, PoolUnavailable, WorkerLost
from facepass.index.store import PruneResult
from facepass.models import DetectedFace, Fence, PhotoOutcome, PhotoRef, PhotoStatus
from facepass.runs.lanes import Lane, LaneGate
from facepass.settings import Settings
from facepass.vision.faces import ModelPack
from facepass.vision.variants import requested

log = logging.getLogger(__name__)

# The actor (or the node under it) is gone or restarting, or the batch's results went with
# it: nothing of the batch was committed (or, if it was, writing it again replaces the same rows).
_ACTOR_LOST: tuple[type[BaseException], ...] = (
    RayActorError,
    ActorUnschedulableError,  # pinned to a node that left (the writer, by a test or an operator)
    ActorUnavailableError,
    ObjectLostError,
    OwnerDiedError,
)


class _Moved(Exception):
    """The batch's actor is on a node about to be drained: the batch goes elsewhere too."""


def embedding_actor_name(i: int) -> str:
    """The name of actor ``i`` of a fixed-size pool (``FACEPASS_EMBED_ACTORS``)."""
    return fixed_slot_name(i)


def decoder_actor_name(i: int) -> str:
    return f"facepass-decoder-{i}"


WRITER_NAME = "facepass-index-writer"

_Queued = tuple[PhotoRef, "asyncio.Future[PhotoOutcome]"]


def _control_options(settings: Settings) -> dict[str, Any]:
    """Control actors on the head node (they ask for no CPU, so it always has room). Hard
    affinity: measured on a 4-worker test cluster, a soft one put 1 of 4 detached actors on a
    worker (a raylet's stale view of the head). Losing the head ends the cluster anyway; with
    no head found (or ``control_on_head`` off) Ray places them, and re-places them on a loss."""
    if not settings.control_on_head:
        return {}
    head = head_node_id()
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(head, soft=False)} if head else {}


class _Window:
    """At most ``limit()`` photos in the pool at once; the limit follows the pool's size."""

    def __init__(self, limit: Any) -> None:
        self._limit = limit
        self._used = 0
        self._freed = asyncio.Condition()

    async def __aenter__(self) -> None:
        async with self._freed:
            await self._freed.wait_for(lambda: self._used < max(1, self._limit()))
            self._used += 1

    async def __aexit__(self, *_: object) -> None:
        async with self._freed:
            self._used -= 1
            self._freed.notify_all()


class EmbeddingPool:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._model_name = ModelPack.from_settings(settings).name
        self._common: dict[str, Any] = {
            "namespace": settings.ray_namespace,
            "lifetime": "detached",
            "get_if_exists": True,
            "max_restarts": -1,
        }
        self.members = PoolMembers(settings, self._make_actor, self._model_name, requested(settings))
        self.decoders = [
            ImageDecoderActor.options(  # type: ignore[attr-defined]
                name=decoder_actor_name(i),
                max_concurrency=settings.photos_in_flight_per_actor * 2,
                **settings.decoder_actor_options(),
                **self._common,
            ).remote(settings)
            for i in range(settings.decode_actors)
        ]
        self._next_decoder = 0
        self.writer = self._make_writer()
        self._writer_check: asyncio.Future[None] | None = None
        # The first plan now (actors start loading their models at once), probes on first use.
        self._fresh: list[Member] | None = self.members.apply(cluster_nodes(), busy=True)
        self._init_lanes()

    def _make_writer(self) -> Any:
        return IndexWriter.options(  # type: ignore[attr-defined]
            name=WRITER_NAME,
            num_cpus=0,
            max_concurrency=1000,
            **_control_options(self.settings),
            **self._common,
        ).remote(self.settings)

    async def _check_writer(self) -> None:
        """After a lost call: a writer dead for good (pinned to a node that left, or killed)
        is made again (on the head); a restarting one is left to Ray. One check at a time."""
        if self._writer_check is None or self._writer_check.done():
            self._writer_check = asyncio.ensure_future(self._check_writer_once())
        await asyncio.shield(self._writer_check)

    async def _check_writer_once(self) -> None:
        try:
            await asyncio.wait_for(self.writer.ping.remote(), 10)
        except (ActorDiedError, ActorUnschedulableError):
            log.warning("the writer is gone for good: starting a new one")
            self.writer = self._make_writer()
        except Exception:  # restarting, slow, or its database is down: not ours to fix here
            pass

    def _make_actor(self, slot: Slot) -> Any:
        options: dict[str, Any] = {**self.settings.embedding_actor_options(), **self._common}
        if slot.node_id is not None:  # pinned: it lives and dies with its node
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(slot.node_id, soft=False)
        idle_exit_s = None
        if not self.settings.fixed_pool and (
            slot.rank >= self.settings.pool_min_actors or slot.node_id is None
        ):
            idle_exit_s = self.settings.pool_idle_exit_s  # beyond the minimum, or a stopgap
        return EmbeddingActor.options(  # type: ignore[attr-defined]
            name=slot.name,
            max_concurrency=self.settings.photos_in_flight_per_actor,  # >= batches in flight
            **options,
        ).remote(self.settings, idle_exit_s)

    def _start_members(self) -> None:
        """Inside the event loop: ping the actors made in __init__, then look now and then."""
        if self._fresh is not None:
            for member in self._fresh:
                self.members.probe(member)
            self._fresh = None
        self.members.maybe_sync()
        self.members.keep_looking()

    @property
    def actors(self) -> list[Any]:
        """Handles of the actors that take work now."""
        return [m.handle for m in self.members.usable()]

    def _init_lanes(self) -> None:
        """The queue: one per lane; background work only where the gate leaves room."""
        self._slots: dict[Lane, _Window] = {}
        self._queues: dict[Lane, list[_Queued]] = {lane: [] for lane in Lane}
        self._dispatch_scheduled = False
        self._batches: set[asyncio.Future[None]] = set()
        self.gate = LaneGate(background_cap=1, background_floor=1)
        self._size_gate()

    def _size_gate(self) -> None:
        """The background's share follows the pool's size (nodes join and leave)."""
        per_actor = min(
            self.settings.background_photos_in_flight_per_actor, self.settings.photos_in_flight_per_actor
        )
        self.gate.background_cap = self._size() * per_actor
        self.gate.background_floor = min(self.gate.background_cap, self.settings.actor_batch_photos)

    def _size(self) -> int:
        return max(len(self.members.usable()), self.members.planned, 1)

    @property
    def capacity(self) -> int:
        return self._size() * self.settings.photos_in_flight_per_actor

    def lane_capacity(self, lane: Lane) -> int:
        """Photos a caller of the lane keeps handed in at once."""
        if lane is Lane.INTERACTIVE:
            return self.capacity
        self._size_gate()
        return self.gate.background_cap

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def in_flight(self) -> int:
        return sum(m.in_flight for m in self.members.members.values())

    async def process(self, photo: PhotoRef, lane: Lane = Lane.INTERACTIVE) -> PhotoOutcome:
        """One photo's outcome. Photos handed in together travel together: they are
        queued and sent to an actor in batches of ``actor_batch_photos`` (one call to the
        actor and one to the writer per batch, results passed on by ObjectRef).
        Interactive photos go first; background ones when the gate leaves room."""
        slots = self._slots.get(lane)
        if slots is None:
            slots = self._slots[lane] = _Window(lambda: self.capacity)
        self._start_members()
        self.members.last_busy = time.monotonic()
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
            try:
                outcome = await future
            except asyncio.CancelledError:
                # Its run stopped: a photo not yet sent to an actor is never downloaded.
                queue = self._queues[lane]
                for i, (_, queued) in enumerate(queue):
                    if queued is future:
                        del queue[i]
                        break
                raise
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
        self._size_gate()
        background = self._queues[Lane.BACKGROUND]
        while background:
            room = self.gate.background_room()
            if room <= 0:
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
        """The batch's outcomes; on a lost actor (or writer, or node) it goes to a live actor,
        at least ``max_attempts`` times and for at least ``retry_window_s``."""
        tried: set[str] = set()
        last_error = "no embedding actor could be placed"
        started = time.monotonic()
        attempts = 0
        while True:
            left = self.settings.retry_window_s - (time.monotonic() - started)
            member = await self.members.wait_pick(tried, max(left, 1.0))
            if member is None:
                break
            attempts += 1
            member.in_flight += len(photos)
            try:
                return await self._embed_and_write(member, photos)
            except _Moved:
                last_error = "node drained"
                log.warning("actor %s is on a node about to go: its %d photos move", member.name, len(photos))
                tried.add(member.name)
            except _ACTOR_LOST as exc:
                last_error = type(exc).__name__
                log.warning(
                    "actor %s or the writer lost while holding %d photos; retrying", member.name, len(photos)
                )
                self.members.lost(member)
                tried.add(member.name)
                await self._check_writer()
            except RayTaskError as exc:
                if isinstance(exc.cause, IndexCannotWrite):  # a full disk: writing again cannot help
                    return [self._not_written(p, exc.cause) for p in photos]
                if isinstance(exc.cause, _ACTOR_LOST):  # the results were lost with their node
                    last_error = type(exc.cause).__name__
                    self.members.lost(member)
                    tried.add(member.name)
                else:
                    # A bug, not a bad photo: report it, do not record it, keep serving.
                    log.error("processing a batch of %d photos failed: %s", len(photos), exc)
                    return [self._lost(p, f"{type(exc.cause).__name__}: {exc.cause}") for p in photos]
            finally:
                member.in_flight -= len(photos)
            if (
                attempts >= self.settings.max_attempts
                and time.monotonic() - started >= self.settings.retry_window_s
            ):
                break
            await asyncio.sleep(min(5.0, 0.25 * 2 ** min(attempts, 5)))
        detail = f"worker lost {attempts} times in {time.monotonic() - started:.0f}s ({last_error})"
        return [self._lost(p, detail) for p in photos]

    async def _embed_and_write(self, member: Member, photos: list[PhotoRef]) -> list[PhotoOutcome]:
        if self.decoders:
            # CPU decoder -> GPU actor -> writer: refs chain, nothing passes through here.
            decoder = self.decoders[self._next_decoder % len(self.decoders)]
            self._next_decoder += 1
            results_ref = member.handle.embed_decoded_batch.remote(decoder.load_batch.remote(photos))
        else:
            results_ref = member.handle.process_batch.remote(photos)
        # The ref goes to the writer as is: the results never pass through here.
        write: asyncio.Future[list[PhotoOutcome]] = asyncio.ensure_future(
            self.writer.write_batch.remote(results_ref)
        )
        while True:
            done, _ = await asyncio.wait({write}, timeout=1.0)
            if done:
                return write.result()
            if member.must_move(time.time(), self.settings.drain_margin_s):
                # It may still finish and commit: the retry writes the same rows again.
                write.add_done_callback(lambda f: f.cancelled() or f.exception())
                raise _Moved()

    async def prune(
        self, session_id: uuid.UUID, photo_ids: list[uuid.UUID], fence: Fence | None = None
    ) -> PruneResult:
        """Deleted photos leave the index through the one writer, like every other write."""
        try:
            result: PruneResult = await self.writer.prune.remote(session_id, photo_ids, fence)
        except RayTaskError as exc:
            if isinstance(exc.cause, Exception):
                raise exc.cause from None
            raise
        return result

    @staticmethod
    def _lost(photo: PhotoRef, detail: str) -> PhotoOutcome:
        return EmbeddingPool._unwritten(photo, WorkerLost(detail))

    @staticmethod
    def _not_written(photo: PhotoRef, refused: IndexCannotWrite) -> PhotoOutcome:
        return EmbeddingPool._unwritten(photo, NotWritten(refused.detail))

    @staticmethod
    def _unwritten(photo: PhotoRef, error: WorkerLost | NotWritten) -> PhotoOutcome:
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
        self._start_members()
        self.gate.started(Lane.INTERACTIVE, 1)
        try:
            return await self._embed_image(data)
        finally:
            self.gate.finished(Lane.INTERACTIVE, 1)
            self._after_lane_work(Lane.INTERACTIVE)

    async def _embed_image(self, data: bytes) -> list[DetectedFace]:
        tried: set[str] = set()
        for _ in range(self.settings.max_attempts):
            member = await self.members.wait_pick(tried, 30.0)
            if member is None:
                break
            member.in_flight += 1
            try:
                faces: list[DetectedFace] = await member.handle.embed_image.remote(data)
                return faces
            except _ACTOR_LOST:
                self.members.lost(member)
                tried.add(member.name)
            except RayTaskError as exc:
                if isinstance(exc.cause, Exception):
                    raise exc.cause from None
                raise
            finally:
                member.in_flight -= 1
        raise PoolUnavailable("no embedding actor answers (none placed, or lost with their nodes)")

    async def index_refusal(self, timeout_s: float = 10.0) -> IndexCannotWrite | None:
        """Why the index cannot write now (the writer's last transaction met a full disk)."""
        refusal: IndexCannotWrite | None = await asyncio.wait_for(self.writer.refusal.remote(), timeout_s)
        return refusal

    async def health(self, timeout_s: float = 10.0) -> dict[str, Any]:
        self._start_members()
        member = await self.members.wait_pick(set(), timeout_s)
        if member is None:
            raise PoolUnavailable(f"no embedding actor answered within {timeout_s:g}s")
        usable = self.members.usable()
        infos = await asyncio.wait_for(asyncio.gather(*[m.handle.info.remote() for m in usable]), timeout_s)
        writer_ok = await asyncio.wait_for(self.writer.ping.remote(), timeout_s)
        decoders = await asyncio.wait_for(
            asyncio.gather(*[d.ping.remote() for d in self.decoders]), timeout_s
        )
        return {
            "actors": list(infos),
            "ready_actors": len(usable),
            "planned_actors": self.members.planned,
            "decoders": len(decoders),
            "writer": bool(writer_ok),
        }

    def release(self) -> None:
        """A bulk job is done with the pool: the actors stay (shared), the autoscaler demand goes."""
        self.members.release()

    def shutdown(self) -> None:
        """Kill the detached actors (tests and the demo clean up with this)."""
        for handle in [*(m.handle for m in self.members.members.values()), *self.decoders, self.writer]:
            ray.kill(handle, no_restart=True)


def kill_pool_actors(settings: Settings) -> None:
    """Kill every named, detached actor of the pool in a namespace (tests, demo and bench clean up)."""
    prefixes = (EMBEDDER_PREFIX, "facepass-decoder-", WRITER_NAME)
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["namespace"] != settings.ray_namespace or not entry["name"].startswith(prefixes):
            continue
        try:
            ray.kill(ray.get_actor(entry["name"], namespace=settings.ray_namespace), no_restart=True)
        except ValueError:  # gone meanwhile
            pass
