"""The reindex coordinator: plan -> fan out -> collect -> report.

It knows nothing of Ray: photos go to a ``PhotoProcessor`` (the actor pool in
production, an in-process one in unit tests). Blocking database calls run in
threads so the coordinator can live inside an async HTTP handler.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from facepass import report as words
from facepass.catalog import CloudCatalog
from facepass.models import PhotoOutcome, PhotoRef, SessionInfo
from facepass.report import ReindexReport
from facepass.store import VectorStore

log = logging.getLogger("facepass.reindex")


class ReindexMode(enum.StrEnum):
    MISSING = "missing"  # photos with no ledger row (and transient failures)
    RETRY_FAILED = "retry_failed"  # also photos recorded as permanently failed
    FULL = "full"  # every live photo again (e.g. after a model change)


class PhotoProcessor(Protocol):
    """Processes one photo end to end (fetch, embed, commit) and says how it went."""

    @property
    def capacity(self) -> int: ...

    @property
    def model_name(self) -> str: ...

    async def process(self, photo: PhotoRef) -> PhotoOutcome: ...


@dataclass(frozen=True, slots=True)
class ReindexPlan:
    session: SessionInfo
    total_photos: int
    skipped_photos: int
    todo: list[PhotoRef]


ProgressHook = Callable[[ReindexReport], None]


class ReindexCoordinator:
    def __init__(
        self,
        catalog: CloudCatalog,
        store: VectorStore,
        processor: PhotoProcessor,
        *,
        max_errors: int = 10,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.processor = processor
        self.max_errors = max_errors

    def plan(self, session_id: uuid.UUID, mode: ReindexMode = ReindexMode.MISSING) -> ReindexPlan:
        """Validate the session and compare the catalog with the local index."""
        session = self.catalog.require_enabled_session(session_id)
        photos = self.catalog.list_photos(session_id)
        if mode is ReindexMode.FULL:
            done: set[uuid.UUID] = set()
        else:
            done = self.store.done_photo_ids(session_id, retry_failed=mode is ReindexMode.RETRY_FAILED)
        todo = [p for p in photos if p.id not in done]
        return ReindexPlan(session, len(photos), len(photos) - len(todo), todo)

    async def run(
        self,
        session_id: uuid.UUID,
        mode: ReindexMode = ReindexMode.MISSING,
        on_progress: ProgressHook | None = None,
    ) -> ReindexReport:
        started = time.perf_counter()
        report = ReindexReport(
            session_id=session_id,
            session_name="",
            model_name=self.processor.model_name,
            max_errors=self.max_errors,
        )
        self._say(report, words.start_line(session_id))
        plan = await asyncio.to_thread(self.plan, session_id, mode)
        report.session_name = plan.session.name
        report.total_photos = plan.total_photos
        report.skipped_photos = plan.skipped_photos
        report.planned_photos = len(plan.todo)
        self._say(report, words.validated_line(plan.session))
        for line in words.plan_lines(plan.total_photos, plan.skipped_photos, len(plan.todo)):
            self._say(report, line)
        if on_progress:
            on_progress(report)

        async for outcome in self.process_all(plan.todo, report):
            report.add(outcome)
            self._say(report, words.photo_done_line(outcome))
            if on_progress:
                on_progress(report)

        report.final_embedding_count = await asyncio.to_thread(self.store.count_embeddings, session_id)
        report.processing_time_ms = (time.perf_counter() - started) * 1000
        for line in report.closing_lines():
            self._say(report, line)
        if on_progress:
            on_progress(report)
        return report

    async def process_all(
        self, photos: Iterable[PhotoRef], report: ReindexReport | None = None
    ) -> AsyncIterator[PhotoOutcome]:
        """Yield outcomes as they finish, with at most ``capacity`` photos in flight."""
        todo = list(photos)
        pending: set[asyncio.Task[PhotoOutcome]] = set()
        window = max(1, self.processor.capacity)
        for index, photo in enumerate(todo, start=1):
            if report is not None:
                self._say(report, words.photo_start_line(index, len(todo), photo.filename))
            pending.add(asyncio.ensure_future(self.processor.process(photo)))
            if len(pending) >= window:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    yield task.result()
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                yield task.result()

    @staticmethod
    def _say(report: ReindexReport, line: str) -> None:
        report.log_lines.append(line)
        log.info(line)
