"""The names of a pack's builds and variants: a leaf below the settings and the vision code.

A build is one network on one runtime at one precision on one device: ``openvino-bf16/cpu``,
``openvino-f32/cpu``, ``onnxruntime-fp32/cpu``, ``onnxruntime-fp16/cuda``. A detector build
may also fit its input to the photo's aspect (``-fit``: less padding to convolve) instead of
InsightFace's padded square. A variant is a detector build and a recognizer build:
``onnxruntime-fp32-fit/cpu+openvino-f32/cpu``; the reference (InsightFace's own arithmetic:
ONNX Runtime fp32 on the CPU, square input) is named ``onnxruntime-fp32/cpu``.

This module knows names only (it imports nothing of the project but its errors): the settings
check ``FACEPASS_MODEL_VARIANT`` with it, the runtimes and the chooser
(``facepass/vision/variants.py``, ``selection.py``) build on it.
"""

from __future__ import annotations

from dataclasses import dataclass

from facepass.errors import ModelLoadError

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
ONNXRUNTIME = "onnxruntime"
OPENVINO = "openvino"
AUTO = "auto"


@dataclass(frozen=True, slots=True, order=True)
class Build:
    runtime: str  # onnxruntime | openvino
    precision: str  # fp32 (ONNX Runtime) | fp16 (ONNX Runtime, CUDA) | f32 | bf16 (OpenVINO)
    device: str = "cpu"  # cpu | cuda
    fit: bool = False  # detector only: the input keeps the photo's aspect

    @property
    def name(self) -> str:
        return f"{self.runtime}-{self.precision}{'-fit' if self.fit else ''}/{self.device}"

    @property
    def session_key(self) -> tuple[str, str, str]:
        """Builds that differ only in ``fit`` share one loaded network."""
        return (self.runtime, self.precision, self.device)

    @classmethod
    def parse(cls, text: str) -> Build:
        head, _, device = text.strip().partition("/")
        parts = head.split("-")
        fit = parts[-1] == "fit"
        if fit:
            parts = parts[:-1]
        if len(parts) != 2 or device not in ("cpu", "cuda"):
            raise ModelLoadError(f"{text!r} is not a build (e.g. openvino-f32/cpu, onnxruntime-fp16/cuda)")
        build = cls(parts[0], parts[1], device, fit)
        if build.session_key not in _KNOWN:
            raise ModelLoadError(f"{text!r}: no such build; known: {', '.join(sorted(_known_names()))}")
        return build


_KNOWN = {
    (ONNXRUNTIME, "fp32", "cpu"),
    (ONNXRUNTIME, "fp32", "cuda"),
    (ONNXRUNTIME, "fp16", "cuda"),
    (OPENVINO, "f32", "cpu"),
    (OPENVINO, "bf16", "cpu"),
}


def _known_names() -> set[str]:
    return {f"{r}-{p}/{d}" for r, p, d in _KNOWN}


REFERENCE_BUILD = Build(ONNXRUNTIME, "fp32", "cpu")


@dataclass(frozen=True, slots=True)
class Variant:
    detector: Build
    recognizer: Build

    @property
    def name(self) -> str:
        """One build's name where both networks run it (``-fit``: the detector's input fitted)."""
        if self.detector.session_key == self.recognizer.session_key:
            return self.detector.name
        return f"{self.detector.name}+{self.recognizer.name}"

    @property
    def is_reference(self) -> bool:
        return self == REFERENCE

    @classmethod
    def parse(cls, text: str) -> Variant:
        """``<detector build>+<recognizer build>``, or one build for both networks."""
        detector, plus, recognizer = text.partition("+")
        det = Build.parse(detector)
        rec = Build.parse(recognizer) if plus else Build(det.runtime, det.precision, det.device)
        if rec.fit:
            raise ModelLoadError(f"{text!r}: only the detector fits its input (-fit)")
        return cls(det, rec)


REFERENCE = Variant(REFERENCE_BUILD, REFERENCE_BUILD)
REFERENCE_VARIANT = REFERENCE.name
