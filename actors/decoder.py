"""ImageDecoderActor: fetch + decode on CPU, for clusters where GPU actors only run the model."""

from __future__ import annotations

import asyncio
import logging

import ray

from facepass.models import PhotoRef
from facepass.settings import Settings
from facepass.vision.pipeline import DecodedPhoto, ImageLoader


@ray.remote
class ImageDecoderActor:
    """Async actor: many downloads in flight, decoding on one thread per CPU it holds.
    The decoded image goes to an embedding actor by ObjectRef (shared memory on one node)."""

    def __init__(self, settings: Settings) -> None:
        logging.basicConfig(level=logging.INFO)
        logging.getLogger("httpx").setLevel(logging.WARNING)
        self.loader = ImageLoader(settings, decode_threads=max(1, int(settings.cpus_per_decoder)))

    async def load_batch(self, photos: list[PhotoRef]) -> list[DecodedPhoto]:
        return list(await asyncio.gather(*(self.loader.load(photo) for photo in photos)))

    async def ping(self) -> bool:
        return True
