"""The route end to end: Serve -> embedding actors -> writer -> pgvector, on real parts."""

from __future__ import annotations

import re
import threading
import time
import uuid

import httpx
import numpy as np
import pytest
import ray
import sqlalchemy as sa

from actors.ray_calls import WRITER_NAME, embedding_actor_name
from facepass.demo import photos
from facepass.demo.scenario import (
    CatalogWriter,
    SeedScenario,
    add_face_photos,
    build_seed_scenario,
    preview_path,
)
from facepass.demo.storage import PhotoStorage
from facepass.index.store import VectorStore, face_embeddings, indexed_photos
from facepass.settings import Settings
from facepass.vision.pack import ModelPack
from tests.integration.conftest import Service, actors_variant, wait_for_ray_logs

SEED_KEYS = {
    "success", "message", "session_id", "session_name", "total_photos", "processed_photos",
    "successful_photos", "skipped_photos", "failed_photos", "processing_time_ms", "errors",
    "final_embedding_count",
}  # fmt: skip


@pytest.fixture(scope="module")
def seed(settings: Settings, storage: PhotoStorage) -> SeedScenario:
    return build_seed_scenario(settings, storage)


@pytest.fixture(scope="module")
def first_run(service: Service, seed: SeedScenario) -> dict[str, object]:
    response = service.reindex(seed.session_id)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def rows_of(store: VectorStore, session_id: uuid.UUID) -> list[tuple[uuid.UUID, int]]:
    query = sa.select(face_embeddings.c.photo_id, face_embeddings.c.face_index).where(
        face_embeddings.c.session_id == session_id
    )
    with store.engine.connect() as conn:
        return [(r[0], r[1]) for r in conn.execute(query)]


def test_seed_scenario_counts_and_messages(first_run: dict[str, object], seed: SeedScenario) -> None:
    assert SEED_KEYS <= set(first_run)
    assert first_run["success"] is True
    assert first_run["message"] == "Переиндексация завершена: 8/10 новых фото"
    assert first_run["session_id"] == str(seed.session_id)
    assert first_run["session_name"] == "Тестовая фотосессия"
    assert (first_run["total_photos"], first_run["skipped_photos"]) == (13, 3)
    assert (first_run["processed_photos"], first_run["successful_photos"], first_run["failed_photos"]) == (
        10, 8, 2,
    )  # fmt: skip
    assert sorted(first_run["errors"]) == sorted(  # type: ignore[arg-type]
        ["Лицо не обнаружено в фото corrupted_image.jpg", "Ошибка скачивания missing_file.jpg: 404 Not Found"]
    )
    assert first_run["final_embedding_count"] == 11
    assert isinstance(first_run["processing_time_ms"], float) and first_run["processing_time_ms"] > 0


def test_seed_log_lines_reach_the_replica_log(first_run: dict[str, object], seed: SeedScenario) -> None:
    """The route's run says the seed's lines, in the seed's order, in the replica's log."""
    header = f"=== ПРИНУДИТЕЛЬНАЯ ПЕРЕИНДЕКСАЦИЯ СЕССИИ {seed.session_id} ==="

    def block(text: str) -> str:  # the first run's lines, from its header to its closing time
        start = text.find(header)
        end = text.find("Время обработки:", start)
        return text[start : text.find("\n", end)] if start >= 0 and end >= 0 else ""

    texts = wait_for_ray_logs(lambda text: block(text) != "")
    run = next(block(t) for t in texts.values() if block(t))
    expected = [
        header,
        "Сессия валидирована: Тестовая фотосессия",
        "Найдено 13 фото в облачной базе",
        "Уже проиндексировано локально: 3 фото",
        "Нужно обработать: 10 новых фото",
        *(f"Обработка фото {i} из 10: " for i in range(1, 11)),
        "=== ПЕРЕИНДЕКСАЦИЯ ЗАВЕРШЕНА ===",
    ]
    at = 0
    for line in expected:
        found = run.find(line, at)
        assert found >= 0, f"{line!r} missing (or out of order) in the replica's log:\n{run}"
        at = found
    done = re.findall(r"✅ Фото (\S+) успешно обработано \(confidence: 0\.\d{3}\)", run)
    assert len(done) == 8, run
    assert "❌ Лицо не обнаружено в фото corrupted_image.jpg" in run
    assert re.search(r"Время обработки: \d+ms", run)


