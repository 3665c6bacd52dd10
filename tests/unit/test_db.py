"""facepass.db: every usual PostgreSQL URL runs on the installed psycopg 3 driver."""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa

from facepass import db
from facepass.db import make_engine, with_driver
from facepass.settings import Settings


@pytest.mark.parametrize(
    "scheme", ["postgresql", "postgres", "postgresql+psycopg2", "postgresql+psycopg", "POSTGRESQL"]
)
def test_usual_schemes_map_to_psycopg3(scheme: str) -> None:
    url = f"{scheme}://reader:pw@cloud-db:5432/facepass?sslmode=require"
    assert with_driver(url) == "postgresql+psycopg://reader:pw@cloud-db:5432/facepass?sslmode=require"
    assert sa.make_url(with_driver(url)).get_dialect().driver == "psycopg"


def test_other_urls_are_left_alone() -> None:
    assert with_driver("sqlite:///x.db") == "sqlite:///x.db"
    assert with_driver("not a url") == "not a url"


def test_mapping_is_logged_once_per_spelling_without_the_url(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(db, "_announced", set())
    caplog.set_level(logging.INFO, logger="facepass.db")
    for _ in range(3):
        make_engine("postgresql+psycopg2://reader:hunter2@cloud-db/facepass").dispose()
    with_driver("postgresql+psycopg://reader:hunter2@cloud-db/facepass")
    lines = [r.getMessage() for r in caplog.records if r.name == "facepass.db"]
    assert lines == [
        "database URLs postgresql+psycopg2:// use the installed psycopg 3 driver (postgresql+psycopg://)"
    ]
    assert "hunter2" not in caplog.text


def test_psycopg2_dsn_reaches_the_real_server(settings: Settings) -> None:
    """The design card's spelling works end to end (psycopg2 itself is not installed)."""
    card_style = settings.cloud_url().replace("postgresql+psycopg://", "postgresql+psycopg2://", 1)
    engine = make_engine(card_style)
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT 1")) == 1
    engine.dispose()
