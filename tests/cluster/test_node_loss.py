"""The bulk job on a four-worker cluster: the pool spreads over every worker, and a node
lost without notice mid-run (one with only an embedding actor; one holding the writer)
costs no photo and doubles none. Each test prints its figures (``-s`` shows them)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import ray
from ray import serve
from ray.cluster_utils import Cluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.ray_calls import WRITER_NAME, kill_pool_actors
from actors.writer import IndexWriter
from facepass.demo.storage import PhotoStorage
from facepass.index.store import VectorStore
from facepass.settings import Settings
from jobs.local_head import free_port
from serve_app import build_app
from tests.cluster.conftest import (
    HOLD_ENV,
    Catalog,
    assert_every_photo_once,
    embedder_ready_on,
    held,
    job_env,
    ledger_count,
    make_catalog,
    pool_actors,
    start_bulk_job,
    start_cluster,
    stop_cluster,
    wait_for_progress,
    wait_until,
)

pytestmark = pytest.mark.cluster

WORKERS = 4


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    cluster = start_cluster(WORKERS)
    ray.init(address=cluster.address)
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


def worker_nodes(cluster: Cluster) -> dict[str, object]:
    return {node.node_id: node for node in cluster.worker_nodes}


def run_and_lose_a_node(
    cluster: Cluster,
    settings: Settings,
    storage: PhotoStorage,
    store: VectorStore,
    tmp_path: Path,
    pick_victim: str,
) -> dict[str, float]:
    """Start the bulk job, remove one worker node (no drain) at ~30% of the photos, check it
    finishes with every photo once; return the figures."""
    catalog: Catalog = make_catalog(settings, storage, sessions=4, per_session=15)
    total = len(catalog.photos)
    job = start_bulk_job(job_env(settings, catalog, cluster.address), tmp_path)
    done_before, t_loss = wait_for_progress(job, store, catalog, 0.3), time.monotonic()
    rate_before = done_before / (t_loss - job.started)
    actors = pool_actors(settings.ray_namespace)
    nodes = worker_nodes(cluster)
    if pick_victim == "writer":
        victim = actors[WRITER_NAME]["node_id"]
    else:  # a node that holds an embedding actor and nothing else of ours
        writer_node = actors.get(WRITER_NAME, {}).get("node_id")
        victim = next(
            info["node_id"]
            for name, info in actors.items()
            if name != WRITER_NAME and info["node_id"] in nodes and info["node_id"] != writer_node
        )
    assert victim in nodes, "the victim must be a worker node"
    cluster.remove_node(nodes[victim], allow_graceful=False)
    code, summary, log = job.wait(timeout_s=240)
    finished = time.monotonic()
    assert code == 0, log[-4000:]
    assert summary["photos_processed"] == total and summary["photos_successful"] == total, summary
    assert_every_photo_once(store, catalog)
    figures = {
        "photos": total,
        "loss_to_done_s": round(finished - t_loss, 1),
        "photos_per_s_before": round(rate_before, 2),
        "photos_per_s_after": round((total - done_before) / max(finished - t_loss, 1e-6), 2),
    }
    print(f"\n{pick_victim} node lost: {figures}")
    cluster.add_node(num_cpus=1)  # back to four workers for the next test
    cluster.wait_for_nodes()
    return figures


def test_the_pool_runs_an_actor_on_every_worker(
    cluster: Cluster,
    cluster_settings: Settings,
    slow_storage: PhotoStorage,
    store: VectorStore,
    tmp_path: Path,
) -> None:
    catalog = make_catalog(cluster_settings, slow_storage, sessions=2, per_session=8)
    job = start_bulk_job(job_env(cluster_settings, catalog, cluster.address), tmp_path)
    code, summary, log = job.wait(timeout_s=300)
    assert code == 0, log[-4000:]
    assert summary["photos_successful"] == 16
    assert_every_photo_once(store, catalog)
    actors = pool_actors(cluster_settings.ray_namespace)
    embedder_nodes = {info["node_id"] for name, info in actors.items() if name != WRITER_NAME}
    assert embedder_nodes == set(worker_nodes(cluster)), "an embedding actor on each of the four workers"
    head = cluster.head_node.node_id
    assert actors[WRITER_NAME]["node_id"] == head, "the writer sits on the head node"
    busy = sorted(info["photos_done"] for name, info in actors.items() if name != WRITER_NAME)
    print(f"\nphotos per actor: {busy}")  # the first actor up takes the first batches


def test_a_lost_node_with_only_an_embedding_actor_costs_nothing(
    cluster: Cluster,
    cluster_settings: Settings,
    slow_storage: PhotoStorage,
    store: VectorStore,
    tmp_path: Path,
) -> None:
    figures = run_and_lose_a_node(cluster, cluster_settings, slow_storage, store, tmp_path, "embedder")
    assert figures["loss_to_done_s"] < 240


def test_a_lost_node_holding_the_writer_costs_nothing(
    cluster: Cluster,
    cluster_settings: Settings,
    slow_storage: PhotoStorage,
    store: VectorStore,
    tmp_path: Path,
) -> None:
    """The worst case the probe builds: the writer (and an embedding actor) on one worker
    node. Pinned there on purpose (the service puts it on the head), then the node goes: the
    writer is gone for good and the pool starts a new one (on the head)."""
    try:
        ray.kill(ray.get_actor(WRITER_NAME, namespace=cluster_settings.ray_namespace), no_restart=True)
    except ValueError:  # no writer yet
        pass
    wait_until(lambda: WRITER_NAME not in pool_actors(cluster_settings.ray_namespace), 30)
    target = next(iter(worker_nodes(cluster)))
    writer = IndexWriter.options(  # type: ignore[attr-defined]
        name=WRITER_NAME,
        namespace=cluster_settings.ray_namespace,
        lifetime="detached",
        max_restarts=-1,
        num_cpus=0,
        max_concurrency=1000,
        scheduling_strategy=NodeAffinitySchedulingStrategy(target, soft=False),
    ).remote(cluster_settings)
    assert ray.get(writer.node_id.remote(), timeout=60) == target
    figures = run_and_lose_a_node(cluster, cluster_settings, slow_storage, store, tmp_path, "writer")
    assert figures["loss_to_done_s"] < 240
    # The pool made a new writer at its first failed write (on the head), unless no write
    # failed (the loss between two batches): then the next pool makes it.
    writer_now = pool_actors(cluster_settings.ray_namespace).get(WRITER_NAME)
    assert writer_now is None or writer_now["node_id"] == cluster.head_node.node_id


@pytest.mark.scaling
def test_a_node_that_joins_gets_an_actor_and_work(
    cluster: Cluster,
    cluster_settings: Settings,
    slow_storage: PhotoStorage,
    store: VectorStore,
    tmp_path: Path,
) -> None:
    """A node joins mid-run: within the pool's next look it gets an actor, and once that
    actor has loaded its model it gets batches. The storage stalls from the join until the new
    actor answers and the pool has had two looks more, so the run cannot end before the new
    actor is ready, however long its model load takes on this host."""
    namespace = cluster_settings.ray_namespace
    # The actors keep the settings of the job that made them: this job's (a download timeout
    # longer than the stall) need actors of its own.
    kill_pool_actors(cluster_settings)
    wait_until(lambda: not pool_actors(namespace), 60)
    catalog = make_catalog(cluster_settings, slow_storage, sessions=4, per_session=20)
    total = len(catalog.photos)
    job = start_bulk_job(job_env(cluster_settings, catalog, cluster.address, **HOLD_ENV), tmp_path)
    wait_for_progress(job, store, catalog, 0.05)
    with held(slow_storage):
        joined = cluster.add_node(num_cpus=1)
        t_join = time.monotonic()
        ready_s = wait_until(lambda: embedder_ready_on(namespace, joined.node_id), 120, step_s=1)
        time.sleep(2 * 2 + 1)  # the pool looks every 2 s here (job_env): it has seen the actor answer
    assert job.process.poll() is None, "the run outlasted the new actor's load"

    def new_actor_busy() -> bool:
        actors = pool_actors(namespace)
        return any(
            i.get("node_id") == joined.node_id and i.get("photos_done", 0) > 0 for i in actors.values()
        )

    work_s = wait_until(lambda: new_actor_busy() or job.process.poll() is not None, 60, step_s=1)
    assert new_actor_busy(), "the new node's actor processed photos"
    code, summary, log = job.wait(timeout_s=300)
    assert code == 0, log[-4000:]
    assert summary["photos_successful"] == total, summary
    assert_every_photo_once(store, catalog)
    print(
        f"\nnode joined: its actor answered (made, model loaded) {ready_s:.1f}s after the join; "
        f"it had processed photos {work_s:.1f}s after the storage resumed"
    )
    assert time.monotonic() - t_join < 240 and ready_s < 60


def drain(cluster: Cluster, node_id: str, deadline_s: float) -> None:
    """What a preemption notice does: Ray's drain API with a deadline (as `ray drain-node`)."""
    from ray.core.generated import autoscaler_pb2

    gcs = ray._raylet.GcsClient(address=cluster.address)
    reason = autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION")
    accepted, why = gcs.drain_node(node_id, reason, "spot preemption (test)", int(deadline_s * 1000))
    assert accepted, why


