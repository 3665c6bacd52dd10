"""actors.membership.PoolMembers: which actors get work as nodes join, drain and leave.
The Ray calls are the callback that makes an actor (a plain object here) and the pings;
the rules in between are plain code."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from actors.membership import PoolMembers
from facepass.cluster.pool_plan import NodeInfo, Slot
from facepass.settings import Settings


def node(i: int, drain: float | None = None) -> NodeInfo:
    return NodeInfo(f"{i:02d}" + "n" * 54, cpus=1, gpus=0, drain_deadline_s=drain)


def members_for(settings: Settings) -> tuple[PoolMembers, list[Slot]]:
    made: list[Slot] = []

    def make(slot: Slot) -> Any:
        made.append(slot)
        return object()

    return PoolMembers(settings, make), made


def ready_all(members: PoolMembers) -> None:
    for member in members.members.values():
        member.ready = True


def test_nodes_joining_leaving_and_draining() -> None:
    members, made = members_for(Settings())
    members.apply([node(0), node(1)], busy=True)
    assert len(made) == 2 and members.planned == 2
    assert members.usable() == []  # not one has answered a ping yet: no work
    ready_all(members)
    assert len(members.usable()) == 2

    members.apply([node(0), node(1), node(2)], busy=True)  # a node joins
    assert len(made) == 3 and len(members.members) == 3

    members.apply([node(0), node(1, drain=time.time() + 30), node(2)], busy=True)
    draining = [m for m in members.members.values() if m.draining]
    assert len(draining) == 1 and draining[0] not in members.usable()  # no new batches
    assert draining[0].must_move(time.time() + 25, margin_s=10)
    assert not draining[0].must_move(time.time(), margin_s=10)

    members.apply([node(0), node(2)], busy=True)  # the drained node is gone
    assert {m.node_id for m in members.members.values()} == {node(0).node_id, node(2).node_id}
    assert len(made) == 3  # nothing new made for a node that left


def test_idle_pools_make_only_the_minimum() -> None:
    members, made = members_for(Settings(pool_min_actors=1))
    members._handle = lambda slot, create: object() if create else None  # type: ignore[method-assign]
    members.apply([node(0), node(1), node(2)], busy=False)
    assert len(members.members) == 1  # rank 0 only; the rest when there is work
    members.apply([node(0), node(1), node(2)], busy=True)
    assert len(members.members) == 3


def test_pick_spreads_by_load_and_avoids_what_failed() -> None:
    members, _ = members_for(Settings())
    members.apply([node(0), node(1)], busy=True)
    ready_all(members)
    first = members.pick(set())
    assert first is not None
    first.in_flight = 8
    second = members.pick(set())
    assert second is not None and second is not first
    assert members.pick({second.name}) is first
    assert members.pick({first.name, second.name}) is not None  # all tried: any again


def test_work_still_out_counts_as_busy() -> None:
    """A batch waiting long (a slow bucket) keeps the pool busy: it goes on making actors for
    nodes that join and asking the autoscaler for its maximum."""
    members, _ = members_for(Settings())
    members.apply([node(0)], busy=True)
    ready_all(members)
    members.last_busy = time.monotonic() - 3600  # nothing handed in for an hour
    assert not members.busy()
    member = members.pick(set())
    assert member is not None
    member.in_flight = 4  # ... but a batch is still out
    assert members.busy()
    member.in_flight = 0
    assert members.busy()  # idle counts from the end of the work, not from the hand-in


class FakeActor:
    """What ``info`` answers for an actor of an earlier deployment: its pack and build asked."""

    def __init__(self, model: str, asked: str | None = None) -> None:
        self.model, self.asked = model, asked
        self.info = self

    async def remote(self) -> dict[str, Any]:
        return {
            "model_name": self.model,
            "variant_requested": self.asked,
            "variant": "onnxruntime-fp32/cpu",
            "node_id": node(0).node_id,
        }


async def probe_one(actor: FakeActor, **pool: str) -> tuple[PoolMembers, list[Any]]:
    """A pool (``model_name``, ``variant``) that finds ``actor`` under its slot's name."""
    members = PoolMembers(Settings(), lambda slot: actor, **pool)  # type: ignore[arg-type]
    killed: list[Any] = []
    members.kill_actor = killed.append  # type: ignore[method-assign]
    for member in members.apply([node(0)], busy=True):
        members.probe(member)
    await asyncio.sleep(0.05)
    return members, killed


def test_an_actor_holding_another_model_is_replaced_not_used() -> None:
    """Detached actors outlive a deployment: after a pack change the actor found under a
    slot's name may hold the old model. It gets no work and goes; the next look remakes it."""
    members, killed = asyncio.run(probe_one(FakeActor("pack-a"), model_name="pack-b"))
    assert killed and members.usable() == [] and members.members == {}
    members, killed = asyncio.run(probe_one(FakeActor("pack-b"), model_name="pack-b"))
    assert not killed and len(members.usable()) == 1


def test_an_actor_asked_for_another_build_of_the_weights_is_remade() -> None:
    """After FACEPASS_MODEL_VARIANT (or _RUNTIME) changed: an actor of the earlier deployment
    that was asked for another variant is remade (its rows stay valid: one generation); one
    that was asked for this one but runs the reference build (refused by the gate) stays, and
    so does one asked for "auto" like this pool, whatever its machine chose."""
    fast = "onnxruntime-fp32-fit/cpu+openvino-f32/cpu"
    members, killed = asyncio.run(
        probe_one(FakeActor("pack", fast), model_name="pack", variant="onnxruntime-fp32/cpu")
    )
    assert killed and members.usable() == []
    members, killed = asyncio.run(probe_one(FakeActor("pack", fast), model_name="pack", variant=fast))
    assert not killed and len(members.usable()) == 1
    members, killed = asyncio.run(probe_one(FakeActor("pack", "auto"), model_name="pack", variant="auto"))
    assert not killed and len(members.usable()) == 1
    members, killed = asyncio.run(probe_one(FakeActor("pack", "auto"), model_name="pack", variant=fast))
    assert killed and members.usable() == []


def test_the_pool_keeps_looking_while_batches_wait() -> None:
    """No photo handed in for a while (every batch waits on a stalled bucket): the pool still
    looks at the cluster every refresh period, and stops once idle."""

    async def run() -> tuple[int, int]:
        members, _ = members_for(Settings(pool_refresh_s=0.05, pool_request_resources=False))
        looks = 0

        async def sync() -> None:
            nonlocal looks
            looks += 1

        members.sync = sync  # type: ignore[method-assign]
        members.apply([node(0)], busy=True)
        ready_all(members)
        member = members.pick(set())
        assert member is not None
        member.in_flight = 4
        members.keep_looking()
        await asyncio.sleep(1.2)  # about 20 refresh periods, not one photo handed in
        while_busy = looks
        member.in_flight = 0
        members.last_busy = time.monotonic() - 3600
        await asyncio.sleep(0.5)
        return while_busy, looks

    while_busy, after = asyncio.run(run())
    assert while_busy >= 3
    assert after - while_busy <= 2  # idle: it stopped
