"""The pool's calls into Ray, in one thin wrapper: actors made, called and killed here.

What Ray raises becomes a value (``facepass.runs.attempts``) or a typed error here,
so the pool's decisions are plain code. Actors and the writer are named and
detached, so the Serve app and a bulk job share one pool and there is one writer.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

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
from actors.membership import head_node_id
from actors.writer import IndexWriter
from facepass.cluster.pool_plan import EMBEDDER_PREFIX, Slot, fixed_slot_name
from facepass.errors import IndexCannotWrite
from facepass.index.store import PruneResult
from facepass.models import DetectedFace, Fence, PhotoOutcome, PhotoRef
from facepass.runs.attempts import Attempt, Broken, Lost, Moved, Refused, Written
from facepass.settings import Settings
from facepass.wire import PhotoBatch

# The actor (or the node under it) is gone or restarting, or the batch's results went with
# it: nothing of the batch was committed (or, if it was, writing it again replaces the same rows).
ACTOR_LOST: tuple[type[BaseException], ...] = (
    RayActorError,
    ActorUnschedulableError,  # pinned to a node that left (the writer, by a test or an operator)
    ActorUnavailableError,
    ObjectLostError,
    OwnerDiedError,
)
WRITER_NAME = "facepass-index-writer"
DECODER_PREFIX = "facepass-decoder-"
T = TypeVar("T")
log = logging.getLogger(__name__)


def embedding_actor_name(i: int) -> str:
    """The name of actor ``i`` of a fixed-size pool (``FACEPASS_EMBED_ACTORS``)."""
    return fixed_slot_name(i)


def decoder_actor_name(i: int) -> str:
    return f"{DECODER_PREFIX}{i}"


def _common(settings: Settings) -> dict[str, Any]:
    return {
        "namespace": settings.ray_namespace,
        "lifetime": "detached",
        "get_if_exists": True,
        "max_restarts": -1,
        "enable_task_events": settings.ray_task_events,
    }


def _control_options(settings: Settings) -> dict[str, Any]:
    """Control actors on the head node (they ask for no CPU, so it always has room). Hard
    affinity: measured on a 4-worker test cluster, a soft one put 1 of 4 detached actors on a
    worker (a raylet's stale view of the head). Losing the head ends the cluster anyway; with
    no head found (or ``control_on_head`` off) Ray places them, and re-places them on a loss."""
    if not settings.control_on_head:
        return {}
    head = head_node_id()
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(head, soft=False)} if head else {}


def make_writer(settings: Settings) -> Any:
    return IndexWriter.options(  # type: ignore[attr-defined]
        name=WRITER_NAME, num_cpus=0, max_concurrency=1000, **_control_options(settings), **_common(settings)
    ).remote(settings)


def make_decoders(settings: Settings) -> list[Any]:
    return [
        ImageDecoderActor.options(  # type: ignore[attr-defined]
            name=decoder_actor_name(i),
            max_concurrency=settings.in_flight_ceiling_per_actor() * 2,
            **settings.decoder_actor_options(),
            **_common(settings),
        ).remote(settings)
        for i in range(settings.decode_actors)
    ]


def make_embedder(settings: Settings, slot: Slot) -> Any:
    """An embedding actor in its slot; pinned to the slot's node, it lives and dies with it.
    One beyond the pool's minimum (or a stopgap) leaves when idle, so its node can go."""
    options: dict[str, Any] = {**settings.embedding_actor_options(), **_common(settings)}
    if slot.node_id is not None:
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(slot.node_id, soft=False)
    idle_exit_s = None
    if not settings.fixed_pool and (slot.rank >= settings.pool_min_actors or slot.node_id is None):
        idle_exit_s = settings.pool_idle_exit_s
    return EmbeddingActor.options(  # type: ignore[attr-defined]
        name=slot.name,
        max_concurrency=settings.in_flight_ceiling_per_actor(),  # >= batches in flight
        **options,
    ).remote(settings, idle_exit_s)


async def embed_and_write(
    actor: Any, decoder: Any | None, writer: Any, photos: list[PhotoRef], must_move: Callable[[], bool]
) -> Attempt:
    """One attempt: (decoder ->) actor -> writer, refs chained so the results never pass
    through the caller. Checked each second: a node about to be drained moves the batch."""
    try:
        batch = PhotoBatch(photos)  # pickled as columns (facepass.wire)
        if decoder is not None:
            results_ref = actor.embed_decoded_batch.remote(decoder.load_batch.remote(batch))
        else:
            results_ref = actor.process_batch.remote(batch)
        write: asyncio.Future[list[PhotoOutcome]] = asyncio.ensure_future(
            writer.write_batch.remote(results_ref)
        )
        while True:
            done, _ = await asyncio.wait({write}, timeout=1.0)
            if done:
                return Written(write.result())
            if must_move():
                # It may still finish and commit: the retry writes the same rows again.
                write.add_done_callback(lambda f: f.cancelled() or f.exception())
                return Moved()
    except ACTOR_LOST as exc:
        return Lost(type(exc).__name__, writer_suspect=True)
    except RayTaskError as exc:
        if isinstance(exc.cause, IndexCannotWrite):
            return Refused(exc.cause)
        if isinstance(exc.cause, ACTOR_LOST):  # the results were lost with their node
            return Lost(type(exc.cause).__name__)
        return Broken(f"{type(exc.cause).__name__}: {exc.cause}")


async def unwrapped(call: Awaitable[T]) -> T:
    """The call's answer; a typed error raised inside the actor is raised here as itself."""
    try:
        return await call
    except RayTaskError as exc:
        if isinstance(exc.cause, Exception):
            raise exc.cause from None
        raise


async def embed_image(actor: Any, data: bytes) -> list[DetectedFace] | Lost:
    try:
        faces: list[DetectedFace] = await unwrapped(actor.embed_image.remote(data))
        return faces
    except ACTOR_LOST as exc:
        return Lost(type(exc).__name__)


class WriterHandle:
    """The one writer: made on the head, made again when it is gone for good."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.handle = make_writer(settings)
        self._check: asyncio.Future[None] | None = None

    async def check(self) -> None:
        """After a lost call: a writer dead for good (pinned to a node that left, or killed)
        is made again (on the head); a restarting one is left to Ray. One check at a time."""
        if self._check is None or self._check.done():
            self._check = asyncio.ensure_future(self._check_once())
        await asyncio.shield(self._check)

    async def _check_once(self) -> None:
        try:
            await asyncio.wait_for(self.handle.ping.remote(), 10)
        except (ActorDiedError, ActorUnschedulableError):
            log.warning("the writer is gone for good: starting a new one")
            self.handle = make_writer(self.settings)
        except Exception:  # restarting, slow, or its database is down: not ours to fix here
            pass

    async def prune(
        self, session_id: uuid.UUID, photo_ids: list[uuid.UUID], fence: Fence | None
    ) -> PruneResult:
        result: PruneResult = await unwrapped(self.handle.prune.remote(session_id, photo_ids, fence))
        return result

    async def refusal(self, timeout_s: float) -> IndexCannotWrite | None:
        refusal: IndexCannotWrite | None = await asyncio.wait_for(self.handle.refusal.remote(), timeout_s)
        return refusal

    async def ping(self, timeout_s: float) -> bool:
        return bool(await asyncio.wait_for(self.handle.ping.remote(), timeout_s))


async def ping_all(handles: list[Any], method: str, timeout_s: float) -> list[Any]:
    return list(
        await asyncio.wait_for(asyncio.gather(*[getattr(h, method).remote() for h in handles]), timeout_s)
    )


def kill_pool_actors(settings: Settings, wait_s: float = 10.0) -> None:
    """Kill every named, detached actor of the pool in a namespace (tests, demo and bench clean
    up), and wait up to ``wait_s`` until their names are gone: a ``ray.shutdown()`` right after
    the kills met their death notices half-way (the bench's driver exited with "The core worker
    has already been shutdown" in a few of its stops)."""
    prefixes = (EMBEDDER_PREFIX, DECODER_PREFIX, WRITER_NAME)

    def ours() -> list[str]:
        return [
            entry["name"]
            for entry in ray.util.list_named_actors(all_namespaces=True)
            if entry["namespace"] == settings.ray_namespace and entry["name"].startswith(prefixes)
        ]

    for name in ours():
        try:
            ray.kill(ray.get_actor(name, namespace=settings.ray_namespace), no_restart=True)
        except ValueError:  # gone meanwhile
            pass
    deadline = time.monotonic() + wait_s
    while ours() and time.monotonic() < deadline:
        time.sleep(0.05)
