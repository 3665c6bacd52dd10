"""The benchmark as stages: one function per measurement over a shared context, and a registry.

Each stage reads what earlier stages left in the ``Bench`` context (the bare model's faces,
the loaded model, the rounds of (c)) and adds its runs and its JSON keys; the measurement
itself lives in its own module (``bench/baselines.py``, ``bench/models.py``, ``bench/writer.py``,
``bench/search.py``, ``bench/orchestration.py``, ``bench/service.py``, ``bench/follow.py``).
``python -m bench.run --stages writer,search`` runs some (with the stages they need);
the default runs them all in the registry's order. ``bench/run.py`` sets the context up,
runs the stages and writes the JSON, the chart and the summary.
"""

from __future__ import annotations

import argparse
import gc
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from bench.baselines import make_embedder, run_limit, run_seed_loop
from bench.bulk import run_job
from bench.cpu import OtherLoad
from bench.data import SyntheticSession, SyntheticStorage
from bench.follow import run_follow_bench
from bench.models import run_accuracy, run_model_comparison
from bench.orchestration import (
    Orchestration,
    orchestration_figures,
    pipeline_cpu_ms_per_photo,
    run_orchestration,
    run_storage_comparison,
    service_cpu_ms_per_photo,
    storage_figures,
)
from bench.profiling import SpyRecorder
from bench.report import Round
from bench.results import RunResult
from bench.search import run_search
from bench.service import (
    BenchService,
    free_port,
    run_pipeline,
    run_rerun,
    run_rerun_large,
    seed_indexed_session,
)
from bench.side_by_side import run_side_by_side
from bench.standin import start_virtual_gpus
from bench.writer import run_writer
from facepass.demo.scenario import CatalogWriter
from facepass.index.store import VectorStore
from facepass.settings import Settings
from facepass.vision.faces import FaceEmbedder


def say(text: str = "") -> None:
    print(text, flush=True)


@dataclass
class Bench:
    """What every stage sees: the run's settings and storage, and what earlier stages made."""

    args: argparse.Namespace
    settings: Settings
    storage: SyntheticStorage
    session: SyntheticSession
    catalog_writer: CatalogWriter
    threads: int  # the baselines' ONNX Runtime threads (all cores)
    profile_dir: Path | None = None
    runs: list[RunResult] = field(default_factory=list)
    session_ids: list[str] = field(default_factory=list)  # deleted at the end
    figures: dict[str, Any] = field(default_factory=dict)  # JSON keys measured by the stages
    # made by "limit", used by later stages
    limit: RunResult | None = None
    limit_actor: RunResult | None = None
    limit_n: int = 0
    precomputed: list[Any] = field(default_factory=list)  # the faces (a) found, per photo
    embedder: FaceEmbedder | None = None  # all cores: the seed's loop
    pair_embedder: FaceEmbedder | None = None  # one actor's threads: paired with (c)
    model_name: str = ""
    # made by the others
    seed_loops: dict[float, RunResult] = field(default_factory=dict)
    fp32_pipeline: RunResult | None = None
    rounds: list[Round] = field(default_factory=list)
    rerun: RunResult | None = None
    rerun_large: RunResult | None = None
    limit_actor_after: RunResult | None = None
    memory_runs: dict[str, RunResult] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.args.n)

    @property
    def latencies(self) -> list[float]:
        return list(self.args.latency_ms)

    @property
    def low(self) -> float:
        return self.latencies[0]

    @property
    def faces_per_photo(self) -> list[int]:
        return [len(faces) for faces in self.precomputed]

    def add(self, run: RunResult, line: str | None = None) -> RunResult:
        self.runs.append(run)
        say(line if line is not None else run.line())
        return run

    def orchestration_plan(self, photos: int) -> Orchestration:
        """The stand-in runs' photos and knobs: ``photos`` catalog rows over the session's
        previews whose faces (a) found."""
        a = self.args
        return Orchestration.of(
            self.catalog_writer,
            self.session,
            self.precomputed,
            self.model_name,
            photos,
            a.orch_in_flight,
            a.orch_batch,
        )

    def drop_embedder(self) -> None:
        """The all-cores model is done with before Ray starts (its memory goes back)."""
        if self.embedder is not None:
            self.embedder = None
            gc.collect()


