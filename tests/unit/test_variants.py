"""Which builds a machine lists and how settings pin one (issue 31): CPU builds by what
OpenVINO reports, GPU builds only with a GPU, the earlier runtime settings as pins, a pin the
hardware cannot run refused with the reason; one generation whichever build runs the weights."""

from __future__ import annotations

import re

import pytest

from facepass.builds import REFERENCE, Build, Variant
from facepass.errors import ModelLoadError
from facepass.settings import Settings
from facepass.vision.faces import FaceEmbedder
from facepass.vision.pack import ModelPack
from facepass.vision.variants import Hardware, candidates, check_runnable, detect_hardware, pinned, requested

PACK = "model/scrfd_500m_bnkps+w600k_mbf"
AVX2 = Hardware("AMD EPYC", ("avx2", "fma"), "aa", ("FP32", "INT8", "BIN"))
AMX = Hardware("Intel Xeon", ("avx512f", "avx512_bf16", "amx_bf16"), "bb", ("FP32", "BF16", "INT8"))
H100 = Hardware("AMD EPYC", ("avx2",), "aa", ("FP32",), gpu="NVIDIA H100 80GB HBM3")


def names(builds: list[Build]) -> list[str]:
    return [b.name for b in builds]


def test_a_cpu_lists_bf16_only_where_openvino_reports_it_and_never_cuda() -> None:
    detectors, recognizers = candidates(AVX2)
    assert names(recognizers) == ["openvino-f32/cpu", "onnxruntime-fp32/cpu"]
    assert names(detectors) == ["openvino-f32-fit/cpu", "onnxruntime-fp32-fit/cpu", "onnxruntime-fp32/cpu"]
    detectors, recognizers = candidates(AMX)
    assert names(recognizers) == ["openvino-bf16/cpu", "openvino-f32/cpu", "onnxruntime-fp32/cpu"]
    assert "openvino-bf16-fit/cpu" in names(detectors)
    assert not any("cuda" in b.name for b in detectors + recognizers)


def test_gpu_builds_are_listed_only_where_a_gpu_is() -> None:
    detectors, recognizers = candidates(H100)
    assert names(recognizers) == names(detectors) == ["onnxruntime-fp16/cuda", "onnxruntime-fp32/cuda"]
    assert H100.machine == "gpu:NVIDIA H100 80GB HBM3" and AVX2.machine.startswith("cpu:AMD EPYC|")
    # This machine: no GPU, whatever the settings ask for.
    here = detect_hardware(Settings(gpus_per_actor=1))
    assert here.gpu is None
    assert not any(b.device == "cuda" for b in candidates(here)[0] + candidates(here)[1])
    assert set(here.versions) == {"onnxruntime", "openvino"}


def test_variant_names_round_trip_and_bad_names_are_refused() -> None:
    fast = Variant(Build("onnxruntime", "fp32", fit=True), Build("openvino", "f32"))
    assert fast.name == "onnxruntime-fp32-fit/cpu+openvino-f32/cpu"
    assert Variant.parse(fast.name) == fast
    assert Variant.parse("onnxruntime-fp32/cpu") == REFERENCE and REFERENCE.is_reference
    assert Variant.parse("onnxruntime-fp16/cuda").recognizer == Build("onnxruntime", "fp16", "cuda")
    for bad in ("tensorrt-fp16/cuda", "openvino-int8/cpu", "openvino-f32", "a+openvino-f32-fit/cpu"):
        with pytest.raises(ModelLoadError):
            Variant.parse(bad)


def test_settings_pin_a_variant_and_auto_measures() -> None:
    assert pinned(Settings()) is None and requested(Settings()) == "auto"
    assert requested(Settings(model_runtime="onnxruntime")) == "onnxruntime-fp32/cpu"
    assert requested(Settings(model_runtime="onnxruntime", gpus_per_actor=1)) == "onnxruntime-fp32/cuda"
    # Without a usable GPU the ONNX Runtime pin runs on the CPU (as ONNX Runtime falls back).
    assert pinned(Settings(model_runtime="onnxruntime", gpus_per_actor=1), AVX2) == REFERENCE
    assert requested(Settings(model_runtime="openvino")) == "onnxruntime-fp32-fit/cpu+openvino-f32/cpu"
    assert requested(Settings(model_runtime="openvino", openvino_detector=True)) == "openvino-f32-fit/cpu"
    # The earlier releases' hand-set precision or detector still pin the fast path (CPU actors).
    legacy = Settings(openvino_precision="bf16")
    assert requested(legacy) == "onnxruntime-fp32-fit/cpu+openvino-bf16/cpu"
    assert requested(Settings(openvino_detector=True)) == "openvino-f32-fit/cpu"
    assert requested(Settings(openvino_precision="bf16", gpus_per_actor=1)) == "auto"
    pin = "openvino-f32-fit/cpu+onnxruntime-fp32/cpu"
    assert requested(Settings(model_variant=pin)) == pin
    with pytest.raises(ModelLoadError, match="CPU only"):
        pinned(Settings(model_runtime="openvino", gpus_per_actor=1))


