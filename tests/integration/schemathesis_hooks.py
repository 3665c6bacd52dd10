"""Loaded by the schemathesis CLI (``SCHEMATHESIS_HOOKS``) in test_schemathesis: a schema-valid
selfie is a real face photo in the declared format, so "valid data" means a real search."""

from __future__ import annotations

import cv2
import schemathesis
from hypothesis import strategies as st

from facepass.demo import photos
from serve_app.ingress import IMAGE_TYPES

_FACES = [photos.load("yaoming.jpg"), *(face.image for face in photos.single_face_crops()[:2])]


def _encoded(extension: str) -> list[bytes]:
    return [bytes(cv2.imencode(extension, image)[1]) for image in _FACES]


_BY_TYPE = {"image/png": _encoded(".png"), "image/webp": _encoded(".webp")}
for _media in IMAGE_TYPES:
    _images = _BY_TYPE.get(_media) or [photos.jpeg(image) for image in _FACES]
    schemathesis.openapi.media_type(_media, st.sampled_from(_images))
