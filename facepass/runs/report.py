"""The outcome of one reindex run, and the seed's words for it (logs and JSON)."""

from __future__ import annotations

import dataclasses
import uuid
from array import array
from dataclasses import dataclass, field

from facepass.models import PhotoOutcome, PhotoStatus, SessionInfo
from facepass.runs.jobs import RunProgress, RunResult


def start_line(session_id: uuid.UUID) -> str:
    return f"=== ПРИНУДИТЕЛЬНАЯ ПЕРЕИНДЕКСАЦИЯ СЕССИИ {session_id} ==="


def validated_line(session: SessionInfo) -> str:
    return f"Сессия валидирована: {session.name}"


def plan_lines(total: int, skipped: int, todo: int) -> list[str]:
    return [
        f"Найдено {total} фото в облачной базе",
        f"Уже проиндексировано локально: {skipped} фото",
        f"Нужно обработать: {todo} новых фото",
    ]


def stale_line(count: int, model_name: str) -> str:
    return f"Из них сделаны другой моделью: {count} фото, будут переиндексированы моделью {model_name}"


def pruned_line(photos: int, faces: int) -> str:
    return f"Удалено из индекса: {photos} фото ({faces} лиц), удалённых из облачной базы"


def _percentiles(values: array[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"p50": at(0.50), "p95": at(0.95)}


def photo_start_line(index: int, count: int, filename: str) -> str:
    return f"Обработка фото {index} из {count}: {filename}"


def photo_done_line(outcome: PhotoOutcome) -> str:
    if outcome.successful:
        return f"✅ Фото {outcome.filename} успешно обработано (confidence: {outcome.best_score:.3f})"
    return f"❌ {outcome.error_message}"


def stopped_line(processed: int, planned: int, successful: int) -> str:
    return (
        f"=== ПЕРЕИНДЕКСАЦИЯ ОСТАНОВЛЕНА: индекс не может писать (нет места); обработано {processed} "
        f"из {planned} фото, записано {successful}, остальные возьмёт следующий запуск ==="
    )


@dataclass(slots=True)
class ReindexReport:
    session_id: uuid.UUID
    session_name: str
    total_photos: int = 0
    skipped_photos: int = 0
    planned_photos: int = 0
    processed_photos: int = 0
    successful_photos: int = 0
    faces_indexed: int = 0
    no_face_photos: int = 0
    retry_photos: int = 0  # transient failures, retried by the next run
    stale_photos: int = 0  # planned because another model embedded them
    pruned_photos: int = 0  # removed: deleted from the catalog
    pruned_faces: int = 0
    final_embedding_count: int = 0
    processing_time_ms: float = 0.0
    model_name: str = ""
    max_errors: int = 10
    errors: list[str] = field(default_factory=list)
    error_codes: list[str] = field(default_factory=list)
    log_lines: list[str] = field(default_factory=list)
    # Per-photo step times (4 bytes a photo): p50/p95 in the answer.
    download_ms: array[float] = field(default_factory=lambda: array("f"))
    inference_ms: array[float] = field(default_factory=lambda: array("f"))
    write_ms: array[float] = field(default_factory=lambda: array("f"))

    @property
    def failed_photos(self) -> int:
        return self.processed_photos - self.successful_photos

    def add(self, outcome: PhotoOutcome) -> None:
        self.processed_photos += 1
        for values, ms in (
            (self.download_ms, outcome.download_ms),
            (self.inference_ms, outcome.inference_ms),
            (self.write_ms, outcome.write_ms),
        ):
            if ms > 0:  # the steps the photo reached
                values.append(ms)
        if outcome.successful:
            self.successful_photos += 1
            self.faces_indexed += outcome.face_count
            return
        if outcome.status is PhotoStatus.NO_FACE:
            self.no_face_photos += 1
        elif outcome.status is PhotoStatus.RETRY:
            self.retry_photos += 1
        if len(self.errors) < self.max_errors and outcome.error_message:
            self.errors.append(outcome.error_message)
            self.error_codes.append(outcome.error_code or "error")

    @property
    def message(self) -> str:
        return f"Переиндексация завершена: {self.successful_photos}/{self.processed_photos} новых фото"

    def closing_lines(self) -> list[str]:
        return [
            "=== ПЕРЕИНДЕКСАЦИЯ ЗАВЕРШЕНА ===",
            f"Всего фото в облаке: {self.total_photos}",
            f"Пропущено (уже в индексе): {self.skipped_photos}",
            f"Обработано: {self.processed_photos}",
            f"Успешно: {self.successful_photos}",
            f"С ошибками: {self.failed_photos}",
            f"Эмбеддингов в индексе сессии: {self.final_embedding_count}",
            f"Время обработки: {self.processing_time_ms:.0f}ms",
        ]

    def progress(self, elapsed_s: float) -> RunProgress:
        """Counts so far and an estimate of the time left, for a job still running."""
        remaining = self.planned_photos - self.processed_photos
        rate = self.processed_photos / elapsed_s if elapsed_s > 0 else 0.0
        return RunProgress(
            session_id=str(self.session_id),
            session_name=self.session_name,
            total_photos=self.total_photos,
            skipped_photos=self.skipped_photos,
            planned_photos=self.planned_photos,
            processed_photos=self.processed_photos,
            successful_photos=self.successful_photos,
            failed_photos=self.failed_photos,
            elapsed_s=round(elapsed_s, 3),
            photos_per_s=round(rate, 3),
            eta_s=round(remaining / rate, 1) if rate > 0 else None,
        )

    def result(self) -> RunResult:
        """The seed's JSON, field for field, then our extra keys."""
        return RunResult(
            success=True,
            message=self.message,
            session_id=str(self.session_id),
            session_name=self.session_name,
            total_photos=self.total_photos,
            processed_photos=self.processed_photos,
            successful_photos=self.successful_photos,
            skipped_photos=self.skipped_photos,
            failed_photos=self.failed_photos,
            processing_time_ms=round(self.processing_time_ms, 2),
            errors=list(self.errors),
            final_embedding_count=self.final_embedding_count,
            error_codes=list(self.error_codes),
            faces_indexed=self.faces_indexed,
            no_face_photos=self.no_face_photos,
            retry_photos=self.retry_photos,
            model_name=self.model_name,
            stale_photos=self.stale_photos,
            pruned_photos=self.pruned_photos,
            pruned_faces=self.pruned_faces,
            timings_ms=self.timings(),
        )

    def to_response(self) -> dict[str, object]:
        """The seed's JSON (``result()``) as the route answers it."""
        return dataclasses.asdict(self.result())

    def timings(self) -> dict[str, dict[str, float] | None]:
        """p50 and p95 of each step over this run's photos (None: no photo reached it)."""
        return {
            "download": _percentiles(self.download_ms),
            "decode_and_inference": _percentiles(self.inference_ms),
            "write": _percentiles(self.write_ms),
        }
