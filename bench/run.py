"""Throughput: the pipeline against the bare model and the seed's loop, in one run.

    python -m bench.run [--n 600] [--latency-ms 100,500] [--bandwidth-mbps 100] [--out bench-results/]

On the same synthetic session (N distinct real-face photos, 0 to 22 faces each)
and the same machine it measures

(a) the limit: decode_image + FaceEmbedder on the photos' bytes in memory, one
    process, one photo at a time, ONNX Runtime on all cores;
(b) the seed's loop: per photo a blocking httpx download from the loopback
    storage, decode, detect, embed, insert + commit (VectorStore.write_result),
    at each storage latency; with ``--seed-loop-sample K`` only the first K
    photos are run and the rate is extrapolated (said so in the output);
(c) ours: the force-reindex route over HTTP through Ray Serve and the actor
    pool into a fresh session, at each latency; then a second call on the
    indexed session (``rerun_indexed_s``).

(c) runs in ``--paired-rounds`` rounds (default 5): the bare model (one actor's
threads, the same photos, in this process), (c) at each latency, the bare model
again. ``pipeline_vs_ideal_pool`` = (c) at the lowest latency / the mean of its
round's two bare runs x actors, and ``latency_hidden`` = (c) at the highest
latency / (c) at the lowest of the same round, run after run; each is the
median round's. The machine's speed drifts by 10-20 % within minutes here, so
a bare model measured minutes away from (c) says more about the drift than
about the pipeline. Ray is up and idle during those bare runs (its processes show as
"other processes busy"); the unpaired figure (bare model before Ray started
and after it stopped) is reported beside it.

It prints photos/s and faces/s per run, the ratios, the rerun time and peak RSS
(driver and each embedding actor), writes JSON and a PNG chart into ``--out``,
and prints the JSON file's path as its last line. ``--memory-check`` runs only
(c), at N and at 4N photos, and compares the peak RSS of the two.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.baselines import make_embedder, run_limit, run_seed_loop
from bench.cpu import watch_postgres
from bench.data import DATA_VERSION, SyntheticSession, SyntheticStorage
from bench.follow import bar_lines as follow_bar_lines
from bench.follow import run_follow_bench
from bench.memory import driver_maxrss_mb
from bench.models import run_accuracy, run_model_comparison
from bench.orchestration import orchestration_figures, run_orchestration
from bench.report import Round, peak_by_process, summarize, write_chart, write_json
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
from bench.writer import run_writer
from facepass.db import resolve_databases
from facepass.demo.scenario import CatalogWriter
from facepass.index.store import VectorStore
from facepass.settings import Settings
from facepass.vision.faces import FaceEmbedder
from facepass.vision.pipeline import model_batch_photos


def _latencies(text: str) -> list[float]:
    try:
        values = sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--latency-ms wants numbers like 100,500: {exc}") from exc
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError("--latency-ms wants one or more numbers >= 0")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=600, help="photos in the session (default 600)")
    parser.add_argument(
        "--latency-ms", type=_latencies, default=[100.0, 500.0], help="storage latency per request, ms"
    )
    parser.add_argument(
        "--bandwidth-mbps", type=float, default=100.0, help="storage bandwidth cap per connection; 0 = none"
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="folder for JSON and PNG")
    parser.add_argument(
        "--seed-loop-sample",
        type=int,
        default=60,
        help="photos the seed loop runs (0 = all); rate extrapolated",
    )
    parser.add_argument("--limit-sample", type=int, default=0, help="photos the limit run uses (0 = all N)")
    parser.add_argument(
        "--paired-rounds",
        type=int,
        default=5,
        help="runs of (c) at the lowest latency, each between two bare-model runs (median taken)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic session")
    parser.add_argument("--data-dir", type=Path, default=Path(".facepass/bench"), help="embedded databases")
    parser.add_argument("--http-port", type=int, default=0, help="Serve's port (0 = a free one)")
    parser.add_argument(
        "--rerun-n",
        type=int,
        default=10_000,
        help="photos of the indexed session re-run at the end (0 = skip)",
    )
    parser.add_argument("--writer-photos", type=int, default=6000, help="writer bench photos (0 = skip)")
    parser.add_argument(
        "--search-sessions",
        type=int,
        default=50,
        help="search bench sessions",
    )
    parser.add_argument("--search-session-faces", type=int, default=10_000, help="faces per search session")
    parser.add_argument("--search-big-faces", type=int, default=50_000, help="one big session (0 = none)")
    parser.add_argument(
        "--orch-n",
        type=int,
        default=3000,
        help="(d) photos (0 = skip)",
    )
    parser.add_argument("--orch-latency-ms", type=float, default=100.0, help="storage latency of that run")
    parser.add_argument(
        "--orch-in-flight", type=int, default=64, help="photos in flight per actor in the orchestration run"
    )
    parser.add_argument("--orch-batch", type=int, default=8, help="(d) photos per actor call")
    parser.add_argument(
        "--model-sample",
        type=int,
        default=240,
        help="photos of the fp32-vs-fast bare-model comparison (0 = skip it and the fp32 pipeline)",
    )
    parser.add_argument("--memory-check", action="store_true", help="only (c), at N and 4N: peak RSS of both")
    parser.add_argument(
        "--no-spool",
        action="store_true",
        help="build photos inside timed runs instead of spooling them first",
    )
    parser.add_argument("--keep-data", action="store_true", help="keep the bench sessions and spooled photos")
    parser.add_argument("--ray-logs", action="store_true", help="stream the actors' logs to this terminal")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy every pipeline process during (c); adds some load"
    )
    parser.add_argument(
        "--follow-groups", type=int, default=25, help="bench.follow: groups of 2 photos (0: skip)"
    )
    parser.add_argument("--follow-backlog", type=int, default=2000, help="bench.follow: backlog photos")
    parser.add_argument("--follow-idle-s", type=float, default=60, help="bench.follow: idle window")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be >= 1")
    if args.paired_rounds < 1:
        parser.error("--paired-rounds must be >= 1")
    return args


def _machine() -> dict[str, Any]:
    import onnxruntime
    import openvino
    import ray

    from facepass.settings import Settings
    from facepass.vision.variants import detect_hardware

    hardware = detect_hardware(Settings())
    return {
        "cpus": os.cpu_count(),
        # lscpu's model name and the flags that decide the builds (issue 31's bar names them).
        "cpu_model": hardware.cpu_model,
        "cpu_flags": list(hardware.cpu_flags),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "ray": ray.__version__,
        "onnxruntime": onnxruntime.__version__,
        "openvino": openvino.__version__,
        "openvino_cpu_capabilities": list(openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
        "ort_providers_available": onnxruntime.get_available_providers(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _delete_sessions(settings: Settings, session_ids: list[str]) -> None:
    """Remove this run's sessions from the catalog and the index (the HNSW index stays small)."""
    if not session_ids:
        return
    ids = [uuid.UUID(s) for s in session_ids]
    param: sa.BindParameter[list[uuid.UUID]] = sa.bindparam("ids", expanding=True)
    catalog = CatalogWriter(settings.cloud_url())
    store = VectorStore(settings.local_url(), pool_size=1)
    try:
        with catalog.engine.begin() as conn:
            conn.execute(
                sa.text("DELETE FROM photos WHERE session_id IN :ids").bindparams(param), {"ids": ids}
            )
            conn.execute(sa.text("DELETE FROM sessions WHERE id IN :ids").bindparams(param), {"ids": ids})
        with store.engine.begin() as conn:
            for table in ("face_embeddings", "indexed_photos"):
                statement = sa.text(f"DELETE FROM {table} WHERE session_id IN :ids").bindparams(param)
                conn.execute(statement, {"ids": ids})
    finally:
        catalog.close()
        store.close()


