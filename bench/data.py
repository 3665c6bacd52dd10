"""A synthetic photo session of N distinct real-face photos, built lazily and deterministically.

Every photo is a pure function of ``(seed, index)``: the JPEG for a path is made
when the storage is asked for it (with a small LRU cache), so N=10,000 or 40,000
photos cost no more memory than N=10. The faces are the real ones that ship in
the installed packages (``facepass.demo.photos``); the kinds of photo are

* ``no_face``: a mask_*.jpg variant, or a blurred background with nothing on it;
* ``single``: one face crop (flipped, scaled, re-lit), alone or on a background;
* ``group``: 2-5 face crops pasted onto a background canvas made from a
  blurred, scaled mask_*.jpg or a plain gradient;
* ``crowd``: a variant of a packaged group photo (t1: 6, gdp: 5, players: 22 faces).
"""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from facepass.demo import photos
from facepass.demo.storage import PhotoStorage
from facepass.vision.images import BgrImage

# Bump when the photos change: spooled JPEGs of another version are not reused.
DATA_VERSION = 1
# Shares of each kind of photo; the rest are groups.
NO_FACE_SHARE = 0.10
SINGLE_SHARE = 0.40
CROWD_SHARE = 0.06
JPEG_QUALITY = 85
CANVAS_SIZES = ((960, 640), (640, 960), (800, 600), (1024, 683))
_MASKS = ("mask_black.jpg", "mask_blue.jpg", "mask_green.jpg", "mask_white.jpg")
_CROWDS = ("t1.jpg", "gdp.jpg", "players.jpg")
_PATH = re.compile(r"photo_(\d{6,})\.jpg$")


@dataclass(frozen=True, slots=True)
class PhotoSpec:
    index: int
    kind: str  # no_face | single | group | crowd
    planted_faces: int  # faces put in on purpose (the detector may see a few more or less)


class _Sources:
    """The packaged images, loaded once per process."""

    @cached_property
    def crops(self) -> list[BgrImage]:
        return [face.image for face in photos.single_face_crops()]

    @cached_property
    def masks(self) -> list[BgrImage]:
        return [photos.load(name) for name in _MASKS]

    @cached_property
    def crowds(self) -> list[tuple[BgrImage, int]]:
        faces = {"t1.jpg": 6, "gdp.jpg": 5, "players.jpg": 22}
        return [(_fit(photos.load(name), 1024), faces[name]) for name in _CROWDS]


_SOURCES = _Sources()


def _fit(image: BgrImage, max_side: int) -> BgrImage:
    scale = max_side / max(image.shape[:2])
    if scale >= 1:
        return image
    return np.asarray(cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA), np.uint8)


def _relight(image: BgrImage, gain: float) -> BgrImage:
    return np.asarray(cv2.convertScaleAbs(image, alpha=gain, beta=0), np.uint8)


