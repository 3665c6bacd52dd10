"""The pool and the cluster autoscaler (Ray's fake multi-node provider: worker nodes are
real raylets on this machine, started and stopped by the real autoscaler). GPU worker
nodes shaped like ``cluster.yaml``'s GPU type (GPUs declared as a resource; the actors
run on the CPU provider here). The pool's demand brings nodes up to its maximum and the
pool uses them; idle, it shrinks back to its minimum and the autoscaler removes the
idle node.

``AutoscalingCluster.start()`` and ``.shutdown()`` run ``ray stop --force``: every Ray
cluster on the machine goes. This module must run alone (it does, under the tier's lock).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from ray.cluster_utils import AutoscalingCluster

from actors.ray_calls import WRITER_NAME
from facepass.demo.storage import PhotoStorage
from facepass.index.store import VectorStore
from facepass.settings import Settings
from jobs.local_head import VENV_BIN, ensure_ray_token, project_env
from tests.cluster.conftest import (
    FAST_HEALTH,
    HOLD_ENV,
    assert_every_photo_once,
    embedder_ready_on,
    held,
    job_env,
    make_catalog,
    pool_actors,
    start_bulk_job,
    wait_for_progress,
    wait_until,
)

pytestmark = [pytest.mark.cluster, pytest.mark.scaling]

GPU_WORKER = {
    "resources": {"CPU": 1, "GPU": 1},
    "node_config": {},
    "min_workers": 0,
    "max_workers": 2,
}


class FakeAutoscalingCluster(AutoscalingCluster):
    """``AutoscalingCluster`` builds its config on the fake provider's ``example.yaml``, which
    the Ray wheel does not ship: the same base, written here."""

    def _generate_config(
        self,
        head_resources: dict[str, Any],
        worker_node_types: dict[str, Any],
        autoscaler_v2: bool = False,
        **kw: Any,
    ) -> dict[str, Any]:
        head = {"resources": dict(head_resources), "node_config": {}, "max_workers": 0}
        config: dict[str, Any] = {
            "cluster_name": "facepass-fake",
            "max_workers": 8,
            "provider": {
                "type": "fake_multinode",
                "use_node_id_as_ip": True,
                "disable_node_updaters": True,
                "disable_launch_config_check": True,
            },
            "available_node_types": {**worker_node_types, "ray.head.default": head},
            "head_node_type": "ray.head.default",
            "auth": {},
            "upscaling_speed": 1.0,
            "idle_timeout_minutes": 0.1,
            "docker": {},
            "file_mounts": {},
            "cluster_synced_files": [],
            "file_mounts_sync_continuously": False,
            "rsync_exclude": [],
            "rsync_filter": [],
            **{k: [] for k in ("initialization_commands", "setup_commands", "head_setup_commands")},
            **{
                k: []
                for k in ("worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
            },
        }
        config.update(kw)
        return config


def worker_nodes() -> list[str]:
    return [
        node["NodeID"]
        for node in ray.nodes()  # type: ignore[no-untyped-call]
        if node["Alive"] and "node:__internal_head__" not in node["Resources"]
    ]


def worker_count() -> int:
    return len(worker_nodes())


@pytest.fixture(scope="module")
def autoscaling() -> Iterator[str]:
    os.environ["PATH"] = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"  # `ray start` is ours
    ensure_ray_token(project_env())
    cluster = FakeAutoscalingCluster(
        head_resources={"CPU": 0},
        worker_node_types={"gpu_worker": GPU_WORKER},
        idle_timeout_minutes=0.25,
    )
    cluster.start(_system_config=FAST_HEALTH)
    try:
        ray.init("auto")
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_demand_brings_gpu_nodes_up_to_the_maximum_and_idle_takes_them_away(
    autoscaling: str,
    cluster_settings: Settings,
    slow_storage: PhotoStorage,
    store: VectorStore,
    tmp_path: Path,
) -> None:
    assert worker_count() == 0
    catalog = make_catalog(cluster_settings, slow_storage, sessions=4, per_session=25)
    env = job_env(
        cluster_settings,
        catalog,
        autoscaling,
        FACEPASS_GPUS_PER_ACTOR="1",
        FACEPASS_POOL_MIN_ACTORS="1",
        FACEPASS_POOL_MAX_ACTORS="2",
        FACEPASS_POOL_IDLE_EXIT_S="20",
        **HOLD_ENV,
    )
    started = time.monotonic()
    job = start_bulk_job(env, tmp_path)
    wait_for_progress(job, store, catalog, 0.05)  # the first node is up and its actor works
    # The storage stalls until both nodes' actors answer and the pool has looked twice more:
    # the run cannot end before the second node is usable, whatever the host's load.
    with held(slow_storage):
        wait_until(lambda: worker_count() == 2, 240, step_s=1)
        up_s = time.monotonic() - started
        ns = cluster_settings.ray_namespace
        wait_until(lambda: all(embedder_ready_on(ns, node) for node in worker_nodes()), 120, step_s=1)
        time.sleep(2 * 2 + 1)  # the pool looks every 2 s here (job_env)
    assert job.process.poll() is None, "the run outlasted the second node's actor load"
    code, summary, log = job.wait(timeout_s=400)
    assert code == 0, log[-4000:]
    assert summary["photos_successful"] == len(catalog.photos)
    assert_every_photo_once(store, catalog)
    actors = pool_actors(cluster_settings.ray_namespace)
    used = {i["node_id"] for n, i in actors.items() if n != WRITER_NAME and i.get("photos_done")}
    print(f"\nautoscaler: 2 GPU nodes up {up_s:.0f}s after the job started; actors used on {len(used)} nodes")
    assert len(used) == 2, "the pool used both nodes the autoscaler brought"
    # Idle: the actor beyond the minimum leaves, its node goes idle, the autoscaler removes it.
    down_s = wait_until(lambda: worker_count() == 1, 180, step_s=2)
    total_s = time.monotonic() - started
    print(f"autoscaler: back to 1 node {down_s:.0f}s after the job ended ({total_s:.0f}s in all)")
