"""Selfie searches per caller: token buckets, and the real app's 429 with Retry-After."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from facepass.errors import FacePassError
from facepass.ratelimit import RateLimiter
from serve_app import auth
from serve_app.auth import SEARCH
from serve_app.ingress import _facepass_error

KEY, OTHER = "search-key-4e1d", "search-key-9a0c"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_lets_a_burst_through_then_refills_at_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(rate_per_s=2.0, burst=3, clock=clock)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)  # one token in 1/rate seconds
    assert limiter.take("b") == 0.0  # another caller has a bucket of its own
    clock.now += 0.5
    assert limiter.take("a") == 0.0 and limiter.take("a") == pytest.approx(0.5)
    clock.now += 100  # never more than the burst
    assert [limiter.take("a") for _ in range(4)][-1] > 0
    assert RateLimiter.retry_after_header(0.01) == 1 and RateLimiter.retry_after_header(1.2) == 2


def test_callers_not_seen_for_longest_are_dropped_first() -> None:
    clock = Clock()
    limiter = RateLimiter(rate_per_s=1.0, burst=1, clock=clock, max_callers=2)
    assert limiter.take("a") == 0.0 and limiter.take("b") == 0.0
    assert limiter.take("a") > 0  # a used again: b is now the oldest
    assert limiter.take("c") == 0.0  # b's bucket goes
    assert limiter.take("a") > 0 and limiter.take("b") == 0.0  # b starts full again
    with pytest.raises(ValueError):
        RateLimiter(rate_per_s=0, burst=1)


def search_app() -> TestClient:
    """A route behind the real search dependencies (key, then rate) and error handler."""
    app = FastAPI()
    app.add_exception_handler(FacePassError, _facepass_error)  # type: ignore[arg-type]

    @app.post("/api/search", dependencies=SEARCH)
    async def search() -> dict[str, str]:
        return {"ok": "yes"}

    return TestClient(app)


@pytest.fixture
def searches() -> Iterator[TestClient]:
    auth.configure([KEY, OTHER], search_rate_per_s=5.0, search_burst=10)
    yield search_app()
    auth.configure([])


def test_one_key_flooding_search_gets_429_with_retry_after(
    searches: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    answers = [searches.post("/api/search", headers={"X-API-Key": KEY}) for _ in range(100)]
    codes = [a.status_code for a in answers]
    assert set(codes) == {200, 429}
    assert 10 <= codes.count(200) <= 12  # the burst, and what refilled during the calls
    refused = next(a for a in answers if a.status_code == 429)
    body = refused.json()
    assert body["code"] == "rate_limited" and body["retry_after_s"] >= 1
    assert refused.headers["Retry-After"] == str(body["retry_after_s"])
    # The other key (the same scopes) is not slowed down by the first one's flood.
    assert searches.post("/api/search", headers={"Authorization": f"Bearer {OTHER}"}).status_code == 200
    # A wrong key is 401 before any bucket: it cannot spend a real key's searches.
    assert searches.post("/api/search", headers={"X-API-Key": "wrong"}).status_code == 401
    # One log line for the flood (once a minute per caller), naming the key by its fingerprint only.
    lines = [r.getMessage() for r in caplog.records if "rate-limited searches" in r.getMessage()]
    assert len(lines) == 1 and "key:" in lines[0]
    assert KEY not in caplog.text and OTHER not in caplog.text


def test_one_hundred_concurrent_searches_get_429s_not_errors(searches: TestClient) -> None:
    async def flood() -> list[int]:
        transport = httpx.ASGITransport(app=searches.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://facepass.test") as client:
            calls = [client.post("/api/search", headers={"X-API-Key": KEY}) for _ in range(100)]
            return [r.status_code for r in await asyncio.gather(*calls)]

    codes = asyncio.run(flood())
    assert set(codes) == {200, 429} and codes.count(429) >= 85


def test_without_keys_the_client_address_is_the_caller() -> None:
    auth.configure([], search_rate_per_s=1.0, search_burst=2)
    try:
        client = search_app()
        assert [client.post("/api/search").status_code for _ in range(3)] == [200, 200, 429]
    finally:
        auth.configure([])


def test_rate_zero_is_no_limit() -> None:
    auth.configure([KEY], search_rate_per_s=0.0)
    try:
        client = search_app()
        assert {client.post("/api/search", headers={"X-API-Key": KEY}).status_code for _ in range(50)} == {
            200
        }
    finally:
        auth.configure([])