def test_a_drained_node_gets_no_new_batches_and_its_work_finishes_or_moves(
    cluster: Cluster,
    cluster_settings: Settings,
    slow_storage: PhotoStorage,
    store: VectorStore,
    tmp_path: Path,
) -> None:
    catalog = make_catalog(cluster_settings, slow_storage, sessions=4, per_session=25)
    total = len(catalog.photos)
    env = job_env(cluster_settings, catalog, cluster.address, FACEPASS_DRAIN_MARGIN_S="5")
    job = start_bulk_job(env, tmp_path)
    wait_for_progress(job, store, catalog, 0.2)
    actors = pool_actors(cluster_settings.ray_namespace)
    nodes = worker_nodes(cluster)
    name, info = next((n, i) for n, i in actors.items() if n != WRITER_NAME and i["node_id"] in nodes)
    victim = info["node_id"]
    deadline = time.time() + 20
    drain(cluster, victim, deadline)
    time.sleep(6)  # the pool looks every 2 s here; batches already sent may finish meanwhile
    handle = ray.get_actor(name, namespace=cluster_settings.ray_namespace)
    settled = ray.get(handle.info.remote(), timeout=20)["photos_done"]
    time.sleep(max(0.0, deadline - time.time() - 1))
    at_deadline = ray.get(handle.info.remote(), timeout=20)["photos_done"]
    assert at_deadline == settled, "no new batches after the drain was seen"
    cluster.remove_node(nodes[victim], allow_graceful=False)  # the deadline: the node goes
    code, summary, log = job.wait(timeout_s=240)
    assert code == 0, log[-4000:]
    assert summary["photos_successful"] == total, summary
    assert_every_photo_once(store, catalog)
    assert "drains; actor" in log
    print(f"\ndrained node: {settled} photos done before the drain settled, {at_deadline} at the deadline")
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()


