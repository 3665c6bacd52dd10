"""facepass.vision.faces: detection + ArcFace embeddings on real packaged photos."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from facepass.builds import Variant
from facepass.demo import photos
from facepass.errors import NoFaceDetected
from facepass.models import EMBEDDING_DIM, DetectedFace
from facepass.settings import Settings
from facepass.vision.faces import FaceEmbedder
from facepass.vision.images import decode_image
from facepass.vision.pack import ModelPack, weights_id, weights_of

# Exact with the default pack, det_size 640 and det_thresh 0.5 (design.md lists the same numbers).
FACE_COUNTS = {"t1.jpg": 6, "players.jpg": 22, "gdp.jpg": 5, "yaoming.jpg": 1}


@pytest.fixture(scope="module")
def faces_of(embedder: FaceEmbedder) -> dict[str, list[DetectedFace]]:
    return {name: embedder.embed(photos.load(name)) for name in FACE_COUNTS}


@pytest.fixture(scope="module")
def fp32() -> FaceEmbedder:
    return FaceEmbedder(Settings(model_runtime="onnxruntime")).load()


@pytest.fixture(scope="module")
def face_analysis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """InsightFace's own FaceAnalysis on the same two ONNX files (symlinked, nothing downloaded)."""
    from insightface.app import FaceAnalysis

    pack = ModelPack.from_settings(Settings())
    folder: Path = tmp_path_factory.mktemp("pack")
    for model in (pack.detector, pack.recognizer):
        os.symlink(model, folder / model.name)
    analysis = FaceAnalysis(name=str(folder), providers=["CPUExecutionProvider"])
    analysis.prepare(ctx_id=0, det_size=(640, 640))
    yield analysis


def _centre(bbox: Any) -> np.ndarray:
    return np.array([(bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2], dtype=np.float64)


def test_model_name(embedder: FaceEmbedder) -> None:
    """The CPU default is the variant measured fastest here that passes the gate: a build of the
    pack's weights, the same generation as the fp32 pack (the weights name it)."""
    assert ModelPack.from_settings(Settings()).name == embedder.model_name
    assert embedder.choice is not None and embedder.variant == embedder.choice.variant
    assert embedder.runtime == Variant.parse(embedder.variant).recognizer.runtime
    pack = ModelPack.from_settings(Settings())
    expected = f"model/scrfd_500m_bnkps+w600k_mbf#{weights_id(pack.detector, pack.recognizer)}"
    assert embedder.model_name == expected
    assert FaceEmbedder(Settings(model_runtime="onnxruntime")).model_name == expected


def test_model_pack_files() -> None:
    pack = ModelPack.from_settings(Settings())
    assert pack.detector.name == "scrfd_500m_bnkps.onnx" and pack.detector.is_file()
    assert pack.recognizer.name == "w600k_mbf.onnx" and pack.recognizer.is_file()


def test_model_pack_honours_configured_files(tmp_path: Path) -> None:
    pack = ModelPack.from_settings(Settings())
    folder = tmp_path / "mypack"
    folder.mkdir()
    os.symlink(pack.detector, folder / "my_det.onnx")
    os.symlink(pack.recognizer, folder / "my_rec.onnx")
    custom = Settings(
        model_root=tmp_path, model_name="mypack", detector_file="my_det.onnx", recognizer_file="my_rec.onnx"
    )
    chosen = ModelPack.from_settings(custom)
    assert chosen.detector == folder / "my_det.onnx"
    weights = weights_id(pack.detector, pack.recognizer)  # the same bytes: the same weights id
    assert chosen.name == f"mypack/my_det+my_rec#{weights}"
    fp32 = ModelPack.from_settings(custom.model_copy(update={"model_runtime": "onnxruntime"}))
    assert fp32.name == chosen.name


def test_other_weights_under_the_same_names_are_another_generation(tmp_path: Path) -> None:
    """The same pack and file names with other bytes in the recognizer: another weights id."""
    pack = ModelPack.from_settings(Settings())
    folder = tmp_path / "model"
    folder.mkdir()
    os.symlink(pack.detector, folder / pack.detector.name)
    changed = bytearray(pack.recognizer.read_bytes())
    changed[-1] ^= 0xFF
    (folder / pack.recognizer.name).write_bytes(bytes(changed))
    other = ModelPack.from_settings(Settings(model_root=tmp_path))
    assert other.name != pack.name and weights_of(other.name) == weights_of(pack.name)


def test_model_pack_without_models_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuntimeError, match="no detector"):
        ModelPack.from_settings(Settings(model_root=tmp_path, model_name="empty"))


