"""A pack's two networks as builds run them, and a variant's pair of them embedding photos.

Above the runtime adapters (``runtimes.py``) and the networks (``detector.py``,
``recognizer.py``); below the chooser that times them (``selection.py``) and the
``FaceEmbedder`` façade (``faces.py``). Several photos go through the detector as one batch,
and all their faces through the recognizer as one batch; alignment is InsightFace's
``norm_crop``.
"""

from __future__ import annotations

from dataclasses import dataclass

from facepass.builds import CUDA_PROVIDER, Build, Variant
from facepass.errors import ModelLoadError
from facepass.models import DetectedFace
from facepass.settings import Settings
from facepass.vision.detector import ScrfdDetector
from facepass.vision.images import BgrImage
from facepass.vision.pack import ModelPack
from facepass.vision.quality import face_quality
from facepass.vision.recognizer import ArcFaceRecognizer
from facepass.vision.runtimes import ModelSession, open_session


@dataclass(slots=True)
class Loaded:
    """A variant's two networks, ready to embed."""

    variant: Variant
    detector: ScrfdDetector
    recognizer: ArcFaceRecognizer
    providers: list[str]


class Networks:
    """The pack's networks as each build runs them, each (runtime, precision, device) loaded
    once (builds that differ only in the detector's ``fit`` share it)."""

    def __init__(self, pack: ModelPack, settings: Settings, threads: int) -> None:
        self.pack = pack
        self.settings = settings
        self.threads = threads
        self._sessions: dict[tuple[str, str], ModelSession] = {}
        self._recognizers: dict[tuple[str, str, str], ArcFaceRecognizer] = {}

    def session(self, network: str, build: Build) -> ModelSession:
        key = (network, build.name.replace("-fit", ""))
        if key not in self._sessions:
            path = self.pack.detector if network == "detector" else self.pack.recognizer
            session = open_session(path, build, self.threads, self.settings)
            if build.device == "cuda" and CUDA_PROVIDER not in session.providers:
                raise ModelLoadError(
                    f"{build.name}: ONNX Runtime did not load its CUDA provider ({session.providers})"
                )
            self._sessions[key] = session
        return self._sessions[key]

    def detector(self, build: Build) -> ScrfdDetector:
        session = self.session("detector", build)
        return ScrfdDetector(session, self.settings.det_size, self.settings.det_thresh, fit=build.fit)

    def recognizer(self, build: Build) -> ArcFaceRecognizer:
        if build.session_key not in self._recognizers:
            session = self.session("recognizer", build)
            self._recognizers[build.session_key] = ArcFaceRecognizer(session, self.pack.recognizer)
        return self._recognizers[build.session_key]

    def assemble(self, variant: Variant) -> Loaded:
        detector, recognizer = self.detector(variant.detector), self.recognizer(variant.recognizer)
        providers = list(dict.fromkeys(detector.session.providers + recognizer.session.providers))
        return Loaded(variant, detector, recognizer, providers)


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
    landmarks = [kps for detections in found for kps in detections.landmarks]
    quality = [face_quality(crop, kps) for crop, kps in zip(crops, landmarks, strict=True)]
    faces: list[list[DetectedFace]] = []
    at = 0
    for detections in found:
        faces.append(
            [
                DetectedFace(
                    bbox=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                    det_score=float(b[4]),
                    embedding=unit[at + i],
                    sharpness=quality[at + i].sharpness,
                    yaw=quality[at + i].yaw,
                )
                for i, b in enumerate(detections.boxes)
            ]
        )
        at += len(detections)
    return faces
