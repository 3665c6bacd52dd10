"""The sharing gate (issue 30): a build of the weights other than the reference writes into
their generation only if it passes; measured once per machine, then read from the cache; a
build that fails is refused and the embedder runs the reference build."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from facepass.settings import Settings
from facepass.vision import accuracy
from facepass.vision.faces import FaceEmbedder
from facepass.vision.share_gate import GateVerdict, gate, machine_key, shares_generation, verdict_path

PASSING = accuracy.AccuracyReport(
    photos=32,
    face_pairs=300,
    faces_missed=0,
    extra_faces=0,
    box_iou_min=0.95,
    embedding_cos_p1=0.9995,
    embedding_cos_min=0.999,
    embedding_cos_mean=0.9999,
    identity_kept=True,
    top20_swaps=7,
    top20_swap_max_gap=0.004,
)


@pytest.mark.parametrize(
    ("change", "shares"),
    [
        ({}, True),
        ({"embedding_cos_p1": 0.993}, False),  # an int8 recognizer's figure: passes the reporting gate only
        ({"top20_swap_max_gap": 0.02}, False),  # a swap across a real gap
        ({"faces_missed": 1}, False),
        ({"identity_kept": False}, False),
    ],
)
def test_the_sharing_gate_is_stricter_than_the_reporting_gate(
    change: dict[str, object], shares: bool
) -> None:
    report = dataclasses.replace(PASSING, **change)  # type: ignore[arg-type]
    assert shares_generation(report) is shares
    if "embedding_cos_p1" in change or "top20_swap_max_gap" in change:
        assert report.passes  # today's gate (p1 >= 0.98) lets it through


def test_the_cpu_default_build_passes_once_then_reads_its_verdict(tmp_path: Path) -> None:
    embedder = FaceEmbedder(Settings(gate_cache_dir=tmp_path)).load()  # OpenVINO f32: measured at load
    assert embedder.gate is not None and embedder.gate.passed and not embedder.gate.cached
    assert embedder.gate.report["embedding_cos_p1"] >= 0.998
    assert embedder.variant == "openvino-f32/cpu"
    assert machine_key()
    again = gate(embedder)
    assert again.cached and again.passed and again.report == embedder.gate.report
    reference = FaceEmbedder(Settings(model_runtime="onnxruntime", gate_cache_dir=tmp_path)).load()
    assert reference.gate is None  # the reference build needs no gate


def test_a_build_that_fails_the_gate_is_refused_and_the_reference_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A failing verdict planted where the gate keeps it (as a build with an int8 recognizer
    would get: cosine p1 0.993): the embedder logs the refusal and embeds with the reference
    build, into the same generation."""
    embedder = FaceEmbedder(Settings(gate_cache_dir=tmp_path))
    report = dataclasses.asdict(dataclasses.replace(PASSING, embedding_cos_p1=0.993))
    failing = GateVerdict(embedder.model_name, embedder.variant, False, report)
    path = verdict_path(embedder)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(failing.as_json()))
    with caplog.at_level(logging.ERROR, logger="facepass.vision.faces"):
        embedder.load()
    assert "build openvino-f32/cpu of generation" in caplog.text and "refused" in caplog.text
    assert "cosine p1 0.993" in caplog.text
    assert embedder.variant == "onnxruntime-fp32/cpu" and embedder.runtime == "onnxruntime"
    assert embedder.model_name == failing.generation
    assert embedder.active_providers == ["CPUExecutionProvider"]
