"""Follow mode: the index follows the catalog by itself, with no call.

One follower (``FollowerLock``) runs cycles every ``follow_interval_s``:

1. now and then, read the sessions table: enabled sessions not followed yet are
   added (checked first), disabled ones are no longer followed (their vectors stay;
   search refuses a disabled session anyway), sessions gone from the catalog leave
   the index (their photos are gone with them);
2. pick the hot sessions (changed within ``follow_hot_window_s``), the sessions whose
   retry is due and the next ``follow_sweep_sessions`` of the rotation;
3. read their signatures in one query on the catalog's ``photos(session_id)`` index
   and compare them with the ones the index last mirrored;
4. sync the changed sessions in the background (at most ``follow_parallel_sessions``
   at once) with the coordinator's ``missing`` plan, under the session's run lock
   (a session another run holds is skipped and tried again next cycle).

Nothing changed -> no plan, no download, no model call. No Ray here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from facepass.catalog.changes import CatalogChanges, Signature
from facepass.errors import FacePassError, IndexCannotWrite
from facepass.index.follow_ledger import FollowedSession, FollowLedger
from facepass.index.generations import GenerationProgress, Generations
from facepass.models import Fence, PhotoOutcome
from facepass.runs.follow_lock import FollowerLock
from facepass.runs.reindex import ReindexCoordinator, ReindexMode, ReindexPlan, RunHooks, SessionRun
from facepass.runs.report import ReindexReport
from facepass.runs.session_runs import SessionRuns
from facepass.settings import Settings

log = logging.getLogger("facepass.follow")


@dataclass(slots=True)
class CycleStats:
    """One cycle, for the state row, the metrics and the tests."""

    at: float = 0.0
    duration_ms: float = 0.0
    catalog_ms: float = 0.0  # the catalog's share: sessions (when due) + signatures
    sessions_discovered: int = 0
    sessions_checked: int = 0
    sessions_changed: int = 0
    sessions_started: int = 0


@dataclass(slots=True)
class _Waiting:
    signature: Signature
    detected: float  # wall clock
    previous_check: datetime | None
    # 0: a change in a session the index mirrored (new photos, deletions): first;
    # 1: a session never synced, or one to rebuild in a new model.
    priority: int = 0


@dataclass(slots=True)
class _Syncing:
    detected: float
    signature: Signature | None = None  # what the sync under way mirrors
    planned: int = 0
    done: int = 0
    prune_pending: int = 0
    fresh: set[uuid.UUID] = field(default_factory=set)  # new to the index (not a re-embed): lag samples


@dataclass(frozen=True, slots=True)
class SyncRecord:
    """One finished sync (the last few are kept in the state row)."""

    session_id: str
    at: float
    processed: int
    pruned: int
    retry: int
    ms: float


@dataclass(slots=True)
class FollowTotals:
    sessions_synced: int = 0
    sessions_skipped_busy: int = 0
    photos_processed: int = 0
    photos_pruned: int = 0
    sessions_removed: int = 0
    errors: int = 0
    last_error: str | None = None
    syncs: list[SyncRecord] = field(default_factory=list)  # the last few, newest last


@dataclass(frozen=True, slots=True)
class Pending:
    sessions_pending: int = 0
    photos_pending: int = 0
    deletions_pending: int = 0
    oldest_pending_age_s: float = 0.0


@dataclass(frozen=True, slots=True)
class FollowerState:
    """What the follower writes after each cycle (``follow_state``) and ``/mirror`` reads."""

    follower: str | None = None
    following_since: float | None = None
    last_cycle: CycleStats | None = None
    pending: Pending = field(default_factory=Pending)
    totals: FollowTotals = field(default_factory=FollowTotals)
    generations: list[GenerationProgress] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "follower": self.follower,
            "following_since": self.following_since,
            "last_cycle": asdict(self.last_cycle) if self.last_cycle is not None else None,
            **asdict(self.pending),
            "totals": asdict(self.totals),
            "generations": [g.to_json() for g in self.generations],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FollowerState:
        totals = dict(data.get("totals") or {})
        syncs = [SyncRecord(**_known(SyncRecord, s)) for s in totals.pop("syncs", [])]
        last = data.get("last_cycle")
        return cls(
            follower=data.get("follower"),
            following_since=data.get("following_since"),
            last_cycle=CycleStats(**_known(CycleStats, last)) if last else None,
            pending=Pending(**_known(Pending, data)),
            totals=FollowTotals(**_known(FollowTotals, totals), syncs=syncs),
            generations=[GenerationProgress.from_json(g) for g in data.get("generations") or []],
        )


def _known(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of ``data`` that are fields of ``cls`` (a row written by another version)."""
    names = {f.name for f in fields(cls)} - {"syncs"}
    return {k: v for k, v in data.items() if k in names}


