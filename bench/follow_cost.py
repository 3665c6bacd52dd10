"""What one follow cycle costs the catalog, measured with EXPLAIN (ANALYZE, BUFFERS).

    python -m bench.follow_cost [--sessions 10000] [--photos-per-session 100] [--hot 20]

Builds a catalog of ``sessions x photos-per-session`` photos (1,000,000 by default) in
a database of its own on the embedded server, with only the schema's index
``photos(session_id)``, photos in random heap order (the worst case for that index:
every photo of a session on another page), then runs the queries of one cycle:
the signatures of ``hot + sweep`` sessions (every cycle), the sessions table (every
``follow_discover_interval_s``) and, for reference, what a full scan of photos
would cost. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from facepass.catalog.changes import CatalogChanges
from facepass.catalog.cloud import CloudCatalog
from facepass.db import resolve_databases
from facepass.demo.scenario import new_catalog_database
from facepass.settings import Settings

DB_NAME = "follow_cost_catalog"


def build(writer_engine: sa.Engine, sessions: int, per_session: int) -> float:
    started = time.perf_counter()
    with writer_engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO sessions (id, name, facepass_enabled) "
                "SELECT gen_random_uuid(), 'session ' || g, true FROM generate_series(1, :n) g"
            ),
            {"n": sessions},
        )
        conn.execute(
            sa.text(
                "INSERT INTO photos (id, session_id, filename, preview_path, created_at, deleted_at) "
                "SELECT gen_random_uuid(), s.id, 'p' || g || '.jpg', 'sessions/x/p' || g || '.jpg', "
                "now() - random() * interval '90 days', "
                "CASE WHEN random() < 0.02 THEN now() END "
                "FROM sessions s CROSS JOIN generate_series(1, :k) g ORDER BY random()"
            ),
            {"k": per_session},
        )
    with writer_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE sessions"))
        conn.execute(sa.text("VACUUM ANALYZE photos"))
    return time.perf_counter() - started


def explain(engine: sa.Engine, query: str, params: dict[str, Any]) -> dict[str, Any]:
    """Execution time and buffers of one query (median of 5 warm runs)."""
    runs = []
    plan_text = ""
    with engine.connect() as conn:
        for _ in range(5):
            rows = conn.execute(sa.text(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT TEXT) {query}"), params).all()
            plan_text = "\n".join(r[0] for r in rows)
            match = re.search(r"Execution Time: ([\d.]+) ms", plan_text)
            runs.append(float(match.group(1)) if match else float("nan"))
    buffers = re.search(r"Buffers: shared hit=(\d+)(?: read=(\d+))?", plan_text)
    runs.sort()
    return {
        "ms_p50": round(runs[len(runs) // 2], 2),
        "ms_max": round(runs[-1], 2),
        "buffers_hit": int(buffers.group(1)) if buffers else None,
        "buffers_read": int(buffers.group(2) or 0) if buffers else None,
        "plan": plan_text.splitlines()[0:4],
    }


def measure(
    settings: Settings, sessions: int, per_session: int, hot: int, sweep: int, rebuild: bool
) -> dict[str, Any]:
    dsn = settings.cloud_url()
    assert dsn
    dsn = dsn.replace("/facepass_cloud?", f"/{DB_NAME}?")
    catalog = CloudCatalog(dsn)
    build_s = None
    try:
        with catalog.engine.connect() as conn:
            count = conn.scalar(sa.text("SELECT count(*) FROM photos"))
    except sa.exc.DBAPIError:
        count = None
    if rebuild or count != sessions * per_session:
        catalog.close()
        dsn, writer = new_catalog_database(settings, name=DB_NAME)
        build_s = round(build(writer.engine, sessions, per_session), 1)
        writer.close()
        catalog = CloudCatalog(dsn)
    changes = CatalogChanges(catalog)
    with catalog.engine.connect() as conn:
        pick = sa.text("SELECT id FROM sessions ORDER BY random() LIMIT :n")
        ids = list(conn.scalars(pick, {"n": hot + sweep}))
        photos = conn.scalar(sa.text("SELECT count(*) FROM photos"))
    signature_sql = str(changes._signatures).replace(":ids", "CAST(:ids AS uuid[])")
    sessions_sql = str(changes._sessions)
    result = {
        "catalog_photos": photos,
        "catalog_sessions": sessions,
        "build_s": build_s,
        "checked_per_cycle": hot + sweep,
        "signatures": explain(catalog.engine, signature_sql, {"ids": ids}),
        "signatures_one_session": explain(catalog.engine, signature_sql, {"ids": ids[:1]}),
        "sessions_page": explain(catalog.engine, sessions_sql, {"after": uuid.UUID(int=0), "limit": 5000}),
        "full_scan_reference": explain(
            catalog.engine,
            "SELECT session_id, count(*), sum(hashtext(id::text)) FROM photos "
            "WHERE deleted_at IS NULL GROUP BY session_id",
            {},
        ),
    }
    started = time.perf_counter()
    changes.signatures(ids)
    result["signatures_wall_ms"] = round((time.perf_counter() - started) * 1000, 2)
    catalog.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--photos-per-session", type=int, default=100)
    parser.add_argument("--hot", type=int, default=20, help="hot sessions checked every cycle")
    parser.add_argument("--sweep", type=int, default=Settings().follow_sweep_sessions)
    parser.add_argument("--data-dir", type=Path, default=Path(".facepass/bench"))
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args(argv)
    settings = resolve_databases(Settings(data_dir=args.data_dir))
    result = measure(settings, args.sessions, args.photos_per_session, args.hot, args.sweep, args.rebuild)
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
