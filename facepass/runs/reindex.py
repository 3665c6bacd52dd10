"""The reindex coordinator: plan -> fan out -> collect -> report.

It knows nothing of Ray: photos go to a ``PhotoProcessor`` (the actor pool in
production, an in-process one in unit tests). Blocking database calls run in
threads so the coordinator can live inside an async HTTP handler. The bulk job
(``facepass.runs.bulk``) reuses its steps to stream many sessions through one pool.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import NoReturn, Protocol

from facepass.catalog.cloud import CloudCatalog
from facepass.errors import LOCAL_INDEX, Fenced, IndexCannotWrite, NotWritten
from facepass.index import generations as generation
from facepass.index.generations import Generations
from facepass.index.store import PruneResult, VectorStore
from facepass.models import Fence, PhotoOutcome, PhotoRef, SessionInfo
from facepass.runs import report as words
from facepass.runs.fanout import Fanout
from facepass.runs.report import ReindexReport

log = logging.getLogger("facepass.reindex")


class ReindexMode(enum.StrEnum):
    MISSING = "missing"  # photos with no ledger row, transient failures, another model's photos
    RETRY_FAILED = "retry_failed"  # also photos recorded as permanently failed
    FULL = "full"  # every live photo again


class PhotoProcessor(Protocol):
    """Processes photos end to end (fetch, embed, commit), a batch at a time, and says how
    each went."""

    @property
    def capacity(self) -> int:
        """Photos a run keeps handed in at once."""
        ...

    @property
    def batch(self) -> int:
        """Photos a run hands in together."""
        ...

    @property
    def model_name(self) -> str: ...

    async def process_many(self, photos: list[PhotoRef]) -> list[PhotoOutcome]:
        """The photos' outcomes, in order."""
        ...

    async def prune(
        self, session_id: uuid.UUID, photo_ids: list[uuid.UUID], fence: Fence | None = None
    ) -> PruneResult:
        """Remove photos of a session from the index (through the one writer); with a fence,
        only while the run still holds the session (else ``Fenced``)."""
        ...


class OneByOne:
    """A processor of one photo at a time (the local demo, tests): ``process_many`` runs
    ``process`` over its photos at once, and a run hands in one photo per batch."""

    batch = 1

    async def process(self, photo: PhotoRef) -> PhotoOutcome:
        raise NotImplementedError

    async def process_many(self, photos: list[PhotoRef]) -> list[PhotoOutcome]:
        return list(await asyncio.gather(*(self.process(photo) for photo in photos)))


@dataclass(frozen=True, slots=True)
class ReindexPlan:
    session: SessionInfo
    total_photos: int
    skipped_photos: int
    todo: list[PhotoRef]
    prune: list[uuid.UUID] = field(default_factory=list)  # indexed, but deleted from the catalog
    stale_photos: int = 0  # in ``todo`` because another model embedded them
    fence: Fence | None = None  # the run's claim on the session: its writes carry it
    unseen: frozenset[uuid.UUID] = frozenset()  # in ``todo`` with no ledger row: new to the index


ProgressHook = Callable[[ReindexReport], None]


@dataclass(frozen=True, slots=True)
class RunHooks:
    """What a driver of a run adds to its steps (each optional): the follower's pending counts,
    the bulk job's plan count."""

    planned: Callable[[SessionRun, ReindexPlan], None] | None = None  # before the prune
    pruned: Callable[[SessionRun], None] | None = None
    outcome: Callable[[SessionRun, PhotoOutcome], None] | None = None  # after it is recorded


@dataclass(slots=True)
class SessionRun:
    """One session under way: its report, and when it started."""

    report: ReindexReport
    started: float = field(default_factory=time.perf_counter)
    fence: Fence | None = None  # the plan's, once begun

    @property
    def remaining(self) -> int:
        return self.report.planned_photos - self.report.processed_photos


