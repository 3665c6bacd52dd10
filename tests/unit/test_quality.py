"""Face quality measures (facepass/vision/quality.py) on real photos, as the embedder records them."""

from __future__ import annotations

import cv2
import numpy as np

from facepass.demo import photos
from facepass.settings import Settings
from facepass.vision.faces import FaceEmbedder
from facepass.vision.quality import sharpness, yaw


def test_a_blurred_crop_is_less_sharp_and_a_turned_face_has_yaw() -> None:
    crop = cv2.resize(photos.load("yaoming.jpg"), (112, 112))
    assert sharpness(cv2.GaussianBlur(crop, (0, 0), 2.0)) < sharpness(crop) / 4
    eyes = [[40.0, 50.0], [72.0, 50.0]]
    assert yaw(np.array([*eyes, [56.0, 70.0], [44, 90], [68, 90]], np.float32)) == 0.0
    right = yaw(np.array([*eyes, [72.0, 70.0], [44, 90], [68, 90]], np.float32))
    assert right == 0.5 and yaw(np.array([*eyes, [40.0, 70.0], [44, 90], [68, 90]], np.float32)) == -0.5
    assert yaw(np.zeros((5, 2), np.float32)) == 0.0  # no eye distance: no yaw, no error


def test_the_embedder_measures_every_face_and_tiny_blurred_ones_score_low(embedder: FaceEmbedder) -> None:
    [faces] = embedder.embed_batch([photos.load("players.jpg")])
    assert len(faces) == 22 and all(f.sharpness is not None and f.yaw is not None for f in faces)
    gates = Settings().quality_gates()
    big = [f for f in faces if f.bbox[3] - f.bbox[1] > 35]
    small = [f for f in faces if f.bbox[3] - f.bbox[1] < 24]
    assert big and small
    # The team's faces (~40 px) pass the default gates; the smallest background ones do not.
    assert all(gates.passes(f) for f in big)
    assert not any(gates.passes(f) for f in small)
    # The same photo blurred: its faces' sharpness drops below the gate.
    [blurred] = embedder.embed_batch([cv2.GaussianBlur(photos.load("players.jpg"), (0, 0), 3.0)])
    assert all((f.sharpness or 0) < gates.min_sharpness for f in blurred)
