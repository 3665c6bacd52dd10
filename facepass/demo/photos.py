"""Distinct real-face photos made from the images that ship in installed packages
(``facepass/vision/shipped.py``: found and read there, re-exported here for the demo, the
tests and the benchmark)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from facepass.settings import Settings
from facepass.vision.faces import FaceEmbedder
from facepass.vision.images import BgrImage
from facepass.vision.shipped import insightface_images, load, packaged_image

__all__ = [
    "insightface_images",
    "jpeg",
    "load",
    "no_face_photo",
    "packaged_image",
    "single_face_crops",
    "variant",
]


def heic(image: BgrImage, quality: int = 90, orientation: int = 1) -> bytes:
    """HEIC bytes as a phone writes them (pillow-heif), optionally with an EXIF orientation
    (pillow-heif turns it into the file's own rotation on save)."""
    from PIL import Image
    from pillow_heif import register_heif_opener

    register_heif_opener()
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image[:, :, ::-1])).save(
        out, format="HEIF", quality=quality, exif=exif.tobytes()
    )
    return out.getvalue()


def jpeg(image: BgrImage, quality: int = 92) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


@dataclass(frozen=True, slots=True)
class SampleFace:
    source: str
    index: int
    image: BgrImage  # a crop that holds exactly this one face


def _crop(image: BgrImage, bbox: tuple[float, float, float, float], margin: float) -> BgrImage:
    x1, y1, x2, y2 = bbox
    w, h = x2 - x1, y2 - y1
    cx, cy, side = (x1 + x2) / 2, (y1 + y2) / 2, max(w, h) * (1 + 2 * margin)
    h_img, w_img = image.shape[:2]
    left, top = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    right, bottom = int(min(w_img, cx + side / 2)), int(min(h_img, cy + side / 2))
    crop = image[top:bottom, left:right]
    scale = 320 / max(crop.shape[:2])
    return np.asarray(cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC), np.uint8)


@lru_cache(maxsize=1)
def single_face_crops() -> tuple[SampleFace, ...]:
    """One crop per face of the group photos, kept only if the detector sees
    exactly one confident face in it (neighbours cut at the edge are dropped)."""
    embedder = FaceEmbedder(Settings()).load()
    faces: list[SampleFace] = [SampleFace("yaoming.jpg", 0, load("yaoming.jpg"))]
    for source in ("t1.jpg", "gdp.jpg", "players.jpg"):
        image = load(source)
        for i, face in enumerate(embedder.embed(image)):
            if face.det_score < 0.6:
                continue
            crop = _crop(image, face.bbox, margin=0.35)
            try:
                found = embedder.embed(crop)
            except Exception:
                continue
            if len(found) == 1 and found[0].det_score >= 0.6:
                faces.append(SampleFace(source, i, crop))
    return tuple(faces)


def no_face_photo() -> BgrImage:
    return load("mask_blue.jpg")


def variant(image: BgrImage, k: int) -> BgrImage:
    """A distinct but still natural version of a photo: flip, scale, light."""
    out = cv2.flip(image, 1) if k % 2 else image.copy()
    scale = 1.0 + 0.15 * ((k // 2) % 3)
    out = cv2.resize(out, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    gain = 0.85 + 0.1 * ((k // 6) % 4)
    result: BgrImage = np.clip(out.astype(np.float32) * gain, 0, 255).astype(np.uint8)
    return result
