"""Unit tier: the core without a cluster. ray.init raises here, so nothing leans on Ray."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from facepass.index.trials import IndexTrialStore
from facepass.runs.session_lock import SessionLocks
from facepass.settings import Settings
from facepass.vision.faces import FaceEmbedder
from facepass.vision.trials import FileTrialStore, Record, TrialKey
from facepass.vision.variants import detect_hardware


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import ray

    def refuse(*_: object, **__: object) -> None:
        raise RuntimeError("the unit tier must not start Ray")

    monkeypatch.setattr(ray, "init", refuse)
    yield


@pytest.fixture(scope="session", autouse=True)
def gate_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where every embedder of this process keeps its measured variant (FACEPASS_GATE_CACHE_DIR):
    a folder of its own, not the user's ~/.cache, so a run measures the same on any machine,
    once (``embedder`` measures and leaves the record here: a test that loads another embedder of
    the default weights asks for ``embedder`` first; ``kept_in_index`` keeps it in the index too)."""
    folder = tmp_path_factory.mktemp("accuracy-gate")
    patch = pytest.MonkeyPatch()
    patch.setenv("FACEPASS_GATE_CACHE_DIR", str(folder))
    yield folder
    patch.undo()


@pytest.fixture(scope="session")
def measured_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder only ``embedder`` measures into: its first load is always a measurement."""
    return tmp_path_factory.mktemp("measured")


@pytest.fixture(scope="session")
def embedder(measured_dir: Path, gate_cache: Path) -> FaceEmbedder:
    """One loaded default model pack (CPU) for every unit test that needs faces: the one
    measurement of the variant in this process (``choice.how == "measured"``), whose record is
    then kept for every other embedder of the same weights (``gate_cache``)."""
    loaded = FaceEmbedder(Settings(gpus_per_actor=0, gate_cache_dir=measured_dir)).load()
    for record in measured_dir.glob("trials-*.json"):
        shutil.copy(record, gate_cache / record.name)
    return loaded


@pytest.fixture(scope="session")
def measured_record(embedder: FaceEmbedder, measured_dir: Path) -> tuple[TrialKey, Record]:
    hardware = detect_hardware(embedder.settings)
    key = TrialKey(hardware.machine, hardware.runtimes, embedder.pack.weights)
    record = FileTrialStore(measured_dir).update(key, lambda kept: None)
    assert record is not None and record.get("choice") == embedder.variant
    return key, record


@pytest.fixture(scope="session")
def kept_in_index(measured_record: tuple[TrialKey, Record], settings: Settings) -> Record:
    """The measurement kept in both stores an embedder of the default weights reads: the
    folder (``gate_cache``) and the index database (``model_trials``, what GenerationPacks and
    actors read): a test that loads another embedder (another pack folder, a pin) reads it."""
    key, record = measured_record
    IndexTrialStore(settings.local_url()).update(key, lambda kept: None if kept else record)
    return record


@pytest.fixture
def locks(settings: Settings) -> Iterator[SessionLocks]:
    """Per-session run locks in the embedded index database."""
    session_locks = SessionLocks(settings.local_url())
    yield session_locks
    session_locks.close()
