"""Face search by selfie over what the route indexed."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

import httpx

from facepass.demo import photos
from facepass.demo.scenario import CatalogWriter, preview_path
from facepass.demo.storage import PhotoStorage
from tests.integration.conftest import Service


def search(service: Service, session_id: object, body: bytes, **params: str) -> httpx.Response:
    url = f"{service.base_url}/api/v1/faces/search/{session_id}"
    headers = {"Content-Type": "image/jpeg", **service.headers}
    return httpx.post(url, content=body, params=params, headers=headers, timeout=120)


def test_selfie_finds_the_photos_of_that_person_only(
    service: Service, catalog_writer: CatalogWriter, storage: PhotoStorage
) -> None:
    sid = catalog_writer.add_session("Поиск по селфи")
    names = []
    for source in ("players.jpg", "t1.jpg", "gdp.jpg"):
        path = preview_path(sid, source)
        storage.put(path, photos.jpeg(photos.load(source)))
        names.append((source, path))
    refs = {r.filename: r for r in catalog_writer.add_photos(sid, names)}
    assert service.reindex(sid).json()["successful_photos"] == 3

    # Yao Ming's selfie: he is one of the 22 faces in players.jpg, in neither of the others.
    found = search(service, sid, photos.jpeg(photos.load("yaoming.jpg")))
    assert found.status_code == 200, found.text
    matches = found.json()["matches"]
    assert [m["filename"] for m in matches] == ["players.jpg"]
    assert matches[0]["photo_id"] == str(refs["players.jpg"].id) and matches[0]["similarity"] > 0.45
    # Plain HTTP storage: nothing to presign (the s3 backend's answers: tests/integration/test_s3_storage.py).
    assert matches[0]["photo_url"] is None and found.json()["photo_urls_expire_in_s"] is None

    # The same selfie as an iPhone sends it (HEIC): the same answer.
    heic = search(service, sid, photos.heic(photos.load("yaoming.jpg")))
    assert heic.status_code == 200, heic.text
    assert [m["filename"] for m in heic.json()["matches"]] == ["players.jpg"]

    # With no threshold every photo comes back, the right one first.
    everything = search(service, sid, photos.jpeg(photos.load("yaoming.jpg")), threshold="-1").json()
    assert [m["filename"] for m in everything["matches"]][0] == "players.jpg"
    assert len(everything["matches"]) == 3

    # A photo deleted from the catalog is not offered any more.
    catalog_writer.soft_delete(refs["players.jpg"].id)
    assert search(service, sid, photos.jpeg(photos.load("yaoming.jpg"))).json()["matches"] == []


def test_bad_selfies_get_clear_4xx(service: Service, catalog_writer: CatalogWriter) -> None:
    sid = catalog_writer.add_session("Поиск: ошибки")
    no_face = search(service, sid, photos.jpeg(photos.no_face_photo()))
    assert no_face.status_code == 422 and no_face.json()["detail"] == "Лицо не обнаружено на селфи"
    assert search(service, sid, b"definitely not an image").status_code == 415
    assert search(service, sid, b"").status_code == 400
    assert search(service, uuid.uuid4(), photos.jpeg(photos.load("yaoming.jpg"))).status_code == 404
    disabled = catalog_writer.add_session("Поиск: выключен", enabled=False)
    assert search(service, disabled, photos.jpeg(photos.load("yaoming.jpg"))).status_code == 403


def test_a_flood_of_searches_from_one_key_gets_429s_not_errors(
    service: Service, catalog_writer: CatalogWriter
) -> None:
    """100 selfie searches in about a second from one key: the burst answers, the rest 429 with
    Retry-After (before any work); nothing else."""
    sid = catalog_writer.add_session("Поиск: лимит")
    selfie = photos.jpeg(photos.load("yaoming.jpg"))
    url = f"{service.base_url}/api/v1/faces/search/{sid}"
    headers = {"Content-Type": "image/jpeg", **service.headers}

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=100)) as client:
            return list(
                await asyncio.gather(*(client.post(url, content=selfie, headers=headers) for _ in range(100)))
            )

    started = time.monotonic()
    answers = asyncio.run(flood())
    codes = Counter(a.status_code for a in answers)
    assert set(codes) == {200, 429}, codes
    burst, rate = service.settings.search_burst, service.settings.search_rate_per_s
    elapsed = time.monotonic() - started
    assert codes[200] <= burst + rate * elapsed + 1, (codes, elapsed)
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json()["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) >= 1
    time.sleep(burst / rate)  # the key's bucket full again for the tests after this one
