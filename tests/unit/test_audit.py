"""facepass.index.audit and jobs.audit: planted defects on a real catalog and a real index
(fresh databases on the embedded PostgreSQL per test, so "every session" is exactly
what a test puts there)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from facepass.index import audit as audit_core
from facepass.index.audit import Defect
from facepass.models import EMBEDDING_DIM
from facepass.settings import Settings
from jobs import audit as audit_job
from tests.planted import Index, fresh_index, plant


@pytest.fixture
def idx(settings: Settings) -> Iterator[Index]:
    with fresh_index(settings) as index:
        yield index


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


def test_fix_leaves_a_clean_audit_and_other_sessions_untouched(
    idx: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_core, "PRUNE_CHUNK", 2)  # several prune transactions, same sums
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

    # A model change: every photo is stale, and --fix re-plans all of them (in chunks).
    stale = idx.auditor()
    stale.model_name = "next_pack/det+rec"
    (s,) = stale.audit([sid]).sessions
    assert (len(s.defects[Defect.STALE_MODEL]), s.stale_rows) == (10_000, 20_000)
    fix = stale.fix(stale.audit([sid]))
    assert (fix.replanned.photos, fix.replanned.faces, fix.removed.photos) == (10_000, 20_000, 0)
    (s,) = stale.audit([sid]).sessions
    assert s.ok and s.unindexed_photos == 10_000


def test_the_audit_command_needs_no_ray() -> None:
    """It runs as a plain process (cron, CI) and as a `ray job submit` entrypoint alike."""
    code = "import sys, jobs.audit; sys.exit('ray' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2]).returncode == 0
    )
