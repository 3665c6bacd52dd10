"""The sharing gate (issue 30) and the choice of a variant (issue 31): the fastest variant this
machine runs that passes the gate, measured once per kind of machine, runtime versions and
weights, then read from the store; a variant that fails the gate is never chosen."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from facepass.builds import REFERENCE, Variant
from facepass.index.trials import IndexTrialStore
from facepass.settings import Settings
from facepass.vision import accuracy, networks, selection, variants
from facepass.vision.faces import FaceEmbedder
from facepass.vision.pack import ModelPack
from facepass.vision.share_gate import GateVerdict, shares_generation
from facepass.vision.trials import FileTrialStore, Record, TrialKey

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


def fastest_passing(record: Record) -> str:
    """The variant with the lowest estimate among the reference and those that passed."""
    allowed = [
        name
        for name in record["estimate_ms"]
        if Variant.parse(name).is_reference or record["gates"].get(name, {}).get("passed")
    ]
    return min(allowed, key=lambda name: record["estimate_ms"][name])


def test_the_fastest_passing_variant_is_measured_once_then_read(
    embedder: FaceEmbedder, measured_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``embedder`` is the process's one measurement (auto, in a folder of its own)."""
    choice = embedder.choice
    assert choice is not None and choice.how == "measured" and choice.requested == "auto"
    assert embedder.variant == choice.variant
    timings = choice.timings_ms
    assert set(timings) == {"detector", "recognizer"} and len(timings["recognizer"]) >= 2
    assert all(ms > 0 for network in timings.values() for ms in network.values())
    record: Record = {"estimate_ms": choice.estimate_ms, "gates": choice.gates}
    assert choice.variant == fastest_passing(record)
    # Every variant faster than the chosen one was tried and refused by the gate.
    faster = [n for n, ms in choice.estimate_ms.items() if ms < choice.estimate_ms[choice.variant]]
    assert all(choice.gates[n]["passed"] is False for n in faster)
    if not Variant.parse(choice.variant).is_reference:
        assert embedder.gate is not None and embedder.gate.passed and not embedder.gate.cached
        assert embedder.gate.report["embedding_cos_p1"] >= 0.998
        assert embedder.gate.report["faces_missed"] == 0

    def no_measuring(*args: Any) -> Record:
        raise AssertionError("measured again")

    monkeypatch.setattr(selection, "measure", no_measuring)
    start = time.monotonic()
    again = FaceEmbedder(Settings(gate_cache_dir=measured_dir)).load()
    assert again.choice is not None and again.choice.how == "kept" and again.variant == embedder.variant
    assert again.choice.timings_ms == timings
    assert again.gate is None or again.gate.cached
    assert time.monotonic() - start < 10  # two networks loaded, nothing timed or gated
    image = accuracy.gate_images()[0][1]
    a, b = embedder.embed_batch([image])[0], again.embed_batch([image])[0]
    np.testing.assert_allclose(
        np.stack([f.embedding for f in a]), np.stack([f.embedding for f in b]), atol=1e-6
    )


