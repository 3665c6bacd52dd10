"""Typed HTTP answers (the seed's JSON, field for field, plus extras)."""

from __future__ import annotations

from pydantic import BaseModel


class ReindexResponse(BaseModel):
    success: bool
    message: str
    session_id: str
    session_name: str
    total_photos: int
    processed_photos: int
    successful_photos: int
    skipped_photos: int
    failed_photos: int
    processing_time_ms: float
    errors: list[str]
    final_embedding_count: int
    # extras: machine-readable codes (parallel to ``errors``), face and model details
    error_codes: list[str]
    faces_indexed: int
    no_face_photos: int
    retry_photos: int
    model_name: str
