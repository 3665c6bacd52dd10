"""facepass.catalog.cloud: read-only access to the cloud catalog."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from facepass.catalog.cloud import CatalogSchema, CloudCatalog
from facepass.demo.scenario import CatalogWriter
from facepass.errors import FacePassDisabled, SessionNotFound
from facepass.settings import Settings


@pytest.fixture(scope="module")
def catalog(settings: Settings) -> Iterator[CloudCatalog]:
    cloud = CloudCatalog(settings.cloud_url())
    yield cloud
    cloud.close()


def test_catalog_connection_is_read_only(catalog: CloudCatalog, catalog_writer: CatalogWriter) -> None:
    sid = uuid.uuid4()
    with pytest.raises(sa.exc.DBAPIError, match="read-only"), catalog.engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO sessions (id, name, facepass_enabled) VALUES (:id, 'x', true)"), {"id": sid}
        )
    with pytest.raises(sa.exc.DBAPIError, match="read-only"), catalog.engine.begin() as conn:
        conn.execute(sa.text("UPDATE sessions SET name = 'hacked'"))
    with pytest.raises(sa.exc.DBAPIError, match="read-only"), catalog.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM photos"))
    with pytest.raises(SessionNotFound):
        catalog.get_session(sid)
    catalog.ping()  # the pool is still healthy after the refusals


def test_get_session(catalog: CloudCatalog, catalog_writer: CatalogWriter) -> None:
    sid = catalog_writer.add_session("Свадьба 2024", enabled=True)
    session = catalog.get_session(sid)
    assert (session.id, session.name, session.facepass_enabled) == (sid, "Свадьба 2024", True)
    assert catalog.require_enabled_session(sid) == session


def test_unknown_session(catalog: CloudCatalog) -> None:
    sid = uuid.uuid4()
    with pytest.raises(SessionNotFound) as info:
        catalog.get_session(sid)
    assert info.value.session_id == str(sid)
    assert info.value.code == "session_not_found"
    with pytest.raises(SessionNotFound):
        catalog.require_enabled_session(sid)


def test_disabled_session(catalog: CloudCatalog, catalog_writer: CatalogWriter) -> None:
    sid = catalog_writer.add_session("Закрытая", enabled=False)
    assert catalog.get_session(sid).facepass_enabled is False
    with pytest.raises(FacePassDisabled) as info:
        catalog.require_enabled_session(sid)
    assert str(info.value) == "FacePass не активен"
    assert info.value.code == "facepass_disabled"


def test_list_photos_skips_soft_deleted(catalog: CloudCatalog, catalog_writer: CatalogWriter) -> None:
    sid = catalog_writer.add_session("s", enabled=True)
    refs = catalog_writer.add_photos(
        sid, [(f"p{i}.jpg", f"sessions/{sid}/previews/p{i}.jpg") for i in range(4)]
    )
    catalog_writer.soft_delete(refs[1].id)
    listed = catalog.list_photos(sid)
    assert {p.id for p in listed} == {refs[0].id, refs[2].id, refs[3].id}
    by_id = {p.id: p for p in listed}
    assert by_id[refs[2].id] == refs[2]  # filename, preview_path and session carried over


def test_list_photos_of_other_or_empty_sessions(catalog: CloudCatalog, catalog_writer: CatalogWriter) -> None:
    a = catalog_writer.add_session("a", enabled=True)
    b = catalog_writer.add_session("b", enabled=True)
    catalog_writer.add_photos(a, [("x.jpg", "x.jpg")])
    assert catalog.list_photos(b) == []
    assert [p.filename for p in catalog.list_photos(a)] == ["x.jpg"]


def test_iter_photo_pages_cover_every_photo_once(
    catalog: CloudCatalog, catalog_writer: CatalogWriter
) -> None:
    sid = catalog_writer.add_session("pages", enabled=True)
    refs = catalog_writer.add_photos(sid, [(f"p{i}.jpg", f"p{i}.jpg") for i in range(7)])
    catalog_writer.soft_delete(refs[3].id)
    pages = list(catalog.iter_photo_pages(sid, page_size=2))
    assert [len(page) for page in pages] == [2, 2, 2]
    ids = [p.id for page in pages for p in page]
    assert len(ids) == len(set(ids)) == 6
    assert set(ids) == {r.id for r in refs} - {refs[3].id}
    assert ids == sorted(ids)  # keyset paging in id order


def test_iter_photo_pages_exact_multiple(catalog: CloudCatalog, catalog_writer: CatalogWriter) -> None:
    sid = catalog_writer.add_session("pages4", enabled=True)
    catalog_writer.add_photos(sid, [(f"p{i}.jpg", f"p{i}.jpg") for i in range(4)])
    assert [len(page) for page in catalog.iter_photo_pages(sid, page_size=2)] == [2, 2]
    assert list(catalog.iter_photo_pages(uuid.uuid4(), page_size=2)) == []


def test_iter_session_pages_covers_sessions_once(
    catalog: CloudCatalog, catalog_writer: CatalogWriter
) -> None:
    mine = {catalog_writer.add_session(f"s{i}", enabled=i % 2 == 0) for i in range(5)}
    seen = [s.id for page in catalog.iter_session_pages(page_size=3) for s in page]
    assert len(seen) == len(set(seen))
    assert mine <= set(seen)
    assert all(len(page) <= 3 for page in catalog.iter_session_pages(page_size=3))


def test_custom_schema_names(settings: Settings, catalog_writer: CatalogWriter) -> None:
    """A deployment maps its own table/column names; a wrong mapping fails loudly, not silently."""
    sid = catalog_writer.add_session("mapped", enabled=True)
    renamed = CloudCatalog(settings.cloud_url(), CatalogSchema(session_name="no_such_column"))
    try:
        with pytest.raises(sa.exc.ProgrammingError):
            renamed.get_session(sid)
    finally:
        renamed.close()