def test_a_route_call_finishes_on_what_is_left_when_a_node_goes(
    cluster: Cluster,
    cluster_settings: Settings,
    slow_storage: PhotoStorage,
    store: VectorStore,
) -> None:
    """The route on Ray Serve (proxy on the head), a blocking call for a 40-photo session,
    a worker node (an embedding actor) removed without notice in the middle."""
    catalog = make_catalog(cluster_settings, slow_storage, sessions=1, per_session=40)
    settings = cluster_settings.with_databases(
        cloud=catalog.dsn, http_port=free_port(), pool_refresh_s=2.0, embed_actors=None
    )
    serve.start(http_options={"host": settings.http_host, "port": settings.http_port, "location": "HeadOnly"})
    try:
        serve.run(build_app(settings), name="facepass", route_prefix="/")
        url = f"http://{settings.http_host}:{settings.http_port}/api/v1/faces/force-reindex-session/"
        answer: list[httpx.Response] = []
        call = threading.Thread(
            target=lambda: answer.append(
                httpx.post(url + str(catalog.sessions[0]), headers=settings.api_headers(), timeout=400)
            )
        )
        call.start()
        wait_until(lambda: ledger_count(store, catalog) >= 10 or not call.is_alive(), 240)
        assert call.is_alive(), "the call ended before the loss"
        actors = pool_actors(settings.ray_namespace)
        nodes = worker_nodes(cluster)
        victim = next(i["node_id"] for n, i in actors.items() if n != WRITER_NAME and i["node_id"] in nodes)
        t_loss = time.monotonic()
        cluster.remove_node(nodes[victim], allow_graceful=False)
        call.join(300)
        assert answer and answer[0].status_code == 200, answer[0].text if answer else "no answer"
        body = answer[0].json()
        assert body["successful_photos"] == 40 and body["failed_photos"] == 0, body["errors"]
        assert_every_photo_once(store, catalog)
        print(f"\nroute call: node lost, call done {time.monotonic() - t_loss:.1f}s later")
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
