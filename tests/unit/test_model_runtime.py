"""Which runtime runs the model (issue 16): OpenVINO on CPU actors by default, ONNX Runtime
with CUDA on GPU actors, the fp32 pack on request; a precision the CPU lacks is refused."""

from __future__ import annotations

import re

import pytest

from facepass.demo import photos
from facepass.errors import ModelLoadError
from facepass.settings import Settings
from facepass.vision.faces import FaceEmbedder, ModelPack
from facepass.vision.runtimes import detector_runtime, effective_runtime, variant_name

PACK = "model/scrfd_500m_bnkps+w600k_mbf"


def test_auto_is_openvino_on_cpu_and_onnxruntime_on_gpu() -> None:
    assert effective_runtime(Settings()) == "openvino"
    assert variant_name(Settings()) == "openvino-f32/cpu"
    gpu = Settings(gpus_per_actor=1)
    assert effective_runtime(gpu) == "onnxruntime"
    assert variant_name(gpu) == "onnxruntime-fp32/cuda"
    assert gpu.onnx_providers()[0] == "CUDAExecutionProvider"


def test_the_detector_moves_to_openvino_only_on_request() -> None:
    assert detector_runtime(Settings()) == "onnxruntime"
    both = Settings(openvino_detector=True)
    assert detector_runtime(both) == "openvino"
    assert variant_name(both) == "openvino-f32-det/cpu"
    assert detector_runtime(Settings(model_runtime="onnxruntime", openvino_detector=True)) == "onnxruntime"
    embedder = FaceEmbedder(both).load()
    assert embedder.active_providers == ["OpenVINO CPU (f32)"]
    assert len(embedder.embed(photos.load("t1.jpg"))) == 6


def test_the_fp32_pack_stays_available() -> None:
    fp32 = Settings(model_runtime="onnxruntime")
    assert effective_runtime(fp32) == "onnxruntime"
    embedder = FaceEmbedder(fp32).load()
    assert embedder.variant == "onnxruntime-fp32/cpu"  # no CUDA provider here


def test_a_generation_is_the_weights_whichever_build_runs_them() -> None:
    """The pack, its two files and a hash of their bytes: the same name on OpenVINO f32 or bf16
    and on ONNX Runtime (CPU or CUDA), the build recorded apart as the variant."""
    builds = [
        Settings(),
        Settings(model_runtime="onnxruntime"),
        Settings(openvino_precision="bf16"),
        Settings(openvino_detector=True),
        Settings(gpus_per_actor=1),
    ]
    names = {FaceEmbedder(s).model_name for s in builds}
    [name] = names
    assert re.fullmatch(rf"{re.escape(PACK)}#[0-9a-f]{{12}}", name), name
    assert len({variant_name(s) for s in builds}) == len(builds)


def test_openvino_on_gpu_actors_is_refused() -> None:
    with pytest.raises(ModelLoadError, match="CPU only"):
        effective_runtime(Settings(model_runtime="openvino", gpus_per_actor=1))


def test_bf16_is_named_and_refused_where_the_cpu_lacks_it() -> None:
    import openvino

    capabilities = openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    settings = Settings(openvino_precision="bf16")
    embedder = FaceEmbedder(settings)
    assert embedder.variant == "openvino-bf16/cpu"
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


def test_an_earlier_generation_is_found_by_its_weights_and_run_by_this_build() -> None:
    """A selfie during a change of generation is embedded by the weights that made the rows
    (this process's build of them); a legacy name (runtime suffix, no weights id) finds its pack
    by its file names; a weights id that no pack here has finds nothing."""
    from facepass.vision.generation_packs import pack_settings

    current = ModelPack.from_settings(Settings()).name
    found = pack_settings(Settings(model_runtime="onnxruntime"), current)
    assert found is not None and ModelPack.from_settings(found).name == current
    assert effective_runtime(found) == "onnxruntime"
    for legacy in (f"{PACK}@ov-f32", PACK):
        by_files = pack_settings(Settings(), legacy)
        assert by_files is not None and ModelPack.from_settings(by_files).name == current
    assert pack_settings(Settings(), f"{PACK}#000000000000") is None
