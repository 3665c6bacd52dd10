"""Custom metrics for the Ray dashboard (exported by every node's metrics agent).

Ray prefixes them with ``ray_`` in Prometheus: ``ray_facepass_photos_total`` etc.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from functools import cache
from typing import TYPE_CHECKING

from ray.util import metrics

from facepass.index.generations import GenerationProgress
from facepass.models import PhotoOutcome
from facepass.runs.lanes import Lane

if TYPE_CHECKING:
    from facepass.vision.faces import FaceEmbedder

_MS_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]


class ReindexMetrics:
    def __init__(self) -> None:
        self.photos = metrics.Counter(
            "facepass_photos_total", "Photos processed, by outcome", tag_keys=("outcome",)
        )
        self.faces = metrics.Counter("facepass_faces_total", "Faces indexed")
        self.download = metrics.Histogram(
            "facepass_download_seconds", "Download time per photo", boundaries=_MS_BUCKETS
        )
        self.inference = metrics.Histogram(
            "facepass_inference_seconds", "Decode + detect + embed time per photo", boundaries=_MS_BUCKETS
        )
        self.write = metrics.Histogram(
            "facepass_write_seconds", "Index write (one transaction) per photo", boundaries=_MS_BUCKETS
        )
        self.in_flight = metrics.Gauge("facepass_photos_in_flight", "Photos handed to the pool, not done")
        # Bounded by design: one series per lane, never one per session.
        self.queued = metrics.Gauge(
            "facepass_photos_queued", "Photos waiting in the pool's queue, by lane", tag_keys=("lane",)
        )
        self.lane_in_flight = metrics.Gauge(
            "facepass_lane_photos_in_flight", "Photos sent to the actors, by lane", tag_keys=("lane",)
        )
        self.runs_active = metrics.Gauge("facepass_runs_active", "Session runs under way in this process")
        self.runs_remaining = metrics.Gauge(
            "facepass_runs_photos_remaining", "Planned photos not done yet, over the runs of this process"
        )
        self._remaining: dict[str, int] = {}  # runs under way in this process only: bounded

    def record_many(self, outcomes: list[PhotoOutcome]) -> None:
        """A batch's outcomes: the counters once per batch, the histograms per photo."""
        by_status = Counter(outcome.status.value for outcome in outcomes)
        for status, count in by_status.items():
            self.photos.inc(count, tags={"outcome": status})
        faces = sum(outcome.face_count for outcome in outcomes)
        if faces:
            self.faces.inc(faces)
        for outcome in outcomes:
            if outcome.download_ms:
                self.download.observe(outcome.download_ms / 1000)
            if outcome.inference_ms:
                self.inference.observe(outcome.inference_ms / 1000)
            if outcome.write_ms:
                self.write.observe(outcome.write_ms / 1000)

    def set_queue(self, in_flight: int, queued: int, lanes: Mapping[Lane, int]) -> None:
        self.in_flight.set(in_flight + queued)
        for lane, photos in lanes.items():
            self.lane_in_flight.set(photos, tags={"lane": lane.name.lower()})

    def set_queued(self, lane: Lane, photos: int) -> None:
        self.queued.set(photos, tags={"lane": lane.name.lower()})

    def progress(self, session_id: str, done: int, planned: int) -> None:
        """A run's progress, folded into two gauges (a series per session would grow without
        bound: 100,000 sessions, 100,000 series)."""
        if done >= planned:
            self._remaining.pop(session_id, None)
        else:
            self._remaining[session_id] = planned - done
        self.runs_active.set(len(self._remaining))
        self.runs_remaining.set(sum(self._remaining.values()))


@cache
def reindex_metrics() -> ReindexMetrics:
    """One set per process (Ray metrics must be created once, after ray.init)."""
    return ReindexMetrics()


class AccessMetrics:
    def __init__(self) -> None:
        self.refused_calls = metrics.Counter(
            "facepass_api_refused_total",
            "API calls refused for a missing or wrong API key, or one without the route's scope",
            tag_keys=("reason",),
        )

    def refused(self, reason: str) -> None:
        self.refused_calls.inc(1, tags={"reason": reason})


@cache
def access_metrics() -> AccessMetrics:
    """Created on the first refused call, in the replica (never at import)."""
    return AccessMetrics()


