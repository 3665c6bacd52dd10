"""The builds of a pack's two networks this machine can run (issue 31), and the one a setting pins.

The names (``Build``, ``Variant``, the reference) live in ``facepass/builds.py``, below the
settings. Which builds are listed depends on the hardware, asked at load: on a GPU actor with a GPU,
CUDA fp16 and fp32 (ONNX Runtime's CUDA provider); on a CPU, OpenVINO bf16 where OpenVINO
reports BF16, OpenVINO f32, ONNX Runtime fp32. Which one runs is measured
(``facepass/vision/selection.py``) unless a setting pins it (``FACEPASS_MODEL_VARIANT``, or
the older ``FACEPASS_MODEL_RUNTIME`` / ``FACEPASS_OPENVINO_PRECISION`` / ``..._DETECTOR``).
"""

from __future__ import annotations

import functools
import hashlib
import platform
import shutil
import subprocess
from dataclasses import dataclass, field

from facepass.builds import AUTO, CUDA_PROVIDER, ONNXRUNTIME, OPENVINO, REFERENCE_BUILD, Build, Variant
from facepass.errors import ModelLoadError
from facepass.settings import Settings

# The CPU flags that decide which builds exist and how fast they run (shown with the choice).
CPU_FLAGS_SHOWN = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_bf16",
    "amx_int8",
    "amx_fp16",
)


@dataclass(frozen=True, slots=True)
class Hardware:
    """What this process can run on: the CPU (model, flags, OpenVINO's capabilities) and the
    GPU it holds, if any."""

    cpu_model: str
    cpu_flags: tuple[str, ...]  # CPU_FLAGS_SHOWN that the CPU has
    cpu_flags_hash: str  # of every flag: a build's speed and bits depend on the instructions
    openvino_capabilities: tuple[str, ...]
    gpu: str | None = None  # the GPU's name where the actor holds one and CUDA can use it
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def machine(self) -> str:
        """The key a measurement is kept under: the GPU's model, else the CPU's."""
        if self.gpu:
            return f"gpu:{self.gpu}"
        return f"cpu:{self.cpu_model}|{self.cpu_flags_hash}"

    @property
    def runtimes(self) -> str:
        return ", ".join(f"{name} {version}" for name, version in sorted(self.versions.items()))

    @property
    def has_bf16(self) -> bool:
        return "BF16" in self.openvino_capabilities

    def as_json(self) -> dict[str, object]:
        return {
            "cpu_model": self.cpu_model,
            "cpu_flags": list(self.cpu_flags),
            "openvino_capabilities": list(self.openvino_capabilities),
            "gpu": self.gpu,
            "runtimes": self.runtimes,
        }


def cpu_fields() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ("model name", "flags", "cpu family", ...);
    empty where there is none."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if not line.strip():
                    break  # the first processor's block ends here
                key, sep, value = line.partition(":")
                if sep:
                    fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


_CPU_ID = (("cpu family", "family"), ("model", "model"), ("stepping", "stepping"))


def cpu_id(fields: dict[str, str] | None = None) -> str:
    """Vendor, family, model and stepping, e.g. "AuthenticAMD family 25 model 17 stepping 1":
    one model name ("AMD EPYC") covers several generations."""
    info = cpu_fields() if fields is None else fields
    parts = [info.get("vendor_id", platform.machine())]
    parts += [f"{label} {info[key]}" for key, label in _CPU_ID if key in info]
    return " ".join(parts)


def _cpuinfo() -> tuple[str, list[str]]:
    fields = cpu_fields()
    model = fields.get("model name", "")
    return model or platform.processor() or platform.machine(), sorted(fields.get("flags", "").split())


