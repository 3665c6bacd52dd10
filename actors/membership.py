"""PoolMembers: the embedding actors a pool may send work to, kept in step with the cluster.

Every few seconds (``pool_refresh_s``) a pool reads the alive nodes and the ones
draining from the GCS, plans its slots (``facepass.cluster.pool_plan``) and
creates the actors it lacks (named and detached, ``get_if_exists``: every
process that holds a pool - Serve replicas, bulk jobs - converges on the same
actors). An actor gets work only once it has answered a ping: an actor that
cannot be placed (no room) or is restarting gets none, and a call that fails on
a lost actor marks it unready until it answers again. Members on a draining
node get no new batches; members whose node is gone leave the pool.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError

from facepass.cluster.pool_plan import NodeInfo, Slot, plan_pool, resource_bundle
from facepass.settings import Settings

log = logging.getLogger(__name__)

HEAD_RESOURCE = "node:__internal_head__"


def cluster_nodes() -> list[NodeInfo]:
    """Alive nodes, with their drain deadlines (blocking GCS reads)."""
    draining: dict[str, int] = ray._private.state.state.get_draining_nodes()  # node hex -> deadline ms
    nodes = []
    for node in ray.nodes():  # type: ignore[no-untyped-call]
        if not node.get("Alive"):
            continue
        resources = node.get("Resources", {})
        deadline_ms = draining.get(node["NodeID"])
        nodes.append(
            NodeInfo(
                node_id=node["NodeID"],
                cpus=float(resources.get("CPU", 0.0)),
                gpus=float(resources.get("GPU", 0.0)),
                is_head=HEAD_RESOURCE in resources,
                drain_deadline_s=None if deadline_ms is None else deadline_ms / 1000.0,
            )
        )
    return nodes


def head_node_id() -> str | None:
    for node in ray.nodes():  # type: ignore[no-untyped-call]
        if node.get("Alive") and HEAD_RESOURCE in node.get("Resources", {}):
            return str(node["NodeID"])
    return None


@dataclass(slots=True)
class Member:
    slot: Slot
    handle: Any
    node_id: str | None  # the slot's node, or (floating slots) where the actor answered from
    ready: bool = False
    probing: bool = False
    in_flight: int = 0
    drain_deadline_s: float | None = None

    @property
    def name(self) -> str:
        return self.slot.name

    @property
    def draining(self) -> bool:
        return self.drain_deadline_s is not None

    def must_move(self, now: float, margin_s: float) -> bool:
        """A batch here would not finish before the node's deadline: send it elsewhere too."""
        deadline = self.drain_deadline_s
        return deadline is not None and deadline > 0 and now >= deadline - margin_s


