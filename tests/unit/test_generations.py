"""A model change leaves no gap in search: real faces, two packs, no Ray.

The second pack holds the same ONNX files under another name, so the two generations
are told apart by name (what the index keys them by) while their vectors stay
comparable enough to check "the same photos are found" at every step."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from facepass.catalog.cloud import CloudCatalog
from facepass.demo import photos
from facepass.demo.scenario import CatalogWriter, preview_path
from facepass.demo.storage import PhotoStorage
from facepass.index.generations import Generations
from facepass.index.search import find_photos, selfie_face
from facepass.index.store import VectorStore
from facepass.runs.reindex import ReindexCoordinator
from facepass.settings import Settings
from facepass.vision.faces import FaceEmbedder
from facepass.vision.generation_packs import GenerationPacks, pack_settings
from facepass.vision.images import decode_image
from facepass.vision.pipeline import LocalProcessor, PhotoPipeline
from facepass.vision.trials import Record

SELFIE = photos.jpeg(photos.load("yaoming.jpg"))


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two packs under one model root: pack_a (the old generation) and pack_b (the new)."""
    root = tmp_path_factory.mktemp("models")
    source = Settings().model_dir
    for pack in ("pack_a", "pack_b"):
        (root / pack).mkdir()
        for name in ("scrfd_500m_bnkps.onnx", "w600k_mbf.onnx"):
            (root / pack / name).symlink_to(source / name)
    return root


def with_pack(settings: Settings, root: Path, pack: str) -> Settings:
    return Settings.model_validate({**settings.model_dump(), "model_root": root, "model_name": pack})


@pytest.fixture(scope="module")
def catalog(settings: Settings) -> Iterator[CloudCatalog]:
    cloud = CloudCatalog(settings.cloud_url())
    yield cloud
    cloud.close()


def search(
    settings: Settings, store: VectorStore, catalog: CloudCatalog, packs: GenerationPacks, sid: uuid.UUID
) -> tuple[str, set[str]]:
    """What the search route does: the session's generation, the selfie by its model."""
    current = FaceEmbedder(settings).model_name
    model = Generations(store.engine, current).search_model(sid)
    embedder = packs.embedder(model)
    assert embedder is not None and embedder.model_name == model
    face = selfie_face(embedder.embed(decode_image(SELFIE, settings.max_image_pixels)))
    return model, {m.filename for m in find_photos(store, catalog, sid, face, model_name=model)}


def models_of(store: VectorStore, sid: uuid.UUID) -> set[str]:
    with store.engine.connect() as conn:
        return set(
            conn.scalars(
                sa.text("SELECT DISTINCT model_name FROM face_embeddings WHERE session_id = :s"), {"s": sid}
            )
        )


def rows_by_model(store: VectorStore, sid: uuid.UUID) -> dict[str, int]:
    with store.engine.connect() as conn:
        query = sa.text(
            "SELECT model_name, count(*) FROM face_embeddings WHERE session_id = :s GROUP BY model_name"
        )
        return {str(m): int(n) for m, n in conn.execute(query, {"s": sid})}


