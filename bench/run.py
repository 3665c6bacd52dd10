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

from bench.cpu import watch_postgres
from bench.data import DATA_VERSION, SyntheticSession, SyntheticStorage
from bench.follow import bar_lines as follow_bar_lines
from bench.memory import driver_maxrss_mb
from bench.report import Round, peak_by_process, summarize, write_chart, write_json
from bench.results import RunResult
from bench.service import free_port
from bench.stages import MEMORY, STAGES, Bench, Stage, select, settle_heap
from facepass.db import resolve_databases, stop_embedded_postgres
from facepass.demo.scenario import CatalogWriter
from facepass.index.store import VectorStore
from facepass.settings import Settings
from facepass.vision.pipeline import model_batch_photos


def _latencies(text: str) -> list[float]:
    try:
        values = sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--latency-ms wants numbers like 100,500: {exc}") from exc
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError("--latency-ms wants one or more numbers >= 0")
    return values


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=600, help="photos in the session (default 600)")
    parser.add_argument(
        "--stages",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        default=None,
        help="comma-separated stages to run, with the ones they need (default all: "
        + ", ".join(stage.name for stage in STAGES)
        + ")",
    )
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
        default=10000,
        help="(d) photos (0 = skip); the pool's window grows with its rate over the first second or two",
    )
    parser.add_argument("--orch-latency-ms", type=float, default=100.0, help="storage latency of that run")
    parser.add_argument(
        "--orch-in-flight", type=int, default=64, help="photos in flight per actor in the orchestration run"
    )
    parser.add_argument("--orch-batch", type=int, default=8, help="(d) photos per actor call")
    parser.add_argument(
        "--orch-storage-n",
        type=int,
        default=None,
        help="photos of each run of the storage stage, plain HTTP vs S3 signed (default: --orch-n; 0 = skip)",
    )
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
    parser.add_argument(
        "--gpu-standin-n", type=_ints, default=[1, 2, 4, 8], help="gpu_standin: virtual GPUs (1,2,4,8)"
    )
    parser.add_argument(
        "--gpu-standin-batches", type=_ints, default=[8, 32], help="gpu_standin: photos per batch (8,32)"
    )
    parser.add_argument("--gpu-standin-t0-ms", type=float, default=8.0, help="gpu_standin: ms per batch")
    parser.add_argument("--gpu-standin-t1-ms", type=float, default=1.75, help="gpu_standin: ms per photo")
    parser.add_argument(
        "--gpu-standin-seconds", type=float, default=4.0, help="gpu_standin: ideal run length"
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
    from facepass.vision.variants import cpu_fields, cpu_id, detect_hardware

    hardware = detect_hardware(Settings())
    cpu = cpu_fields()
    return {
        "cpus": os.cpu_count(),
        # lscpu's model name and the flags that decide the builds (issue 31's bar names them).
        "cpu_model": hardware.cpu_model,
        "cpu_flags": list(hardware.cpu_flags),
        # The same model name covers several generations (AMD EPYC: family 25 model 1 and 17).
        "cpu_id": cpu_id(cpu),
        "cpu_flags_all": cpu.get("flags", "").split(),
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
        # Vacuumed now, not by autovacuum during the next run's measurements (its CPU would count
        # as PostgreSQL's there; the virtual GPUs' runs delete ~100,000 face rows each).
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM (ANALYZE) face_embeddings, indexed_photos"))
    finally:
        catalog.close()
        store.close()


def _say(text: str = "") -> None:
    print(text, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stages = [MEMORY] if args.memory_check else select(args.stages)
    wall_start = time.perf_counter()
    started_at = datetime.now(UTC)
    n, latencies = args.n, args.latency_ms
    n_total = 4 * n if args.memory_check else n
    bytes_per_s = args.bandwidth_mbps * 1e6 / 8 if args.bandwidth_mbps > 0 else 0.0
    data_dir: Path = args.data_dir.expanduser().resolve()
    spool_dir = None if args.no_spool else data_dir / "spool"

    session = SyntheticSession(n_total, seed=args.seed)
    storage = SyntheticStorage(session, bytes_per_s=bytes_per_s, spool_dir=spool_dir)
    storage.start()
    settings = _settings(data_dir, storage.url, args.http_port)
    catalog_writer = CatalogWriter(settings.cloud_url())
    catalog_writer.create_schema()
    schema_store = VectorStore(settings.local_url(), pool_size=1)
    schema_store.create_schema()
    schema_store.close()
    machine = _machine()
    threads = os.cpu_count() or 1
    b = Bench(
        args,
        settings,
        storage,
        session,
        catalog_writer,
        threads,
        args.out / "profiles" if args.profile else None,
    )
    _say_start(b, machine, n_total, bytes_per_s, stages)
    built_before_runs = 0
    try:
        t0 = time.perf_counter()
        built = storage.lazy_files.prepare(n_total)
        built_before_runs = storage.lazy_files.generated
        if spool_dir is not None:
            _say(f"photos spooled to {spool_dir} ({built} built now) in {time.perf_counter() - t0:.1f} s")
        for stage in stages:
            _say(f"--- stage {stage.name}: {stage.help}")
            settle_heap()
            stage.run(b)
    finally:
        storage.stop()
        if not args.keep_data:
            _delete_sessions(settings, b.session_ids)
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
        "stages": [stage.name for stage in stages],
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
            "model": b.runs[-1].extra.get("model_name") if b.runs else None,
        },
        "machine": machine,
    }
    runs_json = {"runs": [r.to_json() for r in b.runs]}
    if args.memory_check:
        payload = _memory_payload(n, latencies[0], b.memory_runs) | common | runs_json
        path = write_json(out / f"bench-memory-{stamp}.json", payload)
        _print_memory_summary(payload)
    else:
        summary = _summary(b) | b.figures
        payload = summary | common | runs_json
        chart = write_chart(
            out / f"bench-{stamp}.png",
            summary,
            f"FacePass throughput, N={n}, {machine['cpus']} CPUs; "
            f"default CPU pack {summary.get('model_fast_name')}",
        )
        payload["chart"] = str(chart) if chart else None
        path = write_json(out / f"bench-{stamp}.json", payload)
        _print_summary(payload, latencies[0], latencies[-1])
        if any(key.startswith("follow_") for key in b.figures):
            for line in follow_bar_lines(b.figures):
                _say(line)
    _say(f"wall time: {wall_s:.1f} s; driver peak RSS (getrusage): {common['driver_peak_rss_mb']} MB")
    stop_embedded_postgres()  # its shutdown said now, not after the last line
    _say(str(path))  # the very last line: a script reads the JSON's path here
    return 0


def _settings(data_dir: Path, storage_url: str, http_port: int) -> Settings:
    base = Settings(
        data_dir=data_dir,
        storage_url=storage_url,
        http_port=http_port or free_port(),
        ray_namespace=f"facepass-bench-{uuid.uuid4().hex[:8]}",
        follow=False,  # the pipeline runs measure the route alone; bench.follow measures following
    )
    # The bench measures a pool of a known size (and stands in for its actors by name).
    base = base.model_copy(update={"embed_actors": base.local_pool_size()})
    settings = resolve_databases(base)
    if not (base.cloud_dsn and base.local_dsn):
        watch_postgres(data_dir / "pg")  # the embedded server's CPU is ours, not "other load"
    return settings


def _say_start(
    b: Bench, machine: dict[str, Any], n_total: int, bytes_per_s: float, stages: list[Stage]
) -> None:
    args, settings, threads = b.args, b.settings, b.threads
    if machine["load_average_at_start"][0] > 0.5 * threads:
        _say(
            f"note: load average {machine['load_average_at_start']} on {threads} CPUs: other work is "
            "running, figures will be noisy (each run reports how many cores other processes kept busy)"
        )
    bandwidth = f"{args.bandwidth_mbps:g} Mbit/s" if bytes_per_s else "unlimited"
    sizes = f"{b.n} and {n_total}" if args.memory_check else str(b.n)
    _say(
        f"bench: {sizes} photos (seed {args.seed}), storage latency "
        f"{', '.join(f'{v:g}' for v in b.latencies)} ms per request, bandwidth {bandwidth}"
        f" per connection; {machine['cpus']} CPUs ({machine['cpu_model']}, {machine['cpu_id']}; "
        f"{' '.join(machine['cpu_flags']) or 'no AVX2'}), load average {machine['load_average_at_start']}"
    )
    _say(
        f"pool: {settings.local_pool_size()} embedding actors x {settings.intra_op_threads()} ORT threads, "
        f"{settings.photos_in_flight_per_actor} photos in flight each; "
        f"baselines: 1 process x {threads} ORT threads; stages: {', '.join(s.name for s in stages)}"
    )


def _summary(b: Bench) -> dict[str, Any]:
    """The keys of (a), (b), (c) and the ratios between them (``bench.report.summarize``)."""
    low = b.low
    limit = b.limit
    n_faces = sum(b.faces_per_photo) if limit is not None and not limit.extrapolated else None
    summary = summarize(
        limit=limit,
        limit_actor=b.limit_actor,
        limit_actor_after=b.limit_actor_after,
        rounds=b.rounds,
        embed_actors=b.settings.local_pool_size(),
        actor_threads=b.settings.intra_op_threads(),
        cpus=os.cpu_count() or 1,
        seed_loops=b.seed_loops,
        pipelines={},  # the median rounds' runs
        rerun=b.rerun,
        latencies_ms=b.latencies,
        n_photos=b.n,
        n_faces=n_faces if n_faces is not None else (b.rounds[0].pipelines[low].faces if b.rounds else None),
    )
    if b.rerun_large is not None:
        # The bar is on a large indexed session; the N-photo session's rerun stays beside it.
        summary["rerun_indexed_small_s"] = summary["rerun_indexed_s"]
        summary["rerun_indexed_s"] = round(b.rerun_large.seconds, 3)
        summary["rerun_indexed_photos"] = b.rerun_large.session_photos
    return summary | _fast_vs_fp32_pipeline(b.fp32_pipeline, b.rounds, low)


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
