"""API keys on the /api routes: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.

The keys come from ``FACEPASS_API_KEY`` (several for rotation). The replica sets them
once at start (``configure``); with none set every call passes (the service then only
starts on a loopback address, see ``facepass.settings``). Keys are compared in
constant time and never logged; refused calls are counted in a Ray metric.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from facepass.errors import Unauthorized

log = logging.getLogger("facepass.auth")

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <FACEPASS_API_KEY>`")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="`X-API-Key: <FACEPASS_API_KEY>`")


class ApiKeys:
    """The accepted keys of this process."""

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._keys = tuple(key.encode() for key in keys if key)

    @property
    def required(self) -> bool:
        return bool(self._keys)

    def accepts(self, presented: str) -> bool:
        given = presented.encode()
        matched = False
        for key in self._keys:  # every key is compared: the time says nothing about which one
            matched |= hmac.compare_digest(given, key)
        return matched


_keys = ApiKeys()


def configure(keys: Iterable[str]) -> None:
    """Set the keys of this process (the Serve replica calls it once, at start)."""
    global _keys
    _keys = ApiKeys(keys)


def _refuse(request: Request, reason: str) -> Unauthorized:
    from actors.metrics import access_metrics  # Ray metrics: created on first refusal, not at import

    access_metrics().refused(reason)
    client = request.client.host if request.client else "?"
    log.warning("refused %s %s from %s: %s API key", request.method, request.url.path, client, reason)
    return Unauthorized()


async def require_api_key(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header_key: Annotated[str | None, Depends(_header)],
) -> None:
    """FastAPI dependency of every /api route."""
    keys = _keys
    if not keys.required:
        return
    presented = [key for key in (bearer.credentials if bearer else None, header_key) if key]
    if not presented:
        raise _refuse(request, "missing")
    if not any(keys.accepts(key) for key in presented):
        raise _refuse(request, "wrong")


def presents_valid_key(request: Request) -> bool:
    """Whether a request carries an accepted key (always, when no key is configured), without
    refusing or counting anything: for open routes that answer more to a key (``/healthz``)."""
    if not _keys.required:
        return True
    header = request.headers.get("authorization", "")
    bearer = header[7:].strip() if header.lower().startswith("bearer ") else ""
    return any(_keys.accepts(key) for key in (bearer, request.headers.get("x-api-key", "")) if key)


API_KEY = [Depends(require_api_key)]
