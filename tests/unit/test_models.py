"""facepass.models and facepass.errors: how one photo's result is classified."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from facepass import errors
from facepass.models import DetectedFace, LedgerStatus, PhotoOutcome, PhotoRef, PhotoResult, PhotoStatus

REF = PhotoRef(uuid.uuid4(), uuid.uuid4(), "a.jpg", "a.jpg")


def face(score: float) -> DetectedFace:
    return DetectedFace((0.0, 0.0, 1.0, 1.0), score, np.zeros(512, np.float32))


@pytest.mark.parametrize(
    ("code", "transient", "status"),
    [
        (None, False, PhotoStatus.INDEXED),
        ("no_face", False, PhotoStatus.NO_FACE),
        ("not_an_image", False, PhotoStatus.FAILED),
        ("not_found", True, PhotoStatus.RETRY),
        ("timeout", True, PhotoStatus.RETRY),
    ],
)
def test_result_status(code: str | None, transient: bool, status: PhotoStatus) -> None:
    result = PhotoResult(REF, "m", error_code=code, error_transient=transient)
    assert result.status is status


def test_every_recorded_status_is_a_ledger_status() -> None:
    recorded = {s.value for s in PhotoStatus} - {PhotoStatus.RETRY.value}
    assert recorded == {s.value for s in LedgerStatus}


def test_outcome_from_result() -> None:
    result = PhotoResult(REF, "m", faces=[face(0.7), face(0.9), face(0.8)], download_ms=1.5, inference_ms=2.5)
    outcome = PhotoOutcome.from_result(result, write_ms=3.5)
    assert outcome.successful
    assert (outcome.photo_id, outcome.filename, outcome.face_count) == (REF.id, "a.jpg", 3)
    assert outcome.best_score == pytest.approx(0.9)
    assert (outcome.download_ms, outcome.inference_ms, outcome.write_ms) == (1.5, 2.5, 3.5)


def test_outcome_of_failure() -> None:
    result = PhotoResult(REF, "m", error_code="timeout", error_message="msg", error_transient=True)
    outcome = PhotoOutcome.from_result(result)
    assert not outcome.successful
    assert (outcome.status, outcome.best_score, outcome.error_code, outcome.error_message) == (
        PhotoStatus.RETRY,
        0.0,
        "timeout",
        "msg",
    )


@pytest.mark.parametrize(
    ("exc", "code", "transient", "message"),
    [
        (errors.PhotoNotFound("404 Not Found"), "not_found", True, "Ошибка скачивания a.jpg: 404 Not Found"),
        (
            errors.DownloadTimeout("timeout after 30s"),
            "timeout",
            True,
            "Ошибка скачивания a.jpg: timeout after 30s",
        ),
        (errors.StorageUnavailable("503"), "storage_unavailable", True, "Ошибка скачивания a.jpg: 503"),
        (errors.PhotoTooLarge("big"), "too_large", False, "Ошибка скачивания a.jpg: big"),
        (errors.UrlNotAllowed("no"), "url_not_allowed", False, "Ошибка скачивания a.jpg: no"),
        (errors.NotAnImage("junk"), "not_an_image", False, "Не удалось декодировать изображение a.jpg: junk"),
        (errors.NoFaceDetected(), "no_face", False, "Лицо не обнаружено в фото a.jpg"),
        (errors.WorkerLost("died"), "worker_lost", True, "Ошибка обработки a.jpg: died"),
    ],
)
def test_photo_errors(exc: errors.PhotoError, code: str, transient: bool, message: str) -> None:
    assert exc.code == code
    assert exc.transient is transient
    assert exc.message("a.jpg") == message


def test_request_errors() -> None:
    assert str(errors.SessionNotFound("abc")) == "Сессия abc не найдена"
    assert str(errors.FacePassDisabled("abc")) == "FacePass не активен"
    assert not issubclass(errors.SessionNotFound, errors.PhotoError)


def test_every_error_survives_pickling() -> None:
    """Errors cross actor boundaries (Ray pickles them): each must come back as itself."""
    import pickle

    from facepass import errors

    samples = [
        errors.NoFaceDetected(),
        errors.PhotoNotFound("404 Not Found"),
        errors.NotAnImage("bad"),
        errors.SessionNotFound("abc"),
        errors.FacePassDisabled("abc"),
        errors.JobNotFound("j"),
        errors.SelfieHasNoFace(),
        errors.WorkerLost("x"),
    ]
    for error in samples:
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error) and str(back) == str(error)
