"""Bulk reindex of many sessions through one pool, with no idle gap between sessions.

Sessions are read from the catalog a page at a time and planned just before
their photos are needed, while the previous session's photos are still in
flight; the in-flight window is shared by all sessions. Resuming is the
ledger's job: a stopped run leaves every committed photo committed, and the
next run plans only what is missing.

One run per session: with ``runs`` given, the job takes each session's run lock
(``facepass.runs.session_runs``) before planning it and registers the run in the job
book, so route calls for that session join it; a session whose lock another run
holds (a route call, another bulk job) is skipped and reported as running
elsewhere (``sessions_busy``): that run indexes it, and waiting would stall the
stream of the other sessions.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from facepass.errors import FacePassError
from facepass.models import PhotoOutcome, SessionInfo
from facepass.runs.fanout import Fanout
from facepass.runs.jobs import Job
from facepass.runs.reindex import ReindexCoordinator, ReindexMode, ReindexPlan, SessionRun
from facepass.runs.report import ReindexReport
from facepass.runs.session_runs import OwnedRun, SessionRuns

log = logging.getLogger("facepass.bulk")


@dataclass(slots=True)
class BulkSummary:
    sessions_seen: int = 0
    sessions_done: int = 0
    sessions_complete: int = 0  # nothing was missing
    sessions_inactive: int = 0
    sessions_invalid: int = 0
    sessions_busy: int = 0  # another run (a route call, another job) had the session
    photos_total: int = 0
    photos_skipped: int = 0
    photos_planned: int = 0
    photos_processed: int = 0
    photos_successful: int = 0
    photos_failed: int = 0
    faces_indexed: int = 0
    photos_stale: int = 0  # planned again: another model embedded them
    photos_to_prune: int = 0  # indexed but deleted from the catalog (a dry run only counts them)
    photos_pruned: int = 0
    faces_pruned: int = 0
    elapsed_s: float = 0.0
    dry_run: bool = False
    inactive_session_ids: list[str] = field(default_factory=list)
    busy_session_ids: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def add_plan(self, plan: ReindexPlan) -> None:
        self.photos_total += plan.total_photos
        self.photos_skipped += plan.skipped_photos
        self.photos_planned += len(plan.todo)
        self.photos_stale += plan.stale_photos
        self.photos_to_prune += len(plan.prune)
        if not plan.todo:
            self.sessions_complete += 1

    def add_report(self, report: ReindexReport) -> None:
        self.sessions_done += 1
        self.photos_processed += report.processed_photos
        self.photos_successful += report.successful_photos
        self.photos_failed += report.failed_photos
        self.faces_indexed += report.faces_indexed
        self.photos_pruned += report.pruned_photos
        self.faces_pruned += report.pruned_faces

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["photos_per_s"] = round(self.photos_processed / self.elapsed_s, 3) if self.elapsed_s else 0.0
        return data

    def lines(self) -> list[str]:
        return [
            "=== МАССОВАЯ ПЕРЕИНДЕКСАЦИЯ ЗАВЕРШЕНА ===",
            f"Сессий: {self.sessions_seen} (завершено {self.sessions_done}, "
            f"уже полных {self.sessions_complete}, FacePass не активен {self.sessions_inactive}, "
            f"ошибок {self.sessions_invalid}, заняты другим запуском {self.sessions_busy})",
            f"Фото: всего {self.photos_total}, пропущено {self.photos_skipped}, "
            f"обработано {self.photos_processed}, успешно {self.photos_successful}, "
            f"с ошибками {self.photos_failed}",
            f"Лиц проиндексировано: {self.faces_indexed}",
            f"Удалено из индекса: {self.photos_pruned} фото ({self.faces_pruned} лиц); "
            f"переиндексировано после смены модели: {self.photos_stale} фото",
            f"Время: {self.elapsed_s:.1f}s",
        ]


@dataclass(slots=True)
class BulkHooks:
    """Optional callbacks for the Ray shell: progress bar and metrics."""

    planned: Callable[[int], None] | None = None  # photos added to the plan
    batch_done: Callable[[SessionRun, list[PhotoOutcome]], None] | None = None  # once recorded


class BulkReindexer:
    def __init__(
        self, coordinator: ReindexCoordinator, page_size: int = 1000, runs: SessionRuns | None = None
    ) -> None:
        self.coordinator = coordinator
        self.page_size = page_size
        self.runs = runs
        self._owned: dict[uuid.UUID, _Carried] = {}  # session -> its job's end, under way

    def sessions(self, session_ids: list[uuid.UUID] | None) -> Iterator[SessionInfo | FacePassError]:
        if session_ids:
            for sid in session_ids:
                try:
                    yield self.coordinator.catalog.get_session(sid)
                except FacePassError as exc:
                    yield exc
            return
        for page in self.coordinator.catalog.iter_session_pages(self.page_size):
            yield from page

    async def run(
        self,
        session_ids: list[uuid.UUID] | None = None,
        mode: ReindexMode = ReindexMode.MISSING,
        dry_run: bool = False,
        hooks: BulkHooks | None = None,
    ) -> BulkSummary:
        hooks = hooks or BulkHooks()
        started = time.perf_counter()
        summary = BulkSummary(dry_run=dry_run)
        fanout = self.coordinator.fanout()
        source = self.sessions(session_ids)
        try:
            await self._stream(source, summary, fanout, mode, dry_run, hooks)
        except BaseException as exc:
            # Stopped (job stop, Ctrl-C): drop what is in flight; the ledger keeps what committed.
            await fanout.close()
            await self._abandon_all(exc)
            raise
        summary.elapsed_s = time.perf_counter() - started
        for line in summary.lines():
            log.info(line)
        return summary

    async def _stream(
        self,
        source: Iterator[SessionInfo | FacePassError],
        summary: BulkSummary,
        fanout: Fanout[SessionRun | None],
        mode: ReindexMode,
        dry_run: bool,
        hooks: BulkHooks,
    ) -> None:
        while True:
            item = await asyncio.to_thread(next, source, None)  # catalog pages are blocking reads
            if item is None:
                break
            summary.sessions_seen += 1
            if isinstance(item, FacePassError):
                summary.sessions_invalid += 1
                summary.errors.append(str(item))
                log.warning("%s", item)
                continue
            if not item.facepass_enabled:
                summary.sessions_inactive += 1
                summary.inactive_session_ids.append(str(item.id))
                log.info("Сессия %s (%s) пропущена: FacePass не активен", item.id, item.name)
                continue
            fence = None
            if self.runs is not None and not dry_run:
                owned = await self.runs.try_own(item.id, mode)
                if owned is None:
                    summary.sessions_busy += 1
                    summary.busy_session_ids.append(str(item.id))
                    log.info(
                        "Сессия %s (%s) пропущена: её уже переиндексирует другой запуск", item.id, item.name
                    )
                    continue
                self._owned[item.id] = _Carried.start(self.runs, owned)
                fence = owned.fence
            run, plan = await self.coordinator.open(item, mode, fence, dry_run=dry_run)
            summary.add_plan(plan)
            if hooks.planned:
                hooks.planned(len(plan.todo))
            if dry_run:
                continue
            if not plan.todo:
                await self._finish(run, summary)
                continue
            sent = 0
            while sent < len(plan.todo):
                size = fanout.room(len(plan.todo) - sent)
                if size == 0:
                    await self._drain(fanout, summary, hooks)
                    continue
                batch = plan.todo[sent : sent + size]
                self.coordinator.submitted(run, sent + 1, batch)
                fanout.send(run, batch)
                sent += size
        while fanout.busy:
            await self._drain(fanout, summary, hooks)

    async def _drain(self, fanout: Fanout[SessionRun | None], summary: BulkSummary, hooks: BulkHooks) -> None:
        """The next batch to end: its outcomes recorded, its session finished if that was the last."""
        run, outcomes = await fanout.next()
        assert run is not None  # the bulk job hands in every batch with its run
        self.coordinator.record(run, outcomes)
        if hooks.batch_done:
            hooks.batch_done(run, outcomes)
        carried = self._owned.get(run.report.session_id)
        if carried is not None and self.runs is not None:
            self.runs.progress(carried.owned, run.report.progress(time.perf_counter() - run.started))
        if run.remaining == 0:
            await self._finish(run, summary)

    async def _finish(self, run: SessionRun, summary: BulkSummary) -> None:
        """The session's report; then its job done in the book and its lock released."""
        report = await self.coordinator.finish(run)
        summary.add_report(report)
        carried = self._owned.pop(report.session_id, None)
        if carried is not None:
            carried.report.set_result(report)
            await carried.ended

    async def _abandon_all(self, exc: BaseException) -> None:
        """Sessions under way when the job stopped: their jobs fail, their locks are freed."""
        carried, self._owned = list(self._owned.values()), {}
        for each in carried:
            if isinstance(exc, asyncio.CancelledError):
                each.report.cancel()
            else:
                each.report.set_exception(exc)
        await asyncio.gather(*(each.ended for each in carried), return_exceptions=True)


@dataclass(slots=True)
class _Carried:
    """A session the job owns: its run's end goes through ``SessionRuns.carry`` like every
    other run's; the stream hands it the report (or the error that stopped the job)."""

    owned: OwnedRun
    report: asyncio.Future[ReindexReport]
    ended: asyncio.Future[tuple[Job, ReindexReport]]

    @classmethod
    def start(cls, runs: SessionRuns, owned: OwnedRun) -> _Carried:
        report: asyncio.Future[ReindexReport] = asyncio.get_running_loop().create_future()
        return cls(owned, report, asyncio.ensure_future(runs.carry(owned, report)))
