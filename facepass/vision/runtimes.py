"""One ONNX file behind one call: ``session.run(batch) -> outputs``, on ONNX Runtime or OpenVINO.

Which build runs each network (runtime, precision, device) is a ``Build``
(``facepass/builds.py``); which builds an embedder runs is measured at load or pinned
by the settings (``facepass/vision/selection.py``). Outputs of the builds differ from the
reference's (ONNX Runtime fp32 on the CPU) in the last bits only where the sharing gate says
so: every build that passes it writes into the weights' generation (``ModelPack.name``); which
build made a photo's vectors is recorded beside it (the variant's name).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from facepass.builds import CPU_PROVIDER, CUDA_PROVIDER, OPENVINO, Build
from facepass.errors import ModelLoadError
from facepass.settings import Settings
from facepass.vision.pack import weights_id

log = logging.getLogger(__name__)
Array = npt.NDArray[np.float32]


class ModelSession(Protocol):
    """A loaded network: NCHW float32 batch in, its outputs (in the file's order) out."""

    providers: list[str]

    def run(self, batch: Array) -> list[Array]: ...


def fp16_copy(path: Path, cache_dir: Path) -> Path:
    """The network with fp16 weights and arithmetic (float32 in and out), made once next to
    the trial cache with ONNX Runtime's own converter (for the CUDA fp16 build)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    target = cache_dir / "fp16" / f"{path.stem}-{weights_id(path)}-fp16.onnx"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        model = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
        partial = target.with_suffix(".partial")
        onnx.save(model, str(partial))
        partial.replace(target)
    return target


class OrtSession:
    def __init__(self, path: Path, build: Build, threads: int) -> None:
        import onnxruntime

        providers = [CUDA_PROVIDER, CPU_PROVIDER] if build.device == "cuda" else [CPU_PROVIDER]
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

    def __init__(self, path: Path, build: Build, threads: int) -> None:
        import openvino

        core = openvino.Core()
        precision = build.precision
        capabilities = [str(c).upper() for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
        if precision == "bf16" and "BF16" not in capabilities:
            # A hint the CPU cannot follow is silently dropped by OpenVINO; the vectors would
            # then be named for a precision that did not make them.
            raise ModelLoadError(
                f"this CPU has no {precision} inference (OpenVINO reports {capabilities}); "
                "pin another variant (FACEPASS_MODEL_VARIANT) or leave it auto"
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


def open_session(path: Path, build: Build, threads: int, settings: Settings) -> ModelSession:
    """The network of ``path`` as ``build`` runs it."""
    if build.runtime == OPENVINO:
        return OpenVinoSession(path, build, threads)
    if build.precision == "fp16":
        cache = settings.gate_cache_dir or Path.home() / ".cache" / "facepass" / "accuracy-gate"
        path = fp16_copy(path, cache)
    return OrtSession(path, build, threads)
