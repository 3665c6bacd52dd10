"""Custom metrics for the Ray dashboard (exported by every node's metrics agent).

Ray prefixes them with ``ray_`` in Prometheus: ``ray_facepass_photos_total`` etc.
"""

from __future__ import annotations

from functools import cache

from ray.util import metrics

from facepass.models import PhotoOutcome

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
        self.session_progress = metrics.Gauge(
            "facepass_session_progress",
            "Fraction of a session's planned photos done",
            tag_keys=("session_id",),
        )
        self.session_remaining = metrics.Gauge(
            "facepass_session_photos_remaining", "Planned photos not done yet", tag_keys=("session_id",)
        )

    def record(self, outcome: PhotoOutcome) -> None:
        self.photos.inc(1, tags={"outcome": outcome.status.value})
        if outcome.face_count:
            self.faces.inc(outcome.face_count)
        if outcome.download_ms:
            self.download.observe(outcome.download_ms / 1000)
        if outcome.inference_ms:
            self.inference.observe(outcome.inference_ms / 1000)
        if outcome.write_ms:
            self.write.observe(outcome.write_ms / 1000)

    def progress(self, session_id: str, done: int, planned: int) -> None:
        tags = {"session_id": session_id}
        self.session_progress.set(done / planned if planned else 1.0, tags=tags)
        self.session_remaining.set(planned - done, tags=tags)


@cache
def reindex_metrics() -> ReindexMetrics:
    """One set per process (Ray metrics must be created once, after ray.init)."""
    return ReindexMetrics()


class AccessMetrics:
    def __init__(self) -> None:
        self.refused_calls = metrics.Counter(
            "facepass_api_refused_total",
            "API calls refused for a missing or wrong API key",
            tag_keys=("reason",),
        )

    def refused(self, reason: str) -> None:
        self.refused_calls.inc(1, tags={"reason": reason})


@cache
def access_metrics() -> AccessMetrics:
    """Created on the first refused call, in the replica (never at import)."""
    return AccessMetrics()
