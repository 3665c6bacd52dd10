"""Integration tier: one real Ray head (``ray start --head`` on test ports) + Serve,
shared by the whole session: the route tests drive it over HTTP and the bulk
tests submit jobs to it with the real ``ray job submit`` CLI."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import ray
import sqlalchemy as sa
from ray import serve

from actors.ray_calls import kill_pool_actors
from facepass.db import make_engine
from facepass.settings import Settings
from jobs.local_head import LocalRayHead
from jobs.migrate import grant_runtime_role
from serve_app import build_app

# The integration tier runs closed, as a deployment should: every /api call carries a key.
API_KEYS = ["it-current-key-5d1c7e0b", "it-previous-key-9a4f2b61"]
# ...and keys with scopes, from a keys file (FACEPASS_API_KEYS_FILE): one per scope.
SCOPED_KEYS = {
    "search": "it-search-key-0c7d4e19",
    "reindex": "it-reindex-key-6b2a8f53",
    "admin": "it-admin-key-e41f90a7",
}
# Hosts the catalog's absolute photo URLs may name: none of them may be reached all the same
# (shared address space, NAT64 of the metadata address, a documentation address named with a
# port not allowed). No test URL passes the policy, so nothing leaves loopback.
CATALOG_HOSTS = ["100.64.0.1", "64:ff9b::a9fe:a9fe", "203.0.113.7"]


# The service runs as a deployment should (docs/operations.md, "Migrations and database roles"): on the
# index a role that may only read and write rows (`python -m jobs.migrate --grant`), on the
# catalog one that may only read; the schema is the owner's (the session's settings migrated
# it). Service.settings stays the owner's: tests build catalogs and jobs with it.
INDEX_ROLE, CATALOG_ROLE = "facepass_app", "facepass_reader"


def as_role(url: str, role: str) -> str:
    return sa.make_url(url).set(username=role).render_as_string(hide_password=False)


def grant_catalog_reader(catalog_url: str) -> str:
    """The catalog at ``catalog_url`` (the owner's) readable by CATALOG_ROLE; its URL as that role."""
    catalog = make_engine(catalog_url, pool_size=1)
    try:
        with catalog.begin() as conn:
            conn.execute(sa.text(f'GRANT USAGE ON SCHEMA public TO "{CATALOG_ROLE}"'))
            conn.execute(sa.text(f'GRANT SELECT ON sessions, photos TO "{CATALOG_ROLE}"'))
    finally:
        catalog.dispose()
    return as_role(catalog_url, CATALOG_ROLE)


def runtime_roles(settings: Settings) -> Settings:
    """The settings the service runs with: its own roles, no migration at start."""
    index, catalog = (
        make_engine(settings.local_url(), pool_size=1),
        make_engine(settings.cloud_url(), pool_size=1),
    )
    try:
        for engine, role in ((index, INDEX_ROLE), (catalog, CATALOG_ROLE)):
            with engine.begin() as conn:
                if not conn.scalar(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}):
                    conn.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
        grant_runtime_role(index, INDEX_ROLE)
    finally:
        index.dispose()
        catalog.dispose()
    grant_catalog_reader(settings.cloud_url())
    return settings.with_databases(
        cloud=as_role(settings.cloud_url(), CATALOG_ROLE),
        local=as_role(settings.local_url(), INDEX_ROLE),
        migrate_at_start=False,
    )


@dataclass(frozen=True)
class Service:
    base_url: str
    settings: Settings
    head: LocalRayHead

    @property
    def headers(self) -> dict[str, str]:
        return self.settings.api_headers()

    def reindex(self, session_id: object, **params: str) -> httpx.Response:
        url = f"{self.base_url}/api/v1/faces/force-reindex-session/{session_id}"
        return httpx.post(url, params=params, headers=self.headers, timeout=300)

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        """GET with the key (``path`` starts with /)."""
        return httpx.get(f"{self.base_url}{path}", headers=self.headers, timeout=60, **kwargs)  # type: ignore[arg-type]


def actors_variant(service: Service) -> str:
    """The variant every embedding actor of the service runs (from /healthz's details)."""
    health = service.get("/healthz")
    assert health.status_code == 200, health.text
    variants = {actor["variant"] for actor in health.json()["pool"]["actors"]}
    assert len(variants) == 1, variants
    return variants.pop()


def wait_for_ray_logs(found: Callable[[str], bool], timeout_s: float = 60) -> dict[Path, str]:
    """Every log file of the session's Ray head (the driver's view of it), read again until one
    of them satisfies ``found``: a replica's lines reach the files a moment after they are said."""
    node = ray._private.worker._global_node
    assert node is not None
    logs = Path(node.get_session_dir_path()) / "logs"
    deadline = time.monotonic() + timeout_s
    while True:
        texts = {p: p.read_text(errors="replace") for p in logs.rglob("*") if p.is_file()}
        if any(found(text) for text in texts.values()):
            return texts
        assert time.monotonic() < deadline, "never reached a log file of the head's session"
        time.sleep(0.5)


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRayHead]:
    """The README's way: `ray start --head` with the project's bin first on PATH and token auth."""
    with (tmp_path_factory.mktemp("ray") / "head.log").open("w") as log:
        head = LocalRayHead.start(log, num_cpus=4)
        try:
            yield head
        finally:
            head.stop()


@pytest.fixture(scope="session")
def service(
    settings: Settings, ray_head: LocalRayHead, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    keys_file = tmp_path_factory.mktemp("secrets") / "api_keys"
    keys_file.write_text("".join(f"{key} {scope}\n" for scope, key in SCOPED_KEYS.items()))
    settings = Settings.model_validate(
        {
            **settings.model_dump(),
            "api_key": API_KEYS,
            "api_keys_file": keys_file,
            "storage_allowed_hosts": CATALOG_HOSTS,
        }
    )
    ray.init(address=ray_head.gcs_address, namespace=settings.ray_namespace)
    serve.start(http_options=settings.serve_http_options())
    serve.run(build_app(runtime_roles(settings)), name="facepass", route_prefix="/")
    try:
        yield Service(f"http://{settings.http_host}:{settings.http_port}", settings, ray_head)
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        kill_pool_actors(settings)
        ray.shutdown()
