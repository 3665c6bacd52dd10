"""Bulk reindex of every session (or the ones named), as a Ray job.

    ray job submit --working-dir . -- python -m jobs.reindex_all [--session ID ...] [--dry-run]

Reuses the route's coordinator, the same named embedding actors and the one
writer. Stopping the job and submitting it again continues where it stopped:
committed photos are in the ledger and are skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
import uuid
from pathlib import Path

import ray
from ray.experimental.tqdm_ray import tqdm

from actors.metrics import reindex_metrics
from actors.pool import EmbeddingPool
from facepass.catalog.cloud import CloudCatalog
from facepass.db import resolve_databases
from facepass.index.store import PruneResult, VectorStore
from facepass.models import Fence, PhotoOutcome, PhotoRef
from facepass.runs.bulk import BulkHooks, BulkReindexer, BulkSummary
from facepass.runs.job_store import SqlJobRegistry
from facepass.runs.lanes import Lane, LaneProcessor
from facepass.runs.reindex import PhotoProcessor, ReindexCoordinator, ReindexMode, SessionRun
from facepass.runs.session_lock import SessionLocks
from facepass.runs.session_runs import SessionRuns
from facepass.settings import Settings
from facepass.vision.pack import ModelPack


class PlanOnly:
    """The processor of a dry run: plans, never downloads."""

    def __init__(self, settings: Settings) -> None:
        self._model_name = ModelPack.from_settings(settings).name

    @property
    def capacity(self) -> int:
        return 1

    @property
    def batch(self) -> int:
        return 1

    @property
    def model_name(self) -> str:
        return self._model_name

    async def process_many(self, photos: list[PhotoRef]) -> list[PhotoOutcome]:
        raise RuntimeError("a dry run processes nothing")

    async def prune(
        self, session_id: uuid.UUID, photo_ids: list[uuid.UUID], fence: Fence | None = None
    ) -> PruneResult:
        raise RuntimeError("a dry run removes nothing")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--session", action="append", type=uuid.UUID, default=[], help="only this session")
    parser.add_argument("--mode", type=ReindexMode, default=ReindexMode.MISSING, choices=list(ReindexMode))
    parser.add_argument("--dry-run", action="store_true", help="report what would be done, download nothing")
    parser.add_argument("--summary-json", type=Path, default=Path("facepass-bulk-summary.json"))
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="Ray cluster address")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = resolve_databases(Settings())
    if not ray.is_initialized():  # a program may call main() from inside its own Ray driver
        ray.init(address=args.address, namespace=settings.ray_namespace, log_to_driver=False)

    # Background lane: the bulk job keeps at most FACEPASS_BACKGROUND_PHOTOS_IN_FLIGHT_PER_ACTOR
    # photos in each actor, so a person's call or selfie waits behind few of its photos.
    pool = None if args.dry_run else EmbeddingPool(settings)
    processor: PhotoProcessor = PlanOnly(settings) if pool is None else LaneProcessor(pool, Lane.BACKGROUND)
    catalog, store = CloudCatalog(settings.cloud_url()), VectorStore(settings.local_url())
    store.ready_schema(bool(settings.migrate_at_start))
    coordinator = ReindexCoordinator(
        catalog, store, processor, max_errors=settings.report_max_errors, keep_log=False
    )
    bar = tqdm(total=0, desc="photos", position=0)
    metrics = reindex_metrics()

    def planned(count: int) -> None:
        bar.total = (bar.total or 0) + count

    def batch_done(run: SessionRun, outcomes: list[PhotoOutcome]) -> None:
        bar.update(len(outcomes))  # type: ignore[no-untyped-call]
        report = run.report
        metrics.progress(str(report.session_id), report.processed_photos, report.planned_photos)

    # One run per session: this driver holds each session's lock while it runs it (a session
    # another run holds is skipped and reported); route calls for its sessions join its runs.
    locks = SessionLocks(settings.local_url())
    registry = SqlJobRegistry(settings.local_url())  # in the index database: outlives any node
    runs = SessionRuns(locks, registry, runner=f"bulk-job:{socket.gethostname()}:{os.getpid()}")
    bulk = BulkReindexer(coordinator, page_size=settings.catalog_page_size, runs=runs)
    hooks = BulkHooks(planned=planned, batch_done=batch_done)

    async def run_until_stopped() -> BulkSummary:
        # `ray job stop` sends SIGTERM: stop submitting at once; committed photos stay committed.
        main_task = asyncio.current_task()
        assert main_task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, main_task.cancel)
        if pool is not None:
            pool.start()  # the actors are asked while the catalog is read
        return await bulk.run(args.session or None, args.mode, args.dry_run, hooks)

    try:
        summary = asyncio.run(run_until_stopped())
    except asyncio.CancelledError:
        print("Остановлено. Следующий запуск продолжит с того же места (обработанные фото в индексе).")
        return 130
    finally:
        if pool is not None:
            pool.release()  # no standing demand on the autoscaler once the job is over
    bar.close()  # type: ignore[no-untyped-call]
    for line in summary.lines():
        print(line)
    data = summary.as_dict()
    args.summary_json.write_text(json.dumps(data, ensure_ascii=False, indent=2))
    print(json.dumps(data, ensure_ascii=False))
    print(f"summary written to {args.summary_json.resolve()}")
    catalog.close()
    store.close()
    locks.close()
    return 0 if summary.sessions_invalid == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
