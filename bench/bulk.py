"""Bulk job figures: sessions/s and photos/s of ``jobs.reindex_all`` on a synthetic catalog,
and how the driver's memory behaves as the catalog grows (dry runs over 1x and 10x sessions).

    python -m bench.bulk --sessions 24 --photos-per-session 15 --dry-run-sessions 300
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import ray

from actors.ray_calls import kill_pool_actors
from bench.data import SyntheticSession, SyntheticStorage
from facepass.db import resolve_databases
from facepass.demo.scenario import CatalogWriter, new_catalog_database
from facepass.settings import Settings


def fill(writer: CatalogWriter, session: SyntheticSession, sessions: int, per_session: int) -> None:
    names = session.names_paths()
    for s in range(sessions):
        sid = writer.add_session(f"bulk {s:05d}")
        chunk = names[s * per_session : (s + 1) * per_session]
        if chunk:
            writer.add_photos(sid, chunk)
    writer.add_session("bulk inactive", enabled=False)


# The settings a bench passes to the job (it reads its settings from the environment, as it does
# under `ray job submit`): where the databases and storage are, and the pool's shape.
JOB_SETTINGS = (
    "local_dsn",
    "storage_url",
    "ray_namespace",
    "embed_actors",
    "actor_batch_photos",
    "max_actor_batch_photos",
    "photos_in_flight_per_actor",
    "max_photos_in_flight_per_actor",
    "background_photos_in_flight_per_actor",
)


def run_job(dsn: str, settings: Settings, summary: Path, *extra: str) -> dict[str, Any]:
    """``jobs.reindex_all`` in this process (on the Ray cluster it is connected to, if any)."""
    from jobs import reindex_all

    env = {"FACEPASS_CLOUD_DSN": dsn, "FACEPASS_LOCAL_DSN": settings.local_url()}
    for name in JOB_SETTINGS[1:]:
        value = getattr(settings, name)
        if value is not None:
            env[f"FACEPASS_{name.upper()}"] = str(value)
    address = [] if ray.is_initialized() else ["--address", "local"]
    # The seed's per-photo lines go to a file, as a job's log does (not onto the bench's console).
    reindex_log = logging.getLogger("facepass.reindex")
    summary.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(summary.with_suffix(".log"))
    reindex_log.addHandler(to_file)
    reindex_log.propagate = False
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        code = reindex_all.main([*address, "--summary-json", str(summary), *extra])
    finally:
        for name, value in saved.items():  # the bench's later stages read their own settings
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        reindex_log.removeHandler(to_file)
        reindex_log.propagate = True
        to_file.close()
    if code != 0:
        raise RuntimeError(f"reindex_all exited with {code}")
    data: dict[str, Any] = json.loads(summary.read_text())
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=24)
    parser.add_argument("--photos-per-session", type=int, default=15)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--dry-run-sessions", type=int, default=300, help="catalog size of the memory check")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    total = args.sessions * args.photos_per_session
    session = SyntheticSession(max(total, 1), seed=7, prefix="bulk")
    storage = SyntheticStorage(session, latency_s=args.latency_ms / 1000).start()
    namespace = f"facepass-bulk-{uuid.uuid4().hex[:6]}"
    settings = resolve_databases(
        Settings(data_dir=Path(".facepass/bench"), storage_url=storage.url, ray_namespace=namespace)
    )
    figures: dict[str, Any] = {"sessions": args.sessions, "photos_per_session": args.photos_per_session}
    try:
        dsn, writer = new_catalog_database(settings, "bulk")
        fill(writer, session, args.sessions, args.photos_per_session)
        t0 = time.perf_counter()
        summary = run_job(dsn, settings, args.out / "bulk-run.json")
        wall = time.perf_counter() - t0
        figures |= {
            "job_wall_s": round(wall, 2),
            "job_elapsed_s": summary["elapsed_s"],
            "sessions_per_s": round(summary["sessions_seen"] / summary["elapsed_s"], 3),
            "photos_per_s": summary["photos_per_s"],
            "summary": summary,
        }
        # Memory as the catalog grows: the same dry run over 1x and 10x as many sessions.
        for label, count in (("1x", args.dry_run_sessions), ("10x", 10 * args.dry_run_sessions)):
            dsn_dry, writer_dry = new_catalog_database(settings, "bulk")
            fill(writer_dry, SyntheticSession(count * 3, seed=8, prefix="dry"), count, 3)
            tracemalloc.start()
            dry = run_job(dsn_dry, settings, args.out / f"bulk-dry-{label}.json", "--dry-run")
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            figures[f"dry_run_{label}"] = {
                "sessions": dry["sessions_seen"],
                "photos_planned": dry["photos_planned"],
                "elapsed_s": dry["elapsed_s"],
                "python_heap_peak_mb": round(peak / 2**20, 2),
            }
            writer_dry.close()
        writer.close()
    finally:
        if ray.is_initialized():
            kill_pool_actors(settings)
            ray.shutdown()
        storage.stop()
    path = args.out / "bench-bulk.json"
    path.write_text(json.dumps(figures, ensure_ascii=False, indent=2))
    print(json.dumps({k: v for k, v in figures.items() if k != "summary"}, ensure_ascii=False, indent=2))
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
