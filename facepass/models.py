"""Plain data that crosses module (and actor) boundaries."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from facepass.errors import PhotoError

EMBEDDING_DIM = 512
Embedding = npt.NDArray[np.float32]


class LedgerStatus(enum.StrEnum):
    """What the local index remembers about a processed photo."""

    INDEXED = "indexed"
    NO_FACE = "no_face"
    FAILED = "failed"  # permanent: not an image, too large, URL refused


class PhotoStatus(enum.StrEnum):
    """How one photo ended in one run."""

    INDEXED = "indexed"
    NO_FACE = "no_face"
    FAILED = "failed"  # permanent, recorded
    RETRY = "retry"  # transient, not recorded: the next run tries again


@dataclass(frozen=True, slots=True)
class SessionInfo:
    id: uuid.UUID
    name: str
    facepass_enabled: bool


@dataclass(frozen=True, slots=True)
class PhotoRef:
    id: uuid.UUID
    session_id: uuid.UUID
    filename: str
    preview_path: str
    # The fencing token of the run that planned it (None: an unfenced write, e.g. the seed's
    # loop). The writer commits it only while no newer run has taken the session.
    fence: int | None = None


@dataclass(frozen=True, slots=True)
class Fence:
    """A run's claim on a session: its fencing token (``session_fences``, migration 0003)."""

    session_id: uuid.UUID
    token: int


@dataclass(frozen=True, slots=True)
class DetectedFace:
    bbox: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels
    det_score: float
    embedding: Embedding  # L2-normalized, EMBEDDING_DIM floats
    # How usable the face is for search (``facepass/vision/quality.py``): the Laplacian variance
    # of its aligned crop and its yaw in eye distances; None where not measured (a stand-in).
    sharpness: float | None = None
    yaw: float | None = None


@dataclass(frozen=True, slots=True)
class QualityGates:
    """Which indexed faces search compares a selfie with (``Settings.quality_gates``): a face
    whose box is smaller, whose detector score is lower, that is blurrier or turned further
    away than these is left out. Unmeasured sharpness or yaw (rows older than migration 0008)
    passes those two gates."""

    min_face_px: float = 0.0  # the box's shorter side, in the photo's pixels
    min_det_score: float = 0.0
    min_sharpness: float = 0.0  # the Laplacian variance of the aligned 112x112 crop
    max_abs_yaw: float = float("inf")  # eye distances

    @property
    def open(self) -> bool:
        return self == QualityGates()

    def as_json(self) -> dict[str, float | None]:
        """The gates as JSON allows them (no gate on yaw: null)."""
        return {
            "min_face_px": self.min_face_px,
            "min_det_score": self.min_det_score,
            "min_sharpness": self.min_sharpness,
            "max_abs_yaw": None if self.max_abs_yaw == float("inf") else self.max_abs_yaw,
        }

    def passes(self, face: DetectedFace) -> bool:
        x1, y1, x2, y2 = face.bbox
        return (
            min(x2 - x1, y2 - y1) >= self.min_face_px
            and face.det_score >= self.min_det_score
            and (face.sharpness is None or face.sharpness >= self.min_sharpness)
            and (face.yaw is None or abs(face.yaw) <= self.max_abs_yaw)
        )


@dataclass(slots=True)
class PhotoResult:
    """What an embedding worker made of one photo (faces, or the error)."""

    photo: PhotoRef
    model_name: str
    faces: list[DetectedFace] = field(default_factory=list)
    error_code: str | None = None
    error_message: str | None = None
    error_transient: bool = False
    download_ms: float = 0.0
    inference_ms: float = 0.0
    # The build of the generation's weights that made the vectors ("openvino-f32/cpu"): recorded
    # in the ledger, not part of the generation (None: not said, e.g. a benchmark's stand-in).
    variant: str | None = None

    def fail(self, error: PhotoError, code: str | None = None, transient: bool | None = None) -> None:
        """Record a per-photo error in the seed's words (no faces kept)."""
        self.faces = []
        self.error_code = code or error.code
        self.error_message = error.message(self.photo.filename)
        self.error_transient = error.transient if transient is None else transient

    @property
    def status(self) -> PhotoStatus:
        if self.error_code is None:
            return PhotoStatus.INDEXED
        if self.error_code == "no_face":
            return PhotoStatus.NO_FACE
        return PhotoStatus.RETRY if self.error_transient else PhotoStatus.FAILED


@dataclass(frozen=True, slots=True)
class PhotoOutcome:
    """What a run reports for one photo after the writer committed it (or not)."""

    photo_id: uuid.UUID
    filename: str
    status: PhotoStatus
    face_count: int = 0
    best_score: float = 0.0
    error_code: str | None = None
    error_message: str | None = None
    download_ms: float = 0.0
    inference_ms: float = 0.0
    write_ms: float = 0.0

    @property
    def successful(self) -> bool:
        return self.status is PhotoStatus.INDEXED

    @classmethod
    def from_result(cls, result: PhotoResult, write_ms: float = 0.0) -> PhotoOutcome:
        return cls(
            photo_id=result.photo.id,
            filename=result.photo.filename,
            status=result.status,
            face_count=len(result.faces),
            best_score=max((f.det_score for f in result.faces), default=0.0),
            error_code=result.error_code,
            error_message=result.error_message,
            download_ms=result.download_ms,
            inference_ms=result.inference_ms,
            write_ms=write_ms,
        )

    @classmethod
    def failed_write(cls, result: PhotoResult, error: PhotoError) -> PhotoOutcome:
        """The photo was processed but its rows were not committed: retried by the next run."""
        return cls(
            photo_id=result.photo.id,
            filename=result.photo.filename,
            status=PhotoStatus.RETRY,
            error_code=error.code,
            error_message=error.message(result.photo.filename),
            download_ms=result.download_ms,
            inference_ms=result.inference_ms,
        )