def _say(text: str = "") -> None:
    print(text, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wall_start = time.perf_counter()
    started_at = datetime.now(UTC)
    n: int = args.n
    latencies: list[float] = args.latency_ms
    low, high = latencies[0], latencies[-1]
    n_total = 4 * n if args.memory_check else n
    bytes_per_s = args.bandwidth_mbps * 1e6 / 8 if args.bandwidth_mbps > 0 else 0.0
    data_dir: Path = args.data_dir.expanduser().resolve()
    spool_dir = None if args.no_spool else data_dir / "spool"
    profile_dir: Path | None = args.out / "profiles" if args.profile else None

    session = SyntheticSession(n_total, seed=args.seed)
    storage = SyntheticStorage(session, bytes_per_s=bytes_per_s, spool_dir=spool_dir)
    storage.start()
    base = Settings(
        data_dir=data_dir,
        storage_url=storage.url,
        http_port=args.http_port or free_port(),
        ray_namespace=f"facepass-bench-{uuid.uuid4().hex[:8]}",
        follow=False,  # the pipeline runs measure the route alone; bench.follow measures following
    )
    # The bench measures a pool of a known size (and stands in for its actors by name).
    base = base.model_copy(update={"embed_actors": base.local_pool_size()})
    settings = resolve_databases(base)
    if not (base.cloud_dsn and base.local_dsn):
        watch_postgres(data_dir / "pg")  # the embedded server's CPU is ours, not "other load"
    catalog_writer = CatalogWriter(settings.cloud_url())
    catalog_writer.create_schema()
    schema_store = VectorStore(settings.local_url(), pool_size=1)
    schema_store.create_schema()
    schema_store.close()
    machine = _machine()
    threads = os.cpu_count() or 1
    if machine["load_average_at_start"][0] > 0.5 * threads:
        _say(
            f"note: load average {machine['load_average_at_start']} on {threads} CPUs: other work is "
            "running, figures will be noisy (each run reports how many cores other processes kept busy)"
        )
    bandwidth = f"{args.bandwidth_mbps:g} Mbit/s" if bytes_per_s else "unlimited"
    sizes = f"{n} and {n_total}" if args.memory_check else str(n)
    _say(
        f"bench: {sizes} photos (seed {args.seed}), storage latency "
        f"{', '.join(f'{v:g}' for v in latencies)} ms per request, bandwidth {bandwidth}"
        f" per connection; {machine['cpus']} CPUs, load average {machine['load_average_at_start']}"
    )
    _say(
        f"pool: {settings.local_pool_size()} embedding actors x {settings.intra_op_threads()} ORT threads, "
        f"{settings.photos_in_flight_per_actor} photos in flight each; "
        f"baselines: 1 process x {threads} ORT threads"
    )

    runs: list[RunResult] = []
    session_ids: list[str] = []
    limit: RunResult | None = None
    limit_actor: RunResult | None = None
    faces_per_photo: list[int] = []
    seed_loops: dict[float, RunResult] = {}
    rerun: RunResult | None = None
    rerun_large: RunResult | None = None
    memory_runs: dict[str, RunResult] = {}
    limit_actor_after: RunResult | None = None
    pair_embedder: FaceEmbedder | None = None
    rounds: list[Round] = []
    writer_figures: dict[str, Any] = {}
    search_figures: dict[str, Any] = {}
    orch_figures: dict[str, Any] = {}
    model_figures: dict[str, Any] = {}
    fp32_pipeline: RunResult | None = None
    service: BenchService | None = None
    built_before_runs = 0
    try:
        t0 = time.perf_counter()
        built = storage.lazy_files.prepare(n_total)
        built_before_runs = storage.lazy_files.generated
        if spool_dir is not None:
            _say(f"photos spooled to {spool_dir} ({built} built now) in {time.perf_counter() - t0:.1f} s")

        if not args.memory_check:
            embedders = {"all_cores": make_embedder(settings, threads)}
            if settings.intra_op_threads() != threads:
                embedders["actor_threads"] = make_embedder(settings, settings.intra_op_threads())
            embedder = embedders["all_cores"]
            limit_n = min(args.limit_sample or n, n)
            limits, precomputed = run_limit(storage.lazy_files, limit_n, embedders, settings)
            faces_per_photo = [len(f) for f in precomputed]
            for run in limits.values():
                run.extrapolated = limit_n < n
                run.session_photos = n
                runs.append(run)
                _say(run.line())
            limit = limits["all_cores"]
            limit_actor = limits.get("actor_threads", limit)
            if args.model_sample:
                model_n = min(args.model_sample, n)
                model_runs, model_figures, fp32_model, fast_model = run_model_comparison(
                    storage.lazy_files, model_n, settings, settings.intra_op_threads()
                )
                for run in model_runs:
                    runs.append(run)
                    _say(run.line())
                _say(
                    f"bare model, {model_n} photos: fast/fp32 {model_figures['model_fast_vs_fp32']}, "
                    f"default CPU config/fp32 {model_figures['model_default_vs_fp32']}, batched/one by one "
                    f"{model_figures['batched_vs_one_by_one']} "
                    f"(fp32: {model_figures['batched_vs_one_by_one_fp32']})"
                )
                t_acc = time.perf_counter()
                model_figures |= run_accuracy(fp32_model, fast_model)
                _say(
                    f"accuracy gate ({time.perf_counter() - t_acc:.0f} s): "
                    + ", ".join(f"{k}={v}" for k, v in model_figures.items() if k.startswith("accuracy_"))
                )
                del fp32_model, fast_model
            sample = min(args.seed_loop_sample or n, n)
            for latency in latencies:
                storage.latency_s = latency / 1000
                seed = run_seed_loop(
                    settings, catalog_writer, session.names_paths(sample), embedder, latency, n
                )
                session_ids.append(seed.extra["session_id"])
                seed_loops[latency] = seed
                runs.append(seed)
                _say(seed.line())
            model_name = embedder.model_name
            # One actor's model stays loaded here for the bare runs paired with (c).
            pair_embedder = embedders.get("actor_threads", embedder)
            del embedder, embedders
            gc.collect()
            if args.writer_photos:
                writer_store = VectorStore(settings.local_url(), pool_size=2)
                writer_figures, writer_ids = run_writer(
                    writer_store,
                    precomputed,
                    model_name,
                    photos=args.writer_photos,
                    batch_photos=settings.actor_batch_photos,
                    max_batch_photos=settings.writer_max_batch_photos,
                )
                writer_store.close()
                session_ids += [str(s) for s in writer_ids]
                _say(
                    f"writer: {writer_figures['writer_photos_per_s']} photos/s, "
                    f"{writer_figures['writer_faces_per_s']} faces/s "
                    f"({writer_figures['writer_photos']} photos in "
                    f"{writer_figures['writer_transactions']} transactions); one transaction per photo: "
                    f"{writer_figures['writer_one_transaction_per_photo_photos_per_s']} photos/s"
                )
            if args.search_sessions:
                _say(
                    f"search: building/reusing {args.search_sessions} x {args.search_session_faces} faces "
                    f"+ one session of {args.search_big_faces} ..."
                )
                search_store = VectorStore(settings.local_url(), pool_size=2)
                search_figures = run_search(
                    search_store,
                    sessions=args.search_sessions,
                    faces_per_session=args.search_session_faces,
                    big_faces=args.search_big_faces,
                )
                search_store.close()
                _say("search: " + ", ".join(f"{k}={v}" for k, v in search_figures.items()))
            if args.orch_n:
                _say("orchestration: starting Ray + Serve with stand-in actors ...")
                _, orch_run, orch_ids = run_orchestration(
                    settings,
                    storage,
                    catalog_writer,
                    session,
                    precomputed,
                    model_name,
                    photos=args.orch_n,
                    latency_ms=args.orch_latency_ms,
                    in_flight=args.orch_in_flight,
                    batch=args.orch_batch,
                    profile_dir=profile_dir,
                    ray_logs=args.ray_logs,
                )
                session_ids += orch_ids
                runs.append(orch_run)
                orch_figures = orchestration_figures(orch_run)
                _say(orch_run.line())
                _say_profile(orch_run)

        if args.model_sample and not args.memory_check:
            fp32_pipeline, fp32_ids = _run_fp32_pipeline(
                settings, storage, catalog_writer, session, n, low, args
            )
            session_ids += fp32_ids
            runs.append(fp32_pipeline)
            _say(fp32_pipeline.line())
        _say("starting Ray + Serve + the pool ...")
        t0 = time.perf_counter()
        service = BenchService(settings, ray_logs=args.ray_logs).start()
        ready_s = time.perf_counter() - t0
        _say(f"service ready in {ready_s:.1f} s {service.startup_s}; processes {service.pids()}")
        storage.latency_s = 0.0
        warm_n = min(n, settings.local_pool_size() * settings.photos_in_flight_per_actor)
        warm, warm_id = run_pipeline(service, catalog_writer, session.names_paths(warm_n), 0.0, "warm-up")
        session_ids.append(str(warm_id))
        _say(f"warm-up (not counted): {warm.photos} photos in {warm.seconds:.1f} s")

        if args.memory_check:
            storage.latency_s = low / 1000
            for label, count in (("n", n), ("4n", 4 * n)):
                run, sid = run_pipeline(
                    service,
                    catalog_writer,
                    session.names_paths(count),
                    low,
                    f"(c) ours, {count} photos",
                    profile_dir,
                )
                session_ids.append(str(sid))
                memory_runs[label] = run
                runs.append(run)
                _say(run.line())
                _say(f"  peak RSS MB: {_peaks_text(run)}")
                _say_profile(run)
        else:
            low_session: uuid.UUID | None = None

            def bare() -> RunResult:
                assert pair_embedder is not None
                bare_runs, _ = run_limit(storage.lazy_files, limit_n, {"paired": pair_embedder}, settings)
                run = bare_runs["paired"]
                run.kind, run.extrapolated, run.session_photos = "limit_paired", limit_n < n, n
                run.label = run.label.replace("(a) limit", "(a) limit, paired with (c)", 1)
                runs.append(run)
                _say(run.line())
                return run

            spooled = storage.lazy_files.spooled(limit_n)

            def side_by_side() -> list[float] | None:
                if spooled is None:
                    return None
                rates = run_side_by_side(spooled, settings.local_pool_size(), settings.intra_op_threads())
                _say(
                    f"(a) side by side: {len(rates)} bare-model processes at once, "
                    f"{' + '.join(f'{r:.2f}' for r in rates)} = {sum(rates):.2f} photos/s"
                )
                return rates

            before = bare()
            for _ in range(args.paired_rounds):
                round_runs: dict[float, RunResult] = {}
                together = side_by_side()
                for latency in latencies:
                    storage.latency_s = latency / 1000
                    run, sid = run_pipeline(
                        service, catalog_writer, session.names_paths(n), latency, profile_dir=profile_dir
                    )
                    session_ids.append(str(sid))
                    low_session = low_session or sid
                    runs.append(run)
                    _say(run.line())
                    _say_profile(run)
                    _check_pipeline(run, n, faces_per_photo if len(faces_per_photo) == n else None)
                    round_runs[latency] = run
                after = bare()
                rounds.append(Round(before, round_runs, after, together))
                before = after
            assert low_session is not None
            storage.latency_s = low / 1000
            rerun = run_rerun(service, low_session, n, low)
            runs.append(rerun)
            _say(f"{rerun.label}: {rerun.seconds:.2f} s (skipped {rerun.extra.get('skipped_photos')})")
            if args.rerun_n:
                big = seed_indexed_session(settings, catalog_writer, args.rerun_n)
                session_ids.append(str(big))
                rerun_large = run_rerun_large(service, big, args.rerun_n)
                runs.append(rerun_large)
                _say(f"{rerun_large.label}: {rerun_large.seconds:.2f} s")
            # The bare model again, now that Ray is gone (the "unpaired" ideal pool: the mean of
            # the bare model before Ray started and after it stopped).
            service.stop()
            service = None
            assert pair_embedder is not None  # the same photos as before (same mix of faces)
            last, _ = run_limit(storage.lazy_files, limit_n, {"actor_threads": pair_embedder}, settings)
            limit_actor_after = last["actor_threads"]
            limit_actor_after.kind = "limit_after"
            runs.append(limit_actor_after)
            _say(limit_actor_after.line().replace("(a) limit", "(a) limit again, after (c)", 1))
            pair_embedder = None
    finally:
        if service is not None:
            service.stop()
        storage.stop()
        if not args.keep_data:
            _delete_sessions(settings, session_ids)
            if spool_dir is not None:
                shutil.rmtree(spool_dir, ignore_errors=True)
        catalog_writer.close()

    wall_s = time.perf_counter() - wall_start
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    stamp = started_at.strftime("%Y%m%d-%H%M%S")
    out: Path = args.out
    common: dict[str, Any] = {
        "started_at": started_at.isoformat(),
        "wall_s": round(wall_s, 1),
        "bandwidth_mbps": args.bandwidth_mbps,
        "seed": args.seed,
        "data_version": DATA_VERSION,
        "spooled": spool_dir is not None,
        "photos_built_during_runs": storage.lazy_files.generated - built_before_runs,
        "driver_peak_rss_mb": round(driver_maxrss_mb(), 1),
        "settings": {
            "embed_actors": settings.local_pool_size(),
            "photos_in_flight_per_actor": settings.photos_in_flight_per_actor,
            "ort_threads_per_actor": settings.intra_op_threads(),
            "baseline_ort_threads": threads,
            "det_size": settings.det_size,
            "model_runtime": settings.model_runtime,
            "model_batch_photos": model_batch_photos(settings),
            "model": runs[-1].extra.get("model_name") if runs else None,
        },
        "machine": machine,
    }
    if args.memory_check:
        payload = _memory_payload(n, low, memory_runs) | common | {"runs": [r.to_json() for r in runs]}
        path = write_json(out / f"bench-memory-{stamp}.json", payload)
        _print_memory_summary(payload)
    else:
        n_faces = sum(faces_per_photo) if limit is not None and not limit.extrapolated else None
        summary = summarize(
            limit=limit,
            limit_actor=limit_actor,
            limit_actor_after=limit_actor_after,
            rounds=rounds,
            embed_actors=settings.local_pool_size(),
            actor_threads=settings.intra_op_threads(),
            cpus=os.cpu_count() or 1,
            seed_loops=seed_loops,
            pipelines={},  # the median rounds' runs
            rerun=rerun,
            latencies_ms=latencies,
            n_photos=n,
            n_faces=n_faces if n_faces is not None else (rounds[0].pipelines[low].faces if rounds else None),
        )
        if rerun_large is not None:
            # The bar is on a large indexed session; the N-photo session's rerun stays beside it.
            summary["rerun_indexed_small_s"] = summary["rerun_indexed_s"]
            summary["rerun_indexed_s"] = round(rerun_large.seconds, 3)
            summary["rerun_indexed_photos"] = rerun_large.session_photos
        summary |= writer_figures | search_figures | orch_figures | model_figures
        summary |= _fast_vs_fp32_pipeline(fp32_pipeline, rounds, low)
        follow_figures = _follow_bench(settings, args)
        summary |= follow_figures
        payload = summary | common | {"runs": [r.to_json() for r in runs]}
        chart = write_chart(
            out / f"bench-{stamp}.png",
            summary,
            f"FacePass throughput, N={n}, {machine['cpus']} CPUs; "
            f"default CPU pack {summary.get('model_fast_name')}",
        )
        payload["chart"] = str(chart) if chart else None
        path = write_json(out / f"bench-{stamp}.json", payload)
        _print_summary(payload, low, high)
        if follow_figures:
            for line in follow_bar_lines(follow_figures):
                _say(line)
    _say(f"wall time: {wall_s:.1f} s; driver peak RSS (getrusage): {common['driver_peak_rss_mb']} MB")
    _say(str(path))
    return 0


def _run_fp32_pipeline(
    settings: Settings,
    storage: SyntheticStorage,
    catalog_writer: CatalogWriter,
    session: SyntheticSession,
    n: int,
    latency: float,
    args: argparse.Namespace,
) -> tuple[RunResult, list[str]]:
    """(c) at the lowest latency once with the fp32 pack (FACEPASS_MODEL_RUNTIME=onnxruntime),
    just before the default configuration's rounds: the route's "before" of the fast path."""
    fp32_settings = settings.model_copy(update={"model_runtime": "onnxruntime"})
    _say("starting Ray + Serve + the pool with the fp32 pack (ONNX Runtime) ...")
    service = BenchService(fp32_settings, ray_logs=args.ray_logs).start()
    ids: list[str] = []
    try:
        storage.latency_s = 0.0
        warm_n = min(n, settings.local_pool_size() * settings.photos_in_flight_per_actor)
        _, warm_id = run_pipeline(service, catalog_writer, session.names_paths(warm_n), 0.0, "warm-up fp32")
        ids.append(str(warm_id))
        storage.latency_s = latency / 1000
        run, sid = run_pipeline(
            service, catalog_writer, session.names_paths(n), latency, "(c) ours, fp32 pack (ONNX Runtime)"
        )
        ids.append(str(sid))
    finally:
        service.stop()
    run.kind = "pipeline_fp32"
    return run, ids


def _fast_vs_fp32_pipeline(fp32: RunResult | None, rounds: list[Round], low: float) -> dict[str, Any]:
    """The route with the default CPU configuration over the fp32 route: against the first
    round's run (minutes apart, the closest in time) and against the median round's."""
    if fp32 is None or not rounds or not fp32.photos_per_s:
        return {}
    first = rounds[0].pipelines[low].photos_per_s
    ordered = sorted(r.pipelines[low].photos_per_s for r in rounds)
    median = ordered[(len(ordered) - 1) // 2]
    return {
        "pipeline_fp32_photos_per_s": round(fp32.photos_per_s, 3),
        "pipeline_fast_vs_fp32": round(first / fp32.photos_per_s, 3),
        "pipeline_fast_vs_fp32_median_round": round(median / fp32.photos_per_s, 3),
    }


def _follow_bench(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """Follow lag and interactive-first under a backlog (bench.follow), on a service of its own."""
    if args.follow_groups <= 0:
        return {}
    _say("\nfollow mode: lag, and interactive work under a background backlog (bench.follow)")
    base = settings.model_copy(update={"ray_namespace": f"facepass-bench-{uuid.uuid4().hex[:8]}"})
    return run_follow_bench(base, args.follow_groups, args.follow_backlog, args.follow_idle_s)


def _say_profile(run: RunResult, top: int = 3) -> None:
    profile: dict[str, dict[str, Any]] = run.extra.get("profile", {})
    for name, figures in profile.items():
        frames = "; ".join(
            f"{pct}% {frame}" for frame, pct in list(figures.get("self_pct", {}).items())[:top]
        )
        _say(f"  py-spy {name} ({figures.get('samples', 0)} samples): {frames}")


def _peaks_text(run: RunResult) -> str:
    return ", ".join(f"{name} {figures['peak_mb']:.0f}" for name, figures in run.memory.items())


def _check_pipeline(run: RunResult, n: int, faces_per_photo: list[int] | None) -> None:
    """Photos with no face count as failed in the seed's report; anything else is a real failure."""
    unexpected = int(run.extra.get("failed_photos", 0)) - int(run.extra.get("no_face_photos", 0))
    if run.photos != n or unexpected:
        pairs = zip(run.extra.get("errors", []), run.extra.get("error_codes", []), strict=False)
        errors = [message for message, code in pairs if code != "no_face"]
        _say(f"  WARNING: processed {run.photos} of {n}, {unexpected} failed other than no-face: {errors}")
    if faces_per_photo is not None and run.faces != sum(faces_per_photo):
        _say(f"  note: {run.faces} embeddings stored vs {sum(faces_per_photo)} faces found by the limit run")


def _memory_payload(n: int, latency: float, runs: dict[str, RunResult]) -> dict[str, Any]:
    small, big = runs.get("n"), runs.get("4n")
    peaks_small = peak_by_process([small]) if small else {}
    peaks_big = peak_by_process([big]) if big else {}
    growth = {
        name: round(peaks_big[name] / peaks_small[name], 3) for name in peaks_big if peaks_small.get(name)
    }
    return {
        "memory_check": True,
        "n_photos": n,
        "n_photos_4n": 4 * n,
        "latency_ms": [latency],
        "peak_rss_mb_n": peaks_small,
        "peak_rss_mb_4n": peaks_big,
        "peak_rss_growth_4n_over_n": growth,
        "pipeline_photos_per_s_n": round(small.photos_per_s, 3) if small else None,
        "pipeline_photos_per_s_4n": round(big.photos_per_s, 3) if big else None,
    }


def _fmt(value: object, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3g}{unit}"
    return f"{value}{unit}"


def _print_summary(p: dict[str, Any], low: float, high: float) -> None:
    _say()
    _say(f"== summary: {p['n_photos']} photos, {_fmt(p['n_faces'])} faces ==")
    _say(f"limit (a): {_fmt(p['limit_photos_per_s'])} photos/s, {_fmt(p['limit_faces_per_s'])} faces/s")
    _say(
        f"limit with one actor's {p['limit_actor_threads']} ORT thread(s): "
        f"{_fmt(p['limit_actor_threads_photos_per_s'])} photos/s; "
        f"ideal pool (that x parallel actors): {_fmt(p['ideal_pool_photos_per_s'])} photos/s"
    )
    sampled = " (extrapolated from a sample)" if p["seed_loop_extrapolated"] else ""
    _say(
        f"seed loop (b) @ {high:g} ms: {_fmt(p['seed_loop_photos_per_s'])} photos/s, "
        f"{_fmt(p['seed_loop_faces_per_s'])} faces/s{sampled}"
    )
    _say(
        f"ours (c) @ {low:g} ms: {_fmt(p['pipeline_photos_per_s'])} photos/s, "
        f"{_fmt(p['pipeline_faces_per_s'])} faces/s"
    )
    _say(
        f"ours (c) @ {high:g} ms: {_fmt(p['pipeline_photos_per_s_high_latency'])} photos/s, "
        f"{_fmt(p['pipeline_faces_per_s_high_latency'])} faces/s"
    )
    _say(f"pipeline_vs_limit     (c@{low:g} / a):      {_fmt(p['pipeline_vs_limit'])}")
    _say(
        f"pipeline_vs_ideal_pool (c@{low:g} / ideal pool): {_fmt(p['pipeline_vs_ideal_pool'])} "
        f"(median of rounds {p['pipeline_vs_ideal_pool_rounds']}; "
        f"unpaired: {_fmt(p['pipeline_vs_ideal_pool_unpaired'])})"
    )
    if p.get("pipeline_vs_side_by_side") is not None:
        _say(
            f"  diagnostic: c@{low:g} / {p['settings']['embed_actors']} bare-model processes side by side: "
            f"{_fmt(p['pipeline_vs_side_by_side'])} (rounds {p['pipeline_vs_side_by_side_rounds']})"
        )
    if p.get("model_fast_vs_fp32") is not None:
        _say(
            f"model_fast_vs_fp32 (bare, {p['model_fast_name']} / {p['model_fp32_name']}): "
            f"{_fmt(p['model_fast_vs_fp32'])}; default CPU config: {_fmt(p['model_default_vs_fp32'])}; "
            f"batched_vs_one_by_one: {_fmt(p['batched_vs_one_by_one'])}"
        )
        _say(
            f"accuracy vs fp32: cos p1 {_fmt(p.get('accuracy_embedding_cos_p1'))}, faces missed "
            f"{_fmt(p.get('accuracy_faces_missed'))}, extra {_fmt(p.get('accuracy_extra_faces'))}, "
            f"top-20 swaps "
            f"{_fmt(p.get('accuracy_top20_swaps'))}, gate passed {_fmt(p.get('accuracy_gate_passed'))}"
        )
    if p.get("pipeline_fast_vs_fp32") is not None:
        _say(
            f"pipeline_fast_vs_fp32 (c@{low:g}, default CPU config / fp32 pack): "
            f"{_fmt(p['pipeline_fast_vs_fp32'])} "
            f"(median round: {_fmt(p['pipeline_fast_vs_fp32_median_round'])}; "
            f"fp32 route {_fmt(p['pipeline_fp32_photos_per_s'])} photos/s)"
        )
    _say(f"pipeline_vs_seed_loop (c@{high:g} / b@{high:g}): {_fmt(p['pipeline_vs_seed_loop'])}")
    _say(
        f"latency_hidden        (c@{high:g} / c@{low:g}, run after run): "
        f"{_fmt(p['latency_hidden'])} (median of rounds {p['latency_hidden_rounds']})"
    )
    _say(f"rerun_indexed_s: {_fmt(p['rerun_indexed_s'], ' s')}")
    actors = ", ".join(f"{k} {v:.0f}" for k, v in p["embedding_actor_peak_rss_mb"].items())
    others = ", ".join(f"{k} {v:.0f}" for k, v in p["other_actor_peak_rss_mb"].items())
    _say(
        f"peak RSS MB during (c): driver {_fmt(p['driver_peak_rss_mb_during_pipeline'])}; {actors}"
        + (f"; {others}" if others else "")
    )
    load = ", ".join(f"{k} {_fmt(v)}" for k, v in p["other_load_cores"].items())
    _say(f"other processes on the machine kept busy (cores): {load}")
    if p.get("chart"):
        _say(f"chart: {p['chart']}")


def _print_memory_summary(p: dict[str, Any]) -> None:
    _say()
    _say(f"== memory check: {p['n_photos']} vs {p['n_photos_4n']} photos ==")
    for name in sorted(set(p["peak_rss_mb_n"]) | set(p["peak_rss_mb_4n"])):
        small, big = p["peak_rss_mb_n"].get(name), p["peak_rss_mb_4n"].get(name)
        _say(
            f"{name:16s} peak RSS {_fmt(small)} MB at N, {_fmt(big)} MB at 4N "
            f"(x{_fmt(p['peak_rss_growth_4n_over_n'].get(name))})"
        )


if __name__ == "__main__":
    sys.exit(main())
