"""Fixtures shared by both tiers: one embedded PostgreSQL + pgvector and one
loopback photo server for the whole test session (real parts, no mocks)."""

from __future__ import annotations

import os

# Ray >= 2.59 runs local clusters with token auth; a client must be in token mode
# before ray is imported (its config is read at import time).
os.environ.setdefault("RAY_AUTH_MODE", "token")
# No `uv run` hook for workers (a venv built under running workers broke their imports; Makefile).
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

import uuid  # noqa: E402
from collections.abc import Iterator
from pathlib import Path

import pytest

from facepass.db import resolve_databases
from facepass.demo.scenario import CatalogWriter
from facepass.demo.storage import PhotoStorage
from facepass.index.store import VectorStore
from facepass.settings import Settings
from jobs.local_head import free_port


@pytest.fixture(scope="session")
def storage() -> Iterator[PhotoStorage]:
    with PhotoStorage() as server:
        yield server


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory, storage: PhotoStorage) -> Settings:
    """Resolved settings: embedded databases in a temp folder, the loopback storage."""
    data_dir: Path = tmp_path_factory.mktemp("facepass")
    base = Settings(
        data_dir=data_dir,
        storage_url=storage.url,
        http_port=free_port(),
        ray_namespace=f"facepass-test-{uuid.uuid4().hex[:8]}",
        embed_actors=2,
        photos_in_flight_per_actor=4,
        download_timeout_s=5,
        follow=False,  # tests that follow turn it on in their own settings
    )
    resolved = resolve_databases(base)
    writer = CatalogWriter(resolved.cloud_dsn or "")
    writer.create_schema()
    writer.close()
    store = VectorStore(resolved.local_dsn)
    store.create_schema()
    store.close()
    return resolved


@pytest.fixture(scope="session")
def catalog_writer(settings: Settings) -> Iterator[CatalogWriter]:
    writer = CatalogWriter(settings.cloud_dsn or "")
    yield writer
    writer.close()


@pytest.fixture(scope="session")
def store(settings: Settings) -> Iterator[VectorStore]:
    vector_store = VectorStore(settings.local_dsn)
    yield vector_store
    vector_store.close()
