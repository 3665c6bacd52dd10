"""Face detection + ArcFace embedding with InsightFace's own model classes.

Models load from the pack folder on disk; nothing is downloaded. All faces of a
photo go through the recognizer as one batch.
"""

from __future__ import annotations

import logging
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facepass.errors import NoFaceDetected
from facepass.models import EMBEDDING_DIM, DetectedFace
from facepass.settings import CUDA_PROVIDER, Settings
from facepass.vision.heap import keep_buffers_in_heap
from facepass.vision.images import BgrImage

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


@dataclass(frozen=True, slots=True)
class ModelPack:
    detector: Path
    recognizer: Path
    name: str  # stored with every embedding: "<pack>/<detector>+<recognizer>"

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelPack:
        folder = settings.model_dir
        detector = cls._pick(folder, settings.detector_file, _DETECTORS, "detector")
        recognizer = cls._pick(folder, settings.recognizer_file, _RECOGNIZERS, "recognizer")
        name = f"{settings.model_name}/{detector.stem}+{recognizer.stem}"
        return cls(detector=detector, recognizer=recognizer, name=name)

    @staticmethod
    def _pick(folder: Path, configured: str | None, known: tuple[str, ...], what: str) -> Path:
        names = (configured,) if configured else known
        for name in names:
            if (folder / name).is_file():
                return folder / name
        raise RuntimeError(f"no {what} model ({', '.join(names)}) in {folder}")


class FaceEmbedder:
    """``load()`` is idempotent; ``embed()`` returns every face, L2-normalized."""

    def __init__(self, settings: Settings) -> None:
        self.pack = ModelPack.from_settings(settings)
        self.requested_providers = settings.onnx_providers()
        self.det_size = settings.det_size
        self.det_thresh = settings.det_thresh
        self.threads = settings.intra_op_threads()
        self.active_providers: list[str] = []
        self._detector: Any = None
        self._recognizer: Any = None
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return self.pack.name

    def load(self) -> FaceEmbedder:
        with self._lock:
            if self._detector is None:
                self._load()
        return self

    def _load(self) -> None:
        import onnxruntime
        from insightface.model_zoo import model_zoo

        onnxruntime.set_default_logger_severity(3)  # the batch-shape warning is noise
        keep_buffers_in_heap()  # per-inference tensors: no mmap/munmap (page faults) per photo
        if CUDA_PROVIDER in self.requested_providers and hasattr(onnxruntime, "preload_dlls"):
            # CUDA/cuDNN from the `gpu` extra's nvidia-* wheels (site-packages): a GPU node
            # then needs only the driver. Without them ORT prints why and falls back to CPU.
            onnxruntime.preload_dlls(cuda=True, cudnn=True)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        # The arena keeps the largest batch's memory forever (a 22-face photo: +90 MB per actor).
        options.enable_cpu_mem_arena = False
        kwargs = {"providers": self.requested_providers, "sess_options": options}
        detector = model_zoo.get_model(str(self.pack.detector), **kwargs)
        recognizer = model_zoo.get_model(str(self.pack.recognizer), **kwargs)
        if getattr(detector, "taskname", None) != "detection":
            raise RuntimeError(f"{self.pack.detector} is not a face detector")
        if getattr(recognizer, "taskname", None) != "recognition":
            raise RuntimeError(f"{self.pack.recognizer} is not a recognition model")
        detector.prepare(0, input_size=(self.det_size, self.det_size), det_thresh=self.det_thresh)
        recognizer.prepare(0)
        self.active_providers = list(detector.session.get_providers())
        log.info(
            "model %s loaded; providers requested %s, in use %s; %d intra-op threads",
            self.pack.name,
            self.requested_providers,
            self.active_providers,
            self.threads,
        )
        self._detector, self._recognizer = detector, recognizer

    def embed(self, image: BgrImage) -> list[DetectedFace]:
        """Every face in the image; raises NoFaceDetected when there is none."""
        from insightface.utils import face_align

        self.load()
        bboxes, kpss = self._detector.detect(image, max_num=0)
        if bboxes is None or bboxes.shape[0] == 0 or kpss is None:
            raise NoFaceDetected()
        size = int(self._recognizer.input_size[0])
        crops = [face_align.norm_crop(image, landmark=kps, image_size=size) for kps in kpss]
        raw = np.asarray(self._recognizer.get_feat(crops), dtype=np.float32)
        raw = raw.reshape(len(crops), -1)
        if raw.shape[1] != EMBEDDING_DIM:
            raise RuntimeError(f"recognizer gives {raw.shape[1]}-d embeddings, need {EMBEDDING_DIM}")
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        unit = raw / np.maximum(norms, 1e-12)
        return [
            DetectedFace(
                bbox=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                det_score=float(b[4]),
                embedding=unit[i].astype(np.float32),
            )
            for i, b in enumerate(bboxes)
        ]