def settle_heap() -> None:
    """Before a measured run: the bench's own objects (the catalog's rows, the faces, earlier
    runs' results) out of the garbage collector's sight. The bench's process also hosts the
    loopback storage and, for the virtual GPUs, the bulk job, each its own process in
    production with a heap of its own; left in sight, a full collection walks the whole bench
    (the bulk job planned 16,000 photos in 0.15 s instead of 0.01 s: one collection). Nothing
    in the service is changed by it."""
    gc.collect()
    gc.freeze()


@dataclass(frozen=True, slots=True)
class Stage:
    name: str
    run: Callable[[Bench], None]
    help: str
    needs: tuple[str, ...] = ()


# --- the stages, in the order they run ---------------------------------------------------------
def limit(b: Bench) -> None:
    """(a) the bare model on the photos' bytes in memory: all cores, and one actor's threads."""
    settings = b.settings
    embedders = {"all_cores": make_embedder(settings, b.threads)}
    if settings.intra_op_threads() != b.threads:
        embedders["actor_threads"] = make_embedder(settings, settings.intra_op_threads())
    b.limit_n = min(b.args.limit_sample or b.n, b.n)
    limits, b.precomputed = run_limit(b.storage.lazy_files, b.limit_n, embedders, settings)
    for run in limits.values():
        run.extrapolated = b.limit_n < b.n
        run.session_photos = b.n
        b.add(run)
    b.limit = limits["all_cores"]
    b.limit_actor = limits.get("actor_threads", b.limit)
    b.embedder = embedders["all_cores"]
    b.pair_embedder = embedders.get("actor_threads", b.embedder)
    b.model_name = b.embedder.model_name


def model(b: Bench) -> None:
    """The chosen variant against the reference, bare, one process; then the accuracy gate."""
    if not b.args.model_sample:
        return
    model_n = min(b.args.model_sample, b.n)
    runs, figures, fp32_model, fast_model = run_model_comparison(
        b.storage.lazy_files, model_n, b.settings, b.settings.intra_op_threads()
    )
    for run in runs:
        b.add(run)
    say(
        f"bare model, {model_n} photos: fast/fp32 {figures['model_fast_vs_fp32']}, "
        f"default CPU config/fp32 {figures['model_default_vs_fp32']}, batched/one by one "
        f"{figures['batched_vs_one_by_one']} (fp32: {figures['batched_vs_one_by_one_fp32']})"
    )
    figures |= run_accuracy(fp32_model, fast_model)
    say("accuracy gate: " + ", ".join(f"{k}={v}" for k, v in figures.items() if k.startswith("accuracy_")))
    b.figures |= figures


def seed_loop(b: Bench) -> None:
    """(b) the seed's sequential loop at each storage latency."""
    assert b.embedder is not None
    sample = min(b.args.seed_loop_sample or b.n, b.n)
    for latency in b.latencies:
        b.storage.latency_s = latency / 1000
        run = run_seed_loop(
            b.settings, b.catalog_writer, b.session.names_paths(sample), b.embedder, latency, b.n
        )
        b.session_ids.append(run.extra["session_id"])
        b.seed_loops[latency] = b.add(run)


def writer(b: Bench) -> None:
    """The writer's code alone, on the faces (a) found."""
    if not b.args.writer_photos:
        return
    store = VectorStore(b.settings.local_url(), pool_size=b.settings.writer_transactions + 1)
    try:
        figures, ids = run_writer(
            store,
            b.precomputed,
            b.model_name,
            photos=b.args.writer_photos,
            batch_photos=b.settings.actor_batch_photos,
            max_batch_photos=b.settings.writer_max_batch_photos,
            transactions=b.settings.writer_transactions,
        )
    finally:
        store.close()
    b.session_ids += [str(s) for s in ids]
    b.figures |= figures
    say(
        f"writer: {figures['writer_photos_per_s']} photos/s, {figures['writer_faces_per_s']} faces/s "
        f"({figures['writer_photos']} photos in {figures['writer_transactions']} transactions); one "
        f"transaction per photo: {figures['writer_one_transaction_per_photo_photos_per_s']} photos/s"
    )