class FollowMetrics:
    """The follower's figures; every series is one number, or one per model generation."""

    def __init__(self) -> None:
        self.is_follower = metrics.Gauge("facepass_follow_is_follower", "1 in the process that follows")
        self.cycle = metrics.Histogram(
            "facepass_follow_cycle_seconds", "One follow cycle (checks, not syncs)", boundaries=_MS_BUCKETS
        )
        self.catalog = metrics.Histogram(
            "facepass_follow_catalog_seconds", "The catalog's share of one cycle", boundaries=_MS_BUCKETS
        )
        self.checked = metrics.Counter("facepass_follow_sessions_checked_total", "Session signatures read")
        self.changed = metrics.Counter("facepass_follow_sessions_changed_total", "Sessions found changed")
        self.photos_pending = metrics.Gauge("facepass_follow_photos_pending", "Photos planned, not indexed")
        self.sessions_pending = metrics.Gauge(
            "facepass_follow_sessions_pending", "Changed sessions not synced"
        )
        self.deletions_pending = metrics.Gauge("facepass_follow_deletions_pending", "Deletions not applied")
        self.oldest_pending = metrics.Gauge(
            "facepass_follow_oldest_pending_seconds", "Age of the oldest change not yet mirrored"
        )
        self.lag = metrics.Gauge(
            "facepass_follow_lag_seconds",
            "Catalog commit -> searchable over the window",
            tag_keys=("quantile",),
        )
        self.generation = metrics.Gauge(
            "facepass_generation_sessions",
            "Sessions by model generation state",
            tag_keys=("generation", "state"),
        )

    def cycle_done(self, stats: Mapping[str, float], pending: Mapping[str, float]) -> None:
        self.is_follower.set(1)
        self.cycle.observe(stats["duration_ms"] / 1000)
        self.catalog.observe(stats["catalog_ms"] / 1000)
        if stats["sessions_checked"]:  # a Ray counter refuses an increment of 0
            self.checked.inc(stats["sessions_checked"])
        if stats["sessions_changed"]:
            self.changed.inc(stats["sessions_changed"])
        self.photos_pending.set(pending["photos_pending"])
        self.sessions_pending.set(pending["sessions_pending"])
        self.deletions_pending.set(pending["deletions_pending"])
        self.oldest_pending.set(pending["oldest_pending_age_s"])

    def generations(self, progress: list[GenerationProgress]) -> None:
        """Sessions per generation: a handful of series (the models in the index), never per session."""
        for g in progress:
            state = "current" if g.current else "previous"
            self.generation.set(g.sessions, tags={"generation": g.generation, "state": state})
            if g.current:
                self.generation.set(
                    g.sessions_building or 0, tags={"generation": g.generation, "state": "building"}
                )

    def lag_window(self, p50: float | None, p95: float | None) -> None:
        if p50 is not None:
            self.lag.set(p50, tags={"quantile": "0.5"})
        if p95 is not None:
            self.lag.set(p95, tags={"quantile": "0.95"})


@cache
def follow_metrics() -> FollowMetrics:
    return FollowMetrics()


class ModelMetrics:
    def __init__(self) -> None:
        self.variant = metrics.Gauge(
            "facepass_model_variant",
            "1 per embedding actor for the variant it runs (detector and recognizer builds), "
            "how it was chosen (measured, kept, pinned, refused) and the machine's kind",
            tag_keys=("generation", "variant", "detector", "recognizer", "how", "machine"),
        )
        self.estimate = metrics.Gauge(
            "facepass_model_variant_estimate_ms",
            "The chosen variant's measured time per photo at load (detector + 3 faces)",
            tag_keys=("generation", "variant"),
        )

    def loaded(self, embedder: FaceEmbedder) -> None:
        choice = embedder.choice
        if choice is None:
            return
        detector, _, recognizer = choice.variant.partition("+")
        hardware = choice.hardware
        machine = hardware.get("gpu") or hardware.get("cpu_model") or "unknown"
        tags = {"generation": embedder.model_name, "variant": choice.variant}
        self.variant.set(
            1,
            tags={
                **tags,
                "detector": detector,
                "recognizer": recognizer or detector,
                "how": choice.how,
                "machine": str(machine),
            },
        )
        if choice.variant in choice.estimate_ms:
            self.estimate.set(choice.estimate_ms[choice.variant], tags=tags)


@cache
def model_metrics() -> ModelMetrics:
    """One set per embedding actor, made at load."""
    return ModelMetrics()
