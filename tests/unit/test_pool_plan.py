"""facepass.cluster.pool_plan: how many embedding actors, on which node (no Ray)."""

from __future__ import annotations

from facepass.cluster.pool_plan import NodeInfo, plan_pool, resource_bundle, room_on
from facepass.settings import Settings

HEAD = NodeInfo("h" * 56, cpus=0, gpus=0, is_head=True)


def workers(n: int, cpus: float = 1, gpus: float = 0) -> list[NodeInfo]:
    return [NodeInfo(f"{i:02d}" + "w" * 54, cpus=cpus, gpus=gpus) for i in range(n)]


def test_one_actor_per_worker_cpu_and_none_on_a_head_without_cpus() -> None:
    slots = plan_pool([HEAD, *workers(4)], Settings())
    assert len(slots) == 4
    assert {s.node_id for s in slots} == {w.node_id for w in workers(4)}
    assert [s.rank for s in slots] == [0, 1, 2, 3]
    assert len({s.name for s in slots}) == 4 and all(s.name.startswith("facepass-embedder-") for s in slots)


def test_one_actor_per_gpu_on_gpu_nodes() -> None:
    nodes = [NodeInfo("c" * 56, cpus=16, gpus=0, is_head=True), *workers(2, cpus=8, gpus=4)]
    slots = plan_pool(nodes, Settings(gpus_per_actor=1))
    assert len(slots) == 8
    assert all(s.node_id != nodes[0].node_id for s in slots)  # the CPU head gets no GPU actor
    assert room_on(nodes[1], Settings(gpus_per_actor=0.5)) == 8


def test_the_maximum_cuts_round_robin_so_every_node_keeps_an_actor() -> None:
    slots = plan_pool(workers(3, cpus=4), Settings(pool_max_actors=4))
    per_node = [sum(1 for s in slots if s.node_id == w.node_id) for w in workers(3, cpus=4)]
    assert sorted(per_node) == [1, 1, 2]


def test_below_the_minimum_floating_slots_ask_for_room() -> None:
    slots = plan_pool([HEAD], Settings(pool_min_actors=2))
    assert [(s.node_id, s.rank) for s in slots] == [(None, 0), (None, 1)]
    assert plan_pool([HEAD], Settings(pool_min_actors=0)) == []


def test_slot_names_stay_apart_when_node_ids_share_a_prefix() -> None:
    nodes = [NodeInfo("f" * 50 + "000001", cpus=1, gpus=0), NodeInfo("f" * 50 + "000002", cpus=1, gpus=0)]
    assert len({s.name for s in plan_pool(nodes, Settings())}) == 2


def test_a_draining_node_offers_no_room() -> None:
    draining = NodeInfo("d" * 56, cpus=4, gpus=0, drain_deadline_s=1e9)
    assert room_on(draining, Settings()) == 0
    assert plan_pool([draining, *workers(1)], Settings())[0].node_id == workers(1)[0].node_id


def test_a_fixed_size_keeps_the_old_names_and_lets_ray_place_them() -> None:
    slots = plan_pool(workers(4), Settings(embed_actors=2))
    assert [(s.name, s.node_id) for s in slots] == [
        ("facepass-embedder-0", None),
        ("facepass-embedder-1", None),
    ]


def test_the_autoscalers_unit_of_demand() -> None:
    assert resource_bundle(Settings()) == {"CPU": 1.0}
    assert resource_bundle(Settings(gpus_per_actor=1, cpus_per_actor=2)) == {"CPU": 2.0, "GPU": 1.0}
