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
from facepass.vision.runtimes import ModelSession
from facepass.vision.trials import FileTrialStore, TrialStore, default_cache_dir
from facepass.vision.variants import requested

if TYPE_CHECKING:
    from facepass.vision.selection import Choice, Loaded
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
    recognizer call (all their faces together).

    Which variant (builds of the two networks) runs is chosen at load: measured on this
    machine or pinned by the settings (``facepass/vision/selection.py``); the choice, its
    timings and gate verdicts are kept in ``trials`` (the index database for actors, a folder
    otherwise)."""

    def __init__(self, settings: Settings, trials: TrialStore | None = None) -> None:
        self.settings = settings
        self.pack = ModelPack.from_settings(settings)
        self.trials: TrialStore = trials or FileTrialStore(default_cache_dir(settings))
        self.det_size = settings.det_size
        self.det_thresh = settings.det_thresh
        self.threads = settings.intra_op_threads()
        # Photos per detector call (0: all photos of a batch in one call). Auto: per photo on CPU.
        self.detector_batch = settings.detector_batch_photos or (0 if settings.uses_gpu else 1)
        self.requested_variant = requested(settings)  # "auto" or the pinned variant's name
        self.active_providers: list[str] = []
        self.gate: GateVerdict | None = None  # the sharing gate's verdict on the running variant
        self.choice: Choice | None = None  # what runs and why (timings, verdicts, where kept)
        self._loaded: Loaded | None = None
        self._lock = threading.RLock()

    @property
    def model_name(self) -> str:
        return self.pack.name

    @property
    def variant(self) -> str:
        """The variant that makes this embedder's vectors (its builds' names), once loaded."""
        return self._loaded.variant.name if self._loaded else self.requested_variant

    @property
    def runtime(self) -> str:
        """The recognizer's runtime (where most of a photo's time goes)."""
        return self._loaded.variant.recognizer.runtime if self._loaded else "auto"

    @property
    def detector(self) -> ScrfdDetector | None:
        return self._loaded.detector if self._loaded else None

    @property
    def recognizer(self) -> ArcFaceRecognizer | None:
        return self._loaded.recognizer if self._loaded else None

    @property
    def requested_providers(self) -> list[str]:
        """What each network asks for: ONNX Runtime's providers, or "OpenVINO"."""
        if self._loaded is None:
            return []
        asked: list[str] = []
        for build in (self._loaded.variant.detector, self._loaded.variant.recognizer):
            if build.runtime == "openvino":
                asked.append("OpenVINO")
            else:
                asked += (
                    ["CUDAExecutionProvider", "CPUExecutionProvider"]
                    if build.device == "cuda"
                    else ["CPUExecutionProvider"]
                )
        return list(dict.fromkeys(asked))

    def load(self) -> FaceEmbedder:
        """Load the variant chosen for this machine (or pinned); a variant other than the
        reference writes into the weights' generation only if it passes the sharing gate."""
        with self._lock:
            if self._loaded is None:
                self._load()
        return self

    def _load(self) -> None:
        import onnxruntime

        from facepass.vision.selection import choose
        from facepass.vision.variants import detect_hardware

        onnxruntime.set_default_logger_severity(3)  # the batch-shape warning is noise
        keep_buffers_in_heap()  # per-inference tensors: no mmap/munmap (page faults) per photo
        hardware = detect_hardware(self.settings)
        loaded, choice, verdict = choose(self.pack, self.settings, self.threads, self.trials, hardware)
        self.active_providers = loaded.providers
        self.gate, self.choice = verdict, choice
        log.info(
            "model %s loaded: %s; providers in use %s; %d intra-op threads; hardware %s",
            self.model_name,
            choice.summary(),
            self.active_providers,
            self.threads,
            hardware.as_json(),
        )
        if verdict is not None and verdict.passed:
            log.info(
                "build %s of generation %s passed the sharing gate%s: %s",
                loaded.variant.name,
                self.model_name,
                " (verdict kept)" if verdict.cached else "",
                verdict.summary(),
            )
        self._loaded = loaded

    def embed(self, image: BgrImage) -> list[DetectedFace]:
        """Every face in the image; raises NoFaceDetected when there is none."""
        [faces] = self.embed_batch([image])
        if not faces:
            raise NoFaceDetected()
        return faces

    def embed_batch(self, images: list[BgrImage]) -> list[list[DetectedFace]]:
        """The faces of each image ([] for an image without a face), in the images' order."""
        self.load()
        assert self._loaded is not None
        return embed_with(self._loaded.detector, self._loaded.recognizer, images, self.detector_batch)


def embed_with(
    detector: ScrfdDetector, recognizer: ArcFaceRecognizer, images: list[BgrImage], detector_batch: int
) -> list[list[DetectedFace]]:
    """The faces of each image: ``detector_batch`` photos per detector call (0: all), then
    every face of them through the recognizer in one call."""
    from insightface.utils import face_align

    step = max(1, detector_batch) if detector_batch else len(images) or 1
    found = [d for at in range(0, len(images), step) for d in detector.detect_batch(images[at : at + step])]
    size = recognizer.input_size
    crops = [
        face_align.norm_crop(image, landmark=kps, image_size=size)
        for image, detections in zip(images, found, strict=True)
        for kps in detections.landmarks
    ]
    unit = recognizer.embed(crops)
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
