"""A fresh catalog and a fresh index with one photo of every defect the audit knows
(shared by the unit and integration tests of ``facepass.index.audit`` / ``jobs.audit``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa

from facepass.catalog.cloud import CloudCatalog
from facepass.demo.scenario import CatalogWriter, fresh_database, new_catalog_database
from facepass.index.audit import Defect, IndexAuditor
from facepass.index.store import VectorStore, face_embeddings, indexed_photos
from facepass.models import EMBEDDING_DIM, PhotoRef, PhotoResult
from facepass.settings import Settings
from facepass.vision.pack import ModelPack
from tests.unit.test_store import faces

OLD_MODEL = "old_pack/det_10g+w600k_r50"


@dataclass
class Index:
    """A fresh catalog and a fresh index, and the means to plant defects in them."""

    cloud_dsn: str
    local_dsn: str
    writer: CatalogWriter
    catalog: CloudCatalog
    store: VectorStore
    model: str

    def auditor(self) -> IndexAuditor:
        return IndexAuditor(self.catalog, self.store, self.model)

    def session(self, name: str, photos: int) -> tuple[uuid.UUID, list[PhotoRef]]:
        sid = self.writer.add_session(name)
        names = [(f"p{i:03d}.jpg", f"sessions/{sid}/previews/p{i:03d}.jpg") for i in range(photos)]
        return sid, self.writer.add_photos(sid, names)

    def index(self, ref: PhotoRef, n_faces: int, model: str | None = None) -> None:
        self.store.write_results(
            [PhotoResult(ref, model or self.model, faces(n_faces, seed=ref.id.int % 97))]
        )

    def no_face(self, ref: PhotoRef) -> None:
        self.store.write_results(
            [PhotoResult(ref, self.model, error_code="no_face", error_message="нет лица")]
        )

    def failed(self, ref: PhotoRef) -> None:
        result = PhotoResult(ref, self.model, error_code="not_an_image", error_message="не изображение")
        self.store.write_results([result])

    def index_sql(self, statement: str, **params: object) -> None:
        with self.store.engine.begin() as conn:
            conn.execute(sa.text(statement), params)

    def hard_delete(self, photo_id: uuid.UUID) -> None:
        with self.writer.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM photos WHERE id = :id"), {"id": photo_id})

    def rows(self, session_id: uuid.UUID) -> set[tuple[object, ...]]:
        fe, ip = face_embeddings, indexed_photos
        with self.store.engine.connect() as conn:
            faces_ = conn.execute(
                sa.select(fe.c.photo_id, fe.c.face_index, fe.c.model_name).where(
                    fe.c.session_id == session_id
                )
            )
            ledger = conn.execute(
                sa.select(ip.c.photo_id, ip.c.status, ip.c.face_count).where(ip.c.session_id == session_id)
            )
            return {tuple(r) for r in faces_} | {tuple(r) for r in ledger}


@contextmanager
def fresh_index(settings: Settings) -> Iterator[Index]:
    """New catalog and index databases on the configured server: "every session" is then
    exactly what a test puts there."""
    cloud_dsn, writer = new_catalog_database(settings, prefix="audit_cloud")
    local_dsn = fresh_database(settings, f"audit_vector_{uuid.uuid4().hex[:10]}")
    store = VectorStore(local_dsn)
    store.create_schema()
    catalog = CloudCatalog(cloud_dsn)
    try:
        yield Index(cloud_dsn, local_dsn, writer, catalog, store, ModelPack.from_settings(settings).name)
    finally:
        catalog.close()
        store.close()
        writer.close()


@dataclass
class Planted:
    healthy: uuid.UUID  # a session with nothing wrong
    bad: uuid.UUID  # a session with one photo of every defect
    expected: dict[Defect, set[uuid.UUID]]


def plant(idx: Index) -> Planted:
    healthy, good_refs = idx.session("Здоровая сессия", 4)
    idx.index(good_refs[0], 2)
    idx.index(good_refs[1], 1)
    idx.no_face(good_refs[2])
    idx.failed(good_refs[3])

    bad, refs = idx.session("Сессия с дефектами", 11)
    ok_photo, soft, hard, stale, more_faces, no_rows, orphan, norm2, no_face, failed_old, todo = refs
    for ref in (ok_photo, soft, hard, more_faces, no_rows, orphan, norm2):
        idx.index(ref, 2)
    idx.index(stale, 1, model=OLD_MODEL)
    idx.no_face(no_face)
    idx.store.write_results(
        [PhotoResult(failed_old, OLD_MODEL, error_code="not_an_image", error_message="x")]
    )
    idx.writer.soft_delete(soft.id)
    idx.hard_delete(hard.id)
    idx.index_sql("UPDATE indexed_photos SET face_count = 3 WHERE photo_id = :p", p=more_faces.id)
    idx.index_sql("DELETE FROM face_embeddings WHERE photo_id = :p", p=no_rows.id)
    idx.index_sql("DELETE FROM indexed_photos WHERE photo_id = :p", p=orphan.id)
    twice_unit = np.full(EMBEDDING_DIM, 2 / np.sqrt(EMBEDDING_DIM), dtype=np.float32)  # norm 2
    idx.index_sql(
        "UPDATE face_embeddings SET embedding = CAST(:v AS vector) WHERE photo_id = :p AND face_index = 1",
        v=str(twice_unit.tolist()),
        p=norm2.id,
    )
    expected = {
        Defect.DELETED: {soft.id, hard.id},
        Defect.STALE_MODEL: {stale.id},  # a failed row of the old model is no model's verdict
        Defect.ORPHAN_ROWS: {orphan.id},
        Defect.COUNT_MISMATCH: {more_faces.id, no_rows.id},
        Defect.BAD_NORM: {norm2.id},
    }
    return Planted(healthy, bad, expected)
