"""facepass.runs.report: the seed's JSON and log lines."""

from __future__ import annotations

import json
import uuid

import pytest

from facepass.models import PhotoOutcome, PhotoStatus, SessionInfo
from facepass.runs import report as words
from facepass.runs.report import ReindexReport

SEED_KEYS = [
    "success",
    "message",
    "session_id",
    "session_name",
    "total_photos",
    "processed_photos",
    "successful_photos",
    "skipped_photos",
    "failed_photos",
    "processing_time_ms",
    "errors",
    "final_embedding_count",
]


def ok(name: str, score: float = 0.892, faces: int = 1) -> PhotoOutcome:
    return PhotoOutcome(uuid.uuid4(), name, PhotoStatus.INDEXED, face_count=faces, best_score=score)


def bad(name: str, status: PhotoStatus, code: str, message: str) -> PhotoOutcome:
    return PhotoOutcome(uuid.uuid4(), name, status, error_code=code, error_message=message)


NO_FACE = bad(
    "corrupted_image.jpg", PhotoStatus.NO_FACE, "no_face", "Лицо не обнаружено в фото corrupted_image.jpg"
)
MISSING = bad(
    "missing_file.jpg", PhotoStatus.RETRY, "not_found", "Ошибка скачивания missing_file.jpg: 404 Not Found"
)


@pytest.fixture
def seed_report() -> ReindexReport:
    """The seed's numbers: 13 photos, 3 skipped, 8 of 10 new ones indexed."""
    report = ReindexReport(session_id=uuid.uuid4(), session_name="Тестовая фотосессия", model_name="m")
    report.total_photos, report.skipped_photos = 13, 3
    for i in range(8):
        report.add(ok(f"photo_{i + 4:03d}.jpg", faces=1 + i % 2))
    report.add(NO_FACE)
    report.add(MISSING)
    report.final_embedding_count = 11
    report.processing_time_ms = 45230.1234
    return report


def test_response_has_the_seed_keys_in_order_plus_extras(seed_report: ReindexReport) -> None:
    response = seed_report.to_response()
    keys = list(response)
    assert keys[: len(SEED_KEYS)] == SEED_KEYS
    extras = set(keys[len(SEED_KEYS) :])
    assert {"error_codes", "model_name"} <= extras
    assert not extras & set(SEED_KEYS)
    json.dumps(response)  # serializable as is


def test_response_values_match_the_seed(seed_report: ReindexReport) -> None:
    response = seed_report.to_response()
    assert response["success"] is True
    assert response["message"] == "Переиндексация завершена: 8/10 новых фото"
    assert response["session_id"] == str(seed_report.session_id)
    assert response["session_name"] == "Тестовая фотосессия"
    assert (response["total_photos"], response["skipped_photos"]) == (13, 3)
    assert (response["processed_photos"], response["successful_photos"], response["failed_photos"]) == (
        10,
        8,
        2,
    )
    assert response["processing_time_ms"] == 45230.12
    assert response["errors"] == [
        "Лицо не обнаружено в фото corrupted_image.jpg",
        "Ошибка скачивания missing_file.jpg: 404 Not Found",
    ]
    assert response["final_embedding_count"] == 11
    assert response["error_codes"] == ["no_face", "not_found"]
    assert response["faces_indexed"] == 12
    assert (response["no_face_photos"], response["retry_photos"]) == (1, 1)
    assert response["model_name"] == "m"


def test_response_is_a_copy(seed_report: ReindexReport) -> None:
    response = seed_report.to_response()
    response["errors"].append("x")
    assert len(seed_report.errors) == 2


def test_empty_run() -> None:
    report = ReindexReport(session_id=uuid.uuid4(), session_name="s")
    response = report.to_response()
    assert response["message"] == "Переиндексация завершена: 0/0 новых фото"
    assert (response["processed_photos"], response["failed_photos"], response["errors"]) == (0, 0, [])


@pytest.mark.parametrize("cap", [0, 1, 3, 10])
def test_errors_are_capped(cap: int) -> None:
    report = ReindexReport(session_id=uuid.uuid4(), session_name="s", max_errors=cap)
    for i in range(15):
        report.add(bad(f"{i}.jpg", PhotoStatus.FAILED, "not_an_image", f"error {i}"))
    assert report.errors == [f"error {i}" for i in range(cap)]
    assert len(report.error_codes) == cap
    assert report.failed_photos == 15  # the count is not capped
    assert report.to_response()["failed_photos"] == 15


def test_default_cap_is_ten() -> None:
    report = ReindexReport(session_id=uuid.uuid4(), session_name="s")
    for _ in range(12):
        report.add(MISSING)
    assert len(report.to_response()["errors"]) == 10


def test_log_lines() -> None:
    sid = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert words.start_line(sid) == f"=== ПРИНУДИТЕЛЬНАЯ ПЕРЕИНДЕКСАЦИЯ СЕССИИ {sid} ==="
    assert (
        words.validated_line(SessionInfo(sid, "Тестовая фотосессия", True))
        == "Сессия валидирована: Тестовая фотосессия"
    )
    assert words.plan_lines(13, 3, 10) == [
        "Найдено 13 фото в облачной базе",
        "Уже проиндексировано локально: 3 фото",
        "Нужно обработать: 10 новых фото",
    ]
    assert words.photo_start_line(1, 10, "photo_004.jpg") == "Обработка фото 1 из 10: photo_004.jpg"


def test_photo_done_line() -> None:
    assert (
        words.photo_done_line(ok("a.jpg", 0.8921)) == "✅ Фото a.jpg успешно обработано (confidence: 0.892)"
    )
    assert words.photo_done_line(NO_FACE) == "❌ Лицо не обнаружено в фото corrupted_image.jpg"


def test_closing_lines(seed_report: ReindexReport) -> None:
    lines = seed_report.closing_lines()
    assert lines[0] == "=== ПЕРЕИНДЕКСАЦИЯ ЗАВЕРШЕНА ==="
    assert "Время обработки: 45230ms" in lines
    assert "Всего фото в облаке: 13" in lines
    assert "Успешно: 8" in lines
    assert "С ошибками: 2" in lines
    assert "Эмбеддингов в индексе сессии: 11" in lines


def test_the_core_result_and_the_http_schema_name_the_same_fields(seed_report: ReindexReport) -> None:
    """RunResult (the core's record of a run) and ReindexResponse (the route's schema) are kept
    apart on purpose (core vs edge); this holds them to the same fields, in the same order, and
    the route's answer validates against the schema."""
    import dataclasses

    from facepass.runs.jobs import RunResult
    from serve_app.schemas import ReindexResponse

    core = [f.name for f in dataclasses.fields(RunResult)]
    edge = [name for name in ReindexResponse.model_fields if name not in ("job_id", "joined")]
    assert core == edge
    answer = ReindexResponse.model_validate(seed_report.to_response())
    assert answer.model_dump(exclude={"job_id", "joined"}, mode="json") == seed_report.to_response()
