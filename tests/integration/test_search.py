"""Face search by selfie over what the route indexed."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

import httpx

from facepass.builds import REFERENCE_VARIANT
from facepass.demo import photos
from facepass.demo import search_quality as sq
from facepass.demo.scenario import CatalogWriter, preview_path
from facepass.demo.storage import PhotoStorage
from facepass.settings import Settings
from facepass.vision.faces import FaceEmbedder
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


def test_selfies_of_labeled_people_find_their_photos_and_no_strangers_through_the_route(
    service: Service, catalog_writer: CatalogWriter, storage: PhotoStorage
) -> None:
    """The labeled set (facepass/demo/search_quality.py) indexed by the route, then each selfie
    searched with the default threshold and gates: what the unit test measured, end to end."""
    labeled = sq.labeled_session(FaceEmbedder(Settings(model_variant=REFERENCE_VARIANT)).load())
    sid = catalog_writer.add_session("Поиск: известные люди")
    names = []
    for photo in labeled.photos:
        path = preview_path(sid, photo.name)
        storage.put(path, photos.jpeg(photo.image, quality=95))
        names.append((photo.name, path))
    catalog_writer.add_photos(sid, names)
    report = service.reindex(sid).json()
    # Every photo indexed; the crowds' tiny blurred faces are at the detector's edge (a build may
    # see none: no_face), never a failure.
    assert report["processed_photos"] == len(labeled.photos) and report["retry_photos"] == 0, report
    assert report["failed_photos"] == report["no_face_photos"], report["errors"]
    assert report["successful_photos"] >= len(labeled.photos) - 2
    shown = {p.name: p.people for p in labeled.photos}
    true_matches = false_matches = missed = 0
    for selfie in labeled.selfies:
        image = next(p.image for p in labeled.photos if p.name == selfie.photo)
        answer = search(service, sid, photos.jpeg(image, quality=95))
        assert answer.status_code == 200, answer.text
        assert answer.json()["threshold"] == 0.40  # the generation's own
        found = {m["filename"] for m in answer.json()["matches"]}
        scored = {name for name in shown if sq.family(name) != sq.family(selfie.photo)}
        relevant = {name for name in scored if selfie.person in shown[name]}
        true_matches += len(found & relevant)
        false_matches += len((found & scored) - relevant)
        missed += len(relevant - found)
    assert (true_matches, false_matches, missed) == (31, 0, 0)
