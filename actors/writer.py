"""IndexWriter: the one actor that writes to the local index."""

from __future__ import annotations

import logging
import uuid

import ray

from facepass.errors import IndexCannotWrite
from facepass.index.store import PruneResult, VectorStore
from facepass.index.writer import GroupCommitter
from facepass.models import Fence, PhotoOutcome, PhotoResult
from facepass.settings import Settings
from facepass.wire import OutcomeBatch


@ray.remote
class IndexWriter:
    """Receives batches of results by ObjectRef straight from the embedding actors and
    group-commits them: whatever waits goes into the next transaction. Async actor:
    many callers queue at once; ``writer_transactions`` transactions at a time."""

    def __init__(self, settings: Settings) -> None:
        logging.basicConfig(level=logging.INFO)
        # A connection per transaction in flight, one more for prunes and pings.
        self.store = VectorStore(settings.local_url(), pool_size=settings.writer_transactions + 1)
        self.store.ready_schema(bool(settings.migrate_at_start))
        self.committer = GroupCommitter(
            self.store, settings.writer_max_batch_photos, settings.writer_transactions
        )

    async def write_batch(self, results: list[PhotoResult]) -> list[PhotoOutcome]:
        return OutcomeBatch(await self.committer.write(results))  # back as columns (facepass.wire)

    async def prune(
        self, session_id: uuid.UUID, photo_ids: list[uuid.UUID], fence: Fence | None = None
    ) -> PruneResult:
        return await self.committer.prune(session_id, photo_ids, fence)

    async def node_id(self) -> str:
        """Where it runs (tests and docs: the writer belongs on the head node)."""
        return str(ray.get_runtime_context().get_node_id())

    async def refusal(self) -> IndexCannotWrite | None:
        """Why the index cannot write now (a full disk met by the last write), else None."""
        return self.committer.refusal()

    async def ping(self) -> bool:
        self.store.ping()
        return True
