"""API keys on the live service: 401 without the right one, either header with either key,
scopes (403 naming the one a key lacks), open health and docs, refused calls counted in a Ray
metric, keys never in any log."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import sqlalchemy as sa

from facepass.demo import photos
from facepass.demo.scenario import CatalogWriter, preview_path
from facepass.demo.storage import PhotoStorage
from tests.integration.conftest import (
    API_KEYS,
    CATALOG_ROLE,
    INDEX_ROLE,
    SCOPED_KEYS,
    Service,
    wait_for_ray_logs,
)

WRONG_KEY = "it-wrong-key-3e8d0c44"


def test_without_the_right_key_every_api_call_is_refused(service: Service) -> None:
    url = f"{service.base_url}/api/v1/faces/reindex-jobs/nope"
    for headers in (
        {},
        {"X-API-Key": WRONG_KEY},
        {"Authorization": f"Bearer {WRONG_KEY}"},
        {"Authorization": f"Basic {API_KEYS[0]}"},
    ):
        refused = httpx.get(url, headers=headers, timeout=30)
        assert refused.status_code == 401, headers
        assert refused.json()["code"] == "unauthorized" and "X-API-Key" in refused.json()["detail"]
    reindex = f"{service.base_url}/api/v1/faces/force-reindex-session/8d3c2a9e-5b1f-4c6e-9a7d-0f1e2d3c4b5a"
    assert httpx.post(reindex, timeout=30).status_code == 401
    search = f"{service.base_url}/api/v1/faces/search/8d3c2a9e-5b1f-4c6e-9a7d-0f1e2d3c4b5a"
    assert httpx.post(search, content=b"\xff\xd8", timeout=30).status_code == 401


def test_either_header_with_either_key_is_let_in(service: Service, catalog_writer: CatalogWriter) -> None:
    sid = catalog_writer.add_session("Сессия с ключом")
    url = f"{service.base_url}/api/v1/faces/force-reindex-session/{sid}"
    for key in API_KEYS:  # the current key and the one being rotated out
        for headers in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key}):
            answer = httpx.post(url, headers=headers, timeout=120)
            assert answer.status_code == 200, (headers, answer.text)
            assert answer.json()["session_id"] == str(sid)


def test_each_key_does_what_its_scopes_allow(
    service: Service, catalog_writer: CatalogWriter, storage: PhotoStorage
) -> None:
    """Keys from FACEPASS_API_KEYS_FILE: a search key searches but may not reindex, a reindex key
    reindexes but may not search or read /mirror, an admin key reads /mirror and /healthz's
    details; a refusal is 403 naming the scope, logged without the key."""
    sid = catalog_writer.add_session("Ключи с правами")
    path = preview_path(sid, "players.jpg")
    storage.put(path, photos.jpeg(photos.load("players.jpg")))
    catalog_writer.add_photos(sid, [("players.jpg", path)])
    base = f"{service.base_url}/api/v1/faces"
    selfie = photos.jpeg(photos.load("yaoming.jpg"))

    def call(scope: str, method: str, url: str, **kwargs: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {SCOPED_KEYS[scope]}", "Content-Type": "image/jpeg"}
        return httpx.request(method, url, headers=headers, timeout=300, **kwargs)  # type: ignore[arg-type]

    def assert_forbidden(answer: httpx.Response, scope: str) -> None:
        assert answer.status_code == 403, answer.text
        assert answer.json()["code"] == "scope_missing" and answer.json()["scope"] == scope

    assert_forbidden(call("search", "POST", f"{base}/force-reindex-session/{sid}"), "reindex")
    assert_forbidden(call("admin", "POST", f"{base}/force-reindex-session/{sid}"), "reindex")
    indexed = call("reindex", "POST", f"{base}/force-reindex-session/{sid}")
    assert indexed.status_code == 200 and indexed.json()["successful_photos"] == 1, indexed.text
    found = call("search", "POST", f"{base}/search/{sid}", content=selfie)
    assert found.status_code == 200 and [m["filename"] for m in found.json()["matches"]] == ["players.jpg"]
    assert_forbidden(call("reindex", "POST", f"{base}/search/{sid}", content=selfie), "search")
    assert_forbidden(call("reindex", "GET", f"{base}/mirror"), "admin")
    assert_forbidden(call("search", "GET", f"{base}/mirror"), "admin")
    assert call("admin", "GET", f"{base}/mirror").status_code == 200
    # /healthz: ok / fail to everyone; the pool's details only to an admin key (or an all-scope one).
    assert isinstance(call("admin", "GET", f"{service.base_url}/healthz").json()["pool"], dict)
    assert call("search", "GET", f"{service.base_url}/healthz").json()["pool"] == "ok"
    assert call("reindex", "GET", f"{service.base_url}/healthz").json()["pool"] == "ok"

    texts = wait_for_ray_logs(lambda text: "lacks the search scope" in text)
    assert any(f"refused POST /api/v1/faces/search/{sid}" in text for text in texts.values())
    for path_, text in texts.items():
        assert not any(key in text for key in SCOPED_KEYS.values()), f"a key is in {path_}"


def test_health_and_docs_need_no_key(service: Service) -> None:
    for path in ("/healthz", "/docs", "/openapi.json"):
        assert httpx.get(f"{service.base_url}{path}", timeout=60).status_code == 200, path


def test_refused_calls_are_counted_and_no_key_reaches_a_log(service: Service) -> None:
    httpx.get(f"{service.base_url}/api/v1/faces/reindex-jobs/x", headers={"X-API-Key": WRONG_KEY}, timeout=30)
    deadline = time.monotonic() + 90
    counted = False
    while not counted and time.monotonic() < deadline:
        text = httpx.get(f"{service.head.metrics_url}/metrics", timeout=10).text
        counted = any(
            line.startswith("ray_facepass_api_refused_total") and 'reason="wrong"' in line
            for line in text.splitlines()
        )
        time.sleep(0 if counted else 2)
    assert counted, "ray_facepass_api_refused_total{reason=wrong} never exported"

    texts = wait_for_ray_logs(lambda text: "refused GET /api/v1/faces/reindex-jobs/x" in text)
    for path, text in texts.items():
        for secret in [*API_KEYS, WRONG_KEY]:
            assert secret not in text, f"a key is in {path}"


def test_ray_jobs_api_refuses_a_caller_without_the_token(service: Service) -> None:
    """Ray's control plane is behind its token (the README's head, as cluster.yaml and KubeRay
    run it): without the token, or with a wrong one, the Jobs API neither lists nor runs a job
    (anyone who could would run code on the cluster); with it, the same job runs."""
    jobs = f"{service.head.dashboard_url}/api/jobs/"
    job = {"entrypoint": "python -c \"print('ran with the token')\""}
    for headers in ({}, {"Authorization": "Bearer not-the-ray-token"}):
        assert httpx.post(jobs, json=job, headers=headers, timeout=30).status_code in (401, 403), headers
        assert httpx.get(jobs, headers=headers, timeout=30).status_code in (401, 403), headers
    token = (Path.home() / ".ray" / "auth_token").read_text().strip()
    if service.head.env.get("RAY_AUTH_TOKEN_PATH"):
        token = Path(service.head.env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    bearer = {"Authorization": f"Bearer {token}"}
    accepted = httpx.post(jobs, json=job, headers=bearer, timeout=30)
    assert accepted.status_code == 200, accepted.text
    job_id = accepted.json()["submission_id"]
    deadline = time.monotonic() + 120
    while (
        status := httpx.get(f"{jobs}{job_id}", headers=bearer, timeout=30).json()["status"]
    ) != "SUCCEEDED":
        assert status in ("PENDING", "RUNNING") and time.monotonic() < deadline, status
        time.sleep(0.5)
    logs = httpx.get(f"{jobs}{job_id}/logs", headers=bearer, timeout=30).json()["logs"]
    assert "ran with the token" in logs


def test_the_service_works_on_roles_that_cannot_change_a_schema(
    service: Service, catalog_writer: CatalogWriter, storage: PhotoStorage
) -> None:
    """The service runs as the README's runtime roles: on the index only rows (no CREATE on the
    schema, owner of nothing), on the catalog SELECT only. A force-reindex, a re-run and a search
    work, and the connections that did them are those roles'."""
    sid = catalog_writer.add_session("Без прав на схему")
    path = preview_path(sid, "players.jpg")
    storage.put(path, photos.jpeg(photos.load("players.jpg")))
    catalog_writer.add_photos(sid, [("players.jpg", path)])
    assert service.reindex(sid).json()["successful_photos"] == 1
    assert service.reindex(sid).json()["skipped_photos"] == 1  # a re-run: nothing to do
    selfie = photos.jpeg(photos.load("yaoming.jpg"))
    found = httpx.post(
        f"{service.base_url}/api/v1/faces/search/{sid}",
        content=selfie,
        headers={**service.headers, "Content-Type": "image/jpeg"},
        timeout=120,
    )
    assert found.status_code == 200 and found.json()["matches"], found.text

    checks = {
        (service.settings.local_url(), INDEX_ROLE): (
            "SELECT has_schema_privilege(:r, 'public', 'CREATE'), "
            "EXISTS (SELECT 1 FROM pg_tables WHERE tableowner = :r), "
            "has_table_privilege(:r, 'indexed_photos', 'INSERT')"
        ),
        (service.settings.cloud_url(), CATALOG_ROLE): (
            "SELECT has_schema_privilege(:r, 'public', 'CREATE'), "
            "EXISTS (SELECT 1 FROM pg_tables WHERE tableowner = :r), "
            "has_table_privilege(:r, 'photos', 'INSERT')"
        ),
    }
    for (url, role), query in checks.items():
        engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            may_create, owns, may_insert = conn.execute(sa.text(query), {"r": role}).one()
            users = set(
                conn.scalars(
                    sa.text("SELECT usename FROM pg_stat_activity WHERE datname = current_database()")
                )
            )
        engine.dispose()
        assert not may_create and not owns, role
        assert may_insert == (role == INDEX_ROLE), role
        assert role in users, (role, users)  # the service's own connections
