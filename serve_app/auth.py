"""API keys on the /api routes: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.

The keys come from ``FACEPASS_API_KEY`` (every scope; several for rotation) and from the
file ``FACEPASS_API_KEYS_FILE`` (lines ``<key> <scope>[,<scope>...]``; scopes ``search``,
``reindex``, ``admin``). The replica sets them once at start (``configure``); with none set
every call passes (the service then only starts on a loopback address, see
``facepass.settings``). A missing or unknown key gets 401, a known key without the route's
scope 403 naming the scope. Keys are compared in constant time and never logged; refused
calls are counted in a Ray metric.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from facepass.errors import ScopeMissing, Unauthorized
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


def configure(keys: Iterable[str | ScopedKey]) -> None:
    """Set the keys of this process (the Serve replica calls it once, at start)."""
    global _keys
    _keys = ApiKeys(keys)


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
    header = request.headers.get("authorization", "")
    bearer = header[7:].strip() if header.lower().startswith("bearer ") else ""
    return _scopes_presented((bearer, request.headers.get("x-api-key", ""))) or frozenset()


# ``dependencies=`` of the routes, by the scope they need.
SEARCH: list[Any] = [Depends(require_search)]
REINDEX: list[Any] = [Depends(require_reindex)]
ADMIN: list[Any] = [Depends(require_admin)]
