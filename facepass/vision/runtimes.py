"""One ONNX file behind one call: ``session.run(batch) -> outputs``, on ONNX Runtime or OpenVINO.

Which runtime an embedder uses is a choice of the settings (``model_runtime``):
ONNX Runtime (CPU, or CUDA when the actor holds a GPU) runs the original fp32
pack; on CPU the fast path runs the recognizer (and, on request, the detector)
of the same ONNX files on OpenVINO, faster on this kind of core (see the
README's "CPU fast path"). Its outputs differ from ONNX Runtime's in the last
bits only (the accuracy gate measures it), so every build of the same weights
writes into one generation (``ModelPack.name``); which build made a photo's
vectors is recorded beside it (``variant_name``).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from facepass.errors import ModelLoadError
from facepass.settings import CUDA_PROVIDER, Settings

ONNXRUNTIME = "onnxruntime"
OPENVINO = "openvino"
Array = npt.NDArray[np.float32]


class ModelSession(Protocol):
    """A loaded network: NCHW float32 batch in, its outputs (in the file's order) out."""

    providers: list[str]

    def run(self, batch: Array) -> list[Array]: ...


def effective_runtime(settings: Settings) -> str:
    """``auto``: ONNX Runtime with CUDA on GPU actors, OpenVINO on CPU actors."""
    if settings.model_runtime == "auto":
        return ONNXRUNTIME if settings.uses_gpu else OPENVINO
    if settings.model_runtime == OPENVINO and settings.uses_gpu:
        raise ModelLoadError(
            "FACEPASS_MODEL_RUNTIME=openvino runs on CPU only; GPU actors (FACEPASS_GPUS_PER_ACTOR > 0) "
            "need onnxruntime (or auto)"
        )
    return settings.model_runtime


def detector_runtime(settings: Settings) -> str:
    """The fast path keeps the detector on ONNX Runtime (same boxes as fp32) unless asked."""
    runtime = effective_runtime(settings)
    return OPENVINO if runtime == OPENVINO and settings.openvino_detector else ONNXRUNTIME


def variant_name(settings: Settings, device: str | None = None) -> str:
    """Which build of the pack's weights makes the vectors: runtime, precision, device.
    ``openvino-f32/cpu`` (the CPU fast path: recognizer on OpenVINO), ``openvino-f32-det/cpu``
    (the detector too), ``onnxruntime-fp32/cuda`` or ``/cpu``. Recorded with every photo; not
    part of the generation (the weights are: ``ModelPack.name``)."""
    if effective_runtime(settings) == OPENVINO:
        detector = "-det" if detector_runtime(settings) == OPENVINO else ""
        return f"openvino-{settings.openvino_precision}{detector}/cpu"
    return f"onnxruntime-fp32/{device or ('cuda' if settings.uses_gpu else 'cpu')}"


class OrtSession:
    def __init__(self, path: Path, settings: Settings, threads: int) -> None:
        import onnxruntime

        providers = settings.onnx_providers()
        if CUDA_PROVIDER in providers and hasattr(onnxruntime, "preload_dlls"):
            # CUDA/cuDNN from the `gpu` extra's nvidia-* wheels (site-packages): a GPU node
            # then needs only the driver. Without them ORT prints why and falls back to CPU.
            onnxruntime.preload_dlls(cuda=True, cudnn=True)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # The arena keeps the largest batch's memory forever (a 22-face photo: +90 MB per actor).
        options.enable_cpu_mem_arena = False
        self._session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=providers)
        self._input = self._session.get_inputs()[0].name
        self.providers: list[str] = list(self._session.get_providers())

    def run(self, batch: Array) -> list[Array]:
        outputs: list[Array] = self._session.run(None, {self._input: batch})
        return outputs


class OpenVinoSession:
    """The ONNX file compiled for the CPU by OpenVINO, one thread per actor like ORT's.

    Input shapes stay dynamic (photos of any size, batches of any length); one infer
    request per session, behind a lock (an embedder serves one compute thread, but a
    request must never be shared by two calls at once).
    """

    def __init__(self, path: Path, settings: Settings, threads: int) -> None:
        import openvino

        core = openvino.Core()
        precision = settings.openvino_precision
        capabilities = [str(c).upper() for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
        if precision == "bf16" and "BF16" not in capabilities:
            # A hint the CPU cannot follow is silently dropped by OpenVINO; the vectors would
            # then be named for a precision that did not make them.
            raise ModelLoadError(
                f"this CPU has no {precision} inference (OpenVINO reports {capabilities}); "
                "set FACEPASS_OPENVINO_PRECISION=f32"
            )
        config: dict[str, Any] = {
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            # OpenVINO pins its threads to cores by default, every process to the same first
            # core: two actors on one node then share one core (measured: 0.55 of twice one
            # process side by side, against 0.83 with ONNX Runtime). The OS places them.
            "ENABLE_CPU_PINNING": False,
            "INFERENCE_PRECISION_HINT": precision,
        }
        self._compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self._request = self._compiled.create_infer_request()
        self._outputs = len(self._compiled.outputs)
        self._lock = threading.Lock()
        self.providers = [f"OpenVINO CPU ({precision})"]

    def run(self, batch: Array) -> list[Array]:
        with self._lock:
            self._request.infer([batch])
            return [np.array(self._request.get_output_tensor(i).data) for i in range(self._outputs)]


def open_session(path: Path, settings: Settings, threads: int, runtime: str | None = None) -> ModelSession:
    if (runtime or effective_runtime(settings)) == OPENVINO:
        return OpenVinoSession(path, settings, threads)
    return OrtSession(path, settings, threads)
