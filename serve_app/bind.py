"""Fail closed on the HTTP address Serve really binds, not on FACEPASS_HTTP_HOST: under
``serve deploy`` and KubeRay the proxies take it from the config's ``http_options`` (0.0.0.0
in ours), so a replica asks Serve's controller before it serves anything."""

from __future__ import annotations

import logging

import ray
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

from facepass.settings import Settings, is_loopback

log = logging.getLogger("facepass.serve")


class OpenBindRefused(RuntimeError):
    """The routes would be served without a key on an address other hosts can reach."""


def serve_bind_host() -> str | None:
    """The host Serve's HTTP proxies bind; None where no Serve controller runs (a plain driver)."""
    try:
        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return None
    config: object = ray.get(controller.get_http_config.remote(), timeout=60)
    host = getattr(config, "host", None)
    return str(host) if host else "0.0.0.0"  # Serve's default binds every interface


def refusal(host: str | None, settings: Settings) -> str | None:
    """Why the routes must not be served on this bind (None: they may)."""
    if settings.has_keys or settings.allow_open_http or host is None or is_loopback(host):
        return None
    return (
        f"Serve's HTTP proxy binds {host}, not a loopback address, and no API key is set: set "
        "FACEPASS_API_KEY (or FACEPASS_API_KEY_FILE / FACEPASS_API_KEYS_FILE), or "
        "FACEPASS_ALLOW_OPEN_HTTP=true to serve the routes open on purpose"
    )


def require_closed_or_loopback(settings: Settings) -> None:
    """Raise (the replica does not start, the deployment says why) on an open, reachable bind."""
    if settings.has_keys or settings.allow_open_http or not ray.is_initialized():
        return
    why = refusal(serve_bind_host(), settings)
    if why:
        log.error("not serving: %s", why)
        raise OpenBindRefused(why)