class ReindexCoordinator:
    def __init__(
        self,
        catalog: CloudCatalog,
        store: VectorStore,
        processor: PhotoProcessor,
        *,
        max_errors: int = 10,
        keep_log: bool = True,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.processor = processor
        self.max_errors = max_errors
        self.keep_log = keep_log

    # --- steps ---------------------------------------------------------------
    def plan(
        self, session_id: uuid.UUID, mode: ReindexMode = ReindexMode.MISSING, fence: Fence | None = None
    ) -> ReindexPlan:
        """Validate the session and compare the catalog with the local index."""
        return self.plan_session(self.catalog.require_enabled_session(session_id), mode, fence)

    def plan_session(
        self, session: SessionInfo, mode: ReindexMode = ReindexMode.MISSING, fence: Fence | None = None
    ) -> ReindexPlan:
        """What the index must do for the session to mirror the catalog.

        Photos the index holds that the catalog no longer lists (soft- or hard-deleted)
        are to be pruned. A photo is done when its ledger row was written by the current
        model (a permanent failure is done whatever the model: it never reached one);
        photos of another model are stale and go into ``todo`` again.
        """
        photos = self.catalog.list_photos(session.id)
        state = self.store.index_state(session.id)
        live = {p.id for p in photos}
        prune = [photo_id for photo_id in state if photo_id not in live]
        model = self.processor.model_name

        def is_done(photo_id: uuid.UUID) -> bool:
            entry = state.get(photo_id)
            if entry is None or mode is ReindexMode.FULL:
                return False
            return generation.done(*entry, model, retry_failed=mode is ReindexMode.RETRY_FAILED)

        todo = [p for p in photos if not is_done(p.id)]
        stale_count = sum(1 for p in todo if p.id in state and generation.stale(*state[p.id], model))
        unseen = frozenset(p.id for p in todo if p.id not in state)
        if fence is not None:  # every write of this run carries its token
            token = fence.token  # built directly: dataclasses.replace costs ~3 us a photo
            todo = [PhotoRef(p.id, p.session_id, p.filename, p.preview_path, token) for p in todo]
        skipped = len(photos) - len(todo)
        return ReindexPlan(session, len(photos), skipped, todo, prune, stale_count, fence, unseen)

    def new_run(self, session_id: uuid.UUID) -> SessionRun:
        report = ReindexReport(
            session_id=session_id,
            session_name="",
            model_name=self.processor.model_name,
            max_errors=self.max_errors,
        )
        run = SessionRun(report)
        self.say(report, words.start_line(session_id))
        return run

    def begin(self, run: SessionRun, plan: ReindexPlan) -> None:
        report = run.report
        run.fence = plan.fence
        report.session_name = plan.session.name
        report.total_photos = plan.total_photos
        report.skipped_photos = plan.skipped_photos
        report.planned_photos = len(plan.todo)
        self.say(report, words.validated_line(plan.session))
        report.stale_photos = plan.stale_photos
        for line in words.plan_lines(plan.total_photos, plan.skipped_photos, len(plan.todo)):
            self.say(report, line)
        if plan.stale_photos:
            self.say(report, words.stale_line(plan.stale_photos, report.model_name))

    async def prune(self, run: SessionRun, plan: ReindexPlan) -> None:
        """Photos deleted from the catalog leave the index (faces and ledger row together)."""
        if not plan.prune:
            return
        result = await self.processor.prune(plan.session.id, plan.prune, plan.fence)
        run.report.pruned_photos += result.photos
        run.report.pruned_faces += result.faces
        self.say(run.report, words.pruned_line(result.photos, result.faces))

    def submitted(self, run: SessionRun, first: int, photos: list[PhotoRef]) -> None:
        """The seed's line for each photo handed in (``first`` is the first one's number)."""
        planned = run.report.planned_photos
        lines = [words.photo_start_line(first + i, planned, p.filename) for i, p in enumerate(photos)]
        self.say_all(run.report, lines)

    def record(
        self,
        run: SessionRun,
        outcomes: list[PhotoOutcome],
        each: Callable[[SessionRun, PhotoOutcome], None] | None = None,
    ) -> None:
        """Adds a batch's outcomes to the run's report (``each`` is told of each one; the
        seed's lines go to the log once per batch). A photo the index could not store for lack
        of room (a full disk) stops the run: ``IndexCannotWrite``, and its caller stops handing
        in photos (the ones not yet sent to an actor are never downloaded)."""
        report = run.report
        lines: list[str] = []
        try:
            for outcome in outcomes:
                report.add(outcome)
                lines.append(words.photo_done_line(outcome))
                if outcome.error_code == NotWritten.code:
                    self._stop(report, outcome, lines)
                if each is not None:
                    each(run, outcome)
        finally:
            self.say_all(report, lines)

    def _stop(self, report: ReindexReport, outcome: PhotoOutcome, lines: list[str]) -> NoReturn:
        done, planned, written = report.processed_photos, report.planned_photos, report.successful_photos
        lines.append(words.stopped_line(done, planned, written))
        raise IndexCannotWrite(
            LOCAL_INDEX,
            f"the run for session {report.session_id} stopped after {done} of {planned} photos ({written} "
            f"written, none of the others): {outcome.error_message}; free space on the index "
            "database's disk, then run again (it picks up the rest)",
        )

    async def finish(self, run: SessionRun) -> ReindexReport:
        report = run.report
        # A session complete in the current model switches to it: its older vectors go now.
        generations = Generations(self.store.engine, report.model_name)
        try:
            await asyncio.to_thread(generations.retire, report.session_id, run.fence)
        except Fenced:  # a newer run holds the session: it retires them when it is complete
            log.warning("session %s: a newer run holds it; its older vectors stay", report.session_id)
        # What search sees: the current model's vectors of the session (deleted photos were pruned).
        report.final_embedding_count = await asyncio.to_thread(
            self.store.count_embeddings, report.session_id, report.model_name
        )
        report.processing_time_ms = (time.perf_counter() - run.started) * 1000
        for line in report.closing_lines():
            self.say(report, line)
        return report

    # --- the life cycle of a run: open (plan, begin, prune), photos (submit, record), finish ---
    async def open(
        self,
        session: SessionInfo | uuid.UUID,
        mode: ReindexMode = ReindexMode.MISSING,
        fence: Fence | None = None,
        hooks: RunHooks | None = None,
        *,
        dry_run: bool = False,
    ) -> tuple[SessionRun, ReindexPlan]:
        """A run begun: the session validated and planned, deleted photos pruned (not on a dry run)."""
        hooks = hooks or RunHooks()
        if isinstance(session, SessionInfo):
            run = self.new_run(session.id)
            plan = await asyncio.to_thread(self.plan_session, session, mode, fence)
        else:
            run = self.new_run(session)
            plan = await asyncio.to_thread(self.plan, session, mode, fence)
        self.begin(run, plan)
        if hooks.planned:
            hooks.planned(run, plan)
        if not dry_run:
            await self.prune(run, plan)
            if hooks.pruned:
                hooks.pruned(run)
        return run, plan

    async def run(
        self,
        session_id: uuid.UUID,
        mode: ReindexMode = ReindexMode.MISSING,
        on_progress: ProgressHook | None = None,
        fence: Fence | None = None,
        hooks: RunHooks | None = None,
    ) -> ReindexReport:
        """One session, start to end (the route, the follower); the bulk job streams many
        sessions through the same steps (``open``, ``submitted``/``record``, ``finish``)."""
        hooks = hooks or RunHooks()
        run, plan = await self.open(session_id, mode, fence, hooks)
        if on_progress:
            on_progress(run.report)
        async for outcomes in self.process_batches(plan.todo, run):
            self.record(run, outcomes, hooks.outcome)
            if on_progress:
                on_progress(run.report)
        report = await self.finish(run)
        if on_progress:
            on_progress(report)
        return report

    def fanout(self) -> Fanout[SessionRun | None]:
        processor = self.processor
        return Fanout(processor.process_many, lambda: processor.capacity, lambda: processor.batch)

    async def process_batches(
        self, photos: Sequence[PhotoRef], run: SessionRun | None = None
    ) -> AsyncIterator[list[PhotoOutcome]]:
        """Yield each batch's outcomes as it ends, with at most ``capacity`` photos in flight."""
        fanout = self.fanout()
        try:
            sent = 0
            while sent < len(photos):
                size = fanout.room(len(photos) - sent)
                if size == 0:
                    yield (await fanout.next())[1]
                    continue
                batch = list(photos[sent : sent + size])
                if run is not None:
                    self.submitted(run, sent + 1, batch)
                fanout.send(run, batch)
                sent += size
            while fanout.busy:
                yield (await fanout.next())[1]
        finally:
            await fanout.close()

    async def process_all(
        self, photos: Sequence[PhotoRef], run: SessionRun | None = None
    ) -> AsyncIterator[PhotoOutcome]:
        """Yield outcomes as their batches end (``process_batches``, one at a time)."""
        async for outcomes in self.process_batches(photos, run):
            for outcome in outcomes:
                yield outcome

    def say(self, report: ReindexReport, line: str) -> None:
        self.say_all(report, [line])

    def say_all(self, report: ReindexReport, lines: list[str]) -> None:
        """Lines for the report and the log: one log record for all of them (a batch's)."""
        if not lines:
            return
        if self.keep_log:
            report.log_lines.extend(lines)
        log.info("\n".join(lines))
