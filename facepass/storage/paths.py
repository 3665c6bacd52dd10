"""A catalog's relative ``preview_path``, checked once for every backend."""

from __future__ import annotations

from urllib.parse import urlsplit

from facepass.errors import UrlNotAllowed


def is_absolute(preview_path: str) -> bool:
    """A URL with a scheme (``https://``, ``s3://``) or a network path (``//host/...``)."""
    path = preview_path.strip()
    return bool(urlsplit(path).scheme) or path.startswith("//")


def relative_path(preview_path: str) -> str:
    """The path under the storage's root, refused when it could climb out of it
    (``..``, an empty or ``.`` segment, a leading ``/``, a backslash)."""
    path = preview_path.strip()
    if not path or path.startswith("/") or "\\" in path:
        raise UrlNotAllowed(f"bad preview path {preview_path!r}")
    if any(segment in ("", ".", "..") for segment in path.split("/")):
        raise UrlNotAllowed(f"bad preview path {preview_path!r}")
    return path
