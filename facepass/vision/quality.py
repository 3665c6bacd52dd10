"""How usable a detected face is for search: cheap measures of its aligned crop and landmarks.

- ``sharpness``: the variance of the Laplacian of the aligned crop's grey levels. The crop is
  always the recognizer's size (112 x 112), so a face that was tiny in the photo is an upscaled,
  smooth crop and scores low, like a blurred one; a sharp face of any size scores high.
- ``yaw``: how far the nose sits from the middle of the eyes, along the line of the eyes, in
  eye distances (0 frontal; about +-0.5 and beyond in profile, where one eye hides).

Both are stored with every face row (``face_embeddings.sharpness`` / ``yaw``, migration 0008);
search leaves out faces below the gates (``Settings.quality_gates``), so a gate changes without
embedding anything again. The box's size (its shorter side in pixels) and the detector's score
are already in the row.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from facepass.vision.images import BgrImage


@dataclass(frozen=True, slots=True)
class Quality:
    sharpness: float
    yaw: float


def sharpness(crop: BgrImage) -> float:
    """The variance of the Laplacian of the crop's grey levels (higher: sharper)."""
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    _, std = cv2.meanStdDev(cv2.Laplacian(grey, cv2.CV_32F))
    return float(std[0, 0]) ** 2


def yaw(landmarks: npt.NDArray[np.float32]) -> float:
    """The nose's offset from the eyes' middle along the eye line, in eye distances (signed)."""
    left, right, nose = (np.asarray(landmarks[i], dtype=np.float64) for i in range(3))
    across = right - left
    distance = float(np.hypot(*across))
    if distance < 1e-6:
        return 0.0
    return float(np.dot(nose - (left + right) / 2, across) / distance**2)


def face_quality(crop: BgrImage, landmarks: npt.NDArray[np.float32]) -> Quality:
    return Quality(sharpness(crop), yaw(landmarks))