class SyntheticSession:
    """N photos; ``jpeg(i)`` builds photo i from ``(seed, i)`` alone."""

    def __init__(self, n: int, seed: int = 0, prefix: str = "bench") -> None:
        if n < 1:
            raise ValueError("a session needs at least one photo")
        self.n = n
        self.seed = seed
        self.prefix = f"{prefix}/seed{seed}"

    # --- names -------------------------------------------------------------------
    @staticmethod
    def filename(i: int) -> str:
        return f"photo_{i:06d}.jpg"

    def path(self, i: int) -> str:
        return f"{self.prefix}/{self.filename(i)}"

    def index_of(self, path: str) -> int | None:
        """The photo index of a storage path of this session, else None."""
        if not path.startswith(self.prefix + "/"):
            return None
        match = _PATH.search(path)
        if match is None:
            return None
        i = int(match.group(1))
        return i if 0 <= i < self.n and path == self.path(i) else None

    def names_paths(self, count: int | None = None) -> list[tuple[str, str]]:
        """(filename, preview_path) of the first ``count`` photos, for catalog rows."""
        return [(self.filename(i), self.path(i)) for i in range(min(count or self.n, self.n))]

    # --- content -----------------------------------------------------------------
    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, i])

    def spec(self, i: int) -> PhotoSpec:
        rng = self._rng(i)
        roll = float(rng.random())
        if roll < NO_FACE_SHARE:
            return PhotoSpec(i, "no_face", 0)
        if roll < NO_FACE_SHARE + SINGLE_SHARE:
            return PhotoSpec(i, "single", 1)
        if roll < NO_FACE_SHARE + SINGLE_SHARE + CROWD_SHARE:
            which = int(rng.integers(len(_CROWDS)))
            return PhotoSpec(i, "crowd", _SOURCES.crowds[which][1])
        return PhotoSpec(i, "group", int(rng.integers(2, 6)))

    def image(self, i: int) -> BgrImage:
        rng = self._rng(i)
        spec = self.spec(i)
        rng.random()  # the roll spec() used
        if spec.kind == "no_face":
            if rng.random() < 0.5:
                mask = _SOURCES.masks[int(rng.integers(len(_SOURCES.masks)))]
                return photos.variant(mask, int(rng.integers(24)))
            return self._canvas(rng)
        if spec.kind == "crowd":
            which = int(rng.integers(len(_CROWDS)))
            image, _ = _SOURCES.crowds[which]
            return self._trim(photos.variant(image, int(rng.integers(24))), rng, max_cut=0.04)
        if spec.kind == "single" and rng.random() < 0.5:
            crop = _SOURCES.crops[int(rng.integers(len(_SOURCES.crops)))]
            return self._trim(photos.variant(crop, int(rng.integers(24))), rng, max_cut=0.08)
        return self._group(rng, spec.planted_faces)

    def jpeg(self, i: int) -> bytes:
        return photos.jpeg(self.image(i), quality=JPEG_QUALITY)

    # --- building blocks -----------------------------------------------------------
    @staticmethod
    def _trim(image: BgrImage, rng: np.random.Generator, max_cut: float) -> BgrImage:
        """Cut a little off each edge (never the middle, where the faces are)."""
        h, w = image.shape[:2]
        cuts = rng.uniform(0, max_cut, size=4)
        top, bottom = int(h * cuts[0]), h - int(h * cuts[1])
        left, right = int(w * cuts[2]), w - int(w * cuts[3])
        return np.ascontiguousarray(image[top:bottom, left:right])

    @staticmethod
    def _canvas(rng: np.random.Generator) -> BgrImage:
        """A background: a blurred, scaled mask_*.jpg or a gradient. Built at 1/8 size, then scaled up."""
        w, h = CANVAS_SIZES[int(rng.integers(len(CANVAS_SIZES)))]
        small = (max(8, w // 8), max(8, h // 8))
        if rng.random() < 0.6:
            mask = _SOURCES.masks[int(rng.integers(len(_SOURCES.masks)))]
            if rng.random() < 0.5:
                mask = np.asarray(cv2.flip(mask, 1), np.uint8)
            shrunk = cv2.resize(mask, small, interpolation=cv2.INTER_AREA)
            blurred = np.asarray(cv2.GaussianBlur(shrunk, (0, 0), float(rng.uniform(1.0, 2.5))), np.uint8)
            background = _relight(blurred, float(rng.uniform(0.7, 1.2)))
        else:
            top, bottom = rng.integers(40, 230, size=(2, 3)).astype(np.float32)
            ramp = np.linspace(0.0, 1.0, small[1], dtype=np.float32)[:, None, None]
            gradient = top[None, None, :] * (1 - ramp) + bottom[None, None, :] * ramp
            noise = rng.normal(0, 6, size=(small[1], small[0], 1)).astype(np.float32)
            background = np.clip(gradient + noise, 0, 255).astype(np.uint8)
        return np.asarray(cv2.resize(background, (w, h), interpolation=cv2.INTER_CUBIC), np.uint8)

    def _group(self, rng: np.random.Generator, count: int) -> BgrImage:
        """``count`` face crops on a background, side by side in jittered slots, soft edges."""
        canvas = self._canvas(rng)
        h, w = canvas.shape[:2]
        crops = _SOURCES.crops
        picks = rng.choice(len(crops), size=count, replace=count > len(crops))
        cols = count if count <= 3 or w < h else (count + 1) // 2
        rows = (count + cols - 1) // cols
        slot_w, slot_h = w / cols, h / rows
        for k, pick in enumerate(picks):
            face = crops[int(pick)]
            if rng.random() < 0.5:
                face = np.asarray(cv2.flip(face, 1), np.uint8)
            side = max(96, int(min(slot_w, slot_h) * rng.uniform(0.7, 0.95)))
            resized = np.asarray(cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA), np.uint8)
            face = _relight(resized, float(rng.uniform(0.75, 1.25)))
            row, col = divmod(k, cols)
            x0 = int(col * slot_w + rng.uniform(0, max(0.0, slot_w - side)))
            y0 = int(row * slot_h + rng.uniform(0, max(0.0, slot_h - side)))
            x0, y0 = min(x0, w - side), min(y0, h - side)
            alpha = _soft_mask(side)
            region = canvas[y0 : y0 + side, x0 : x0 + side].astype(np.float32)
            blended = region + (face.astype(np.float32) - region) * alpha
            canvas[y0 : y0 + side, x0 : x0 + side] = blended.astype(np.uint8)
        return canvas


_MASK_CACHE: dict[int, npt.NDArray[np.float32]] = {}


def _soft_mask(side: int) -> npt.NDArray[np.float32]:
    """An ellipse with a feathered edge: the crop's corners fade into the background."""
    mask = _MASK_CACHE.get(side)
    if mask is None:
        yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
        c = (side - 1) / 2
        r = np.sqrt(((xx - c) / (side * 0.5)) ** 2 + ((yy - c) / (side * 0.5)) ** 2)
        mask = np.clip((1.0 - r) / 0.15, 0.0, 1.0)[:, :, None]
        if len(_MASK_CACHE) < 256:
            _MASK_CACHE[side] = mask
    return mask


class LazyPhotoFiles(MutableMapping[str, bytes]):
    """``PhotoStorage.files`` that builds a session's JPEG on request.

    Paths of the session resolve to generated bytes; a small thread-safe LRU
    keeps the most recent ones. With ``spool_dir`` every JPEG is also written
    there once and read back afterwards, so that timed runs do not pay for
    building photos on the machine's cores (``prepare()`` fills it untimed).
    Anything ``put`` explicitly is kept as is; a removed session path answers
    404 like a missing file.
    """

    def __init__(
        self, session: SyntheticSession, cache_size: int = 64, spool_dir: Path | None = None
    ) -> None:
        self.session = session
        self.cache_size = cache_size
        self.spool_dir = spool_dir
        self.generated = 0  # JPEGs built (neither cached nor spooled)
        self._extra: dict[str, bytes] = {}
        self._removed: set[str] = set()
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()
        if spool_dir is not None:
            spool_dir.mkdir(parents=True, exist_ok=True)

    def _spool_path(self, i: int) -> Path | None:
        if self.spool_dir is None:
            return None
        return self.spool_dir / f"v{DATA_VERSION}-seed{self.session.seed}-{i:07d}.jpg"

    def _build(self, i: int) -> bytes:
        spooled = self._spool_path(i)
        if spooled is not None and spooled.is_file():
            return spooled.read_bytes()
        data = self.session.jpeg(i)  # outside the lock: builds run in parallel (cv2 drops the GIL)
        with self._lock:
            self.generated += 1
        if spooled is not None:
            tmp = spooled.with_name(f"{spooled.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(spooled)
        return data

    def spooled(self, count: int) -> list[Path] | None:
        """Files of the first ``count`` photos, if they are all spooled."""
        paths = [self._spool_path(i) for i in range(min(count, self.session.n))]
        if any(p is None or not p.is_file() for p in paths):
            return None
        return [p for p in paths if p is not None]

    def photo(self, i: int) -> bytes:
        with self._lock:
            data = self._cache.get(i)
            if data is not None:
                self._cache.move_to_end(i)
                return data
        data = self._build(i)
        with self._lock:
            self._cache[i] = data
            self._cache.move_to_end(i)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return data

    def prepare(self, count: int) -> int:
        """Spool the first ``count`` photos (no-op without a spool); returns how many were built."""
        if self.spool_dir is None:
            return 0
        before = self.generated
        for i in range(min(count, self.session.n)):
            spooled = self._spool_path(i)
            if spooled is not None and not spooled.is_file():
                self._build(i)
        return self.generated - before

    def __getitem__(self, path: str) -> bytes:
        if path in self._extra:
            return self._extra[path]
        i = self.session.index_of(path)
        if i is None or path in self._removed:
            raise KeyError(path)
        return self.photo(i)

    def __setitem__(self, path: str, data: bytes) -> None:
        self._removed.discard(path)
        self._extra[path] = data

    def __delitem__(self, path: str) -> None:
        if path in self._extra:
            del self._extra[path]
        elif self.session.index_of(path) is not None and path not in self._removed:
            self._removed.add(path)
        else:
            raise KeyError(path)

    def __contains__(self, path: object) -> bool:
        if not isinstance(path, str):
            return False
        if path in self._extra:
            return True
        return self.session.index_of(path) is not None and path not in self._removed

    def __iter__(self) -> Iterator[str]:
        yield from self._extra
        for i in range(self.session.n):
            path = self.session.path(i)
            if path not in self._removed and path not in self._extra:
                yield path

    def __len__(self) -> int:
        return sum(1 for _ in self)


class SyntheticStorage(PhotoStorage):
    """The loopback photo server (latency and bandwidth cap included) over a lazy session."""

    def __init__(
        self,
        session: SyntheticSession,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_s: float = 0.0,
        bytes_per_s: float = 0.0,
        cache_size: int = 64,
        spool_dir: Path | None = None,
    ) -> None:
        super().__init__(host=host, port=port, latency_s=latency_s, bytes_per_s=bytes_per_s)
        self.lazy_files = LazyPhotoFiles(session, cache_size, spool_dir)
        # Unspooled photos are built on request (cv2, tens of ms): looked up off the server's loop.
        self.lookups_block = spool_dir is None
        # PhotoStorage types ``files`` as a dict; its server only calls ``.get``.
        self.files = self.lazy_files  # type: ignore[assignment]
