"""The ``FaceEmbedder`` façade: a model pack's faces and ArcFace vectors, photo by photo or in batches.

Models load from the pack folder on disk (``pack.py``); nothing is downloaded. Which build of
each network runs (ONNX Runtime or OpenVINO, precision, device) is measured at load or pinned
by the settings (``selection.py``); the networks and their batching are ``networks.py``.
"""

from __future__ import annotations

import logging
import threading
import warnings

from facepass.errors import NoFaceDetected
from facepass.models import DetectedFace
from facepass.settings import Settings
from facepass.vision.detector import ScrfdDetector
from facepass.vision.heap import keep_buffers_in_heap
from facepass.vision.images import BgrImage
from facepass.vision.networks import Loaded, embed_with
from facepass.vision.pack import ModelPack
from facepass.vision.recognizer import ArcFaceRecognizer
from facepass.vision.selection import Choice, choose
from facepass.vision.share_gate import GateVerdict
from facepass.vision.trials import FileTrialStore, TrialStore, default_cache_dir
from facepass.vision.variants import detect_hardware, requested

log = logging.getLogger(__name__)
# insightface's face_align calls a scikit-image API that is deprecated, not wrong.
warnings.filterwarnings("ignore", message=".*`estimate` is deprecated.*", category=FutureWarning)


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
