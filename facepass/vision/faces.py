"""Face detection + ArcFace embedding: SCRFD and ArcFace ONNX files of a model pack.

Models load from the pack folder on disk; nothing is downloaded. The runtime
(ONNX Runtime or OpenVINO) comes from the settings (``runtimes.py``). Several
photos go through the detector as one batch, and all their faces through the
recognizer as one batch; alignment is InsightFace's ``norm_crop``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import numpy.typing as npt

from facepass.errors import NoFaceDetected
from facepass.models import EMBEDDING_DIM, DetectedFace
from facepass.settings import Settings
from facepass.vision.detector import ScrfdDetector
from facepass.vision.heap import keep_buffers_in_heap
from facepass.vision.images import BgrImage
from facepass.vision.runtimes import (
    ONNXRUNTIME,
    OPENVINO,
    ModelSession,
    detector_runtime,
    effective_runtime,
    open_session,
    variant_name,
)

if TYPE_CHECKING:
    from facepass.vision.share_gate import GateVerdict

log = logging.getLogger(__name__)
# insightface's face_align calls a scikit-image API that is deprecated, not wrong.
warnings.filterwarnings("ignore", message=".*`estimate` is deprecated.*", category=FutureWarning)

# Known file names, most accurate first: buffalo_l, buffalo_s/sc, the vectron pack.
_DETECTORS = (
    "det_10g.onnx",
    "det_2.5g.onnx",
    "det_500m.onnx",
    "scrfd_10g_bnkps.onnx",
    "scrfd_2.5g_bnkps.onnx",
    "scrfd_500m_bnkps.onnx",
)
_RECOGNIZERS = ("w600k_r50.onnx", "glintr100.onnx", "w600k_mbf.onnx")


WEIGHTS_MARK = "#"  # "<pack>/<detector>+<recognizer>#<weights>": the generation's name
LEGACY_VARIANT_MARK = "@"  # before migration 0006 a generation named its runtime: "...@ov-f32"


@functools.lru_cache(maxsize=32)
def _weights_id(files: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for path, _, _ in files:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:12]


def weights_id(*paths: Path) -> str:
    """The first 12 hex digits of the SHA-256 of the files' bytes, in order (cached per file
    path, size and modification time: a process hashes a pack once)."""
    return _weights_id(tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths))


def weights_of(generation: str) -> str:
    """A generation's pack and files without its weights id or a legacy runtime suffix."""
    return generation.split(WEIGHTS_MARK, 1)[0].split(LEGACY_VARIANT_MARK, 1)[0]


@dataclass(frozen=True, slots=True)
class ModelPack:
    detector: Path
    recognizer: Path
    # Stored with every embedding: "<pack>/<detector>+<recognizer>#<weights id>". The weights
    # make a generation, not the runtime, precision or device that runs them: every build that
    # passes the accuracy gate writes into it (the build is recorded as the photo's variant).
    name: str

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelPack:
        folder = settings.model_dir
        detector = cls._pick(folder, settings.detector_file, _DETECTORS, "detector")
        recognizer = cls._pick(folder, settings.recognizer_file, _RECOGNIZERS, "recognizer")
        weights = weights_id(detector, recognizer)
        name = f"{settings.model_name}/{detector.stem}+{recognizer.stem}{WEIGHTS_MARK}{weights}"
        return cls(detector=detector, recognizer=recognizer, name=name)

    @staticmethod
    def _pick(folder: Path, configured: str | None, known: tuple[str, ...], what: str) -> Path:
        names = (configured,) if configured else known
        for name in names:
            if (folder / name).is_file():
                return folder / name
        raise RuntimeError(f"no {what} model ({', '.join(names)}) in {folder}")


