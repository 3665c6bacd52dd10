"""The writer alone: precomputed results of the bench's photo mix into the production schema.

Real faces from the limit run (0 to 22 per photo) are replayed as ``PhotoResult``
batches the way the embedding actors send them (``actor_batch_photos`` per call,
many calls at once) through ``GroupCommitter`` -> ``VectorStore.write_results``:
the code the ``IndexWriter`` actor runs, without Ray. The seed's way (one
transaction per photo, ``write_result``) runs on a sample for the ratio.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from typing import Any

from facepass.index.store import VectorStore
from facepass.index.writer import GroupCommitter
from facepass.models import DetectedFace, PhotoRef, PhotoResult


def _results(
    faces: list[list[DetectedFace]], count: int, model_name: str
) -> tuple[uuid.UUID, list[PhotoResult]]:
    session_id = uuid.uuid4()
    results = []
    for i, photo_faces in zip(range(count), itertools.cycle(faces), strict=False):
        ref = PhotoRef(uuid.uuid4(), session_id, f"w{i:06d}.jpg", f"bench/writer/w{i:06d}.jpg")
        result = PhotoResult(photo=ref, model_name=model_name, faces=list(photo_faces))
        if not photo_faces:
            result.error_code, result.error_message = "no_face", f"Лицо не обнаружено в фото {ref.filename}"
        results.append(result)
    return session_id, results


def run_writer(
    store: VectorStore,
    faces: list[list[DetectedFace]],
    model_name: str,
    *,
    photos: int = 6000,
    batch_photos: int = 4,
    callers: int = 48,
    max_batch_photos: int = 256,
    transactions: int = 1,
    per_photo_sample: int = 300,
) -> tuple[dict[str, Any], list[uuid.UUID]]:
    """Photos/s of the group-committing writer and of one transaction per photo."""
    session_id, results = _results(faces, photos, model_name)
    batches = [results[i : i + batch_photos] for i in range(0, len(results), batch_photos)]

    async def replay() -> GroupCommitter:
        committer = GroupCommitter(store, max_batch_photos, transactions)
        queue = iter(batches)

        async def caller() -> None:  # an embedding actor's calls, one after another
            for batch in queue:
                outcomes = await committer.write(batch)
                bad = [o for o in outcomes if o.error_code not in (None, "no_face")]
                if bad:
                    raise RuntimeError(f"writer bench: {bad[0].error_message}")

        await asyncio.gather(*(caller() for _ in range(callers)))
        committer.close()
        return committer

    t0 = time.perf_counter()
    committer = asyncio.run(replay())
    elapsed = time.perf_counter() - t0
    n_faces = sum(len(r.faces) for r in results)
    stored = store.count_embeddings(session_id)
    if stored != n_faces:
        raise RuntimeError(f"writer bench stored {stored} faces of {n_faces}")

    one_by_one_session, sample = _results(faces, per_photo_sample, model_name)
    t1 = time.perf_counter()
    for result in sample:
        store.write_result(result)
    per_photo_s = time.perf_counter() - t1
    figures = {
        "writer_photos_per_s": round(photos / elapsed, 1),
        "writer_faces_per_s": round(n_faces / elapsed, 1),
        "writer_photos": photos,
        "writer_faces": n_faces,
        "writer_transactions": committer.transactions,
        "writer_photos_per_transaction": round(photos / max(1, committer.transactions), 1),
        "writer_batch_photos": batch_photos,
        "writer_callers": callers,
        "writer_transactions_in_flight": transactions,
        "writer_one_transaction_per_photo_photos_per_s": round(per_photo_sample / per_photo_s, 1),
    }
    figures["writer_vs_one_transaction_per_photo"] = round(
        figures["writer_photos_per_s"] / figures["writer_one_transaction_per_photo_photos_per_s"], 2
    )
    return figures, [session_id, one_by_one_session]
