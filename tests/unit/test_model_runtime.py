"""Which runtime runs the model (issue 16): OpenVINO on CPU actors by default, ONNX Runtime
with CUDA on GPU actors, the fp32 pack on request; a precision the CPU lacks is refused."""

from __future__ import annotations

import pytest

from facepass.demo import photos
from facepass.errors import ModelLoadError
from facepass.settings import Settings
from facepass.vision.faces import FaceEmbedder
from facepass.vision.runtimes import detector_runtime, effective_runtime, generation_suffix


def test_auto_is_openvino_on_cpu_and_onnxruntime_on_gpu() -> None:
    assert effective_runtime(Settings()) == "openvino"
    assert generation_suffix(Settings()) == "@ov-f32"
    gpu = Settings(gpus_per_actor=1)
    assert effective_runtime(gpu) == "onnxruntime"
    assert generation_suffix(gpu) == ""
    assert gpu.onnx_providers()[0] == "CUDAExecutionProvider"


def test_the_detector_moves_to_openvino_only_on_request() -> None:
    assert detector_runtime(Settings()) == "onnxruntime"
    both = Settings(openvino_detector=True)
    assert detector_runtime(both) == "openvino"
    assert generation_suffix(both) == "@ov-f32-det"
    assert detector_runtime(Settings(model_runtime="onnxruntime", openvino_detector=True)) == "onnxruntime"
    embedder = FaceEmbedder(both).load()
    assert embedder.active_providers == ["OpenVINO CPU (f32)"]
    assert len(embedder.embed(photos.load("t1.jpg"))) == 6


def test_the_fp32_pack_stays_available() -> None:
    fp32 = Settings(model_runtime="onnxruntime")
    assert effective_runtime(fp32) == "onnxruntime"
    assert FaceEmbedder(fp32).model_name == "model/scrfd_500m_bnkps+w600k_mbf"


def test_openvino_on_gpu_actors_is_refused() -> None:
    with pytest.raises(ModelLoadError, match="CPU only"):
        effective_runtime(Settings(model_runtime="openvino", gpus_per_actor=1))


def test_bf16_is_named_and_refused_where_the_cpu_lacks_it() -> None:
    import openvino

    capabilities = openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    settings = Settings(openvino_precision="bf16")
    embedder = FaceEmbedder(settings)
    assert embedder.model_name.endswith("@ov-bf16")
    if "BF16" in capabilities:
        assert embedder.load().active_providers == ["CPUExecutionProvider", "OpenVINO CPU (bf16)"]
    else:  # this machine: OpenVINO would drop the hint and run f32 under a bf16 name
        with pytest.raises(ModelLoadError, match="no bf16"):
            embedder.load()


def test_runtime_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEPASS_MODEL_RUNTIME", "onnxruntime")
    monkeypatch.setenv("FACEPASS_MODEL_BATCH_PHOTOS", "5")
    settings = Settings()
    assert settings.model_runtime == "onnxruntime" and settings.model_batch_photos == 5
    monkeypatch.setenv("FACEPASS_MODEL_RUNTIME", "tensorrt")
    with pytest.raises(ValueError):
        Settings()
