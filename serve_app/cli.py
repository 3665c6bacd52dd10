"""What ``serve run serve_app:app`` needs before Serve starts: our HTTP host and port."""

from __future__ import annotations

import os

import ray
from ray import serve

from facepass.settings import Settings


def start_serve_for_cli() -> Settings:
    settings = Settings()
    if not ray.is_initialized():  # the CLI imports the app before it connects to Ray
        ray.init(address=os.environ.get("RAY_ADDRESS"), namespace="serve")
        serve.start(http_options=settings.serve_http_options())
    return settings
