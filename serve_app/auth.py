"""API keys on the /api routes: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.

The keys come from ``FACEPASS_API_KEY`` (every scope; several for rotation) and from the
file ``FACEPASS_API_KEYS_FILE`` (lines ``<key> <scope>[,<scope>...]``; scopes ``search``,
``reindex``, ``admin``). The replica sets them once at start (``configure``); with none set
every call passes (the service then only starts on a loopback address, see
``facepass.settings``). A missing or unknown key gets 401, a known key without the route's
scope 403 naming the scope. Keys are compared in constant time and never logged; refused
calls are counted in a Ray metric.

Selfie searches are also rate-limited per caller (``limit_searches``): the key's fingerprint
(a SHA-256 prefix, never the key), or the client's address where no keys are set; past the
limit 429 with Retry-After, counted as ``reason="rate_limited"`` and logged once a minute per
caller.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from facepass.errors import ScopeMissing, SearchRateLimited, Unauthorized
from facepass.ratelimit import RateLimiter
from facepass.settings import SCOPES

log = logging.getLogger("facepass.auth")

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <FACEPASS_API_KEY>`")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="`X-API-Key: <FACEPASS_API_KEY>`")
EVERY_SCOPE = frozenset(SCOPES)
ScopedKey = tuple[str, frozenset[str]]


class ApiKeys:
    """The accepted keys of this process, each with its scopes (a bare key holds every scope)."""

    def __init__(self, keys: Iterable[str | ScopedKey] = ()) -> None:
        pairs = [(key, EVERY_SCOPE) if isinstance(key, str) else key for key in keys]
        self._keys = tuple((key.encode(), scopes) for key, scopes in pairs if key)

    @property
    def required(self) -> bool:
        return bool(self._keys)

    def scopes_of(self, presented: str) -> frozenset[str] | None:
        """What the presented key may do; None when it is no key of this process."""
        given = presented.encode()
        found: frozenset[str] | None = None
        for key, scopes in self._keys:  # every key is compared: the time says nothing about which one
            if hmac.compare_digest(given, key):
                found = scopes if found is None else found | scopes
        return found

    def accepts(self, presented: str) -> bool:
        return self.scopes_of(presented) is not None


_keys = ApiKeys()
_search_limit: RateLimiter | None = None
_RATE_LOG_EVERY_S = 60.0
_rate_logged: dict[str, tuple[float, int]] = {}  # caller -> (last line's time, refusals since)


def configure(keys: Iterable[str | ScopedKey], search_rate_per_s: float = 0.0, search_burst: int = 1) -> None:
    """Set the keys and the search rate limit of this process (0: none; the Serve replica
    calls it once, at start)."""
    global _keys, _search_limit
    _keys = ApiKeys(keys)
    _search_limit = RateLimiter(search_rate_per_s, search_burst) if search_rate_per_s > 0 else None
    _rate_logged.clear()


def _count_and_log(request: Request, reason: str, why: str) -> None:
    from actors.metrics import access_metrics  # Ray metrics: created on first refusal, not at import

    access_metrics().refused(reason)
    client = request.client.host if request.client else "?"
    log.warning("refused %s %s from %s: %s", request.method, request.url.path, client, why)


def _scopes_presented(presented: Iterable[str | None]) -> frozenset[str] | None:
    """The union of the scopes of the presented keys that are known; None if none is."""
    found: frozenset[str] | None = None
    for key in presented:
        scopes = _keys.scopes_of(key) if key else None
        if scopes is not None:
            found = scopes if found is None else found | scopes
    return found


async def _require(
    scope: str, request: Request, bearer: HTTPAuthorizationCredentials | None, header_key: str | None
) -> None:
    """401 without a known key, 403 (naming the scope) with a known key that lacks ``scope``."""
    if not _keys.required:
        return
    presented = [key for key in (bearer.credentials if bearer else None, header_key) if key]
    if not presented:
        _count_and_log(request, "missing", "missing API key")
        raise Unauthorized()
    scopes = _scopes_presented(presented)
    if scopes is None:
        _count_and_log(request, "wrong", "wrong API key")
        raise Unauthorized()
    if scope not in scopes:
        _count_and_log(request, "scope", f"the API key lacks the {scope} scope")
        raise ScopeMissing(scope)


def _presented(request: Request) -> tuple[str, str]:
    header = request.headers.get("authorization", "")
    bearer = header[7:].strip() if header.lower().startswith("bearer ") else ""
    return bearer, request.headers.get("x-api-key", "")


def caller_of(request: Request) -> str:
    """Whom a call counts against: its known API key's fingerprint (never the key), else
    (no keys set) the client's address."""
    if _keys.required:
        for key in _presented(request):
            if key and _keys.accepts(key):
                return "key:" + hashlib.sha256(key.encode()).hexdigest()[:12]
    return "client:" + (request.client.host if request.client else "?")


async def limit_searches(request: Request) -> None:
    """429 (``SearchRateLimited``, Retry-After) past the caller's search rate; after the key check."""
    limiter = _search_limit
    if limiter is None:
        return
    caller = caller_of(request)
    wait_s = limiter.take(caller)
    if not wait_s:
        return
    from actors.metrics import access_metrics

    access_metrics().refused("rate_limited")
    now = time.monotonic()
    last, since = _rate_logged.get(caller, (float("-inf"), 0))
    if now - last >= _RATE_LOG_EVERY_S:
        log.warning(
            "rate-limited searches of %s: %d refused since the last line (limit %g/s, burst %d)",
            caller,
            since + 1,
            limiter.rate,
            int(limiter.burst),
        )
        _rate_logged[caller] = (now, 0)
    else:
        _rate_logged[caller] = (last, since + 1)
    if len(_rate_logged) > limiter.max_callers:
        _rate_logged.pop(next(iter(_rate_logged)))
    raise SearchRateLimited(limiter.rate, int(limiter.burst), RateLimiter.retry_after_header(wait_s))


# One module-level function per scope, not a closure: Serve pickles the app, and a closure
# travels by value without the module globals FastAPI needs to read its annotations.
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
HeaderKey = Annotated[str | None, Depends(_header)]


async def require_search(request: Request, bearer: Bearer, header_key: HeaderKey) -> None:
    await _require("search", request, bearer, header_key)


async def require_reindex(request: Request, bearer: Bearer, header_key: HeaderKey) -> None:
    await _require("reindex", request, bearer, header_key)


async def require_admin(request: Request, bearer: Bearer, header_key: HeaderKey) -> None:
    await _require("admin", request, bearer, header_key)


def presented_scopes(request: Request) -> frozenset[str]:
    """The scopes of the key a request carries (every scope when no key is configured; none
    without a known key), without refusing or counting anything: for open routes that answer
    more to a key (``/healthz``'s details need ``admin``)."""
    if not _keys.required:
        return EVERY_SCOPE
    return _scopes_presented(_presented(request)) or frozenset()


# ``dependencies=`` of the routes, by the scope they need.
SEARCH: list[Any] = [Depends(require_search), Depends(limit_searches)]
REINDEX: list[Any] = [Depends(require_reindex)]
ADMIN: list[Any] = [Depends(require_admin)]
