"""Unit tier: the core without a cluster. ray.init raises here, so nothing leans on Ray."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from facepass.runs.session_lock import SessionLocks
from facepass.settings import Settings
from facepass.vision.faces import FaceEmbedder


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import ray

    def refuse(*_: object, **__: object) -> None:
        raise RuntimeError("the unit tier must not start Ray")

    monkeypatch.setattr(ray, "init", refuse)
    yield


@pytest.fixture(scope="session")
def embedder() -> FaceEmbedder:
    """One loaded default model pack (CPU) for every unit test that needs faces."""
    return FaceEmbedder(Settings(gpus_per_actor=0)).load()


@pytest.fixture
def locks(settings: Settings) -> Iterator[SessionLocks]:
    """Per-session run locks in the embedded index database."""
    session_locks = SessionLocks(settings.local_url())
    yield session_locks
    session_locks.close()