def test_second_run_is_idempotent_and_skips_the_no_face_photo(
    service: Service, seed: SeedScenario, first_run: dict[str, object], store: VectorStore,
    storage: PhotoStorage,
) -> None:  # fmt: skip
    rows_before = rows_of(store, seed.session_id)
    no_face_hits = storage.hits[seed.paths["corrupted_image.jpg"]]
    body = service.reindex(seed.session_id).json()
    assert body["skipped_photos"] == 12
    # Only the transient 404 is retried; nothing new is indexed.
    assert body["processed_photos"] == 1 and body["successful_photos"] == 0
    assert body["errors"] == ["Ошибка скачивания missing_file.jpg: 404 Not Found"]
    assert body["final_embedding_count"] == 11
    assert sorted(rows_of(store, seed.session_id)) == sorted(rows_before)
    assert storage.hits[seed.paths["corrupted_image.jpg"]] == no_face_hits  # not downloaded again
    assert store.ledger(seed.session_id)[seed.no_face.id] == "no_face"
    assert seed.missing.id not in store.ledger(seed.session_id)


def test_failed_download_is_processed_once_the_file_is_there(
    service: Service, seed: SeedScenario, first_run: dict[str, object], store: VectorStore,
    storage: PhotoStorage,
) -> None:  # fmt: skip
    storage.put(seed.paths["missing_file.jpg"], photos.jpeg(photos.load("yaoming.jpg")))
    try:
        body = service.reindex(seed.session_id).json()
    finally:
        storage.remove(seed.paths["missing_file.jpg"])
    assert (body["processed_photos"], body["successful_photos"]) == (1, 1)
    assert body["final_embedding_count"] == 12
    assert store.ledger(seed.session_id)[seed.missing.id] == "indexed"
    assert service.reindex(seed.session_id).json()["processed_photos"] == 0