def test_search_finds_the_same_photos_at_every_step_of_a_model_change(
    settings: Settings,
    model_root: Path,
    catalog_writer: CatalogWriter,
    storage: PhotoStorage,
    store: VectorStore,
    catalog: CloudCatalog,
    kept_in_index: Record,
) -> None:
    """Both packs hold the default weights: their embedders read the process's one measurement
    (``kept_in_index``) instead of measuring again."""
    old, new = with_pack(settings, model_root, "pack_a"), with_pack(settings, model_root, "pack_b")
    sid = catalog_writer.add_session("Смена модели")
    names = []
    for source in ("players.jpg", "t1.jpg", "gdp.jpg", "Tom_Hanks_54745.png"):
        path = preview_path(sid, source)
        storage.put(path, photos.jpeg(photos.load(source)))
        names.append((source, path))
    catalog_writer.add_photos(sid, names)

    async def run_all(pack_settings_: Settings) -> None:
        pipeline = PhotoPipeline(pack_settings_, FaceEmbedder(pack_settings_).load())
        try:
            await ReindexCoordinator(catalog, store, LocalProcessor(pipeline, store)).run(sid)
        finally:
            await pipeline.aclose()

    asyncio.run(run_all(old))
    old_model = FaceEmbedder(old).model_name
    packs_old = GenerationPacks(old)
    model, before = search(old, store, catalog, packs_old, sid)
    assert model == old_model and before == {"players.jpg"}

    # The service restarts with pack_b; pack_a is found under the same model root.
    assert pack_settings(new, old_model) is not None
    packs = GenerationPacks(new)
    new_embedder = FaceEmbedder(new).load()
    new_model = new_embedder.model_name

    async def rebuild_step_by_step() -> None:
        pipeline = PhotoPipeline(new, new_embedder)
        coordinator = ReindexCoordinator(catalog, store, LocalProcessor(pipeline, store))
        try:
            plan = coordinator.plan(sid)
            assert len(plan.todo) == 4 and plan.stale_photos == 4
            run = coordinator.new_run(sid)
            coordinator.begin(run, plan)
            for photo in plan.todo:
                async for outcomes in coordinator.process_batches([photo], run):
                    coordinator.record(run, outcomes)
                model, found = search(new, store, catalog, packs, sid)
                assert found == before  # at every moment: the same photos
                rows = rows_by_model(store, sid)
                if photo is not plan.todo[-1] and rows.get(new_model, 0) < rows[old_model]:
                    # The old generation answers until the new one holds as many faces (the
                    # plan's order is not fixed: the photos left may hold none).
                    assert model == old_model
                    # Both generations side by side (a photo without faces adds no new row, and
                    # the plan's order is not fixed, so the new one may not show yet).
                    assert old_model in models_of(store, sid) <= {old_model, new_model}
            assert models_of(store, sid) == {old_model, new_model}  # before the switch: both
            report = await coordinator.finish(run)  # complete: switch, old vectors go
            assert report.final_embedding_count == store.count_embeddings(sid)
        finally:
            await pipeline.aclose()

    asyncio.run(rebuild_step_by_step())
    model, after = search(new, store, catalog, packs, sid)
    assert model == new_model and after == before
    assert models_of(store, sid) == {new_model}  # only the new model's rows remain
    progress = Generations(store.engine, new_model).progress()
    assert progress[0].generation == new_model and progress[0].current
    # The builds of its weights that made its photos (the CPU default here), for /mirror.
    assert set(progress[0].variants) == {new_embedder.variant}
    assert sum(progress[0].variants.values()) == progress[0].photos
    assert progress[0].sessions_building is not None and progress[0].photos_done_fraction is not None


def test_an_unknown_pack_is_not_found(settings: Settings) -> None:
    assert pack_settings(settings, "nowhere/det_x+rec_y") is None
    assert pack_settings(settings, "not a generation name") is None
    assert GenerationPacks(settings).embed_bytes("nowhere/det_x+rec_y", SELFIE) is None


def test_a_replica_still_on_the_old_pack_answers_from_the_complete_old_generation(
    store: VectorStore,
) -> None:
    """Mid-rebuild (a rolling update): the new generation holds two photos of five. A replica
    on the new pack and one still on the old pack both search the old, complete generation."""
    import dataclasses

    from tests.unit.test_store import indexed, photo

    sid = uuid.uuid4()
    refs = [photo(sid, f"{i}.jpg") for i in range(5)]
    store.write_results([dataclasses.replace(indexed(r, 1), model_name="gen-a") for r in refs])
    store.write_results([dataclasses.replace(indexed(r, 1), model_name="gen-b") for r in refs[:2]])
    assert Generations(store.engine, "gen-b").search_model(sid) == "gen-a"
    assert Generations(store.engine, "gen-a").search_model(sid) == "gen-a"
    store.write_results([dataclasses.replace(indexed(r, 1), model_name="gen-b") for r in refs[2:]])
    assert Generations(store.engine, "gen-b").search_model(sid) == "gen-b"  # complete: switched
    assert Generations(store.engine, "gen-b").retire(sid) == 5  # (and tidy: one generation left)