def test_load_is_idempotent(embedder: FaceEmbedder) -> None:
    detector, recognizer = embedder.detector, embedder.recognizer
    assert detector is not None and recognizer is not None
    assert embedder.load() is embedder
    assert embedder.detector is detector
    assert embedder.recognizer is recognizer
    # The variant measured fastest here that passes the gate; what each network asks for and uses.
    assert embedder.choice is not None and embedder.variant == embedder.choice.variant
    variant = Variant.parse(embedder.variant)
    runtimes = {variant.detector.runtime, variant.recognizer.runtime}
    assert ("OpenVINO" in embedder.requested_providers) == ("openvino" in runtimes)
    assert any("OpenVINO CPU" in p for p in embedder.active_providers) == ("openvino" in runtimes)


def test_embed_loads_lazily(embedder: FaceEmbedder) -> None:
    fresh = FaceEmbedder(Settings())  # reads the variant ``embedder`` measured
    assert fresh.detector is None
    assert len(fresh.embed(photos.load("yaoming.jpg"))) == 1
    assert fresh.detector is not None


@pytest.mark.parametrize(("name", "count"), sorted(FACE_COUNTS.items()))
def test_face_counts(faces_of: dict[str, list[DetectedFace]], name: str, count: int) -> None:
    assert len(faces_of[name]) == count


@pytest.mark.parametrize("name", sorted(FACE_COUNTS))
def test_every_face_is_unit_512d_with_a_sane_box(faces_of: dict[str, list[DetectedFace]], name: str) -> None:
    h, w = photos.load(name).shape[:2]
    for face in faces_of[name]:
        assert face.embedding.dtype == np.float32
        assert face.embedding.shape == (EMBEDDING_DIM,)
        assert float(np.linalg.norm(face.embedding)) == pytest.approx(1.0, abs=1e-5)
        assert np.all(np.isfinite(face.embedding))
        assert 0.5 <= face.det_score <= 1.0
        x1, y1, x2, y2 = face.bbox
        assert x1 < x2 and y1 < y2
        assert -0.1 * w < x1 and x2 < 1.1 * w and -0.1 * h < y1 and y2 < 1.1 * h


def test_no_face_raises(embedder: FaceEmbedder) -> None:
    with pytest.raises(NoFaceDetected) as info:
        embedder.embed(photos.load("mask_blue.jpg"))
    assert info.value.message("mask.jpg") == "Лицо не обнаружено в фото mask.jpg"
    assert info.value.transient is False


def test_blank_image_has_no_face(embedder: FaceEmbedder) -> None:
    with pytest.raises(NoFaceDetected):
        embedder.embed(np.full((480, 640, 3), 127, np.uint8))


@pytest.mark.parametrize("name", sorted(FACE_COUNTS))
def test_embeddings_match_insightface_face_analysis(
    embedder: FaceEmbedder, face_analysis: Any, faces_of: dict[str, list[DetectedFace]], name: str
) -> None:
    image = photos.load(name)
    theirs = face_analysis.get(image)
    ours = faces_of[name]
    assert len(theirs) == len(ours)
    centres = np.stack([_centre(t.bbox) for t in theirs])
    matched: set[int] = set()
    for face in ours:
        j = int(np.argmin(np.linalg.norm(centres - _centre(face.bbox), axis=1)))
        matched.add(j)
        ref = theirs[j]
        # The default CPU pack is the fast path (detector input fitted to the photo's aspect,
        # recognizer on OpenVINO): close to InsightFace, not bit-equal (the fp32 pack is: below).
        assert np.allclose(face.bbox, ref.bbox[:4], atol=1.5)
        assert face.det_score == pytest.approx(float(ref.det_score), abs=0.01)
        cosine = float(np.dot(face.embedding, ref.normed_embedding))
        assert cosine >= 0.999, f"face at {face.bbox} differs from FaceAnalysis: cos {cosine:.4f}"
    assert len(matched) == len(ours), "two of our faces matched the same FaceAnalysis face"


