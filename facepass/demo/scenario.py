"""The seed's scenario: a catalog, its photos in storage, and a partly filled index."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import sqlalchemy as sa

from facepass.db import make_engine
from facepass.demo import photos
from facepass.index.store import VectorStore
from facepass.models import PhotoRef
from facepass.settings import Settings
from facepass.vision.pipeline import LocalProcessor, PhotoPipeline

SEED_SESSION_NAME = "Тестовая фотосессия"
SCHEMA_SQL = Path(__file__).with_name("cloud_schema.sql")


class Uploads(Protocol):
    """Where a scenario puts its photos: the loopback HTTP storage or the local S3 server."""

    def put(self, path: str, data: bytes) -> None: ...


class CatalogWriter:
    """Writes the cloud catalog. Only demos and tests do this: the service reads it."""

    def __init__(self, dsn: str) -> None:
        self.engine = make_engine(dsn)

    def create_schema(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(4242002)"))
            lines = [line.split("--", 1)[0] for line in SCHEMA_SQL.read_text().splitlines()]
            for statement in "\n".join(lines).split(";"):
                if statement.strip():
                    conn.execute(sa.text(statement))

    def add_session(self, name: str, enabled: bool = True, session_id: uuid.UUID | None = None) -> uuid.UUID:
        sid = session_id or uuid.uuid4()
        with self.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO sessions (id, name, facepass_enabled) VALUES (:id, :name, :enabled) "
                    "ON CONFLICT (id) DO NOTHING"
                ),
                {"id": sid, "name": name, "enabled": enabled},
            )
        return sid

    def add_photos(self, session_id: uuid.UUID, names_paths: list[tuple[str, str]]) -> list[PhotoRef]:
        refs = [PhotoRef(uuid.uuid4(), session_id, name, path) for name, path in names_paths]
        with self.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO photos (id, session_id, filename, preview_path) "
                    "VALUES (:id, :session_id, :filename, :preview_path)"
                ),
                [
                    {
                        "id": r.id,
                        "session_id": session_id,
                        "filename": r.filename,
                        "preview_path": r.preview_path,
                    }
                    for r in refs
                ],
            )
        return refs

    def soft_delete(self, photo_id: uuid.UUID) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text("UPDATE photos SET deleted_at = now() WHERE id = :id"), {"id": photo_id})

    def hard_delete(self, photo_id: uuid.UUID) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM photos WHERE id = :id"), {"id": photo_id})

    def close(self) -> None:
        self.engine.dispose()


def fresh_database(settings: Settings, name: str) -> str:
    """An empty database ``name`` on the configured catalog's server (dropped first if it
    exists); returns its DSN."""
    admin = make_engine(settings.cloud_url().replace("/facepass_cloud?", "/postgres?"))
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return settings.cloud_url().replace("/facepass_cloud?", f"/{name}?")


def new_catalog_database(
    settings: Settings, prefix: str = "cloud", name: str | None = None
) -> tuple[str, CatalogWriter]:
    """A fresh catalog database beside the configured one (same server), with the schema:
    "every session" then means exactly the sessions a test or a benchmark puts there."""
    dsn = fresh_database(settings, name or f"{prefix}_{uuid.uuid4().hex[:10]}")
    writer = CatalogWriter(dsn)
    writer.create_schema()
    return dsn, writer


def add_face_photos(
    writer: CatalogWriter, storage: Uploads, session_id: uuid.UUID, n: int, prefix: str = "b"
) -> list[PhotoRef]:
    """``n`` photos of one real face each (crops of the packaged photos, varied), in storage
    and in the catalog."""
    crops = photos.single_face_crops()
    names = []
    for i in range(n):
        filename = f"{prefix}{i:03d}.jpg"
        path = preview_path(session_id, filename)
        storage.put(path, photos.jpeg(photos.variant(crops[i % len(crops)].image, i + 7)))
        names.append((filename, path))
    return writer.add_photos(session_id, names)


@dataclass
class SeedScenario:
    session_id: uuid.UUID
    photos: list[PhotoRef]
    preindexed: list[PhotoRef]
    no_face: PhotoRef
    missing: PhotoRef
    paths: dict[str, str] = field(default_factory=dict)  # filename -> preview_path


def preview_path(session_id: uuid.UUID, filename: str) -> str:
    return f"sessions/{session_id}/previews/{filename}"


def build_seed_scenario(
    settings: Settings,
    storage: Uploads,
    session_id: uuid.UUID | None = None,
    n_faces: int = 11,
    n_preindexed: int = 3,
) -> SeedScenario:
    """13 photos: 11 with one real face each, one with no face, one missing from storage;
    the first 3 already indexed locally (so: 13 total, 3 skipped, 8 + 2 to process)."""
    catalog = CatalogWriter(settings.cloud_url())
    catalog.create_schema()
    sid = catalog.add_session(SEED_SESSION_NAME, True, session_id)
    crops = photos.single_face_crops()
    names: list[tuple[str, str]] = []
    for i in range(n_faces):
        crop = crops[i % len(crops)].image
        image = crop if i < len(crops) else photos.variant(crop, i // len(crops))
        filename = f"photo_{i + 1:03d}.jpg"
        storage.put(preview_path(sid, filename), photos.jpeg(image))
        names.append((filename, preview_path(sid, filename)))
    storage.put(preview_path(sid, "corrupted_image.jpg"), photos.jpeg(photos.no_face_photo()))
    names.append(("corrupted_image.jpg", preview_path(sid, "corrupted_image.jpg")))
    names.append(("missing_file.jpg", preview_path(sid, "missing_file.jpg")))  # never uploaded
    refs = catalog.add_photos(sid, names)
    catalog.close()

    preindexed = refs[:n_preindexed]
    store = VectorStore(settings.local_url())
    store.create_schema()
    index_locally(settings, store, preindexed)
    store.close()
    return SeedScenario(
        session_id=sid,
        photos=refs,
        preindexed=preindexed,
        no_face=refs[n_faces],
        missing=refs[n_faces + 1],
        paths=dict(names),
    )


def index_locally(settings: Settings, store: VectorStore, refs: list[PhotoRef]) -> None:
    """Index photos in this process, without Ray (the "already indexed" part of a scenario)."""

    async def run() -> None:
        pipeline = PhotoPipeline(settings)
        processor = LocalProcessor(pipeline, store)
        try:
            for ref in refs:
                await processor.process(ref)
        finally:
            await pipeline.aclose()

    asyncio.run(run())
