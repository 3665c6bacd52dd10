"""A model change on the running service, with no call: the service is redeployed with
another pack, the follower builds the new generation in the background, and a selfie
search finds the same photos at every moment; after the switch only the new model's
rows remain. Real Ray + Serve, the real model, PostgreSQL.

Its own namespace (its own pool actors, so the shared ones keep their pack) and its own
catalog. The second pack holds the same ONNX files under another name (as in
tests/unit/test_generations.py): the generations are told apart by name while their
vectors stay comparable enough to check "the same photos"."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from ray import serve

from actors.ray_calls import kill_pool_actors
from facepass.demo import photos
from facepass.demo.scenario import CatalogWriter, new_catalog_database, preview_path
from facepass.demo.storage import PhotoStorage
from facepass.index.store import VectorStore
from facepass.settings import Settings
from facepass.vision.faces import FaceEmbedder
from serve_app import build_app
from tests.integration.conftest import Service

pytestmark = pytest.mark.slow

APP = "facepass-generations"
PREFIX = "/generations"
SELFIE = photos.jpeg(photos.load("yaoming.jpg"))


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory, settings: Settings) -> Path:
    root = tmp_path_factory.mktemp("models")
    for pack in ("pack_a", "pack_b"):
        (root / pack).mkdir()
        for name in ("scrfd_500m_bnkps.onnx", "w600k_mbf.onnx"):
            (root / pack / name).symlink_to(settings.model_dir / name)
    return root


@pytest.fixture(scope="module")
def other_bytes_root(tmp_path_factory: pytest.TempPathFactory, settings: Settings) -> Path:
    """pack_a again, in another folder, its recognizer with other bytes (the same graph saved
    with another doc string): other weights under the same pack and file names (issue 30)."""
    import onnx

    root = tmp_path_factory.mktemp("models_other_bytes")
    (root / "pack_a").mkdir()
    (root / "pack_a" / "scrfd_500m_bnkps.onnx").symlink_to(settings.model_dir / "scrfd_500m_bnkps.onnx")
    recognizer = onnx.load(str(settings.model_dir / "w600k_mbf.onnx"))
    recognizer.doc_string = "the same graph, saved again"
    onnx.save(recognizer, str(root / "pack_a" / "w600k_mbf.onnx"))
    return root


def models_of(store: VectorStore, sid: uuid.UUID) -> set[str]:
    with store.engine.connect() as conn:
        query = sa.text("SELECT DISTINCT model_name FROM face_embeddings WHERE session_id = :s")
        return set(conn.scalars(query, {"s": sid}))


def wait_for(check: Callable[[], bool], timeout_s: float) -> None:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout_s, f"not within {timeout_s} s"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def base(service: Service, model_root: Path) -> Iterator[Settings]:
    cloud_dsn, writer = new_catalog_database(service.settings, prefix="generations_it")
    writer.close()
    settings = service.settings.with_databases(
        cloud=cloud_dsn,
        follow=True,
        model_root=model_root,
        ray_namespace=f"{service.settings.ray_namespace}-gen",
        embed_actors=1,
    )
    try:
        yield settings
    finally:
        serve.delete(APP)
        kill_pool_actors(settings)


@pytest.mark.parametrize("change", ["another pack", "the same names, other bytes"])
def test_a_model_change_leaves_no_gap_in_search(
    change: str,
    base: Settings,
    model_root: Path,
    other_bytes_root: Path,
    service: Service,
    storage: PhotoStorage,
    store: VectorStore,
) -> None:
    old = base.model_copy(update={"model_name": "pack_a"})
    if change == "another pack":
        new = base.model_copy(update={"model_name": "pack_b"})
    else:  # the earlier files stay where FACEPASS_GENERATION_MODEL_ROOTS says (selfies meanwhile)
        update = {"model_root": other_bytes_root, "generation_model_roots": [model_root]}
        new = base.model_copy(update=update)
        new = new.model_copy(update={"model_name": "pack_a"})
    old_model, new_model = FaceEmbedder(old).model_name, FaceEmbedder(new).model_name
    assert old_model != new_model  # other weights: another generation
    url = f"{service.base_url}{PREFIX}/api/v1/faces/search/"

    def search(sid: uuid.UUID) -> set[str]:
        headers = {"Content-Type": "image/jpeg", **service.headers}
        answer = httpx.post(url + str(sid), content=SELFIE, headers=headers, timeout=120)
        assert answer.status_code == 200, answer.text
        return {m["photo_id"] for m in answer.json()["matches"]}

    serve.run(build_app(old), name=APP, route_prefix=PREFIX)
    writer = CatalogWriter(base.cloud_url())
    try:
        sid = writer.add_session("Смена модели на ходу")
        names = []
        for source in ("players.jpg", "t1.jpg", "gdp.jpg", "Tom_Hanks_54745.png", "yaoming.jpg"):
            path = preview_path(sid, source)
            storage.put(path, photos.jpeg(photos.load(source)))
            names.append((source, path))
        ids = {str(r.id) for r in writer.add_photos(sid, names)}
    finally:
        writer.close()
    wait_for(lambda: {str(i) for i in store.ledger(sid)} == ids, 120)  # followed, no call
    before = search(sid)
    assert before and models_of(store, sid) == {old_model}

    # The operator's way: the pack setting changes, the service is deployed again. The pool's
    # actor that holds pack_a is replaced; the follower re-embeds the session in the background.
    storage.latency_s = 0.5  # a slower bucket: the rebuild takes a few seconds to watch
    try:
        serve.run(build_app(new), name=APP, route_prefix=PREFIX)
        states: list[frozenset[str]] = []
        while models_of(store, sid) != {new_model}:
            assert len(states) < 600, "the new generation was not built"
            states.append(frozenset(models_of(store, sid)))
            found = search(sid)
            assert found == before, f"search {len(states)}: {found} in {set(states[-1])}"  # the same photos
    finally:
        storage.latency_s = 0.0
    assert search(sid) == before
    with store.engine.connect() as conn:
        ledger_models = set(
            conn.scalars(
                sa.text("SELECT DISTINCT model_name FROM indexed_photos WHERE session_id = :s"), {"s": sid}
            )
        )
    assert ledger_models == {new_model}
    mixed = sum(1 for s in states if s == {old_model, new_model})
    print(
        f"model change ({change}): {len(states)} searches during the rebuild, {mixed} while both "
        "generations were there"
    )

    def current_generation() -> str | None:
        mirror = httpx.get(
            f"{service.base_url}{PREFIX}/api/v1/faces/mirror", headers=service.headers, timeout=60
        )
        assert mirror.status_code == 200, mirror.text
        current = [g for g in mirror.json()["generations"] if g["current"]]
        return current[0]["generation"] if current else None

    wait_for(lambda: current_generation() == new_model, 60)  # per-generation progress