def test_the_choice_is_measured_again_for_other_runtime_versions_or_other_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record's key: machine, runtime versions, weights. The same key reads the record;
    another runtime version or other weights (same pack and file names) measure afresh."""
    measured: list[tuple[str, str]] = []

    def fake_measure(
        nets: networks.Networks, hardware: variants.Hardware, generation: str, *rest: Any
    ) -> Record:
        measured.append((hardware.runtimes, generation))
        return {"choice": REFERENCE.name, "timings_ms": {}, "estimate_ms": {}, "gates": {}}

    monkeypatch.setattr(selection, "measure", fake_measure)
    cache = tmp_path / "cache"
    FaceEmbedder(Settings(gate_cache_dir=cache)).load()
    FaceEmbedder(Settings(gate_cache_dir=cache)).load()
    assert len(measured) == 1

    versions = variants.runtime_versions()
    monkeypatch.setattr(variants, "runtime_versions", lambda: {**versions, "openvino": "2099.1.0"})
    FaceEmbedder(Settings(gate_cache_dir=cache)).load()
    assert len(measured) == 2 and "openvino 2099.1.0" in measured[-1][0]
    monkeypatch.setattr(variants, "runtime_versions", lambda: versions)

    pack = ModelPack.from_settings(Settings())
    folder = tmp_path / "models" / "model"
    folder.mkdir(parents=True)
    shutil.copy(pack.detector, folder / pack.detector.name)
    import onnx

    model = onnx.load(str(pack.recognizer))
    model.doc_string = "saved again: other bytes, the same arithmetic"
    onnx.save(model, str(folder / pack.recognizer.name))
    other = FaceEmbedder(Settings(gate_cache_dir=cache, model_root=tmp_path)).load()
    assert other.model_name != pack.name and other.model_name.split("#")[0] == pack.name.split("#")[0]
    assert len(measured) == 3 and measured[-1][1] == other.model_name
    FaceEmbedder(Settings(gate_cache_dir=cache)).load()
    assert len(measured) == 3  # the first key is still kept
    # The same files under another pack folder: another generation, the same weights' record.
    renamed = tmp_path / "models" / "renamed"
    renamed.mkdir()
    for path in (pack.detector, pack.recognizer):
        (renamed / path.name).symlink_to(path)
    copy = FaceEmbedder(Settings(gate_cache_dir=cache, model_root=tmp_path, model_name="renamed")).load()
    assert copy.model_name != pack.name and copy.pack.weights == pack.weights
    assert len(measured) == 3 and copy.choice is not None and copy.choice.how == "kept"


def test_a_pinned_variant_that_fails_the_gate_is_refused_and_the_reference_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A failing verdict planted where the gate keeps it (as a build with an int8 recognizer
    would get: cosine p1 0.993): the embedder logs the refusal and embeds with the reference
    build, into the same generation."""
    pin = "onnxruntime-fp32-fit/cpu+openvino-f32/cpu"
    settings = Settings(gate_cache_dir=tmp_path, model_variant=pin)
    embedder = FaceEmbedder(settings)
    hardware = variants.detect_hardware(settings)
    report = dataclasses.asdict(dataclasses.replace(PASSING, embedding_cos_p1=0.993))
    failing = GateVerdict(embedder.model_name, pin, False, report)
    key = TrialKey(hardware.machine, hardware.runtimes, embedder.pack.weights)
    FileTrialStore(tmp_path).update(key, lambda kept: {"gates": {pin: failing.as_json()}})
    with caplog.at_level(logging.ERROR, logger="facepass.vision.selection"):
        embedder.load()
    assert f"build {pin} of generation" in caplog.text and "refused" in caplog.text
    assert "cosine p1 0.993" in caplog.text
    assert embedder.variant == "onnxruntime-fp32/cpu" and embedder.runtime == "onnxruntime"
    assert embedder.choice is not None and embedder.choice.how == "refused"
    assert embedder.model_name == failing.generation
    assert embedder.active_providers == ["CPUExecutionProvider"]


def test_the_index_database_keeps_the_record_and_one_process_measures(settings: Settings) -> None:
    """Two loads at once on one kind of machine: the second waits on the key's lock and reads
    the first one's record (measured once); another key is its own."""
    store = IndexTrialStore(settings.local_url())
    key = TrialKey("cpu:test-machine|0", "onnxruntime 0, openvino 0", f"model/x+y#{time.time_ns():012x}"[:30])
    calls: list[int] = []

    def slow_measure(kept: Record | None) -> Record | None:
        if kept is not None:
            return None
        calls.append(1)
        time.sleep(1.0)
        return {"choice": REFERENCE.name, "gates": {}}

    results: list[Record | None] = []
    threads = [
        threading.Thread(target=lambda: results.append(store.update(key, slow_measure))) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1] and results == [{"choice": REFERENCE.name, "gates": {}}] * 2
    other = TrialKey(key.machine, "onnxruntime 1, openvino 0", key.weights)
    assert store.update(other, lambda kept: None) is None


def test_an_index_database_that_cannot_be_read_costs_a_measurement_not_the_load(settings: Settings) -> None:
    """An index database that does not exist yet (or is down, or not migrated): the record is
    measured in the process and returned, not kept; the load goes on."""
    missing = settings.local_url().replace("/facepass_vector?", "/no_such_index_db?")
    assert missing != settings.local_url()
    store = IndexTrialStore(missing)
    key = TrialKey("cpu:test-machine|0", "onnxruntime 0, openvino 0", "model/x+y#000000000000")
    calls: list[Record | None] = []

    def measure(kept: Record | None) -> Record:
        calls.append(kept)
        return {"choice": REFERENCE.name, "gates": {}}

    assert store.update(key, measure) == {"choice": REFERENCE.name, "gates": {}}
    assert store.update(key, measure) == {"choice": REFERENCE.name, "gates": {}}
    assert calls == [None, None]  # nothing kept: measured again