class PoolMembers:
    def __init__(
        self,
        settings: Settings,
        make_actor: Callable[[Slot], Any],
        model_name: str | None = None,
        variant: str | None = None,
    ) -> None:
        self.settings = settings
        self._make_actor = make_actor
        # The model this pool's actors must hold, and the build this deployment asks for. The
        # actors are detached and outlive a deployment: after a pack change, or a change of
        # runtime or precision, one found under its name may hold the old model or build.
        self.model_name = model_name
        self.variant = variant
        self.members: dict[str, Member] = {}
        self.planned = 0  # slots in the last plan
        self._ready = asyncio.Event()
        self._last_sync = 0.0
        self._sync_task: asyncio.Task[None] | None = None
        self._looker: asyncio.Task[None] | None = None
        self._requested: int | None = None  # bundles last asked of the autoscaler
        self.last_busy = time.monotonic()

    # --- what the pool sees -------------------------------------------------------------
    def usable(self) -> list[Member]:
        return [m for m in self.members.values() if m.ready and not m.draining]

    def pick(self, avoid: set[str]) -> Member | None:
        usable = self.usable()
        candidates = [m for m in usable if m.name not in avoid] or usable
        return min(candidates, key=lambda m: m.in_flight) if candidates else None

    async def wait_pick(self, avoid: set[str], timeout_s: float) -> Member | None:
        """A usable member, waiting (and looking at the cluster again) up to ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            member = self.pick(avoid)
            if member is not None:
                return member
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.maybe_sync(force=True)
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), min(left, self.settings.pool_refresh_s))
            except TimeoutError:
                pass

    def lost(self, member: Member) -> None:
        """A call on it failed as if the actor were gone: no work until it answers again."""
        member.ready = False
        self.probe(member)

    def busy(self) -> bool:
        """Work handed in lately, or still out at an actor (a batch may wait long on a slow
        bucket: the pool is busy all that time, and keeps asking for its maximum)."""
        now = time.monotonic()
        if any(m.in_flight for m in self.members.values()):
            self.last_busy = now
        return now - self.last_busy < max(self.settings.pool_refresh_s * 2, 10.0)

    # --- keeping in step with the cluster ------------------------------------------------
    def maybe_sync(self, *, force: bool = False) -> None:
        """Look at the cluster again if it is time (never more than one look at once)."""
        due = time.monotonic() - self._last_sync >= (1.0 if force else self.settings.pool_refresh_s)
        if due and (self._sync_task is None or self._sync_task.done()):
            self._last_sync = time.monotonic()
            self._sync_task = asyncio.ensure_future(self.sync())

    def keep_looking(self) -> None:
        """Look at the cluster every ``pool_refresh_s`` for as long as there is work (and until
        the autoscaler request is back at the minimum), not only when photos are handed in: a
        run whose batches all wait (a stalled bucket, a slow model) still sees nodes come and go."""
        if self._looker is None or self._looker.done():
            self._looker = asyncio.ensure_future(self._look_while_busy())

    async def _look_while_busy(self) -> None:
        while True:
            await asyncio.sleep(self.settings.pool_refresh_s)
            self.maybe_sync()
            requested = self._requested
            if not self.busy() and (requested is None or requested <= self.settings.pool_min_actors):
                return  # the next photo handed in looks again

    async def sync(self) -> None:
        try:
            nodes = await asyncio.to_thread(cluster_nodes)
            busy = self.busy()
            adopted = await asyncio.to_thread(self.apply, nodes, busy)
            for member in adopted:
                self.probe(member)
            await self._ask_autoscaler(busy)
        except Exception:  # a failed look is retried at the next one; work goes on
            log.exception("pool: looking at the cluster failed")

    def apply(self, nodes: list[NodeInfo], busy: bool) -> list[Member]:
        """Bring the members in step with the plan for these nodes (blocking: creates actors).
        Returns the members that need a ping."""
        by_id = {n.node_id: n for n in nodes}
        slots = plan_pool(nodes, self.settings)
        wanted = {s.name for s in slots}
        # A new dict, swapped in at the end: the event loop reads the members meanwhile.
        members = dict(self.members)
        for name, member in list(members.items()):
            node = by_id.get(member.node_id) if member.node_id else None
            if member.node_id and node is None:
                # Its node is gone: a pinned actor cannot come back; a floating one is re-placed.
                if member.slot.node_id is not None:
                    log.warning("pool: node %s left; actor %s leaves the pool", member.node_id[:12], name)
                    del members[name]
                    continue
                member.ready = False
            was_draining = member.draining
            member.drain_deadline_s = node.drain_deadline_s if node else None
            if member.draining and not was_draining:
                log.warning("pool: node %s drains; actor %s gets no new work", member.node_id, name)
            if name not in wanted and not member.draining:
                del members[name]  # over the maximum: it idles out
                if member.slot.node_id is None and not self.settings.fixed_pool:
                    # A stopgap placed anywhere while no node had room: it holds what a pinned
                    # actor of its node needs (measured: a GPU node's pinned actor then never
                    # placed). The nodes are there now: it goes.
                    log.info("pool: stopgap actor %s gives its place to a pinned one", name)
                    self.kill_actor(member.handle)
        fresh: list[Member] = []
        for slot in slots:
            if slot.name in members:
                continue
            handle = self._handle(slot, create=busy or slot.rank < self.settings.pool_min_actors)
            if handle is None:
                continue
            member = Member(slot, handle, slot.node_id)
            members[slot.name] = member
            fresh.append(member)
        fresh += [m for m in members.values() if not m.ready and not m.probing and m not in fresh]
        self.members = members
        self.planned = len(slots)
        return fresh

    def _handle(self, slot: Slot, *, create: bool) -> Any:
        if create:
            return self._make_actor(slot)
        try:  # not busy: use it if another process made it, make nothing
            return ray.get_actor(slot.name, namespace=self.settings.ray_namespace)
        except ValueError:
            return None

    def kill_actor(self, handle: Any) -> None:
        """For good (no restart): a later look makes the slot's actor again if it is wanted."""
        ray.kill(handle, no_restart=True)

    def probe(self, member: Member) -> None:
        """Ping it (in the background): it gets work once it answers with this pool's model."""
        if member.probing:
            return
        member.probing = True

        async def ping() -> None:
            for attempt in range(60):
                try:
                    info = await member.handle.info.remote()
                    break
                except (ActorUnavailableError, GetTimeoutError):  # restarting: ask again
                    await asyncio.sleep(min(5.0, 0.5 * (attempt + 1)))
                except Exception as exc:  # dead for good: leave the pool (a later look may remake it)
                    log.warning("pool: actor %s is gone (%s)", member.name, type(exc).__name__)
                    member.probing = False
                    if self.members.get(member.name) is member:
                        self.members = {k: v for k, v in self.members.items() if v is not member}
                    return
            else:
                member.probing = False
                return
            member.probing = False
            held = info.get("model_name")
            # The build it was asked for (not the one it runs: a build refused by the sharing
            # gate runs the reference one, and is not remade for that).
            asked = info.get("variant_requested")
            if self.model_name is not None and held != self.model_name:
                # Made by an earlier deployment with another pack: it goes, the next look
                # makes the slot's actor again with this pool's settings.
                self._replace(member, f"holds {held}, not {self.model_name}")
                return
            if self.variant is not None and asked not in (None, self.variant):
                # The same weights (its vectors stay valid), another build: remade with this one.
                self._replace(member, f"runs build {asked}, not {self.variant}")
                return
            if self.members.get(member.name) is member:
                member.node_id = member.slot.node_id or str(info.get("node_id") or "") or None
                member.ready = True
                self._ready.set()

        asyncio.ensure_future(ping())

    def _replace(self, member: Member, why: str) -> None:
        """An actor made by an earlier deployment for other settings leaves the pool and is
        killed; the next look makes the slot's actor again with this pool's settings."""
        log.warning("pool: actor %s %s: replaced", member.name, why)
        self.members = {k: v for k, v in self.members.items() if v is not member}
        self.kill_actor(member.handle)

    def release(self) -> None:
        """This process is done with the pool (a bulk job's end): ask the autoscaler for the
        minimum only, or its request for the maximum would outlive the job."""
        if self.settings.pool_request_resources and not self.settings.fixed_pool and self._requested:
            from ray.autoscaler.sdk import request_resources

            request_resources(bundles=[resource_bundle(self.settings)] * self.settings.pool_min_actors)
            self._requested = self.settings.pool_min_actors

    async def _ask_autoscaler(self, busy: bool) -> None:
        """Busy: room for the maximum (the autoscaler adds nodes); idle: the minimum."""
        if not self.settings.pool_request_resources or self.settings.fixed_pool:
            return
        idle_for = time.monotonic() - self.last_busy
        if busy:
            count = self.settings.pool_max_actors
        elif idle_for >= self.settings.pool_idle_exit_s:
            count = self.settings.pool_min_actors
        else:
            return
        if count == self._requested:
            return
        from ray.autoscaler.sdk import request_resources

        bundles = [resource_bundle(self.settings)] * count
        await asyncio.to_thread(request_resources, bundles=bundles)
        self._requested = count
        log.debug("pool: asked the cluster for room for %d embedding actors", count)
