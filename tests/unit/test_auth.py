"""API keys at the HTTP edge: the real app's gate (no replica needed to be refused)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from facepass.errors import FacePassError
from serve_app import auth
from serve_app.auth import ADMIN, ApiKeys
from serve_app.ingress import _facepass_error, api

KEYS = ["current-key-7f3a9c", "previous-key-b21e04"]
JOB_URL = "/api/v1/faces/reindex-jobs/some-job"
SESSION = "8d3c2a9e-5b1f-4c6e-9a7d-0f1e2d3c4b5a"


@pytest.fixture
def keys() -> Iterator[list[str]]:
    auth.configure(KEYS)
    yield KEYS
    auth.configure([])


@pytest.fixture
def gated() -> TestClient:
    """A route behind the real dependency and the real error handler, that answers 200."""
    app = FastAPI()
    app.add_exception_handler(FacePassError, _facepass_error)  # type: ignore[arg-type]

    @app.get("/api/ping", dependencies=ADMIN)
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    return TestClient(app)


def test_every_api_route_requires_the_key(keys: list[str]) -> None:
    """Each /api operation of the real app (as OpenAPI lists them) refuses a call without a key."""
    client = TestClient(api)
    operations = [
        (path, method)
        for path, item in api.openapi()["paths"].items()
        if path.startswith("/api/")
        for method in item
    ]
    assert len(operations) >= 3
    for path, method in operations:
        url = path.replace("{session_id}", "8d3c2a9e-5b1f-4c6e-9a7d-0f1e2d3c4b5a").replace("{job_id}", "j")
        response = client.request(method.upper(), url)
        assert response.status_code == 401, (method, path)


def test_no_key_and_a_wrong_key_get_401_json(keys: list[str]) -> None:
    client = TestClient(api)
    for headers in (
        {},
        {"X-API-Key": "wrong"},
        {"Authorization": "Bearer wrong"},
        {"Authorization": keys[0]},
    ):
        response = client.get(JOB_URL, headers=headers)
        assert response.status_code == 401, headers
        assert response.json()["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert client.post("/api/v1/faces/force-reindex-session/not-a-uuid").status_code == 401


def test_either_header_and_either_rotated_key_pass(keys: list[str], gated: TestClient) -> None:
    assert gated.get("/api/ping").status_code == 401
    for key in keys:
        assert gated.get("/api/ping", headers={"Authorization": f"Bearer {key}"}).json() == {"pong": "yes"}
        assert gated.get("/api/ping", headers={"X-API-Key": key}).status_code == 200
    assert gated.get("/api/ping", headers={"X-API-Key": keys[0] + "x"}).status_code == 401
    assert gated.get("/api/ping", headers={"X-API-Key": keys[0][:-1]}).status_code == 401


def test_without_configured_keys_routes_are_open(gated: TestClient) -> None:
    auth.configure([])
    assert gated.get("/api/ping").status_code == 200


def test_health_and_docs_stay_open(keys: list[str]) -> None:
    client = TestClient(api)
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs").status_code == 200


def test_keys_never_reach_the_log(
    keys: list[str], gated: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-key-that-must-not-be-logged"
    assert gated.get("/api/ping", headers={"X-API-Key": wrong}).status_code == 401
    assert gated.get("/api/ping", headers={"Authorization": f"Bearer {keys[1]}"}).status_code == 200
    assert "refused GET /api/ping" in caplog.text  # the refusal is logged ...
    for secret in [*keys, wrong]:
        assert secret not in caplog.text  # ... without any key


# The scope each /api operation needs (the contract: search, reindex, admin).
ROUTE_SCOPES = {
    ("/api/v1/faces/force-reindex-session/{session_id}", "post"): "reindex",
    ("/api/v1/faces/reindex-jobs/{job_id}", "get"): "reindex",
    ("/api/v1/faces/search/{session_id}", "post"): "search",
    ("/api/v1/faces/mirror", "get"): "admin",
}


def test_each_route_needs_its_scope_and_names_it_in_403() -> None:
    """A known key with every scope but the route's own gets 403 naming that scope (before any
    work: no replica needed); each of the other scopes alone does not let it through either."""
    operations = {
        (path, method)
        for path, item in api.openapi()["paths"].items()
        if path.startswith("/api/")
        for method in item
    }
    assert operations == set(ROUTE_SCOPES), "a new /api route needs its scope in ROUTE_SCOPES"
    client = TestClient(api)
    try:
        for (path, method), scope in ROUTE_SCOPES.items():
            others = frozenset({"search", "reindex", "admin"} - {scope})
            singles = [("only-" + other, frozenset({other})) for other in others]
            auth.configure([("all-but-the-route-scope", others), *singles])
            url = path.replace("{session_id}", SESSION).replace("{job_id}", "j")
            for key in ["all-but-the-route-scope", *(key for key, _ in singles)]:
                response = client.request(method.upper(), url, headers={"X-API-Key": key})
                assert response.status_code == 403, (path, key)
                body = response.json()
                assert body["code"] == "scope_missing" and body["scope"] == scope, body
                assert repr(scope) in body["detail"]
    finally:
        auth.configure([])


def test_several_presented_keys_add_their_scopes() -> None:
    keys = ApiKeys([("s-key", frozenset({"search"})), ("r-key", frozenset({"reindex"})), "all-key"])
    assert keys.scopes_of("s-key") == {"search"}
    assert keys.scopes_of("all-key") == {"search", "reindex", "admin"}
    assert keys.scopes_of("x-key") is None
    auth.configure([("s-key", frozenset({"search"})), ("r-key", frozenset({"reindex"}))])
    try:
        app = FastAPI()
        app.add_exception_handler(FacePassError, _facepass_error)  # type: ignore[arg-type]

        @app.get("/api/reindex-only", dependencies=auth.REINDEX)
        async def reindex_only() -> dict[str, str]:
            return {"ok": "yes"}

        client = TestClient(app)
        assert client.get("/api/reindex-only", headers={"X-API-Key": "s-key"}).status_code == 403
        both = {"X-API-Key": "s-key", "Authorization": "Bearer r-key"}
        assert client.get("/api/reindex-only", headers=both).status_code == 200
        assert client.get("/api/reindex-only", headers={"X-API-Key": "nope"}).status_code == 401
    finally:
        auth.configure([])


def test_key_comparison() -> None:
    keys = ApiKeys(["a-key", "b-key", ""])
    assert keys.required and keys.accepts("b-key") and not keys.accepts("") and not keys.accepts("c-key")
    assert not ApiKeys([]).required


def test_serve_run_refuses_a_public_bind_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve run serve_app:app` builds the app from the environment: refused before Ray starts."""
    from pydantic import ValidationError

    import serve_app

    monkeypatch.delenv("FACEPASS_API_KEY", raising=False)
    monkeypatch.setenv("FACEPASS_HTTP_HOST", "0.0.0.0")
    with pytest.raises(ValidationError, match="FACEPASS_HTTP_HOST=0.0.0.0 is not a loopback address"):
        _ = serve_app.app


@pytest.mark.parametrize(
    ("host", "settings", "refused"),
    [
        ("0.0.0.0", {}, True),  # serve deploy / KubeRay: every interface, no key
        ("::", {}, True),
        ("10.0.0.5", {}, True),
        ("0.0.0.0", {"api_key": "a-real-key"}, False),
        ("0.0.0.0", {"allow_open_http": True}, False),  # opened on purpose
        ("127.0.0.1", {}, False),
        ("localhost", {}, False),
        (None, {}, False),  # no Serve controller: a plain driver, nothing served over HTTP
    ],
)
def test_open_routes_only_on_a_loopback_bind(
    host: str | None, settings: dict[str, Any], refused: bool
) -> None:
    from facepass.settings import Settings
    from serve_app.bind import refusal

    why = refusal(host, Settings(**settings))
    assert (why is not None) == refused, why
    if why:
        assert f"binds {host}" in why and "FACEPASS_API_KEY" in why and "FACEPASS_ALLOW_OPEN_HTTP" in why
