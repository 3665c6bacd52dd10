"""One generation per set of weights (issue 30): a second app on the same databases runs the
same pack on another build (ONNX Runtime fp32 pinned instead of the variant the CPU chose): it
re-embeds nothing, its search finds the same photos, the photos it adds join the same
generation, and the session audits clean with both builds recorded. Real Ray + Serve, the
real model, PostgreSQL.

Also the chooser's whole load path with a broken build (issue 31; moved from the unit tier in
issue 43: it measures and gates every variant again, ~35 s): a variant that fails the sharing
gate is never chosen."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
import sqlalchemy as sa
from ray import serve

from actors.ray_calls import kill_pool_actors
from facepass.builds import Build, Variant
from facepass.catalog.cloud import CloudCatalog
from facepass.demo import photos
from facepass.demo.scenario import CatalogWriter, add_face_photos, preview_path
from facepass.demo.storage import PhotoStorage
from facepass.index.audit import IndexAuditor
from facepass.index.store import VectorStore
from facepass.settings import Settings
from facepass.vision import networks, runtimes
from facepass.vision.faces import FaceEmbedder
from facepass.vision.pack import ModelPack
from serve_app import build_app
from tests.integration.conftest import Service, actors_variant, runtime_roles
from tests.unit.test_selection import fastest_passing

pytestmark = pytest.mark.slow

APP, PREFIX = "facepass-ort", "/ort"
SELFIE = photos.jpeg(photos.load("yaoming.jpg"))


def add_photos(writer: CatalogWriter, storage: PhotoStorage, sid: uuid.UUID, sources: list[str]) -> list[str]:
    names = []
    for source in sources:
        path = preview_path(sid, source)
        storage.put(path, photos.jpeg(photos.load(source)))
        names.append((source, path))
    return [r.preview_path for r in writer.add_photos(sid, names)]


def search(service: Service, sid: uuid.UUID, prefix: str = "") -> set[str]:
    headers = {"Content-Type": "image/jpeg", **service.headers}
    url = f"{service.base_url}{prefix}/api/v1/faces/search/{sid}"
    answer = httpx.post(url, content=SELFIE, headers=headers, timeout=120)
    assert answer.status_code == 200, answer.text
    return {m["photo_id"] for m in answer.json()["matches"]}


def test_another_build_of_the_weights_re_embeds_nothing_and_shares_the_generation(
    service: Service, catalog_writer: CatalogWriter, storage: PhotoStorage, store: VectorStore
) -> None:
    sid = catalog_writer.add_session("Другая сборка тех же весов")
    paths = add_photos(catalog_writer, storage, sid, ["players.jpg", "t1.jpg", "gdp.jpg", "yaoming.jpg"])
    first = service.reindex(sid)
    assert first.status_code == 200 and first.json()["successful_photos"] == 4, first.text
    found = search(service, sid)
    chosen = actors_variant(service)
    assert chosen != "onnxruntime-fp32/cpu"  # the CPU's fastest passing variant is not the reference
    assert len(found) >= 2  # Yao Ming in players.jpg and in yaoming.jpg
    generation = ModelPack.from_settings(service.settings).name

    ort = Settings.model_validate(
        {
            **service.settings.model_dump(),
            "ray_namespace": f"{service.settings.ray_namespace}-ort",
            "embed_actors": 1,
            "model_runtime": "onnxruntime",
        }
    )
    serve.run(build_app(runtime_roles(ort)), name=APP, route_prefix=PREFIX)
    try:
        downloads = sum(storage.hits[p] for p in paths)
        url = f"{service.base_url}{PREFIX}/api/v1/faces/force-reindex-session/{sid}"
        again = httpx.post(url, headers=service.headers, timeout=300)
        assert again.status_code == 200, again.text
        body = again.json()
        assert (body["processed_photos"], body["skipped_photos"], body["stale_photos"]) == (0, 4, 0), body
        assert sum(storage.hits[p] for p in paths) == downloads  # nothing downloaded, nothing embedded
        assert search(service, sid, PREFIX) == found  # the ONNX Runtime build's selfie, the same photos

        [more] = add_face_photos(catalog_writer, storage, sid, 1, prefix="ort")
        added = httpx.post(url, headers=service.headers, timeout=300)
        assert added.status_code == 200 and added.json()["successful_photos"] == 1, added.text
        assert storage.hits[more.preview_path] >= 1
        with store.engine.connect() as conn:
            query = sa.text("SELECT DISTINCT model_name FROM face_embeddings WHERE session_id = :s")
            assert set(conn.scalars(query, {"s": sid})) == {generation}  # one generation
        assert sorted(r.variant for r in store.ledger_rows(sid)) == sorted(
            ["onnxruntime-fp32/cpu"] + [chosen] * 4
        )
        # Both builds find the same photos (the new one too, if it is one of the people).
        assert search(service, sid) == search(service, sid, PREFIX) >= found
        catalog = CloudCatalog(service.settings.cloud_url())
        try:
            audit = IndexAuditor(catalog, store, generation).audit([sid])
        finally:
            catalog.close()
        [session] = audit.sessions
        assert session.ok, session.as_dict()
        assert session.variants == {"onnxruntime-fp32/cpu": 1, chosen: 4}
    finally:
        serve.delete(APP)
        kill_pool_actors(ort)


def test_a_variant_that_fails_the_gate_is_never_chosen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The OpenVINO f32 recognizer broken (its vectors turned): the fastest variants all use it,
    each is gated and refused, and a variant without it runs."""
    real = runtimes.open_session

    class Broken:
        def __init__(self, session: runtimes.ModelSession) -> None:
            self.session = session
            self.providers = session.providers

        def run(self, batch: runtimes.Array) -> list[runtimes.Array]:
            out = self.session.run(batch)
            return [np.roll(out[0], 1, axis=1)]  # other vectors, as fast

    def opening(path: Path, build: Build, threads: int, settings: Settings) -> runtimes.ModelSession:
        session = real(path, build, threads, settings)
        if build.runtime == "openvino" and "w600k" in path.name:
            return Broken(session)
        return session

    monkeypatch.setattr(networks, "open_session", opening)
    embedder = FaceEmbedder(Settings(gate_cache_dir=tmp_path)).load()
    choice = embedder.choice
    assert choice is not None
    assert "openvino" not in Variant.parse(choice.variant).recognizer.runtime
    broken = [name for name in choice.gates if Variant.parse(name).recognizer.runtime == "openvino"]
    assert broken and all(choice.gates[name]["passed"] is False for name in broken)
    assert all(choice.gates[name]["report"]["embedding_cos_p1"] < 0.9 for name in broken)
    assert choice.variant == fastest_passing({"estimate_ms": choice.estimate_ms, "gates": choice.gates})
    assert embedder.gate is None or embedder.gate.passed
