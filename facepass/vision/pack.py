"""A model pack's identity: its two ONNX files on disk and the name of its weights' generation.

Below the runtime adapters and the networks: ``runtimes.py`` names its fp16 copy by the weights
id, the index keys every vector by the pack's name. Nothing here loads a network.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

from facepass.settings import Settings

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

    @property
    def weights(self) -> str:
        """The name without the pack's folder: "<detector>+<recognizer>#<weights id>". What a
        build's speed and the sharing gate's verdict depend on (the files' bytes), so one
        measurement serves every pack folder that holds the same files."""
        return self.name.rsplit("/", 1)[-1]
