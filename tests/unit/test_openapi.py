"""The OpenAPI document says what the routes really answer (schemathesis checks it live)."""

from __future__ import annotations

from typing import Any

import pytest

from serve_app.ingress import IMAGE_TYPES, api

REINDEX = "/api/v1/faces/force-reindex-session/{session_id}"
JOB = "/api/v1/faces/reindex-jobs/{job_id}"
SEARCH = "/api/v1/faces/search/{session_id}"


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return api.openapi()


@pytest.mark.parametrize(
    ("path", "method", "statuses"),
    [
        (REINDEX, "post", {"200", "202", "401", "403", "404", "409", "422", "429", "503"}),
        (JOB, "get", {"200", "401", "403", "404", "422", "503"}),
        ("/api/v1/faces/mirror", "get", {"200", "401", "403", "503"}),
        (SEARCH, "post", {"200", "400", "401", "403", "404", "413", "415", "422", "429", "503"}),
        ("/healthz", "get", {"200", "503"}),
    ],
)
def test_every_status_is_documented_with_a_body(
    spec: dict[str, Any], path: str, method: str, statuses: set[str]
) -> None:
    responses = spec["paths"][path][method]["responses"]
    assert set(responses) == statuses
    for status, response in responses.items():
        assert "application/json" in response["content"], (path, status)
    if "401" in responses:
        assert responses["401"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    if "503" in responses and path != "/healthz":
        schema = responses["503"]["content"]["application/json"]["schema"]
        assert schema["$ref"].endswith("/DatabaseErrorBody")
    if "409" in responses:
        schema = responses["409"]["content"]["application/json"]["schema"]
        assert schema["$ref"].endswith("/SessionBusyBody")


def test_search_body_is_a_required_image(spec: dict[str, Any]) -> None:
    body = spec["paths"][SEARCH]["post"]["requestBody"]
    assert body["required"] is True
    assert set(body["content"]) == set(IMAGE_TYPES) >= {"image/jpeg", "image/png", "image/webp"}
    for media in body["content"].values():
        assert media["schema"] == {"type": "string", "format": "binary", "minLength": 1}


def test_api_routes_declare_both_key_schemes_and_health_needs_none(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert schemes["HTTPBearer"]["scheme"] == "bearer"
    assert schemes["APIKeyHeader"] == {**schemes["APIKeyHeader"], "in": "header", "name": "X-API-Key"}
    for path in (REINDEX, JOB, SEARCH):
        operation = next(iter(spec["paths"][path].values()))
        assert {name for option in operation["security"] for name in option} == {"HTTPBearer", "APIKeyHeader"}
    assert "security" not in spec["paths"]["/healthz"]["get"]
