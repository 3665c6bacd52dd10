"""IndexWriter: the one actor that writes to the local index."""

from __future__ import annotations

import logging
import time

import ray
import sqlalchemy.exc

from facepass.models import PhotoOutcome, PhotoResult
from facepass.settings import Settings
from facepass.store import VectorStore

log = logging.getLogger(__name__)


@ray.remote
class IndexWriter:
    """Receives results by ObjectRef straight from the embedding actors and commits
    each photo in one transaction. Sync actor: writes are serialized."""

    def __init__(self, settings: Settings) -> None:
        logging.basicConfig(level=logging.INFO)
        self.store = VectorStore(settings.local_dsn, pool_size=2)
        self.store.create_schema()

    def write(self, result: PhotoResult) -> PhotoOutcome:
        started = time.perf_counter()
        try:
            self.store.write_result(result)
        except sqlalchemy.exc.OperationalError as exc:
            # The server dropped the connection: the transaction rolled back, so
            # writing again is safe (and idempotent).
            log.warning("write of %s failed (%s); retrying once", result.photo.id, exc)
            self.store.engine.dispose()
            self.store.write_result(result)
        return PhotoOutcome.from_result(result, (time.perf_counter() - started) * 1000)

    def ping(self) -> bool:
        self.store.ping()
        return True
