"""How many embedding actors, and on which node each one sits. Plain Python, no Ray.

The pool is a set of named slots. With a fixed size (``FACEPASS_EMBED_ACTORS``)
the slots are ``facepass-embedder-0..N-1`` and Ray places them where it likes
(and re-places one whose node is lost). Sized from the cluster (the default),
each node that offers room gets one slot per ``gpus_per_actor`` GPUs (or, on a
CPU-only cluster, per ``cpus_per_actor`` CPUs), named after the node and pinned
to it: when the node leaves, its slots leave the plan, and a node that joins
brings its slots in. Slots are taken round-robin over the nodes (slot 0 of every
node, then slot 1, ...), so a ``pool_max_actors`` cap still spreads the pool;
below ``pool_min_actors`` the plan adds floating slots that the cluster
autoscaler sees as demand. Draining nodes offer no room: Ray places nothing new
on them either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from facepass.settings import Settings

EMBEDDER_PREFIX = "facepass-embedder-"


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One alive node, as the pool needs to know it."""

    node_id: str  # hex
    cpus: float
    gpus: float
    is_head: bool = False
    drain_deadline_s: float | None = None  # unix time; 0.0: draining without a deadline

    @property
    def draining(self) -> bool:
        return self.drain_deadline_s is not None


@dataclass(frozen=True, slots=True)
class Slot:
    """One embedding actor of the plan: its Ray name, and the node it is pinned to (if any)."""

    name: str
    node_id: str | None
    rank: int  # 0 first: the first pool_min_actors ranks never exit when idle


def fixed_slot_name(i: int) -> str:
    return f"{EMBEDDER_PREFIX}{i}"


def node_slot_name(node_id: str, k: int) -> str:
    # The whole node id: a prefix is not unique (the fake autoscaler's ids share 50 'f's).
    return f"{EMBEDDER_PREFIX}{node_id}-{k}"


def room_on(node: NodeInfo, settings: Settings) -> int:
    """How many embedding actors the node offers room for (0 while it drains)."""
    if node.draining:
        return 0
    if settings.gpus_per_actor > 0:
        return math.floor(node.gpus / settings.gpus_per_actor + 1e-9)
    if settings.cpus_per_actor > 0:
        return math.floor(node.cpus / settings.cpus_per_actor + 1e-9)
    return 1  # actors that ask for nothing: one per node


def plan_pool(nodes: list[NodeInfo], settings: Settings) -> list[Slot]:
    """The slots the pool should have on these nodes, in rank order."""
    if settings.embed_actors is not None:
        return [Slot(fixed_slot_name(i), None, i) for i in range(settings.embed_actors)]
    # Worker nodes first (the head is for control; it only gets actors if it offers room).
    ordered = sorted(nodes, key=lambda n: (n.is_head, n.node_id))
    rooms = {n.node_id: room_on(n, settings) for n in ordered}
    slots: list[Slot] = []
    depth = max(rooms.values(), default=0)
    for k in range(depth):
        for node in ordered:
            if k < rooms[node.node_id] and len(slots) < settings.pool_max_actors:
                slots.append(Slot(node_slot_name(node.node_id, k), node.node_id, len(slots)))
    # Fewer than the minimum fit: floating slots, which Ray places when room appears.
    floating = 0
    while len(slots) < min(settings.pool_min_actors, settings.pool_max_actors):
        slots.append(Slot(f"{EMBEDDER_PREFIX}extra-{floating}", None, len(slots)))
        floating += 1
    return slots


def resource_bundle(settings: Settings) -> dict[str, float]:
    """What one embedding actor asks the cluster for (the autoscaler's unit of demand)."""
    bundle = {"CPU": settings.cpus_per_actor}
    if settings.gpus_per_actor > 0:
        bundle["GPU"] = settings.gpus_per_actor
    return {k: v for k, v in bundle.items() if v > 0}