class FaceEmbedder:
    """``load()`` is idempotent; ``embed()`` returns every face of a photo, L2-normalized;
    ``embed_batch()`` does the same for several photos with one detector call and one
    recognizer call (all their faces together)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.runtime = effective_runtime(settings)
        self.pack = ModelPack.from_settings(settings)
        # What each network asks for: ORT's providers (the detector, and the recognizer of the
        # fp32 pack), "OpenVINO" for a network on the OpenVINO runtime.
        onnx = settings.onnx_providers()
        detector = onnx if detector_runtime(settings) == ONNXRUNTIME else ["OpenVINO"]
        recognizer = onnx if self.runtime == ONNXRUNTIME else ["OpenVINO"]
        self.requested_providers = list(dict.fromkeys(detector + recognizer))
        self.det_size = settings.det_size
        self.det_thresh = settings.det_thresh
        self.threads = settings.intra_op_threads()
        # Photos per detector call (0: all photos of a batch in one call). Auto: per photo on CPU.
        self.detector_batch = settings.detector_batch_photos or (0 if settings.uses_gpu else 1)
        self.active_providers: list[str] = []
        self._detector: ScrfdDetector | None = None
        self._recognizer: ArcFaceRecognizer | None = None
        self.gate: GateVerdict | None = None  # the sharing gate's verdict on this build
        self.requested_variant = variant_name(settings)  # the build asked for (before any refusal)
        self._lock = threading.RLock()  # the gate embeds with this embedder while it loads

    @property
    def model_name(self) -> str:
        return self.pack.name

    @property
    def variant(self) -> str:
        """The build that makes this embedder's vectors (``variant_name``), its device as loaded
        (ONNX Runtime without its CUDA provider runs on the CPU)."""
        device = None
        if self.active_providers and self.runtime == ONNXRUNTIME:
            device = "cuda" if "CUDAExecutionProvider" in self.active_providers else "cpu"
        return variant_name(self.settings, device)

    def load(self) -> FaceEmbedder:
        """Load both networks; a build other than the reference (ONNX Runtime fp32 on the CPU)
        writes into the weights' generation only if it passes the sharing gate; one that fails
        is refused (logged) and this embedder runs the reference build instead."""
        with self._lock:
            if self._detector is None:
                self._load()
                self._check_build()
        return self

    def _check_build(self) -> None:
        from facepass.vision.share_gate import REFERENCE_VARIANT, gate, reference_settings

        if self.variant == REFERENCE_VARIANT:
            return
        self.gate = verdict = gate(self)
        if verdict.passed:
            log.info(
                "build %s of generation %s passed the sharing gate%s: %s",
                self.variant,
                self.model_name,
                " (verdict cached)" if verdict.cached else "",
                verdict.summary(),
            )
            return
        log.error(
            "build %s of generation %s refused: it fails the sharing gate (%s); this process embeds "
            "with the reference build %s instead",
            self.variant,
            self.model_name,
            verdict.summary(),
            REFERENCE_VARIANT,
        )
        self.settings = reference_settings(self.settings)
        self.runtime = effective_runtime(self.settings)
        self._detector = self._recognizer = None
        self._load()

    def _load(self) -> None:
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)  # the batch-shape warning is noise
        keep_buffers_in_heap()  # per-inference tensors: no mmap/munmap (page faults) per photo
        detector_session = open_session(
            self.pack.detector, self.settings, self.threads, detector_runtime(self.settings)
        )
        recognizer_session = open_session(self.pack.recognizer, self.settings, self.threads)
        # The fast path's detector input keeps the photo's aspect (less padding to convolve).
        fit = self.runtime == OPENVINO
        detector = ScrfdDetector(detector_session, self.det_size, self.det_thresh, fit=fit)
        recognizer = ArcFaceRecognizer(recognizer_session, self.pack.recognizer)
        self.active_providers = list(dict.fromkeys(detector_session.providers + recognizer_session.providers))
        log.info(
            "model %s loaded (%s); providers requested %s, in use %s; %d intra-op threads",
            self.model_name,
            self.runtime,
            self.requested_providers,
            self.active_providers,
            self.threads,
        )
        self._detector, self._recognizer = detector, recognizer

    def embed(self, image: BgrImage) -> list[DetectedFace]:
        """Every face in the image; raises NoFaceDetected when there is none."""
        [faces] = self.embed_batch([image])
        if not faces:
            raise NoFaceDetected()
        return faces

    def embed_batch(self, images: list[BgrImage]) -> list[list[DetectedFace]]:
        """The faces of each image ([] for an image without a face), in the images' order."""
        from insightface.utils import face_align

        self.load()
        assert self._detector is not None and self._recognizer is not None
        step = max(1, self.detector_batch) if self.detector_batch else len(images) or 1
        found = [
            d
            for at in range(0, len(images), step)
            for d in self._detector.detect_batch(images[at : at + step])
        ]
        size = self._recognizer.input_size
        crops = [
            face_align.norm_crop(image, landmark=kps, image_size=size)
            for image, detections in zip(images, found, strict=True)
            for kps in detections.landmarks
        ]
        unit = self._recognizer.embed(crops)
        faces: list[list[DetectedFace]] = []
        at = 0
        for detections in found:
            faces.append(
                [
                    DetectedFace(
                        bbox=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                        det_score=float(b[4]),
                        embedding=unit[at + i],
                    )
                    for i, b in enumerate(detections.boxes)
                ]
            )
            at += len(detections)
        return faces


class ArcFaceRecognizer:
    """ArcFace: aligned crops in, one L2-normalized 512-d vector per crop, one call per batch."""

    def __init__(self, session: ModelSession, path: Path) -> None:
        import onnx

        self.session = session
        graph = onnx.load(str(path), load_external_data=False).graph
        self.input_size = int(graph.input[0].type.tensor_type.shape.dim[2].dim_value or 112)
        # InsightFace's rule: a graph that normalizes its own input wants raw pixels.
        ops = {node.op_type for node in graph.node[:8]}
        self.mean, self.std = (0.0, 1.0) if {"Sub", "Mul"} <= ops else (127.5, 127.5)

    def embed(self, crops: list[BgrImage]) -> npt.NDArray[np.float32]:
        if not crops:
            return np.empty((0, EMBEDDING_DIM), dtype=np.float32)
        size = (self.input_size, self.input_size)
        blob = cv2.dnn.blobFromImages(crops, 1.0 / self.std, size, (self.mean,) * 3, swapRB=True)
        raw = self.session.run(np.ascontiguousarray(blob, dtype=np.float32))[0].reshape(len(crops), -1)
        if raw.shape[1] != EMBEDDING_DIM:
            raise RuntimeError(f"recognizer gives {raw.shape[1]}-d embeddings, need {EMBEDDING_DIM}")
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        return np.asarray(raw / np.maximum(norms, 1e-12), dtype=np.float32)
