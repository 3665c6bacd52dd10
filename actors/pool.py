"""EmbeddingPool: a small façade over the pool's parts.

- which embedding actors exist: ``PoolMembers`` (``actors/membership.py``), sized from
  the cluster, pinned to its nodes, following nodes that join, leave or drain;
- lanes, batching and back-pressure: ``Dispatcher`` (``facepass/runs/dispatch.py``);
- a batch's attempts and the decision after each (retry, move, give up, with a reason):
  ``BatchRunner`` (``facepass/runs/attempts.py``);
- every Ray call, and the writer's handle: ``actors/ray_calls.py``.

An actor that dies is restarted by Ray (``max_restarts=-1``); the batch it held goes to a
live actor, for as long as ``retry_window_s`` (a lost node is noticed after 15-55 s).
The writer sits on the head node and is restarted the same way.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from actors import ray_calls
from actors.membership import Member, PoolMembers, cluster_nodes
from actors.metrics import reindex_metrics
from facepass.cluster.pool_plan import Slot
from facepass.errors import IndexCannotWrite, PoolUnavailable
from facepass.index.store import PruneResult
from facepass.models import DetectedFace, Fence, PhotoOutcome, PhotoRef
from facepass.runs.attempts import Attempt, BatchRunner, RetryPolicy, lost
from facepass.runs.dispatch import Dispatcher, RateMeter, Sizes
from facepass.runs.lanes import Lane
from facepass.settings import Settings
from facepass.vision.pack import ModelPack
from facepass.vision.variants import requested


class EmbeddingPool:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._model_name = ModelPack.from_settings(settings).name
        self.members = PoolMembers(settings, self._make_actor, self._model_name, requested(settings))
        self.decoders = ray_calls.make_decoders(settings)
        self._next_decoder = 0
        self.writer = ray_calls.WriterHandle(settings)
        # The first plan now (actors start loading their models at once), probes on first use.
        self._fresh: list[Member] | None = self.members.apply(cluster_nodes(), busy=True)
        self.runner: BatchRunner[Member] = BatchRunner(
            RetryPolicy(settings.max_attempts, settings.retry_window_s),
            self.members.wait_pick,
            self.members.lost,
            self.writer.check,
        )
        self.pace = RateMeter()
        self.dispatcher = Dispatcher(self._sizes, self._run_batch, lost, self._observe, self.pace)

    def _make_actor(self, slot: Slot) -> Any:
        return ray_calls.make_embedder(self.settings, slot)

    def start(self) -> None:
        """Inside the event loop: ping the actors made in __init__, then look now and then.
        Every use calls it; a caller that knows work is coming (the bulk job, before it plans)
        calls it first, so every actor is ready when the first batches are (a batch goes only
        to an actor that answered: pinged with the first batches, the first to answer took
        them all, and their queues stayed longer than the others' for the rest of the run)."""
        if self._fresh is not None:
            for member in self._fresh:
                self.members.probe(member)
            self._fresh = None
        self.members.maybe_sync()
        self.members.keep_looking()

    def _sizes(self) -> Sizes:
        size = max(len(self.members.usable()), self.members.planned, 1)
        return Sizes.derive(self.settings, size, self.pace.rate())

    def lane_capacity(self, lane: Lane) -> int:
        """Photos a caller of the lane keeps handed in at once."""
        return self.dispatcher.lane_capacity(lane)

    @property
    def queued(self) -> int:
        return self.dispatcher.queued()

    @property
    def capacity(self) -> int:
        return self._sizes().capacity

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def in_flight(self) -> int:
        return sum(m.in_flight for m in self.members.members.values())

    def _observe(self, changed: Lane | None) -> None:
        """Queue gauges: a photo handed in moves its lane's only (per photo: the hot path)."""
        metrics = reindex_metrics()
        metrics.set_queue(self.in_flight, self.queued, self.dispatcher.gate.in_flight)
        for lane in Lane if changed is None else (changed,):
            metrics.set_queued(lane, self.dispatcher.queued(lane))

    @property
    def batch(self) -> int:
        return self._sizes().batch

    async def process(self, photo: PhotoRef, lane: Lane = Lane.INTERACTIVE) -> PhotoOutcome:
        """One photo's outcome (``process_many`` of one)."""
        return (await self.process_many([photo], lane))[0]

    async def process_many(self, photos: list[PhotoRef], lane: Lane = Lane.INTERACTIVE) -> list[PhotoOutcome]:
        """The photos' outcomes, in order. Photos handed in together travel together: they are
        queued and sent to an actor in batches of ``actor_batch_photos`` (one call to the
        actor and one to the writer per batch, results passed on by ObjectRef).
        Interactive photos go first; background ones when the gate leaves room."""
        self.start()
        self.members.last_busy = time.monotonic()
        outcomes = await self.dispatcher.submit_many(photos, lane)
        reindex_metrics().record_many(outcomes)
        return outcomes

    async def _run_batch(self, photos: list[PhotoRef]) -> list[PhotoOutcome]:
        return await self.runner.run(photos, self._attempt)

    async def _attempt(self, member: Member, photos: list[PhotoRef]) -> Attempt:
        decoder = None
        if self.decoders:  # CPU decoder -> GPU actor -> writer
            decoder = self.decoders[self._next_decoder % len(self.decoders)]
            self._next_decoder += 1
        margin_s = self.settings.drain_margin_s
        return await ray_calls.embed_and_write(
            member.handle,
            decoder,
            self.writer.handle,
            photos,
            lambda: member.must_move(time.time(), margin_s),
        )

    async def prune(
        self, session_id: uuid.UUID, photo_ids: list[uuid.UUID], fence: Fence | None = None
    ) -> PruneResult:
        """Deleted photos leave the index through the one writer, like every other write."""
        return await self.writer.prune(session_id, photo_ids, fence)

    async def embed_image(self, data: bytes) -> list[DetectedFace]:
        """Faces of one uploaded image (a selfie: interactive), on the least busy actor
        (typed errors propagate)."""
        self.start()
        async with self.dispatcher.person():
            return await self.runner.ask(lambda m: ray_calls.embed_image(m.handle, data), 30.0)

    async def index_refusal(self, timeout_s: float = 10.0) -> IndexCannotWrite | None:
        """Why the index cannot write now (the writer's last transaction met a full disk)."""
        return await self.writer.refusal(timeout_s)

    async def health(self, timeout_s: float = 10.0) -> dict[str, Any]:
        self.start()
        member = await self.members.wait_pick(set(), timeout_s)
        if member is None:
            raise PoolUnavailable(f"no embedding actor answered within {timeout_s:g}s")
        usable = self.members.usable()
        infos = await ray_calls.ping_all([m.handle for m in usable], "info", timeout_s)
        writer_ok = await self.writer.ping(timeout_s)
        decoders = await ray_calls.ping_all(self.decoders, "ping", timeout_s)
        return {
            "actors": infos,
            "ready_actors": len(usable),
            "planned_actors": self.members.planned,
            "decoders": len(decoders),
            "writer": writer_ok,
        }

    def release(self) -> None:
        """A bulk job is done with the pool: the actors stay (shared), the autoscaler demand goes."""
        self.members.release()