def test_deleted_photos_leave_the_index_through_the_route(
    service: Service, catalog_writer: CatalogWriter, storage: PhotoStorage, store: VectorStore
) -> None:
    """Soft- and hard-deleted photos lose their rows on the next call, blocking or not;
    the answer counts them and gives per-step timings."""
    sid = catalog_writer.add_session("Сессия с удалениями")
    refs = add_face_photos(catalog_writer, storage, sid, 6, prefix="del")
    first = service.reindex(sid).json()
    assert first["successful_photos"] == 6 and first["pruned_photos"] == 0
    timings = first["timings_ms"]
    assert set(timings) == {"download", "decode_and_inference", "write"}
    assert all(0 < step["p50"] <= step["p95"] for step in timings.values())
    rows = rows_of(store, sid)
    catalog_writer.soft_delete(refs[0].id)
    catalog_writer.hard_delete(refs[1].id)
    gone_faces = sum(1 for p, _ in rows if p in {refs[0].id, refs[1].id})

    accepted = service.reindex(sid, wait="false")  # the 202 job runs the same steps
    assert accepted.status_code == 202
    status_url = f"{service.base_url}{accepted.json()['status_url']}"
    deadline = time.monotonic() + 120
    while (job := httpx.get(status_url, headers=service.headers, timeout=30).json())["status"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert job["status"] == "done", job
    assert (job["pruned_photos"], job["pruned_faces"], job["processed_photos"]) == (2, gone_faces, 0)
    assert job["final_embedding_count"] == len(rows) - gone_faces == len(rows_of(store, sid))
    assert set(store.ledger(sid)) == {r.id for r in refs[2:]}
    again = service.reindex(sid).json()
    assert (again["pruned_photos"], again["processed_photos"], again["timings_ms"]["write"]) == (0, 0, None)


def test_http_errors(service: Service, catalog_writer: CatalogWriter) -> None:
    unknown = service.reindex(uuid.uuid4())
    assert unknown.status_code == 404 and unknown.json()["code"] == "session_not_found"
    disabled = catalog_writer.add_session("Закрытая сессия", enabled=False)
    forbidden = service.reindex(disabled)
    assert forbidden.status_code == 403
    assert forbidden.json()["detail"] == "FacePass не активен"
    assert service.reindex("not-a-uuid").status_code == 422
    assert service.reindex(uuid.uuid4(), mode="bogus").status_code == 422
    # and the service keeps serving
    assert httpx.get(f"{service.base_url}/healthz", timeout=30).status_code == 200


def test_catalog_urls_to_addresses_not_global_or_other_ports_are_refused(
    service: Service, catalog_writer: CatalogWriter, storage: PhotoStorage, store: VectorStore
) -> None:
    """Absolute photo URLs from the catalog, on allow-listed hosts, that must never be fetched:
    each a per-photo error in the seed's words, recorded (not retried); the session's other
    photo is indexed."""
    sid = catalog_writer.add_session("Ссылки из каталога")
    storage.put(preview_path(sid, "ok.jpg"), photos.jpeg(photos.load("yaoming.jpg")))
    refused = {
        "cgnat.jpg": ("http://100.64.0.1/latest/meta-data/", "non-public address 100.64.0.1"),
        "nat64.jpg": (
            "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
            "non-public address 64:ff9b::a9fe:a9fe",
        ),
        "port.jpg": ("http://203.0.113.7:6379/x.jpg", "port 6379 of host '203.0.113.7' is not allowed"),
    }
    refs = catalog_writer.add_photos(
        sid, [("ok.jpg", preview_path(sid, "ok.jpg"))] + [(n, url) for n, (url, _) in refused.items()]
    )
    body = service.reindex(sid).json()
    assert (body["processed_photos"], body["successful_photos"], body["failed_photos"]) == (4, 1, 3), body
    for name, (_, why) in refused.items():
        assert any(e.startswith(f"Ошибка скачивания {name}: ") and why in e for e in body["errors"]), (
            name,
            body["errors"],
        )
    ledger = store.ledger(sid)
    assert [ledger[r.id] for r in refs] == ["indexed", "failed", "failed", "failed"]
    assert service.reindex(sid).json()["processed_photos"] == 0  # refused for good: not tried again


def test_group_photo_gives_one_row_per_face_matching_insightface(
    service: Service,
    catalog_writer: CatalogWriter,
    storage: PhotoStorage,
    store: VectorStore,
    tmp_path: object,
) -> None:
    sid = catalog_writer.add_session("Групповое фото")
    path = preview_path(sid, "t1.jpg")
    data = photos.jpeg(photos.load("t1.jpg"), quality=100)
    storage.put(path, data)
    catalog_writer.add_photos(sid, [("t1.jpg", path)])
    body = service.reindex(sid).json()
    assert body["successful_photos"] == 1 and body["faces_indexed"] == 6
    assert body["final_embedding_count"] == 6

    query = sa.select(face_embeddings).where(face_embeddings.c.session_id == sid)
    with store.engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    assert sorted(r["face_index"] for r in rows) == list(range(6))
    # The CPU default: the variant the actors chose (issue 31), a build of the pack's weights:
    # their generation (issue 30), the build in the ledger.
    assert {r["model_name"] for r in rows} == {ModelPack.from_settings(Settings()).name}
    assert {r.variant for r in store.ledger_rows(sid)} == {actors_variant(service)}
    stored = np.stack([np.asarray(r["embedding"], dtype=np.float32) for r in rows])
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, atol=1e-5)

    reference = _insightface_reference(data, tmp_path)
    for row, vec in zip(rows, stored, strict=True):
        centre = np.array([(row["bbox_x1"] + row["bbox_x2"]) / 2, (row["bbox_y1"] + row["bbox_y2"]) / 2])
        ref = min(reference, key=lambda f: float(np.linalg.norm(_centre(f.bbox) - centre)))
        ref_vec = ref.embedding / np.linalg.norm(ref.embedding)
        assert float(vec @ ref_vec) >= 0.999
        # The CPU default is the fast path (detector input fitted to the photo's aspect): the
        # score moves by up to ~0.01 from InsightFace's padded square (the fp32 pack: < 1e-6).
        assert abs(row["det_score"] - float(ref.det_score)) < 0.01