def search(b: Bench) -> None:
    """Search at scale, inside one session, against an exact scan."""
    a = b.args
    if not a.search_sessions:
        return
    say(
        f"search: building/reusing {a.search_sessions} x {a.search_session_faces} faces "
        f"+ one session of {a.search_big_faces} ..."
    )
    store = VectorStore(b.settings.local_url(), pool_size=2)
    try:
        figures = run_search(
            store,
            sessions=a.search_sessions,
            faces_per_session=a.search_session_faces,
            big_faces=a.search_big_faces,
        )
    finally:
        store.close()
    b.figures |= figures
    say("search: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


def search_quality(b: Bench) -> None:
    """Precision and recall of selfie search on photos of labeled people, per threshold, with
    the default quality gates and without them (``facepass/demo/search_quality.py``)."""
    from facepass.demo import search_quality as sq
    from facepass.index.search import default_threshold

    embedder = FaceEmbedder(b.settings).load()
    session = sq.labeled_session(embedder)
    gates = b.settings.quality_gates()
    threshold = default_threshold(embedder.pack.name)
    rows = sq.table(session, gates)
    at = sq.score(session, threshold, gates)
    ungated = sq.score(session, threshold, None)
    b.figures |= {
        "search_precision": round(at.precision, 4),
        "search_recall": round(at.recall, 4),
        "search_threshold": threshold,
        "search_quality_gates": gates.as_json(),
        "search_precision_ungated": round(ungated.precision, 4),
        "search_recall_ungated": round(ungated.recall, 4),
        "search_quality_set": {
            "photos": len(session.photos),
            "faces": session.face_count,
            "selfies": len(session.selfies),
            "people": session.people,
        },
        "search_quality_table": [r.as_dict() for r in rows],
    }
    sizes = f"{len(session.photos)} photos, {session.face_count} faces, {len(session.selfies)} selfies"
    say(f"search quality ({sizes}):")
    say("  threshold  gated: precision recall (false/missed)   ungated: precision recall (false/missed)")
    for gated, bare in zip(rows[::2], rows[1::2], strict=True):
        cells = [f"{r.precision:6.3f} {r.recall:6.3f} ({r.false_matches}/{r.missed})" for r in (gated, bare)]
        say(f"  {gated.threshold:9.2f}  {cells[0]}          {cells[1]}")
    say(f"search quality at the default {threshold}: precision {at.precision:.3f}, recall {at.recall:.3f}")


def orchestration(b: Bench) -> None:
    """(d) the route with the model taken out (the benchmark-only stand-in)."""
    a = b.args
    if not a.orch_n:
        return
    b.drop_embedder()
    say("orchestration: starting Ray + Serve with stand-in actors ...")
    _, run, ids = run_orchestration(
        b.settings,
        b.storage,
        b.orchestration_plan(a.orch_n),
        latency_ms=a.orch_latency_ms,
        profile_dir=b.profile_dir,
        ray_logs=a.ray_logs,
    )
    b.session_ids += ids
    b.add(run)
    b.figures |= orchestration_figures(run)
    say_profile(run)


def storage(b: Bench) -> None:
    """(d) twice at no storage latency: plain HTTP storage, then a private bucket of a real S3
    server with signed GETs; the service's CPU per photo of each and their ratio."""
    a = b.args
    photos = a.orch_storage_n if a.orch_storage_n is not None else a.orch_n
    if not photos:
        return
    b.drop_embedder()
    say(f"storage: the orchestration run on plain HTTP, then on S3 (signed GETs), {photos} photos each ...")
    plain, signed, ids = run_storage_comparison(
        b.settings, b.storage, b.orchestration_plan(photos), ray_logs=a.ray_logs
    )
    b.session_ids += ids
    b.add(plain)
    b.add(signed)
    b.figures |= storage_figures(plain, signed)
    for run in (plain, signed):
        say(
            f"  {run.extra['storage']}: {run.photos_per_s:.1f} photos/s, "
            f"{pipeline_cpu_ms_per_photo(run):.3f} ms of CPU a photo in the pipeline's processes, "
            f"{service_cpu_ms_per_photo(run):.3f} ms with Ray's own"
        )
    say(
        f"  s3 vs plain, CPU a photo: {b.figures['s3_vs_plain_cpu_per_photo']}x (bar: 1.5x); "
        f"with Ray's own processes {b.figures['s3_vs_plain_all_cpu_per_photo']}x"
    )


def fp32_pipeline(b: Bench) -> None:
    """(c) once at the lowest latency with the reference (FACEPASS_MODEL_RUNTIME=onnxruntime),
    just before the default configuration's rounds: the route's "before" of the fast path."""
    if not b.args.model_sample:
        return
    b.drop_embedder()
    fp32_settings = b.settings.model_copy(update={"model_runtime": "onnxruntime"})
    say("starting Ray + Serve + the pool with the fp32 pack (ONNX Runtime) ...")
    service = BenchService(fp32_settings, ray_logs=b.args.ray_logs).start()
    try:
        _warm_up(b, service, "warm-up fp32")
        b.storage.latency_s = b.low / 1000
        run, sid = run_pipeline(
            service, b.catalog_writer, b.session.names_paths(b.n), b.low, "(c) ours, fp32 pack (ONNX Runtime)"
        )
        b.session_ids.append(str(sid))
    finally:
        service.stop()
    run.kind = "pipeline_fp32"
    b.fp32_pipeline = b.add(run)


def pipeline(b: Bench) -> None:
    """(c) the route at each latency in rounds paired with the bare model, then the reruns on
    indexed sessions, then the bare model again once Ray is gone."""
    b.drop_embedder()
    service = _start_service(b)
    try:
        first = _rounds(b, service)
        b.storage.latency_s = b.low / 1000
        b.rerun = run_rerun(service, first, b.n, b.low)
        b.add(
            b.rerun,
            f"{b.rerun.label}: {b.rerun.seconds:.2f} s (skipped {b.rerun.extra.get('skipped_photos')})",
        )
        if b.args.rerun_n:
            big = seed_indexed_session(b.settings, b.catalog_writer, b.args.rerun_n)
            b.session_ids.append(str(big))
            b.rerun_large = run_rerun_large(service, big, b.args.rerun_n)
            b.add(b.rerun_large, f"{b.rerun_large.label}: {b.rerun_large.seconds:.2f} s")
    finally:
        service.stop()
    # The bare model again, now that Ray is gone (the "unpaired" ideal pool: the mean of the
    # bare model before Ray started and after it stopped), on the same photos.
    assert b.pair_embedder is not None
    last, _ = run_limit(b.storage.lazy_files, b.limit_n, {"actor_threads": b.pair_embedder}, b.settings)
    after = last["actor_threads"]
    after.kind = "limit_after"
    b.limit_actor_after = b.add(after, after.line().replace("(a) limit", "(a) limit again, after (c)", 1))
    b.pair_embedder = None


def follow(b: Bench) -> None:
    """Follow lag and interactive-first under a backlog (bench.follow), on a service of its own."""
    a = b.args
    if a.follow_groups <= 0:
        return
    say("\nfollow mode: lag, and interactive work under a background backlog (bench.follow)")
    base = b.settings.model_copy(update={"ray_namespace": f"facepass-bench-{uuid.uuid4().hex[:8]}"})
    b.figures |= run_follow_bench(base, a.follow_groups, a.follow_backlog, a.follow_idle_s)


def gpu_standin(b: Bench) -> None:
    """The route on virtual GPUs (``bench.standin.VirtualGpuActor``: a batch of n costs
    t0 + t1 * n of waiting and no CPU; the bytes held inside it): photos/s and each virtual GPU's
    busy fraction at N virtual GPUs and each batch size. The writer and PostgreSQL are real."""
    a = b.args
    known = b.session.names_paths(len(b.precomputed))
    faces_by_path = {path: faces for (_, path), faces in zip(known, b.precomputed, strict=True)}
    t0_s, t1_s = a.gpu_standin_t0_ms / 1000, a.gpu_standin_t1_ms / 1000
    per_gpu = 1 / (t0_s / max(a.gpu_standin_batches) + t1_s)  # the largest batch's rate
    b.drop_embedder()
    for n_gpus in a.gpu_standin_n:
        for batch in a.gpu_standin_batches:
            rate = n_gpus / (t0_s / batch + t1_s)  # what the virtual GPUs could do at this batch
            photos = max(4 * batch * n_gpus, int(rate * a.gpu_standin_seconds))
            # At least two batches queued behind the one running; the pool's window grows from
            # there with its measured rate. The device's batch is the grid's (pinned).
            in_flight = 3 * batch
            settings = b.settings.model_copy(
                update={
                    "ray_namespace": f"{b.settings.ray_namespace}-vgpu{n_gpus}x{batch}",
                    "http_port": free_port(),
                    "embed_actors": n_gpus,
                    "actor_batch_photos": batch,
                    "max_actor_batch_photos": batch,
                    "photos_in_flight_per_actor": in_flight,
                }
            )
            rows = [(f"v{j:06d}_{known[j % len(known)][0]}", known[j % len(known)][1]) for j in range(photos)]
            gpus: list[Any] = []

            def start(settings: Settings = settings, gpus: list[Any] = gpus) -> None:
                gpus.extend(start_virtual_gpus(settings, faces_by_path, b.model_name, t0_s=t0_s, t1_s=t1_s))

            service = BenchService(settings, ray_logs=a.ray_logs, before_serve=start).start()
            try:
                warm, warm_id = run_pipeline(service, b.catalog_writer, rows[: 2 * in_flight], 0.0, "warm-up")
                b.session_ids.append(str(warm_id))
                label = f"route on {n_gpus} virtual GPU(s), batches of {batch}"
                settle_heap()
                with _usage(gpus) as usage:
                    run, sid = run_pipeline(service, b.catalog_writer, rows, 0.0, label, b.profile_dir)
                b.session_ids.append(str(sid))
                _gpu_figures(b, run, usage, rate, f"gpu_standin_route_n{n_gpus}_b{batch}")
                label = f"bulk job (background lane) on {n_gpus} virtual GPU(s), batches of {batch}"
                settle_heap()
                with _usage(gpus) as usage:
                    job, sid = run_bulk_lane(service, b, rows, label)
                b.session_ids.append(str(sid))
                _gpu_figures(b, job, usage, rate, f"gpu_standin_bulk_n{n_gpus}_b{batch}")
            finally:
                service.stop()
    b.figures["gpu_standin_photos_per_s_per_gpu"] = round(per_gpu, 1)
    b.figures["gpu_standin_t0_ms"], b.figures["gpu_standin_t1_ms"] = a.gpu_standin_t0_ms, a.gpu_standin_t1_ms


@dataclass
class _Usage:
    """The virtual GPUs' busy seconds over a block, and the wall-clock span from the first
    batch any of them began to the last one any ended (filled in when the block ends)."""

    busy_s: list[float] = field(default_factory=list)
    span_s: float = 0.0
    lead_s: float = 0.0  # from the block's start to the first batch
    tail_s: float = 0.0  # from the last batch's end to the block's end


@contextmanager
def _usage(gpus: list[Any]) -> Iterator[_Usage]:
    before = [ray.get(g.usage.remote()) for g in gpus]
    usage = _Usage()
    began = time.time()
    yield usage
    ended = time.time()
    after = [ray.get(g.usage.remote()) for g in gpus]
    usage.busy_s.extend(x["busy_s"] - y["busy_s"] for x, y in zip(after, before, strict=True))
    starts = [x["first_start"] for x in after if x["first_start"]]
    if starts:
        usage.span_s = max(x["last_end"] for x in after) - min(starts)
        usage.lead_s, usage.tail_s = min(starts) - began, ended - max(x["last_end"] for x in after)


def _gpu_figures(b: Bench, run: RunResult, usage: _Usage, rate: float, key: str) -> None:
    """Photos/s and busy fractions over the run; and over the devices' span (first batch in to
    last batch out): what the run's lead-in (planning, the window's growth) and tail cost."""
    busy = [each / run.seconds for each in usage.busy_s]
    within = [each / usage.span_s for each in usage.busy_s] if usage.span_s else busy
    outside = max(0.0, run.seconds - usage.span_s)
    run.kind = "gpu_standin"
    run.extra.update(busy=[round(f, 3) for f in busy], busy_within_span=[round(f, 3) for f in within])
    b.add(
        run,
        f"{run.line()}; busy {', '.join(f'{f:.2f}' for f in busy)} (ideal {rate:.0f} photos/s); "
        f"{outside:.2f} s of the run before the first batch or after the last (lead-in "
        f"{usage.lead_s:.2f} s, tail {usage.tail_s:.2f} s from the bench's call); busy between them "
        f"{min(within):.2f}-{max(within):.2f}",
    )
    b.figures[f"{key}_photos_per_s"] = round(run.photos_per_s, 1)
    b.figures[f"{key}_busy_min"] = round(min(busy), 3)
    b.figures[f"{key}_busy_mean"] = round(sum(busy) / len(busy), 3)
    b.figures[f"{key}_outside_span_s"] = round(outside, 3)
    b.figures[f"{key}_busy_within_span_min"] = round(min(within), 3)


def run_bulk_lane(
    service: BenchService, b: Bench, rows: list[tuple[str, str]], label: str
) -> tuple[RunResult, uuid.UUID]:
    """``jobs.reindex_all`` over one fresh session of ``rows`` in this process (the background
    lane, on the service's pool); timed by the job's own summary."""
    sid = b.catalog_writer.add_session(f"bench bulk lane {uuid.uuid4().hex[:6]}")
    b.catalog_writer.add_photos(sid, rows)
    pids = {**service.pids(), "bulk-driver": os.getpid()}
    pids.pop("driver", None)
    summary_path = b.args.out / "gpu-standin-bulk.json"
    spy = SpyRecorder(pids, b.profile_dir, f"bulk-{len(rows)}") if b.profile_dir else None
    with spy or nullcontext(), OtherLoad(pids) as load:
        summary = run_job(b.settings.cloud_url(), service.settings, summary_path, "--session", str(sid))
    run = RunResult(
        kind="gpu_standin",
        label=label,
        photos=int(summary["photos_processed"]),
        faces=int(summary.get("faces_indexed", 0)),
        seconds=float(summary["elapsed_s"]),
        latency_ms=0.0,
        session_photos=len(rows),
        load=load.figures(),
        extra={"bulk_summary": {k: v for k, v in summary.items() if not isinstance(v, list | dict)}},
    )
    if spy is not None:
        run.extra["profile"] = spy.summary()
    return run, sid


def memory(b: Bench) -> None:
    """``--memory-check``: only (c), at N and 4N photos; peak RSS of both."""
    service = _start_service(b)
    try:
        b.storage.latency_s = b.low / 1000
        for label, count in (("n", b.n), ("4n", 4 * b.n)):
            names = b.session.names_paths(count)
            run, sid = run_pipeline(
                service, b.catalog_writer, names, b.low, f"(c) ours, {count} photos", b.profile_dir
            )
            b.session_ids.append(str(sid))
            b.memory_runs[label] = b.add(run)
            say("  peak RSS MB: " + ", ".join(f"{k} {v['peak_mb']:.0f}" for k, v in run.memory.items()))
            say_profile(run)
    finally:
        service.stop()


STAGES: list[Stage] = [
    Stage("limit", limit, "(a) the bare model, all cores and one actor's threads"),
    Stage("model", model, "the chosen variant vs the reference, and the accuracy gate"),
    Stage("seed_loop", seed_loop, "(b) the seed's loop at each latency", ("limit",)),
    Stage("writer", writer, "the writer alone", ("limit",)),
    Stage("search", search, "search at scale"),
    Stage("search_quality", search_quality, "selfie search precision/recall on labeled people"),
    Stage("orchestration", orchestration, "(d) the route with the stand-in", ("limit",)),
    Stage("storage", storage, "(d) on plain HTTP and on S3 (signed GETs): CPU a photo", ("limit",)),
    Stage("fp32_pipeline", fp32_pipeline, "(c) once with the reference"),
    Stage("pipeline", pipeline, "(c) in rounds, the reruns", ("limit",)),
    Stage("follow", follow, "follow lag and interactive-first under a backlog"),
    # Last: the bulk job it runs in this process sets up logging the way a job does.
    Stage(
        "gpu_standin",
        gpu_standin,
        "the route and the bulk job on virtual GPUs (t0 + t1 * n a batch)",
        ("limit",),
    ),
]
MEMORY = Stage("memory", memory, "(c) at N and 4N: peak RSS")


def select(names: list[str] | None) -> list[Stage]:
    """The stages asked for and the ones they need, in the registry's order (all by default)."""
    if not names:
        return list(STAGES)
    by_name = {stage.name: stage for stage in STAGES}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; the stages: {', '.join(by_name)}")
    wanted = set(names)
    for name in names:
        wanted |= set(by_name[name].needs)
    return [stage for stage in STAGES if stage.name in wanted]


# --- helpers of the stages -----------------------------------------------------------------
def say_profile(run: RunResult, top: int = 3) -> None:
    profile: dict[str, dict[str, Any]] = run.extra.get("profile", {})
    for name, figures in profile.items():
        frames = "; ".join(
            f"{pct}% {frame}" for frame, pct in list(figures.get("self_pct", {}).items())[:top]
        )
        say(f"  py-spy {name} ({figures.get('samples', 0)} samples): {frames}")


def _warm_up(b: Bench, service: BenchService, label: str) -> None:
    b.storage.latency_s = 0.0
    warm_n = min(b.n, b.settings.local_pool_size() * b.settings.photos_in_flight_per_actor)
    warm, warm_id = run_pipeline(service, b.catalog_writer, b.session.names_paths(warm_n), 0.0, label)
    b.session_ids.append(str(warm_id))
    say(f"{label} (not counted): {warm.photos} photos in {warm.seconds:.1f} s")


def _start_service(b: Bench) -> BenchService:
    say("starting Ray + Serve + the pool ...")
    t0 = time.perf_counter()
    service = BenchService(b.settings, ray_logs=b.args.ray_logs).start()
    say(f"service ready in {time.perf_counter() - t0:.1f} s {service.startup_s}; processes {service.pids()}")
    try:
        _warm_up(b, service, "warm-up")
    except BaseException:
        service.stop()
        raise
    return service


def _rounds(b: Bench, service: BenchService) -> uuid.UUID:
    """Rounds of: the bare model, (c) at each latency, the bare model (each round's "after" is
    the next one's "before"); two bare-model processes side by side at the start of each.
    Returns the first session indexed at the lowest latency (the rerun's)."""
    assert b.pair_embedder is not None
    pair = b.pair_embedder
    spooled = b.storage.lazy_files.spooled(b.limit_n)

    def bare() -> RunResult:
        runs, _ = run_limit(b.storage.lazy_files, b.limit_n, {"paired": pair}, b.settings)
        run = runs["paired"]
        run.kind, run.extrapolated, run.session_photos = "limit_paired", b.limit_n < b.n, b.n
        run.label = run.label.replace("(a) limit", "(a) limit, paired with (c)", 1)
        return b.add(run)

    def side_by_side() -> list[float] | None:
        if spooled is None:
            return None
        rates = run_side_by_side(spooled, b.settings.local_pool_size(), b.settings.intra_op_threads())
        say(
            f"(a) side by side: {len(rates)} bare-model processes at once, "
            f"{' + '.join(f'{r:.2f}' for r in rates)} = {sum(rates):.2f} photos/s"
        )
        return rates

    faces = b.faces_per_photo if len(b.precomputed) == b.n else None
    first: uuid.UUID | None = None
    before = bare()
    for _ in range(b.args.paired_rounds):
        runs: dict[float, RunResult] = {}
        together = side_by_side()
        for latency in b.latencies:
            b.storage.latency_s = latency / 1000
            names = b.session.names_paths(b.n)
            run, sid = run_pipeline(service, b.catalog_writer, names, latency, profile_dir=b.profile_dir)
            first = first or sid
            b.session_ids.append(str(sid))
            b.add(run)
            say_profile(run)
            _check_pipeline(run, b.n, faces)
            runs[latency] = run
        after = bare()
        b.rounds.append(Round(before, runs, after, together))
        before = after
    assert first is not None, "--paired-rounds must be at least 1"
    return first


def _check_pipeline(run: RunResult, n: int, faces_per_photo: list[int] | None) -> None:
    """Photos with no face count as failed in the seed's report; anything else is a real failure."""
    unexpected = int(run.extra.get("failed_photos", 0)) - int(run.extra.get("no_face_photos", 0))
    if run.photos != n or unexpected:
        pairs = zip(run.extra.get("errors", []), run.extra.get("error_codes", []), strict=False)
        errors = [message for message, code in pairs if code != "no_face"]
        say(f"  WARNING: processed {run.photos} of {n}, {unexpected} failed other than no-face: {errors}")
    if faces_per_photo is not None and run.faces != sum(faces_per_photo):
        say(f"  note: {run.faces} embeddings stored vs {sum(faces_per_photo)} faces found by the limit run")
