"""facepass.health on real PostgreSQL: which database, and what is missing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from facepass.catalog.cloud import CloudCatalog
from facepass.db import make_engine
from facepass.errors import (
    CLOUD_CATALOG,
    LOCAL_INDEX,
    DatabaseSchemaMissing,
    DatabaseUnavailable,
    IndexCannotWrite,
)
from facepass.health import DatabaseProbe, cannot_write, diagnose, is_database_failure
from facepass.index.store import VectorStore
from facepass.settings import Settings

INDEX_TABLES = ("face_embeddings", "indexed_photos")
UNREACHABLE = "postgresql://nobody@127.0.0.1:1/nowhere"


@pytest.fixture
def empty_dsn(settings: Settings) -> Iterator[str]:
    """A database on the embedded server with no tables at all (a catalog before its schema)."""
    name = f"empty_{uuid.uuid4().hex[:10]}"
    admin = make_engine(settings.cloud_url().replace("/facepass_cloud?", "/postgres?"))
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield settings.cloud_url().replace("/facepass_cloud?", f"/{name}?")
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


def test_databases_with_their_tables_pass(settings: Settings, store: VectorStore) -> None:
    DatabaseProbe(CLOUD_CATALOG, make_engine(settings.cloud_url()), ("sessions", "photos")).check()
    DatabaseProbe(LOCAL_INDEX, store.engine, INDEX_TABLES).check()


def test_catalog_without_tables_names_them(empty_dsn: str) -> None:
    probe = DatabaseProbe(CLOUD_CATALOG, make_engine(empty_dsn, read_only=True), ("sessions", "photos"))
    with pytest.raises(DatabaseSchemaMissing) as missing:
        probe.check()
    assert missing.value.database == "cloud catalog"
    assert missing.value.missing == ("sessions", "photos")
    assert 'has no table "sessions", "photos"' in str(missing.value)
    assert str(missing.value).startswith("cloud catalog: database empty_")


def test_unreachable_database_is_named(settings: Settings) -> None:
    probe = DatabaseProbe(LOCAL_INDEX, make_engine(UNREACHABLE), INDEX_TABLES)
    with pytest.raises(DatabaseUnavailable) as down:
        probe.check()
    assert down.value.database == "local index" and "nowhere does not answer" in str(down.value)


def test_a_failed_query_is_diagnosed_to_the_database_that_lacks_its_table(
    settings: Settings, empty_dsn: str, store: VectorStore
) -> None:
    catalog = CloudCatalog(empty_dsn)
    with pytest.raises(sa.exc.ProgrammingError) as failed:
        catalog.get_session(uuid.uuid4())
    assert is_database_failure(failed.value)
    probes = [
        DatabaseProbe(CLOUD_CATALOG, catalog.engine, ("sessions", "photos")),
        DatabaseProbe(LOCAL_INDEX, store.engine, INDEX_TABLES),
    ]
    error = diagnose(failed.value, probes)
    assert isinstance(error, DatabaseSchemaMissing)
    assert (error.database, error.missing, error.code) == (
        "cloud catalog",
        ("sessions", "photos"),
        "database_schema_missing",
    )
    # Told from the error alone when the databases answer again (e.g. the table came back).
    healthy = [DatabaseProbe(LOCAL_INDEX, store.engine, INDEX_TABLES)]
    later = diagnose(failed.value, [*healthy, DatabaseProbe(CLOUD_CATALOG, store.engine, ())])
    assert isinstance(later, DatabaseSchemaMissing) and later.missing == ("sessions",)
    catalog.close()


def test_an_unreachable_server_is_diagnosed() -> None:
    engine = make_engine(UNREACHABLE)
    with pytest.raises(sa.exc.OperationalError) as failed, engine.connect():
        pass
    assert is_database_failure(failed.value)
    error = diagnose(failed.value, [DatabaseProbe(CLOUD_CATALOG, engine, ("sessions",))])
    assert isinstance(error, DatabaseUnavailable) and error.database == "cloud catalog"
    assert error.code == "database_unavailable"


def test_a_query_bug_is_not_a_database_failure(store: VectorStore) -> None:
    with pytest.raises(sa.exc.ProgrammingError) as bug, store.engine.connect() as conn:
        conn.execute(sa.text("SELEC 1"))
    assert not is_database_failure(bug.value)


def test_errors_survive_pickling() -> None:
    import pickle

    error = DatabaseSchemaMissing(
        "local index", 'database x has no table "indexed_photos"', ("indexed_photos",)
    )
    again = pickle.loads(pickle.dumps(error))
    assert (type(again), str(again), again.missing) == (
        DatabaseSchemaMissing,
        str(error),
        ("indexed_photos",),
    )


@pytest.mark.parametrize(
    ("sqlstate", "what"), [("53100", "disk full"), ("53200", "out of memory"), ("53000", "out of resources")]
)
def test_no_room_is_index_cannot_write(sqlstate: str, what: str) -> None:
    import psycopg.errors

    error = psycopg.errors.lookup(sqlstate)("could not extend file: No space left on device")
    wrapped = sa.exc.OperationalError("INSERT INTO indexed_photos ...", {}, error)
    for exc in (error, wrapped):
        refused = cannot_write(exc)
        assert isinstance(refused, IndexCannotWrite) and refused.database == LOCAL_INDEX
        assert f"({what}, SQLSTATE {sqlstate}: could not extend file" in refused.detail
        assert isinstance(diagnose(exc, []), IndexCannotWrite)


def test_too_many_connections_is_not_a_full_disk() -> None:
    import psycopg.errors

    error = psycopg.errors.TooManyConnections("sorry, too many clients already")
    assert cannot_write(error) is None
    assert cannot_write(sa.exc.OperationalError("SELECT 1", {}, error)) is None