def _openvino_capabilities() -> tuple[str, ...]:
    import openvino

    return tuple(str(c).upper() for c in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def gpu_name() -> str | None:
    """The first visible NVIDIA GPU's name (``nvidia-smi``), None without one."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError):
        return None
    names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return names[0] if out.returncode == 0 and names else None


def runtime_versions() -> dict[str, str]:
    import onnxruntime
    import openvino

    return {ONNXRUNTIME: onnxruntime.__version__, OPENVINO: openvino.__version__}


@functools.lru_cache(maxsize=2)
def _cpu() -> tuple[str, tuple[str, ...], str, tuple[str, ...]]:
    model, flags = _cpuinfo()
    digest = hashlib.sha256(" ".join(flags).encode()).hexdigest()[:16]
    shown = tuple(f for f in CPU_FLAGS_SHOWN if f in flags)
    return model, shown, digest, _openvino_capabilities()


def detect_hardware(settings: Settings) -> Hardware:
    """The hardware of this process, asked now (a GPU only where the actor holds one and
    ONNX Runtime has its CUDA provider)."""
    import onnxruntime

    model, shown, digest, capabilities = _cpu()
    gpu = None
    if settings.uses_gpu and CUDA_PROVIDER in onnxruntime.get_available_providers():
        gpu = gpu_name()
    return Hardware(model, shown, digest, capabilities, gpu, runtime_versions())


def candidates(hardware: Hardware) -> tuple[list[Build], list[Build]]:
    """(detector builds, recognizer builds) this hardware can run. On a GPU the CUDA builds
    (the detector keeps the square input there: photos of any aspect share one batch)."""
    if hardware.gpu:
        cuda = [Build(ONNXRUNTIME, "fp16", "cuda"), Build(ONNXRUNTIME, "fp32", "cuda")]
        return list(cuda), list(cuda)
    recognizers = [Build(OPENVINO, "bf16")] if hardware.has_bf16 else []
    recognizers += [Build(OPENVINO, "f32"), REFERENCE_BUILD]
    detectors = [Build(b.runtime, b.precision, b.device, fit=True) for b in recognizers] + [REFERENCE_BUILD]
    return detectors, recognizers


def pinned(settings: Settings, hardware: Hardware | None = None) -> Variant | None:
    """The variant a setting pins, None for ``auto`` (measured at load). With the hardware
    known, ``FACEPASS_MODEL_RUNTIME=onnxruntime`` on a GPU actor without a usable GPU runs on
    the CPU (as ONNX Runtime itself falls back)."""
    if settings.model_variant != AUTO:
        return Variant.parse(settings.model_variant)
    if settings.model_runtime == ONNXRUNTIME:
        gpu = settings.uses_gpu and (hardware is None or hardware.gpu is not None)
        build = Build(ONNXRUNTIME, "fp32", "cuda" if gpu else "cpu")
        return Variant(build, build)
    legacy_fast_path = (
        settings.model_runtime == AUTO
        and not settings.uses_gpu
        and (settings.openvino_precision != "f32" or settings.openvino_detector)
    )
    if settings.model_runtime == OPENVINO or legacy_fast_path:
        # FACEPASS_OPENVINO_PRECISION / _DETECTOR set by hand: the earlier releases' fast path
        # at that precision, pinned (the machine does not overrule a setting someone made).
        if settings.uses_gpu:
            raise ModelLoadError(
                "FACEPASS_MODEL_RUNTIME=openvino runs on CPU only; GPU actors (FACEPASS_GPUS_PER_ACTOR > 0) "
                "need onnxruntime (or auto)"
            )
        recognizer = Build(OPENVINO, settings.openvino_precision)
        runtime = OPENVINO if settings.openvino_detector else ONNXRUNTIME
        precision = settings.openvino_precision if settings.openvino_detector else "fp32"
        return Variant(Build(runtime, precision, "cpu", fit=True), recognizer)
    return None


def requested(settings: Settings) -> str:
    """What the settings ask for: ``auto`` or the pinned variant's name (the pool replaces an
    actor that was asked for something else)."""
    variant = pinned(settings)
    return variant.name if variant else AUTO


def check_runnable(variant: Variant, hardware: Hardware) -> None:
    """A pinned variant this hardware cannot run is refused with the reason (OpenVINO drops a
    bf16 hint the CPU cannot follow: the vectors would be named for a precision that did not
    make them)."""
    for build in (variant.detector, variant.recognizer):
        if build.precision == "bf16" and not hardware.has_bf16:
            raise ModelLoadError(
                f"this CPU has no bf16 inference (OpenVINO reports {list(hardware.openvino_capabilities)}); "
                f"pin another variant than {variant.name} (or leave FACEPASS_MODEL_VARIANT=auto)"
            )
        if build.device == "cuda" and not hardware.gpu:
            raise ModelLoadError(f"{variant.name} needs a GPU; this actor holds none")