def _centre(bbox: np.ndarray) -> np.ndarray:
    return np.array([(bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2])


def _insightface_reference(data: bytes, tmp_path: object) -> list:  # type: ignore[type-arg]
    """InsightFace's own FaceAnalysis.get on the same bytes, with the same two models."""
    from pathlib import Path

    import cv2
    from insightface.app import FaceAnalysis

    from facepass.vision.pack import ModelPack

    pack = ModelPack.from_settings(Settings())
    folder = Path(str(tmp_path)) / "pack"
    folder.mkdir()
    (folder / pack.detector.name).symlink_to(pack.detector)
    (folder / pack.recognizer.name).symlink_to(pack.recognizer)
    analysis = FaceAnalysis(name=str(folder), providers=["CPUExecutionProvider"])
    analysis.prepare(ctx_id=0, det_size=(640, 640))
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return list(analysis.get(image))


def test_killed_embedding_actor_loses_no_photo_and_duplicates_nothing(
    service: Service, catalog_writer: CatalogWriter, storage: PhotoStorage, store: VectorStore
) -> None:
    sid = catalog_writer.add_session("Сессия с падением актора")
    crops = photos.single_face_crops()
    names = []
    for i in range(24):
        path = preview_path(sid, f"p{i:03d}.jpg")
        storage.put(path, photos.jpeg(photos.variant(crops[i % len(crops)].image, i)))
        names.append((f"p{i:03d}.jpg", path))
    catalog_writer.add_photos(sid, names)

    result: dict[str, httpx.Response] = {}
    storage.latency_s = 0.25  # slow storage: the run is still going when the actor dies
    try:
        caller = threading.Thread(target=lambda: result.update(r=service.reindex(sid)))
        caller.start()
        time.sleep(1.5)
        victim = ray.get_actor(embedding_actor_name(0), namespace=service.settings.ray_namespace)
        ray.kill(victim, no_restart=False)  # dies mid-photo; Ray restarts it
        caller.join(timeout=240)
    finally:
        storage.latency_s = 0.0
    body = result["r"].json()
    assert body["processed_photos"] == 24
    assert body["successful_photos"] == 24, body["errors"]
    rows = rows_of(store, sid)
    assert len(rows) == len(set(rows)) == body["faces_indexed"]  # no (photo, face) twice
    assert len({p for p, _ in rows}) == 24
    assert set(store.ledger(sid).values()) == {"indexed"}
    # The pool is whole again: the restarted actor answers.
    deadline = time.monotonic() + 60
    while True:
        health = service.get("/healthz").json()  # the pool's details: to a caller with a key
        whole = health["ok"] and len(health["pool"]["actors"]) == 2
        if whole or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert health["ok"] is True, health
    assert len(health["pool"]["actors"]) == 2


def test_writer_killed_mid_batch_loses_nothing_and_duplicates_nothing(
    service: Service, catalog_writer: CatalogWriter, storage: PhotoStorage, store: VectorStore
) -> None:
    """The one writer dies (three times) while batches are in flight: nothing that was
    reported committed is lost, no photo is half written, and a re-run finishes the rest."""
    sid = catalog_writer.add_session("Сессия с падением писателя")
    crops = photos.single_face_crops()
    names = []
    for i in range(32):
        path = preview_path(sid, f"w{i:03d}.jpg")
        storage.put(path, photos.jpeg(photos.variant(crops[i % len(crops)].image, i + 100)))
        names.append((f"w{i:03d}.jpg", path))
    catalog_writer.add_photos(sid, names)

    result: dict[str, httpx.Response] = {}
    storage.latency_s = 0.2
    try:
        caller = threading.Thread(target=lambda: result.update(r=service.reindex(sid)))
        caller.start()
        for _ in range(3):
            time.sleep(1.2)
            writer = ray.get_actor(WRITER_NAME, namespace=service.settings.ray_namespace)
            ray.kill(writer, no_restart=False)  # Ray restarts it; its open transaction rolls back
        caller.join(timeout=240)
    finally:
        storage.latency_s = 0.0
    first = result["r"].json()
    assert first["processed_photos"] == 32
    ledger = store.ledger(sid)
    rows = rows_of(store, sid)
    assert len(rows) == len(set(rows))  # no (photo, face) twice
    # Every photo reported indexed is in the ledger with its rows; none has rows without a ledger row.
    assert first["successful_photos"] == len(ledger)
    assert {p for p, _ in rows} == set(ledger)

    second = service.reindex(sid).json()
    assert second["skipped_photos"] == first["successful_photos"]
    assert second["processed_photos"] == 32 - first["successful_photos"]
    assert second["successful_photos"] == second["processed_photos"], second["errors"]
    rows = rows_of(store, sid)
    assert len(rows) == len(set(rows)) == second["final_embedding_count"]
    assert len({p for p, _ in rows}) == 32
    assert set(store.ledger(sid).values()) == {"indexed"}


def test_custom_metrics_reach_the_node_metrics_endpoint(
    service: Service, first_run: dict[str, object]
) -> None:
    """The pool's metrics of the photos the seed's run indexed reach the node's /metrics, and
    each actor's variant (issue 31)."""
    wanted = {
        "ray_facepass_photos_total",
        "ray_facepass_faces_total",
        "ray_facepass_inference_seconds",
        "ray_facepass_model_variant",
    }
    deadline = time.monotonic() + 90
    seen: set[str] = set()
    while time.monotonic() < deadline:
        text = httpx.get(f"{service.head.metrics_url}/metrics", timeout=10).text
        seen = {name for name in wanted if name in text}
        if seen == wanted:
            break
        time.sleep(2)
    assert seen == wanted
    chosen = actors_variant(service)
    lines = [line for line in text.splitlines() if line.startswith("ray_facepass_model_variant{")]
    assert any(f'variant="{chosen}"' in line and line.endswith(" 1.0") for line in lines), lines


@pytest.mark.parametrize("n_photos", [6])
def test_non_blocking_route_gives_a_job_with_progress_and_the_same_final_json(
    service: Service, catalog_writer: CatalogWriter, storage: PhotoStorage, n_photos: int
) -> None:
    sid = catalog_writer.add_session("Сессия в фоне")
    add_face_photos(catalog_writer, storage, sid, n_photos)
    storage.latency_s = 0.2
    try:
        accepted = service.reindex(sid, wait="false")
        assert accepted.status_code == 202, accepted.text
        job = accepted.json()
        assert job["status"] == "running" and job["status_url"].endswith(job["job_id"])
        states = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            state = service.get(job["status_url"]).json()
            states.append(state)
            if state["status"] != "running":
                break
            time.sleep(0.3)
    finally:
        storage.latency_s = 0.0
    final = states[-1]
    assert final["status"] == "done", final
    assert final["message"] == f"Переиндексация завершена: {n_photos}/{n_photos} новых фото"
    assert (final["total_photos"], final["processed_photos"], final["successful_photos"]) == (n_photos,) * 3
    assert final["final_embedding_count"] >= n_photos and final["errors"] == []
    running = [s for s in states if s["status"] == "running" and "processed_photos" in s]
    assert running, "progress was never visible while the job ran"
    assert all("eta_s" in s and s["planned_photos"] == n_photos for s in running)
    # A blocking call now answers with the same fields, and nothing left to do.
    blocking = service.reindex(sid).json()
    # (`joined` is said to each call: whether it shared another call's run.)
    assert set(blocking) - {"joined"} <= set(final) and blocking["skipped_photos"] == n_photos
    assert blocking["joined"] is False
    assert service.get("/api/v1/faces/reindex-jobs/nope").status_code == 404
    assert service.reindex(uuid.uuid4(), wait="false").status_code == 404


def test_health_reports_the_cpu_choice_and_docs_are_served(service: Service) -> None:
    open_health = httpx.get(f"{service.base_url}/healthz", timeout=60)  # no key: ok / fail per part
    assert open_health.status_code == 200
    assert open_health.json() == {
        "ok": True,
        "cloud_db": "ok",
        "local_db": "ok",
        "pool": "ok",
        "problems": [],
    }
    health = service.get("/healthz")  # with a key: the details
    assert health.status_code == 200
    body = health.json()
    assert body["cloud_db"] == "ok" and body["local_db"] == "ok" and body["pool"]["writer"] is True
    for actor in body["pool"]["actors"]:
        # The variant chosen at load (issue 31): measured once for this kind of machine and
        # kept in the index database, the other actors read it; its timings and verdicts.
        choice = actor["variant_choice"]
        assert actor["variant"] == choice["variant"] and choice["requested"] == "auto"
        assert choice["how"] in ("measured", "kept") and choice["store"].startswith("index database")
        assert choice["hardware"]["gpu"] is None and choice["hardware"]["cpu_model"]
        assert choice["variant"] in choice["estimate_ms"] and choice["timings_ms"]["recognizer"]
        openvino = "openvino" in choice["variant"]
        assert ("OpenVINO" in actor["providers_requested"]) is openvino
        assert any("OpenVINO CPU" in p for p in actor["providers_active"]) is openvino
        assert actor["gpu_ids"] == []
    # One actor of this kind of machine measures, the others wait for its row and read it.
    assert sum(a["variant_choice"]["how"] == "measured" for a in body["pool"]["actors"]) <= 1
    assert httpx.get(f"{service.base_url}/docs", timeout=30).status_code == 200
    spec = httpx.get(f"{service.base_url}/openapi.json", timeout=30).json()
    assert "/api/v1/faces/force-reindex-session/{session_id}" in spec["paths"]


def test_ledger_and_rows_never_disagree(store: VectorStore) -> None:
    """Every indexed photo has exactly face_count rows of the model its ledger row names (a
    photo mid-rebuild also has an older generation's rows); no row without a ledger entry
    (except legacy rows, made before the ledger existed: the unit tier plants some in the
    same database when both tiers run in one session)."""
    query = sa.text(
        "SELECT l.photo_id, l.face_count, count(f.id) FROM indexed_photos l "
        "LEFT JOIN face_embeddings f ON f.photo_id = l.photo_id AND f.model_name = l.model_name "
        "GROUP BY l.photo_id, l.face_count"
    )
    orphan = (
        sa.select(sa.func.count())
        .select_from(
            face_embeddings.outerjoin(indexed_photos, face_embeddings.c.photo_id == indexed_photos.c.photo_id)
        )
        .where(indexed_photos.c.photo_id.is_(None), face_embeddings.c.model_name != "legacy")
    )
    with store.engine.connect() as conn:
        for photo_id, face_count, rows in conn.execute(query):
            assert face_count == rows, photo_id
        assert conn.scalar(orphan) == 0
