"""Ray Serve app. ``serve run serve_app:app`` starts the service.

``app`` is built on first access (PEP 562), so importing this package has no
side effects; the settings come from ``FACEPASS_*`` env vars.
"""

from __future__ import annotations

from typing import Any

from serve_app.ingress import FacePassIngress, api, build_app

__all__ = ["FacePassIngress", "api", "app", "build_app"]

_app: Any = None


def __getattr__(name: str) -> Any:
    global _app
    if name != "app":
        raise AttributeError(name)
    if _app is None:
        from serve_app.cli import start_serve_for_cli

        _app = build_app(start_serve_for_cli())
    return _app