def test_a_pin_the_hardware_cannot_run_is_refused_with_the_reason() -> None:
    with pytest.raises(ModelLoadError, match="no bf16"):
        check_runnable(Variant.parse("openvino-bf16/cpu"), AVX2)
    check_runnable(Variant.parse("openvino-bf16/cpu"), AMX)
    with pytest.raises(ModelLoadError, match="needs a GPU"):
        check_runnable(Variant.parse("onnxruntime-fp16/cuda"), AVX2)
    if not detect_hardware(Settings()).has_bf16:  # this machine: OpenVINO would drop the hint
        with pytest.raises(ModelLoadError, match="no bf16"):
            FaceEmbedder(Settings(model_variant="openvino-bf16/cpu")).load()


def test_the_variant_setting_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEPASS_MODEL_VARIANT", "onnxruntime-fp32/cpu")
    monkeypatch.setenv("FACEPASS_MODEL_BATCH_PHOTOS", "5")
    settings = Settings()
    assert settings.model_variant == "onnxruntime-fp32/cpu" and settings.model_batch_photos == 5
    monkeypatch.setenv("FACEPASS_MODEL_VARIANT", "tensorrt-int4/cpu")
    with pytest.raises(ValueError, match="not a build|no such build"):
        Settings()
    monkeypatch.delenv("FACEPASS_MODEL_VARIANT")
    monkeypatch.setenv("FACEPASS_MODEL_RUNTIME", "tensorrt")
    with pytest.raises(ValueError):
        Settings()


def test_the_reference_pin_loads_the_fp32_pack_without_a_gate(tmp_path) -> None:  # type: ignore[no-untyped-def]
    embedder = FaceEmbedder(Settings(model_runtime="onnxruntime", gate_cache_dir=tmp_path)).load()
    assert embedder.variant == "onnxruntime-fp32/cpu" and embedder.runtime == "onnxruntime"
    assert embedder.gate is None and embedder.choice is not None and embedder.choice.how == "pinned"
    assert embedder.active_providers == ["CPUExecutionProvider"]


def test_a_generation_is_the_weights_whichever_build_runs_them() -> None:
    """The pack, its two files and a hash of their bytes: the same name for every pin."""
    builds = [
        Settings(),
        Settings(model_runtime="onnxruntime"),
        Settings(openvino_precision="bf16", model_runtime="openvino"),
        Settings(model_variant="openvino-f32-fit/cpu"),
        Settings(gpus_per_actor=1),
    ]
    [name] = {FaceEmbedder(s).model_name for s in builds}
    assert re.fullmatch(rf"{re.escape(PACK)}#[0-9a-f]{{12}}", name), name
    assert len({requested(s) for s in builds}) == len(builds) - 1  # auto twice (CPU, GPU actor)


def test_an_earlier_generation_is_found_by_its_weights() -> None:
    """A selfie during a change of generation is embedded by the weights that made the rows;
    a legacy name (runtime suffix, no weights id) finds its pack by its file names; a weights
    id that no pack here has finds nothing."""
    from facepass.vision.generation_packs import pack_settings

    current = ModelPack.from_settings(Settings()).name
    found = pack_settings(Settings(model_runtime="onnxruntime"), current)
    assert found is not None and ModelPack.from_settings(found).name == current
    assert found.model_runtime == "onnxruntime"
    for legacy in (f"{PACK}@ov-f32", PACK):
        by_files = pack_settings(Settings(), legacy)
        assert by_files is not None and ModelPack.from_settings(by_files).name == current
    assert pack_settings(Settings(), f"{PACK}#000000000000") is None
