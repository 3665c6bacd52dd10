"""facepass.audit and jobs.audit: planted defects on a real catalog and a real index
(fresh databases on the embedded PostgreSQL per test, so "every session" is exactly
what a test puts there)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from facepass.audit import Defect, IndexAuditor
from facepass.catalog import CloudCatalog
from facepass.demo.scenario import CatalogWriter, fresh_database, new_catalog_database
from facepass.faces import ModelPack
from facepass.models import EMBEDDING_DIM, PhotoRef, PhotoResult
from facepass.settings import Settings
from facepass.store import VectorStore, face_embeddings, indexed_photos
from jobs import audit as audit_job
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


@pytest.fixture
def idx(settings: Settings) -> Iterator[Index]:
    cloud_dsn, writer = new_catalog_database(settings, prefix="audit_cloud")
    local_dsn = fresh_database(settings, f"audit_vector_{uuid.uuid4().hex[:10]}")
    store = VectorStore(local_dsn)
    store.create_schema()
    catalog = CloudCatalog(cloud_dsn)
    yield Index(cloud_dsn, local_dsn, writer, catalog, store, ModelPack.from_settings(settings).name)
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


def test_a_healthy_session_is_ok_with_its_counts(idx: Index) -> None:
    planted = plant(idx)
    report = idx.auditor().audit([planted.healthy])
    assert report.ok and len(report.sessions) == 1
    s = report.sessions[0]
    assert s.session_name == "Здоровая сессия"
    assert (s.catalog_photos, s.ledger_indexed, s.ledger_no_face, s.ledger_failed) == (4, 2, 1, 1)
    assert (s.face_rows, s.unindexed_photos, s.stale_rows, s.bad_norm_rows) == (3, 0, 0, 0)
    assert all(ids == () for ids in s.defects.values())


def test_the_audit_finds_each_planted_defect_and_only_those(idx: Index) -> None:
    planted = plant(idx)
    report = idx.auditor().audit()  # every session of the catalog and of the index
    by_id = {s.session_id: s for s in report.sessions}
    assert set(by_id) == {planted.healthy, planted.bad}
    assert by_id[planted.healthy].ok and not report.ok
    bad = by_id[planted.bad]
    assert {kind: set(ids) for kind, ids in bad.defects.items()} == planted.expected
    # 11 photos, 2 deleted; the live "todo" photo is the next run's work, not a defect.
    assert (bad.catalog_photos, bad.unindexed_photos) == (9, 1)
    assert (bad.ledger_indexed, bad.ledger_no_face, bad.ledger_failed) == (7, 1, 1)
    assert (bad.face_rows, bad.stale_rows, bad.bad_norm_rows) == (2 * 7 - 2 + 1, 1, 1)
    totals = report.totals()
    assert totals["deleted"] == 2 and totals["count_mismatch"] == 2 and totals["bad_norm"] == 1


def test_a_session_only_the_index_knows_is_all_deleted(idx: Index) -> None:
    sid, refs = idx.session("Удалённая сессия", 2)
    for ref in refs:
        idx.index(ref, 1)
    with idx.writer.engine.begin() as conn:  # the session leaves the catalog (its photos cascade)
        conn.execute(sa.text("DELETE FROM sessions WHERE id = :id"), {"id": sid})
    (s,) = idx.auditor().audit().sessions
    assert s.session_id == sid and s.session_name is None and s.catalog_photos == 0
    assert set(s.defects[Defect.DELETED]) == {r.id for r in refs}
    assert idx.auditor().fix(idx.auditor().audit()).removed.faces == 2
    assert idx.auditor().audit().sessions == []  # nothing of it is left anywhere


def test_fix_leaves_a_clean_audit_and_other_sessions_untouched(idx: Index) -> None:
    planted = plant(idx)
    healthy_rows = idx.rows(planted.healthy)
    auditor = idx.auditor()
    fix = auditor.fix(auditor.audit())
    # Deleted: 2 photos with 2 faces each. Re-planned: stale (1 face), count mismatches (2 + 0),
    # orphan (2 faces, no ledger row), norm 2 (2 faces).
    assert (fix.removed.photos, fix.removed.faces) == (2, 4)
    assert (fix.replanned.photos, fix.replanned.faces) == (5, 1 + 2 + 0 + 2 + 2)
    after = auditor.audit()
    assert after.ok, [s.as_dict() for s in after.sessions if not s.ok]
    assert idx.rows(planted.healthy) == healthy_rows
    bad = next(s for s in after.sessions if s.session_id == planted.bad)
    # The re-planned live photos are the next `missing` run's work again.
    replanned = set().union(*(planted.expected[k] for k in Defect if k is not Defect.DELETED))
    assert bad.unindexed_photos == 1 + len(replanned)
    assert not replanned & idx.store.done_photo_ids(planted.bad)


def cli(idx: Index, monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setenv("FACEPASS_CLOUD_DSN", idx.cloud_dsn)
    monkeypatch.setenv("FACEPASS_LOCAL_DSN", idx.local_dsn)
    return audit_job.main(list(args))


def test_cli_exit_codes_json_and_fix(
    idx: Index, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    planted = plant(idx)
    assert cli(idx, monkeypatch, "--json", str(tmp_path / "found.json")) == 1
    table = capsys.readouterr().out
    assert "DEFECT" in table and "TOTAL 2 sessions, 1 with defects" in table
    assert "The index is NOT clean." in table
    data = json.loads((tmp_path / "found.json").read_text())
    assert data["ok"] is False and data["fix"] is None and data["after_fix"] is None
    assert data["found"]["sessions_with_defects"] == 1
    bad = next(s for s in data["found"]["sessions"] if s["session_id"] == str(planted.bad))
    assert {k: set(v["photo_ids"]) for k, v in bad["defects"].items()} == {
        kind.value: {str(i) for i in ids} for kind, ids in planted.expected.items()
    }
    assert bad["ledger"] == {"indexed": 7, "no_face": 1, "failed": 1} and bad["ok"] is False

    # Only the healthy session: clean, whatever the other one holds.
    assert cli(idx, monkeypatch, "--session", str(planted.healthy)) == 0
    assert "TOTAL 1 sessions, 0 with defects" in capsys.readouterr().out

    assert cli(idx, monkeypatch, "--fix", "--json", "-") == 0
    captured = capsys.readouterr()
    fixed = json.loads(captured.out)  # stdout is the JSON alone; the table went to stderr
    assert fixed["ok"] is True and fixed["found"]["ok"] is False and fixed["after_fix"]["ok"] is True
    assert fixed["fix"] == {
        "removed_photos": 2,
        "removed_faces": 4,
        "replanned_photos": 5,
        "replanned_faces": 7,
    }
    assert "Repaired: removed 2 deleted photos" in captured.err and "The index is clean." in captured.err

    assert cli(idx, monkeypatch) == 0  # a plain audit agrees


def test_a_10000_photo_session_audits_in_well_under_seconds(idx: Index) -> None:
    sid = idx.writer.add_session("Большая сессия")
    with idx.writer.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO photos (id, session_id, filename, preview_path) "
                "SELECT gen_random_uuid(), :sid, 'p' || i || '.jpg', 'x/p' || i || '.jpg' "
                "FROM generate_series(1, 10000) AS i"
            ),
            {"sid": sid},
        )
    unit = str((np.ones(EMBEDDING_DIM, dtype=np.float32) / np.sqrt(EMBEDDING_DIM)).tolist())
    ids = [str(p.id) for p in idx.catalog.list_photos(sid)]
    idx.index_sql(
        "INSERT INTO indexed_photos (photo_id, session_id, status, face_count, model_name) "
        "SELECT unnest(CAST(:ids AS uuid[])), :sid, 'indexed', 2, :model",
        ids=ids,
        sid=sid,
        model=idx.model,
    )
    idx.index_sql(
        "INSERT INTO face_embeddings (session_id, photo_id, face_index, bbox_x1, bbox_y1, bbox_x2, "
        "bbox_y2, det_score, embedding, model_name) "
        "SELECT :sid, p, f, 0, 0, 1, 1, 0.9, CAST(:v AS vector), :model "
        "FROM unnest(CAST(:ids AS uuid[])) AS p, generate_series(0, 1) AS f",
        ids=ids,
        sid=sid,
        v=unit,
        model=idx.model,
    )
    auditor = idx.auditor()
    started = time.perf_counter()
    (s,) = auditor.audit([sid]).sessions
    elapsed = time.perf_counter() - started
    assert s.ok and (s.catalog_photos, s.ledger_indexed, s.face_rows) == (10_000, 10_000, 20_000)
    print(f"audit of a 10,000-photo session (20,000 faces): {elapsed:.2f} s")
    assert elapsed < 3.0
