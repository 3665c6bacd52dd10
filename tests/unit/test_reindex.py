"""facepass.runs.reindex: the seed scenario end to end in one process (no Ray)."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from facepass.catalog.cloud import CloudCatalog
from facepass.demo import photos
from facepass.demo.scenario import (
    SEED_SESSION_NAME,
    CatalogWriter,
    SeedScenario,
    add_face_photos,
    build_seed_scenario,
    new_catalog_database,
)
from facepass.demo.storage import PhotoStorage
from facepass.errors import FacePassDisabled, IndexCannotWrite, SessionNotFound
from facepass.index.store import PruneResult, VectorStore, face_embeddings
from facepass.models import Fence, PhotoOutcome, PhotoRef, PhotoStatus
from facepass.runs.reindex import OneByOne, ReindexCoordinator, ReindexMode, SessionRun
from facepass.runs.report import ReindexReport
from facepass.settings import Settings
from facepass.vision.faces import FaceEmbedder
from facepass.vision.pack import ModelPack
from facepass.vision.pipeline import LocalProcessor, PhotoPipeline
from tests.conftest import InjectedDiskFull

SEED_ERRORS = sorted(
    [
        "Лицо не обнаружено в фото corrupted_image.jpg",
        "Ошибка скачивания missing_file.jpg: 404 Not Found",
    ]
)


@pytest.fixture(scope="module")
def catalog(settings: Settings) -> Iterator[CloudCatalog]:
    cloud = CloudCatalog(settings.cloud_url())
    yield cloud
    cloud.close()


@pytest.fixture
def scenario(settings: Settings, storage: PhotoStorage) -> SeedScenario:
    """A fresh seed session: 13 photos in the catalog, 3 of them indexed already."""
    return build_seed_scenario(settings, storage)


def reindex(
    settings: Settings,
    catalog: CloudCatalog,
    store: VectorStore,
    embedder: FaceEmbedder,
    session_id: uuid.UUID,
    mode: ReindexMode = ReindexMode.MISSING,
    progress: list[ReindexReport] | None = None,
) -> ReindexReport:
    async def go() -> ReindexReport:
        pipeline = PhotoPipeline(settings, embedder)
        coordinator = ReindexCoordinator(catalog, store, LocalProcessor(pipeline, store))
        hook = progress.append if progress is not None else None
        try:
            return await coordinator.run(session_id, mode, on_progress=hook)
        finally:
            await pipeline.aclose()

    return asyncio.run(go())


def distinct_faces(store: VectorStore, session_id: uuid.UUID) -> int:
    query = sa.select(
        sa.func.count(sa.distinct(sa.tuple_(face_embeddings.c.photo_id, face_embeddings.c.face_index)))
    )
    with store.engine.connect() as conn:
        return int(conn.scalar(query.where(face_embeddings.c.session_id == session_id)) or 0)


def test_seed_scenario_is_what_the_seed_describes(scenario: SeedScenario, store: VectorStore) -> None:
    assert len(scenario.photos) == 13
    assert store.count_embeddings(scenario.session_id) == 3
    assert store.done_photo_ids(scenario.session_id) == {p.id for p in scenario.preindexed}


def test_seed_run(
    settings: Settings,
    catalog: CloudCatalog,
    store: VectorStore,
    embedder: FaceEmbedder,
    scenario: SeedScenario,
) -> None:
    sid = scenario.session_id
    progress: list[ReindexReport] = []
    report = reindex(settings, catalog, store, embedder, sid, progress=progress)
    response = report.to_response()

    assert response["success"] is True
    assert response["session_id"] == str(sid)
    assert response["session_name"] == SEED_SESSION_NAME
    assert response["total_photos"] == 13
    assert response["skipped_photos"] == 3
    assert response["processed_photos"] == 10
    assert response["successful_photos"] == 8
    assert response["failed_photos"] == 2
    assert response["final_embedding_count"] == 11
    assert response["message"] == "Переиндексация завершена: 8/10 новых фото"
    assert sorted(response["errors"]) == SEED_ERRORS
    assert sorted(response["error_codes"]) == ["no_face", "not_found"]
    assert response["processing_time_ms"] > 0
    assert store.count_embeddings(sid) == 11

    lines = report.log_lines
    assert lines[:5] == [
        f"=== ПРИНУДИТЕЛЬНАЯ ПЕРЕИНДЕКСАЦИЯ СЕССИИ {sid} ===",
        f"Сессия валидирована: {SEED_SESSION_NAME}",
        "Найдено 13 фото в облачной базе",
        "Уже проиндексировано локально: 3 фото",
        "Нужно обработать: 10 новых фото",
    ]
    todo = sorted(
        (p for p in scenario.photos if p not in scenario.preindexed), key=lambda p: p.id
    )  # catalog order
    starts = [line for line in lines if line.startswith("Обработка фото")]
    assert starts == [f"Обработка фото {i} из 10: {p.filename}" for i, p in enumerate(todo, start=1)]
    done = [line for line in lines if line.startswith("✅")]
    assert len(done) == 8
    assert all(
        re.fullmatch(r"✅ Фото photo_\d{3}\.jpg успешно обработано \(confidence: 0\.\d{3}\)", d) for d in done
    )
    assert "❌ Лицо не обнаружено в фото corrupted_image.jpg" in lines
    assert "=== ПЕРЕИНДЕКСАЦИЯ ЗАВЕРШЕНА ===" in lines
    assert any(re.fullmatch(r"Время обработки: \d+ms", line) for line in lines)
    assert lines.index("=== ПЕРЕИНДЕКСАЦИЯ ЗАВЕРШЕНА ===") > max(lines.index(d) for d in done)

    ledger = store.ledger(sid)
    assert ledger[scenario.no_face.id] == "no_face"
    assert scenario.missing.id not in ledger  # transient: not recorded, retried next run
    assert sum(1 for status in ledger.values() if status == "indexed") == 11

    # progress: once after planning, once per photo, once at the end
    assert len(progress) == 12
    assert progress[-1] is report


def test_rerun_retries_only_the_transient_failure(
    settings: Settings,
    catalog: CloudCatalog,
    store: VectorStore,
    embedder: FaceEmbedder,
    storage: PhotoStorage,
    scenario: SeedScenario,
) -> None:
    sid = scenario.session_id
    reindex(settings, catalog, store, embedder, sid)
    no_face_hits = storage.hits[scenario.no_face.preview_path]
    missing_hits = storage.hits[scenario.missing.preview_path]

    second = reindex(settings, catalog, store, embedder, sid)
    assert (second.total_photos, second.skipped_photos, second.processed_photos) == (13, 12, 1)
    assert (second.successful_photos, second.failed_photos) == (0, 1)
    assert second.errors == ["Ошибка скачивания missing_file.jpg: 404 Not Found"]
    assert second.final_embedding_count == 11
    assert "Нужно обработать: 1 новых фото" in second.log_lines
    assert (
        storage.hits[scenario.no_face.preview_path] == no_face_hits
    )  # the no-face photo is not fetched again
    assert storage.hits[scenario.missing.preview_path] == missing_hits + 1

    storage.put(scenario.missing.preview_path, photos.jpeg(photos.load("yaoming.jpg")))
    third = reindex(settings, catalog, store, embedder, sid)
    assert (third.processed_photos, third.successful_photos, third.failed_photos) == (1, 1, 0)
    assert third.errors == []
    assert third.final_embedding_count == 12
    assert store.ledger(sid)[scenario.missing.id] == "indexed"

    fourth = reindex(settings, catalog, store, embedder, sid)
    assert (fourth.skipped_photos, fourth.processed_photos, fourth.final_embedding_count) == (13, 0, 12)
    assert fourth.message == "Переиндексация завершена: 0/0 новых фото"


def test_full_mode_reprocesses_without_duplicates(
    settings: Settings,
    catalog: CloudCatalog,
    store: VectorStore,
    embedder: FaceEmbedder,
    scenario: SeedScenario,
) -> None:
    sid = scenario.session_id
    reindex(settings, catalog, store, embedder, sid)
    before = store.count_embeddings(sid)
    assert before == 11

    full = reindex(settings, catalog, store, embedder, sid, ReindexMode.FULL)
    assert (full.total_photos, full.skipped_photos, full.processed_photos) == (13, 0, 13)
    assert full.successful_photos == 11
    assert full.final_embedding_count == before
    assert store.count_embeddings(sid) == distinct_faces(store, sid) == before


def test_soft_deleted_photos_are_not_planned(
    settings: Settings,
    catalog: CloudCatalog,
    store: VectorStore,
    embedder: FaceEmbedder,
    catalog_writer: CatalogWriter,
    scenario: SeedScenario,
) -> None:
    catalog_writer.soft_delete(scenario.missing.id)
    report = reindex(settings, catalog, store, embedder, scenario.session_id)
    assert (report.total_photos, report.processed_photos, report.successful_photos) == (12, 9, 8)
    assert report.errors == ["Лицо не обнаружено в фото corrupted_image.jpg"]


def test_retry_failed_mode(
    settings: Settings,
    catalog: CloudCatalog,
    store: VectorStore,
    embedder: FaceEmbedder,
    catalog_writer: CatalogWriter,
    storage: PhotoStorage,
) -> None:
    sid = catalog_writer.add_session("retry-failed", enabled=True)
    good, broken = catalog_writer.add_photos(
        sid, [("good.jpg", f"{sid}/good.jpg"), ("broken.jpg", f"{sid}/broken.jpg")]
    )
    storage.put(good.preview_path, photos.jpeg(photos.load("yaoming.jpg")))
    storage.put(broken.preview_path, b"\xff\xd8\xff\xe0 this is not really a jpeg")

    first = reindex(settings, catalog, store, embedder, sid)
    assert (first.processed_photos, first.successful_photos) == (2, 1)
    assert first.error_codes == ["not_an_image"]
    assert store.ledger(sid)[broken.id] == "failed"

    assert reindex(settings, catalog, store, embedder, sid).processed_photos == 0  # permanent: not retried

    storage.put(broken.preview_path, photos.jpeg(photos.load("gdp.jpg")))  # fixed upstream
    retry = reindex(settings, catalog, store, embedder, sid, ReindexMode.RETRY_FAILED)
    assert (retry.skipped_photos, retry.processed_photos, retry.successful_photos) == (1, 1, 1)
    assert retry.final_embedding_count == 1 + 5
    assert store.ledger(sid)[broken.id] == "indexed"


def test_unknown_session(
    settings: Settings, catalog: CloudCatalog, store: VectorStore, embedder: FaceEmbedder
) -> None:
    with pytest.raises(SessionNotFound):
        reindex(settings, catalog, store, embedder, uuid.uuid4())


def test_disabled_session(
    settings: Settings,
    catalog: CloudCatalog,
    store: VectorStore,
    embedder: FaceEmbedder,
    catalog_writer: CatalogWriter,
    storage: PhotoStorage,
) -> None:
    sid = catalog_writer.add_session("off", enabled=False)
    (ref,) = catalog_writer.add_photos(sid, [("a.jpg", f"{sid}/a.jpg")])
    storage.put(ref.preview_path, photos.jpeg(photos.load("yaoming.jpg")))
    with pytest.raises(FacePassDisabled):
        reindex(settings, catalog, store, embedder, sid)
    assert storage.hits[ref.preview_path] == 0
    assert store.count_embeddings(sid) == 0


def test_plan(catalog: CloudCatalog, store: VectorStore, scenario: SeedScenario) -> None:
    coordinator = ReindexCoordinator(catalog, store, CountingProcessor(capacity=1))
    plan = coordinator.plan(scenario.session_id)
    assert (plan.total_photos, plan.skipped_photos, len(plan.todo)) == (13, 3, 10)
    assert plan.session.name == SEED_SESSION_NAME
    assert not {p.id for p in plan.todo} & {p.id for p in scenario.preindexed}
    full = coordinator.plan(scenario.session_id, ReindexMode.FULL)
    assert (full.skipped_photos, len(full.todo)) == (0, 13)
    assert plan.prune == [] and plan.stale_photos == 0
    # Another model is running now: the pre-indexed photos are stale, not done.
    other = ReindexCoordinator(catalog, store, CountingProcessor(capacity=1, model_name="another/pack"))
    stale = other.plan(scenario.session_id)
    assert (stale.skipped_photos, len(stale.todo), stale.stale_photos) == (0, 13, 3)


class CountingProcessor(OneByOne):
    """A fake PhotoProcessor that records how many photos are in flight at once."""

    def __init__(self, capacity: int, model_name: str | None = None) -> None:
        self._capacity = capacity
        # The real pack's name by default: the seed scenario's pre-indexed photos are its.
        self._model_name = model_name or ModelPack.from_settings(Settings()).name
        self.in_flight = 0
        self.max_in_flight = 0
        self.started: list[str] = []

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def model_name(self) -> str:
        return self._model_name

    async def prune(
        self, session_id: uuid.UUID, photo_ids: list[uuid.UUID], fence: Fence | None = None
    ) -> PruneResult:
        raise AssertionError("this test plans no pruning")

    async def process(self, photo: PhotoRef) -> PhotoOutcome:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.started.append(photo.filename)
        try:
            # uneven durations so that photos finish out of order
            await asyncio.sleep(0.002 * (hash(photo.filename) % 7 + 1))
        finally:
            self.in_flight -= 1
        return PhotoOutcome(photo.id, photo.filename, PhotoStatus.INDEXED, face_count=1, best_score=0.9)


@pytest.mark.parametrize(("capacity", "count"), [(1, 5), (3, 20), (8, 5), (0, 4)])
def test_process_all_bounds_photos_in_flight(
    catalog: CloudCatalog, store: VectorStore, capacity: int, count: int
) -> None:
    processor = CountingProcessor(capacity)
    coordinator = ReindexCoordinator(catalog, store, processor)
    sid = uuid.uuid4()
    refs = [PhotoRef(uuid.uuid4(), sid, f"p{i:02d}.jpg", f"p{i:02d}.jpg") for i in range(count)]
    report = ReindexReport(session_id=sid, session_name="s", planned_photos=count)

    async def go() -> list[PhotoOutcome]:
        return [outcome async for outcome in coordinator.process_all(refs, SessionRun(report))]

    outcomes = asyncio.run(go())
    window = max(1, capacity)
    assert processor.max_in_flight == min(window, count)
    assert sorted(o.filename for o in outcomes) == [r.filename for r in refs]
    assert processor.started == [r.filename for r in refs]  # started in plan order
    assert [line for line in report.log_lines if line.startswith("Обработка")] == [
        f"Обработка фото {i} из {count}: p{i - 1:02d}.jpg" for i in range(1, count + 1)
    ]


def test_process_all_with_nothing_to_do(catalog: CloudCatalog, store: VectorStore) -> None:
    coordinator = ReindexCoordinator(catalog, store, CountingProcessor(2))

    async def go() -> list[PhotoOutcome]:
        return [outcome async for outcome in coordinator.process_all([])]

    assert asyncio.run(go()) == []


def test_a_full_disk_stops_the_run_and_the_next_run_does_the_rest(
    settings: Settings,
    catalog: CloudCatalog,
    store: VectorStore,
    embedder: FaceEmbedder,
    storage: PhotoStorage,
    scenario: SeedScenario,
) -> None:
    """The index refuses the run's writes with "disk full" (PostgreSQL's SQLSTATE 53100, from a
    trigger): the run stops at its first refused photo with ``IndexCannotWrite`` (no download of
    the photos it had not started), the report says where it stopped, nothing is written; once
    the space is back the next run processes all ten photos, as the seed run does."""
    sid = scenario.session_id
    paths = [p.preview_path for p in catalog.list_photos(sid)]
    before = sum(storage.hits[path] for path in paths)
    progress: list[ReindexReport] = []
    with InjectedDiskFull(store.engine, sid), pytest.raises(IndexCannotWrite) as stopped:
        reindex(settings, catalog, store, embedder, sid, progress=progress)
    assert stopped.value.code == "index_cannot_write" and stopped.value.database == "local index"
    assert re.search(r"stopped after \d+ of 10 photos \(0 written, none of the others\)", str(stopped.value))
    assert "SQLSTATE 53100" in str(stopped.value)
    lines = progress[-1].log_lines
    started = [line for line in lines if line.startswith("Обработка фото")]
    # LocalProcessor's window (4 photos in flight), + 1 for missing_file.jpg (a 404 writes nothing)
    assert 1 <= len(started) <= 5, started
    assert sum(storage.hits[path] for path in paths) - before <= len(started) < 10
    assert any(line.startswith("=== ПЕРЕИНДЕКСАЦИЯ ОСТАНОВЛЕНА: индекс не может писать") for line in lines)
    assert len(store.index_state(sid)) == 3  # only the three indexed before the run

    again = reindex(settings, catalog, store, embedder, sid)
    assert (again.processed_photos, again.successful_photos, again.skipped_photos) == (10, 8, 3)


def test_a_photo_id_repeated_in_two_sessions_is_indexed_once_in_each(
    settings: Settings, store: VectorStore, embedder: FaceEmbedder, storage: PhotoStorage
) -> None:
    """A catalog whose photo ids are unique per session only (its photos keyed by (session_id,
    id)) lists one id in sessions A and B, two different images: each session gets its own ledger
    row and faces, a second run of either has nothing to do (it used to take the other's row, in
    a loop), and pruning B's copy leaves A's."""
    dsn, writer = new_catalog_database(settings, "repeat")
    with writer.engine.begin() as conn:
        conn.execute(
            sa.text("ALTER TABLE photos DROP CONSTRAINT photos_pkey, ADD PRIMARY KEY (session_id, id)")
        )
    a, b = writer.add_session("Повтор A"), writer.add_session("Повтор B")
    [in_a] = add_face_photos(writer, storage, a, 1, prefix="a")
    in_b, other = add_face_photos(writer, storage, b, 2, prefix="b")
    shared = in_a.id
    with writer.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE photos SET id = :shared WHERE id = :id"), {"shared": shared, "id": in_b.id}
        )
    catalog = CloudCatalog(dsn)
    try:
        first = [reindex(settings, catalog, store, embedder, sid) for sid in (a, b)]
        assert [(r.processed_photos, r.successful_photos) for r in first] == [(1, 1), (2, 2)]
        again = [reindex(settings, catalog, store, embedder, sid) for sid in (a, b, a)]
        assert [(r.processed_photos, r.skipped_photos) for r in again] == [(0, 1), (0, 2), (0, 1)]
        assert store.ledger(a) == {shared: "indexed"}
        assert store.ledger(b) == {shared: "indexed", other.id: "indexed"}
        counts = (store.count_embeddings(a), store.count_embeddings(b))
        assert counts[0] >= 1 and counts[1] >= 2
        with writer.engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE photos SET deleted_at = now() WHERE session_id = :s AND id = :id"),
                {"s": b, "id": shared},
            )
        pruned = reindex(settings, catalog, store, embedder, b)
        assert (pruned.pruned_photos, pruned.processed_photos) == (1, 0)
        assert store.ledger(b) == {other.id: "indexed"} and store.ledger(a) == {shared: "indexed"}
        assert store.count_embeddings(a) == counts[0]
    finally:
        catalog.close()
        writer.close()


class BatchRecorder(CountingProcessor):
    """Hands back each batch it is given; remembers their sizes."""

    batch = 3

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self.batches: list[int] = []

    async def process_many(self, photos: list[PhotoRef]) -> list[PhotoOutcome]:
        self.batches.append(len(photos))
        return await super().process_many(photos)


def test_a_run_hands_in_batches_and_logs_once_per_batch(
    catalog: CloudCatalog, store: VectorStore, caplog: pytest.LogCaptureFixture
) -> None:
    """One future per batch of ``processor.batch`` photos; the seed's per-photo lines all kept,
    in one log record per batch (not one per photo)."""
    processor = BatchRecorder(capacity=6)
    coordinator = ReindexCoordinator(catalog, store, processor)
    sid = uuid.uuid4()
    refs = [PhotoRef(uuid.uuid4(), sid, f"p{i:02d}.jpg", f"p{i:02d}.jpg") for i in range(10)]
    report = ReindexReport(session_id=sid, session_name="s", planned_photos=10)
    run = SessionRun(report)

    async def go() -> None:
        async for outcomes in coordinator.process_batches(refs, run):
            coordinator.record(run, outcomes)

    with caplog.at_level(logging.INFO, logger="facepass.reindex"):
        asyncio.run(go())
    assert processor.batches == [3, 3, 3, 1] and processor.max_in_flight <= 6
    assert report.processed_photos == 10 and report.successful_photos == 10
    starts = [line for line in report.log_lines if line.startswith("Обработка")]
    assert starts == [f"Обработка фото {i} из 10: p{i - 1:02d}.jpg" for i in range(1, 11)]
    records = [r.getMessage() for r in caplog.records if r.name == "facepass.reindex"]
    assert len(records) == 8  # 4 batches handed in, 4 batches recorded
    assert "\n".join(records).splitlines() == report.log_lines
