"""Integration tier: one real local Ray cluster + Serve for the whole session."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import ray
from ray import serve

from actors.pool import WRITER_NAME, embedding_actor_name
from facepass.settings import Settings
from serve_app import build_app


@dataclass(frozen=True)
class Service:
    base_url: str
    settings: Settings

    def reindex(self, session_id: object, **params: str) -> httpx.Response:
        url = f"{self.base_url}/api/v1/faces/force-reindex-session/{session_id}"
        return httpx.post(url, params=params, timeout=300)


def kill_pool(settings: Settings) -> None:
    names = [embedding_actor_name(i) for i in range(settings.embed_actors)] + [WRITER_NAME]
    for name in names:
        try:
            ray.kill(ray.get_actor(name, namespace=settings.ray_namespace), no_restart=True)
        except ValueError:
            pass


@pytest.fixture(scope="session")
def service(settings: Settings) -> Iterator[Service]:
    ray.init(num_cpus=4, namespace=settings.ray_namespace, include_dashboard=False)
    serve.start(http_options={"host": settings.http_host, "port": settings.http_port})
    serve.run(build_app(settings), name="facepass", route_prefix="/")
    try:
        yield Service(f"http://{settings.http_host}:{settings.http_port}", settings)
    finally:
        serve.shutdown()
        kill_pool(settings)
        ray.shutdown()
