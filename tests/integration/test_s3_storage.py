"""The route and search with photos in a private bucket of a real S3-compatible server on
loopback (SeaweedFS, signatures checked): signed GETs from the embedding actors, the seed's
counts, per-photo ``not_found`` from the bucket, presigned URLs in search answers."""

from __future__ import annotations

import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from ray import serve

from actors.ray_calls import kill_pool_actors
from facepass.demo import photos
from facepass.demo.s3server import LocalS3Server
from facepass.demo.scenario import SeedScenario, build_seed_scenario, new_catalog_database
from facepass.settings import Settings
from serve_app.ingress import build_app
from tests.integration.conftest import Service

APP = "facepass-s3"
PREFIX = "/s3"


@dataclass
class Bucketed:
    """A second app of the test service whose photos live in the S3 server's private bucket."""

    base: str
    settings: Settings
    server: LocalS3Server
    seed: SeedScenario
    service: Service

    def reindex(self, session_id: object) -> httpx.Response:
        url = f"{self.base}/api/v1/faces/force-reindex-session/{session_id}"
        return httpx.post(url, headers=self.service.headers, timeout=300)

    def search(self, session_id: object, selfie: bytes) -> httpx.Response:
        headers = {"Content-Type": "image/jpeg", **self.service.headers}
        url = f"{self.base}/api/v1/faces/search/{session_id}"
        return httpx.post(url, content=selfie, headers=headers, timeout=120)


@pytest.fixture(scope="module")
def bucketed(service: Service, s3_server: LocalS3Server) -> Iterator[Bucketed]:
    cloud_dsn, writer = new_catalog_database(service.settings, prefix="s3_it")
    writer.close()
    # A namespace of its own: the pool's actors are named per namespace, and these fetch from S3.
    settings = s3_server.settings(
        service.settings.with_databases(cloud=cloud_dsn),
        ray_namespace=f"facepass-s3-{uuid.uuid4().hex[:8]}",
        embed_actors=1,
    )
    seed = build_seed_scenario(settings, s3_server)  # its 3 pre-indexed photos fetched signed, here
    serve.run(build_app(settings), name=APP, route_prefix=PREFIX)
    try:
        yield Bucketed(f"{service.base_url}{PREFIX}", settings, s3_server, seed, service)
    finally:
        serve.delete(APP)
        kill_pool_actors(settings)


def test_the_route_indexes_a_session_from_a_private_bucket(bucketed: Bucketed) -> None:
    server, seed = bucketed.server, bucketed.seed
    with pytest.raises(urllib.error.HTTPError) as refused:  # the bucket really is private
        urllib.request.urlopen(
            f"{server.endpoint_url}/{server.bucket}/{seed.paths['photo_004.jpg']}", timeout=5
        )
    assert refused.value.code == 403

    response = bucketed.reindex(seed.session_id)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["total_photos"], body["skipped_photos"], body["processed_photos"]) == (13, 3, 10)
    assert (body["successful_photos"], body["failed_photos"], body["final_embedding_count"]) == (8, 2, 11)
    assert sorted(body["error_codes"]) == ["no_face", "not_found"]
    assert "Ошибка скачивания missing_file.jpg: 404 NoSuchKey" in " ".join(body["errors"])
    assert server.secret_key not in response.text

    again = bucketed.reindex(seed.session_id).json()  # only the missing photo is tried again
    assert (again["processed_photos"], again["successful_photos"], again["error_codes"]) == (
        1,
        0,
        ["not_found"],
    )


def test_search_answers_carry_presigned_urls_that_download_the_photo(bucketed: Bucketed) -> None:
    seed = bucketed.seed
    assert bucketed.reindex(seed.session_id).status_code == 200
    selfie = photos.jpeg(photos.single_face_crops()[3].image)  # the face of photo_004.jpg
    response = bucketed.search(seed.session_id, selfie)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["photo_urls_expire_in_s"] == bucketed.settings.s3_presign_expiry_s
    best = body["matches"][0]
    assert best["filename"] == "photo_004.jpg"
    assert "X-Amz-Signature=" in best["photo_url"] and bucketed.server.secret_key not in response.text
    stored = bucketed.server.client().get_object(
        Bucket=bucketed.server.bucket, Key=seed.paths["photo_004.jpg"]
    )
    assert httpx.get(best["photo_url"], timeout=30).content == stored["Body"].read()
