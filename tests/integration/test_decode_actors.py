"""The split placement: CPU decoder actors feed the embedding actors by ObjectRef."""

from __future__ import annotations

import asyncio

from actors.pool import EmbeddingPool
from actors.ray_calls import kill_pool_actors
from facepass.demo import photos
from facepass.demo.scenario import CatalogWriter, preview_path
from facepass.demo.storage import PhotoStorage
from facepass.index.store import VectorStore
from facepass.models import PhotoOutcome, PhotoStatus
from tests.integration.conftest import Service


def test_decoder_actors_feed_the_embedding_actors(
    service: Service, catalog_writer: CatalogWriter, storage: PhotoStorage, store: VectorStore
) -> None:
    settings = service.settings.model_copy(
        update={
            "decode_actors": 1,
            "embed_actors": 1,
            "ray_namespace": service.settings.ray_namespace + "-split",
        }
    )
    sid = catalog_writer.add_session("Декодеры отдельно")
    names = []
    for filename, image in (
        ("t1.jpg", photos.load("t1.jpg")),
        ("yao.jpg", photos.load("yaoming.jpg")),
        ("mask.jpg", photos.no_face_photo()),
    ):
        storage.put(preview_path(sid, filename), photos.jpeg(image))
        names.append((filename, preview_path(sid, filename)))
    names.append(("gone.jpg", preview_path(sid, "gone.jpg")))
    refs = catalog_writer.add_photos(sid, names)

    pool = EmbeddingPool(settings)
    try:

        async def run() -> list[PhotoOutcome]:
            return list(await asyncio.gather(*(pool.process(r) for r in refs)))

        outcomes = {o.filename: o for o in asyncio.run(run())}
        health = asyncio.run(pool.health())
    finally:
        kill_pool_actors(settings)
    assert outcomes["t1.jpg"].status is PhotoStatus.INDEXED and outcomes["t1.jpg"].face_count == 6
    assert outcomes["yao.jpg"].face_count == 1
    assert outcomes["mask.jpg"].status is PhotoStatus.NO_FACE
    assert outcomes["gone.jpg"].status is PhotoStatus.RETRY
    assert outcomes["gone.jpg"].error_message == "Ошибка скачивания gone.jpg: 404 Not Found"
    assert outcomes["t1.jpg"].download_ms > 0 and outcomes["t1.jpg"].inference_ms > 0
    assert store.count_embeddings(sid) == 7
    assert health["decoders"] == 1 and len(health["actors"]) == 1