class Follower:
    def __init__(
        self,
        settings: Settings,
        changes: CatalogChanges,
        ledger: FollowLedger,
        coordinator: ReindexCoordinator,
        runs: SessionRuns,
        lock: FollowerLock,
        on_cycle: Callable[[Follower], None] | None = None,
    ) -> None:
        self.settings = settings
        self.on_cycle = on_cycle  # the Ray shell turns a cycle into metrics
        self.changes = changes
        self.ledger = ledger
        self.coordinator = coordinator
        self.runs = runs
        self.lock = lock
        self.name = f"{runs.runner} ({socket.gethostname()} pid {os.getpid()})"
        self.last = CycleStats()
        self.totals = FollowTotals()
        self.following_since: float | None = None
        self.lag: dict[str, float | int | None] = {}
        self.generations: list[GenerationProgress] = []
        self._cycles = 0
        self._last_discover = 0.0
        self._waiting: dict[uuid.UUID, _Waiting] = {}
        self._syncing: dict[uuid.UUID, _Syncing] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._writes_refused_until = 0.0  # monotonic: no syncs start before it (a full disk)

    # --- the loop ----------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Follow while this process holds the follower lock; wait for it otherwise."""
        while not stop.is_set():
            try:
                got = await asyncio.to_thread(self.lock.try_acquire)
            except Exception as exc:  # the index is down: try again later
                log.warning("follower lock: %s", exc)
                got = False
            if not got:
                await _sleep(stop, self.settings.follow_lock_retry_s)
                continue
            log.info("this process follows the catalog: %s", self.name)
            self.following_since = time.time()
            try:
                while not stop.is_set() and await asyncio.to_thread(self.lock.still_held):
                    try:
                        await self.cycle()
                    except Exception as exc:  # a database hiccup must not end following
                        self.totals.errors += 1
                        self.totals.last_error = f"{type(exc).__name__}: {exc}"[:300]
                        log.warning("follow cycle failed: %s", self.totals.last_error)
                    await _sleep(stop, self.settings.follow_interval_s)
            finally:
                await self.drain(cancel=True)
                await asyncio.to_thread(self.lock.release)
                self.following_since = None

    async def cycle(self) -> CycleStats:
        """Check this cycle's sessions and start syncs of the changed ones (not awaited)."""
        stats = CycleStats(at=time.time())
        started = time.perf_counter()
        if time.monotonic() - self._last_discover >= self.settings.follow_discover_interval_s:
            catalog_started = time.perf_counter()
            stats.sessions_discovered = await self.discover()
            stats.catalog_ms += (time.perf_counter() - catalog_started) * 1000
            self._last_discover = time.monotonic()
        s = self.settings
        model = self.coordinator.processor.model_name
        picked = await asyncio.to_thread(
            self.ledger.pick, s.follow_hot_window_s, s.follow_hot_max_sessions, s.follow_sweep_sessions, model
        )
        catalog_started = time.perf_counter()
        signatures = await asyncio.to_thread(self.changes.signatures, [p.session_id for p in picked])
        stats.catalog_ms += (time.perf_counter() - catalog_started) * 1000
        changed = [p for p in picked if p.signature != signatures[p.session_id]]
        # Hot from now on: sessions the index mirrored that changed (a first sync is not a change).
        hot = [p.session_id for p in changed if p.signature is not None]
        await asyncio.to_thread(self.ledger.checked, [p.session_id for p in picked], hot)
        changed_ids = {p.session_id for p in changed}
        for p in picked:
            # Another model synced it last: its new generation is built in the background.
            new_generation = p.model_name is not None and p.model_name != model
            if p.session_id in changed_ids or p.retry_due or new_generation:
                self._wait(p, signatures[p.session_id], model)
        stats.sessions_checked, stats.sessions_changed = len(picked), len(changed)
        stats.sessions_started = self._start_syncs()
        stats.duration_ms = (time.perf_counter() - started) * 1000
        self.last = stats
        self._cycles += 1
        if self._cycles % 10 == 1:  # the lag window's percentiles, for the metrics
            self.lag = await asyncio.to_thread(self.ledger.lag, self.settings.follow_lag_window_s)
        if self._cycles % 30 == 1:  # per-generation progress: one pass over the ledger
            generations = Generations(self.coordinator.store.engine, model)
            self.generations = await asyncio.to_thread(generations.progress)
        await asyncio.to_thread(self.ledger.write_state, self.state().to_json())
        if self.on_cycle is not None:
            try:
                self.on_cycle(self)
            except Exception:  # metrics must never stop following
                log.exception("follow: the cycle's hook failed")
        return stats

    async def discover(self) -> int:
        """Follow new enabled sessions; drop disabled ones; empty the index of deleted ones."""
        sessions = await asyncio.to_thread(self.changes.sessions)
        known = await asyncio.to_thread(self.ledger.known_sessions)
        enabled = {s.id for s in sessions if s.enabled}
        exists = {s.id for s in sessions}
        new = sorted(enabled - known)
        await asyncio.to_thread(self.ledger.add_sessions, new)
        dropped = sorted(known - enabled)
        for session_id in dropped:
            if session_id not in exists:  # hard-deleted with its photos: they leave the index
                await self._remove_deleted_session(session_id)
        await asyncio.to_thread(self.ledger.remove_sessions, dropped)
        self.totals.sessions_removed += len(dropped)
        return len(new)

    async def _remove_deleted_session(self, session_id: uuid.UUID) -> None:
        state = await asyncio.to_thread(self.coordinator.store.index_state, session_id)
        if state:
            result = await self.coordinator.processor.prune(session_id, list(state))
            self.totals.photos_pruned += result.photos
            log.info("session %s left the catalog: %d photos left the index", session_id, result.photos)

    def _wait(self, followed: FollowedSession, signature: Signature, model: str) -> None:
        syncing = self._syncing.get(followed.session_id)
        if syncing is not None and syncing.signature == signature and not followed.retry_due:
            return  # the sync under way mirrors exactly this: nothing to add after it
        previous = self._waiting.get(followed.session_id)
        detected = previous.detected if previous else time.time()
        first_or_rebuild = followed.signature is None or followed.model_name not in (None, model)
        waiting = _Waiting(signature, detected, followed.checked_at, int(first_or_rebuild))
        self._waiting[followed.session_id] = waiting

    def _start_syncs(self) -> int:
        started = 0
        if time.monotonic() < self._writes_refused_until:  # the index met a full disk lately
            return 0
        order = sorted(
            self._waiting, key=lambda sid: (self._waiting[sid].priority, self._waiting[sid].detected)
        )
        for session_id in order:
            if len(self._syncing) >= self.settings.follow_parallel_sessions:
                break
            if session_id in self._syncing:
                continue
            waiting = self._waiting.pop(session_id)
            self._syncing[session_id] = _Syncing(detected=waiting.detected, signature=waiting.signature)
            task = asyncio.create_task(self._sync(session_id, waiting))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            started += 1
        return started

    async def drain(self, *, cancel: bool = False) -> None:
        """Wait for (or cancel) the syncs under way (when following stops)."""
        while self._tasks:
            tasks = list(self._tasks)
            if cancel:
                for task in tasks:
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # --- one session -------------------------------------------------------------------
    async def _sync(self, session_id: uuid.UUID, waiting: _Waiting) -> None:
        syncing = self._syncing[session_id]
        try:
            owned = await self.runs.try_own(session_id, ReindexMode.MISSING)
            if owned is None:
                # A route call or the bulk job runs it. Its signature is not stored, so the
                # next cycle sees the change again and syncs what that run did not do.
                self.totals.sessions_skipped_busy += 1
                return
            since = datetime.now(UTC)
            try:
                _, report = await self.runs.carry(owned, self._run(session_id, syncing, owned.fence))
            except BaseException as exc:
                if isinstance(exc, IndexCannotWrite):  # a full disk: no sync for a while
                    self._writes_refused_until = time.monotonic() + self.settings.follow_retry_after_s
                    self.totals.errors += 1
                    self.totals.last_error = f"session {session_id}: {exc}"[:300]
                    log.warning("follow: no syncs for %.0f s: %s", self.settings.follow_retry_after_s, exc)
                    return
                if isinstance(exc, FacePassError):  # disabled or deleted meanwhile: discover() sees it
                    log.info("follow: session %s: %s", session_id, exc)
                    return
                raise
            await self._synced(session_id, waiting, report, since)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.totals.errors += 1
            self.totals.last_error = f"session {session_id}: {type(exc).__name__}: {exc}"[:300]
            log.warning("follow: %s", self.totals.last_error)
        finally:
            self._syncing.pop(session_id, None)
            self._start_syncs()

    async def _run(self, session_id: uuid.UUID, syncing: _Syncing, fence: Fence) -> ReindexReport:
        """The route's ``missing`` run, its counts kept as it goes (so /mirror can show what is
        pending); every write carries the run's fence: a sync that lost its lock cannot write."""

        def planned(_: SessionRun, plan: ReindexPlan) -> None:
            syncing.planned, syncing.prune_pending = len(plan.todo), len(plan.prune)
            syncing.fresh = set(plan.unseen)

        def pruned(_: SessionRun) -> None:
            syncing.prune_pending = 0

        def outcome(_: SessionRun, __: PhotoOutcome) -> None:
            syncing.done += 1

        hooks = RunHooks(planned=planned, pruned=pruned, outcome=outcome)
        return await self.coordinator.run(session_id, ReindexMode.MISSING, fence=fence, hooks=hooks)

    async def _synced(
        self, session_id: uuid.UUID, waiting: _Waiting, report: ReindexReport, since: datetime
    ) -> None:
        retry_after: float | None = None
        if report.retry_photos:
            retries = await asyncio.to_thread(self.ledger.retries, session_id)
            s = self.settings
            retry_after = min(s.follow_retry_max_s, s.follow_retry_after_s * 2**retries)
        model = self.coordinator.processor.model_name
        await asyncio.to_thread(self.ledger.synced, session_id, waiting.signature, retry_after, model)
        if report.processed_photos or report.pruned_photos:  # work found: an active session, hot
            await asyncio.to_thread(self.ledger.mark_hot, session_id)
        fresh = self._syncing[session_id].fresh
        samples = await asyncio.to_thread(self._lag_samples, session_id, since, waiting.previous_check, fresh)
        await asyncio.to_thread(self.ledger.add_lag, samples, self.settings.follow_lag_window_s)
        self.totals.sessions_synced += 1
        self.totals.photos_processed += report.processed_photos
        self.totals.photos_pruned += report.pruned_photos
        sync = SyncRecord(
            session_id=str(session_id),
            at=time.time(),
            processed=report.processed_photos,
            pruned=report.pruned_photos,
            retry=report.retry_photos,
            ms=round(report.processing_time_ms, 1),
        )
        self.totals.syncs = [*self.totals.syncs[-9:], sync]

    def _lag_samples(
        self, session_id: uuid.UUID, since: datetime, previous_check: datetime | None, fresh: set[uuid.UUID]
    ) -> list[tuple[datetime, float]]:
        """Catalog commit -> searchable, per photo indexed by this sync. The commit time is
        ``created_at``, unless that lies before the previous check of the session (a late
        commit or a ``created_at`` in the past): the photo was not there then, so the lag
        counts from that check."""
        done = [(p, at) for p, at in self.ledger.processed_since(session_id, since) if p in fresh]
        created = self.changes.created_at(session_id, [photo_id for photo_id, _ in done])
        samples = []
        for photo_id, indexed_at in done:
            committed = created.get(photo_id)
            if committed is None:
                continue
            if previous_check is not None and committed < previous_check:
                committed = previous_check
            samples.append((indexed_at, max(0.0, (indexed_at - committed).total_seconds())))
        return samples

    # --- what /mirror shows ------------------------------------------------------------
    def pending(self) -> Pending:
        now = time.time()
        detected = [w.detected for w in self._waiting.values()] + [s.detected for s in self._syncing.values()]
        return Pending(
            sessions_pending=len(self._waiting) + len(self._syncing),
            photos_pending=sum(max(0, s.planned - s.done) for s in self._syncing.values()),
            deletions_pending=sum(s.prune_pending for s in self._syncing.values()),
            oldest_pending_age_s=round(now - min(detected), 2) if detected else 0.0,
        )

    def state(self) -> FollowerState:
        return FollowerState(
            self.name, self.following_since, self.last, self.pending(), self.totals, self.generations
        )


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


def mirror_report(settings: Settings, ledger: FollowLedger, lock: FollowerLock) -> dict[str, object]:
    """What ``GET /api/v1/faces/mirror`` answers, from any process: the follower's last
    state row, the lag window, the followed sessions and who holds the follower lock."""
    row, updated_at = ledger.read_state()
    state = FollowerState.from_json(row) if row else FollowerState()
    holder = lock.holder_pid()
    age = (datetime.now(UTC) - updated_at).total_seconds() if updated_at else None
    live = holder is not None and age is not None and age < 3 * settings.follow_interval_s + 30
    written = state.to_json()
    return {
        "follow_enabled": settings.follow,
        "following": live,
        "follower": state.follower if live else None,
        "follower_lock_pid": holder,
        "following_since": state.following_since if live else None,
        "state_age_s": round(age, 2) if age is not None else None,
        "last_cycle": written["last_cycle"],
        **asdict(state.pending),
        "lag": {**ledger.lag(settings.follow_lag_window_s), "window_s": settings.follow_lag_window_s},
        "sessions": ledger.counts(),
        "totals": written["totals"] if row else {},
        "generations": written["generations"],
    }