def test_same_person_is_found_in_the_group_photo(faces_of: dict[str, list[DetectedFace]]) -> None:
    """Yao Ming's single portrait finds him among the 22 players; nobody else comes close."""
    query = faces_of["yaoming.jpg"][0].embedding
    group = np.stack([f.embedding for f in faces_of["players.jpg"]])
    sims = np.sort(group @ query)[::-1]
    best, second, median = float(sims[0]), float(sims[1]), float(np.median(sims))
    assert best > 0.45
    assert best - second > 0.3
    assert best - median > 0.4


def test_different_photos_of_other_people_are_not_similar(faces_of: dict[str, list[DetectedFace]]) -> None:
    query = faces_of["yaoming.jpg"][0].embedding
    others = np.stack([f.embedding for f in faces_of["t1.jpg"] + faces_of["gdp.jpg"]])
    assert float((others @ query).max()) < 0.35


def test_a_face_matches_itself_across_re_encoding(embedder: FaceEmbedder) -> None:
    """JPEG re-encoding and a mirror image keep the identity."""
    image = photos.load("yaoming.jpg")
    original = embedder.embed(image)[0].embedding
    for k in (1, 2, 7):  # mirrored; scaled; mirrored, scaled and brightened
        data = photos.jpeg(photos.variant(image, k), quality=70)
        other = embedder.embed(decode_image(data, max_pixels=50_000_000))
        assert len(other) == 1
        assert float(np.dot(original, other[0].embedding)) > 0.9


def test_gpu_settings_fall_back_to_cpu_when_there_is_no_gpu() -> None:
    """A GPU actor lists CUDA builds only where a GPU is: here (none) it measures the CPU's
    builds, and an ONNX Runtime pin runs on the CPU; their vectors are the weights' generation,
    like every other build's."""
    gpu = FaceEmbedder(Settings(gpus_per_actor=1))
    assert gpu.variant == "auto" and gpu.model_name == ModelPack.from_settings(Settings()).name
    assert gpu.threads == 1
    gpu.load()
    assert gpu.choice is not None and gpu.choice.hardware["gpu"] is None
    assert "cuda" not in gpu.variant and "CUDAExecutionProvider" not in gpu.requested_providers
    assert len(gpu.embed(photos.load("t1.jpg"))) == 6
    pinned = FaceEmbedder(Settings(gpus_per_actor=1, model_runtime="onnxruntime"))
    assert pinned.requested_variant == "onnxruntime-fp32/cuda"
    pinned.load()
    assert pinned.variant == "onnxruntime-fp32/cpu" and pinned.gate is None  # what really runs it
    assert pinned.active_providers == ["CPUExecutionProvider"]


def test_gpu_libraries_come_from_pypi_through_an_extra() -> None:
    """A GPU node needs only the driver: CUDA/cuDNN wheels come with the `gpu` extra, which
    the cluster installs; the default install (and CI) stays CPU-only."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert project["optional-dependencies"]["gpu"] == ["onnxruntime-gpu[cuda,cudnn]==1.31.1"]
    assert not any("nvidia" in d for d in project["dependencies"])
    assert "uv sync --frozen --no-dev --extra gpu" in (root / "cluster.yaml").read_text()


@pytest.mark.parametrize("name", sorted(FACE_COUNTS))
def test_fp32_pack_is_insightface_exactly(fp32: FaceEmbedder, face_analysis: Any, name: str) -> None:
    """Our own SCRFD decoding and ArcFace call on ONNX Runtime give InsightFace's boxes and
    vectors: rows of the fp32 generation stay valid."""
    image = photos.load(name)
    theirs = sorted(face_analysis.get(image), key=lambda f: -float(f.det_score))
    ours = fp32.embed(image)
    assert len(ours) == len(theirs)
    for face, ref in zip(ours, theirs, strict=True):
        assert np.allclose(face.bbox, ref.bbox[:4], atol=1e-3)
        assert face.det_score == pytest.approx(float(ref.det_score), abs=1e-6)
        assert float(np.dot(face.embedding, ref.normed_embedding)) >= 0.99999
