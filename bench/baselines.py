"""(a) the limit: the bare model on bytes in memory; (b) the seed's sequential loop.

Both run in this process, one photo at a time, with ONNX Runtime on all cores
(the seed's FaceAnalysis default), before Ray is started.
"""

from __future__ import annotations

import os
import time
import uuid

import httpx

from bench.cpu import OtherLoad
from bench.data import LazyPhotoFiles
from bench.memory import RssSampler
from bench.results import RunResult
from facepass.builds import REFERENCE_VARIANT
from facepass.catalog.cloud import CloudCatalog
from facepass.demo.scenario import CatalogWriter
from facepass.errors import NoFaceDetected, PhotoError, PhotoNotFound, StorageUnavailable
from facepass.index.store import VectorStore
from facepass.index.trials import trial_store
from facepass.models import DetectedFace, PhotoRef, PhotoResult
from facepass.settings import Settings
from facepass.vision.faces import FaceEmbedder
from facepass.vision.images import UrlPolicy, decode_image
from facepass.vision.pipeline import model_batch_photos

CHUNK = 32  # photos built (untimed) before each timed stretch of the limit run


def make_embedder(settings: Settings, threads: int, **update: object) -> FaceEmbedder:
    """The model with ``threads`` intra-op threads (and any other setting, e.g. the runtime);
    its variant chosen as the service's actors choose it (the same record of this machine in
    the index database where the settings name one)."""
    configured = settings.model_copy(update={"ort_intra_op_threads": threads, **update})
    return FaceEmbedder(configured, trials=trial_store(configured)).load()


def faces_of(embedder: FaceEmbedder, data: bytes, max_pixels: int) -> list[DetectedFace]:
    try:
        return embedder.embed(decode_image(data, max_pixels))
    except NoFaceDetected:
        return []


def faces_of_photos(
    embedder: FaceEmbedder, datas: list[bytes], max_pixels: int, batch: int
) -> list[list[DetectedFace]]:
    """Decode + embed, ``batch`` photos per model call (1: one photo at a time, as an actor
    with model batching off does). The actor's default batch is ``model_batch_photos``."""
    if batch <= 1:
        return [faces_of(embedder, data, max_pixels) for data in datas]
    found: list[list[DetectedFace]] = []
    for start in range(0, len(datas), batch):
        images = [decode_image(data, max_pixels) for data in datas[start : start + batch]]
        found.extend(embedder.embed_batch(images))
    return found


def pack_label(embedder: FaceEmbedder) -> str:
    """``fp32`` for the reference build, else the variant's name."""
    return "fp32" if embedder.variant == REFERENCE_VARIANT else embedder.variant


def default_batch(embedder: FaceEmbedder) -> int:
    return model_batch_photos(embedder.settings)


def run_limit(
    files: LazyPhotoFiles,
    n: int,
    embedders: dict[str, FaceEmbedder],
    settings: Settings,
    batches: dict[str, int] | None = None,
    chunk_photos: int = CHUNK,
) -> tuple[dict[str, RunResult], list[list[DetectedFace]]]:
    """decode_image + FaceEmbedder.embed, sequential, on bytes already in memory.

    Photos are built (or read from the spool) in chunks outside the timed part,
    so memory stays flat at any N. Each chunk goes through every embedder in
    turn (e.g. all cores, and one actor's thread count), so that load from
    other processes on the machine hits all of them alike. Returns a run per
    embedder and the faces of each photo (from the first embedder): the
    precomputed results that the writer and orchestration benchmarks replay.
    """
    max_pixels = settings.max_image_pixels
    batch = {key: (batches or {}).get(key) or default_batch(e) for key, e in embedders.items()}
    for embedder in embedders.values():
        faces_of(embedder, files.photo(0), max_pixels)  # ONNX Runtime's first call is slow: not timed
    faces: list[list[DetectedFace]] = []
    first = next(iter(embedders))
    elapsed = dict.fromkeys(embedders, 0.0)
    cpu = dict.fromkeys(embedders, 0.0)  # CPU seconds of this process: less moved by other load
    found = dict.fromkeys(embedders, 0)
    with RssSampler({"driver": os.getpid()}) as memory, OtherLoad() as load:
        for start in range(0, n, chunk_photos):
            chunk = [files.photo(i) for i in range(start, min(n, start + chunk_photos))]
            for key, embedder in embedders.items():
                t0, c0 = time.perf_counter(), time.process_time()
                found_faces = faces_of_photos(embedder, chunk, max_pixels, batch[key])
                elapsed[key] += time.perf_counter() - t0
                cpu[key] += time.process_time() - c0
                found[key] += sum(len(f) for f in found_faces)
                if key == first:
                    faces.extend(found_faces)
    runs = {
        key: RunResult(
            kind="limit",
            label=(
                f"(a) limit: bare model {pack_label(embedder)}, 1 process, {embedder.threads} threads, "
                f"{batch[key]} photo(s) per call, bytes in memory"
            ),
            photos=n,
            faces=found[key],
            seconds=elapsed[key],
            session_photos=n,
            memory=memory.summary(),
            load=load.figures(),
            extra={
                "ort_threads": embedder.threads,
                "config": key,
                "model_name": embedder.model_name,
                "model_batch_photos": batch[key],
                "cpu_s": round(cpu[key], 3),
            },
        )
        for key, embedder in embedders.items()
    }
    return runs, faces


def _seed_photo(
    client: httpx.Client, policy: UrlPolicy, embedder: FaceEmbedder, photo: PhotoRef, settings: Settings
) -> PhotoResult:
    """One photo the seed's way: blocking download, decode, detect + embed."""
    result = PhotoResult(photo=photo, model_name=embedder.model_name)
    try:
        t0 = time.perf_counter()
        try:
            response = client.get(policy.url_for(photo.preview_path))
        except httpx.HTTPError as exc:
            raise StorageUnavailable(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code == 404:
            raise PhotoNotFound("404 Not Found")
        if response.status_code != 200:
            raise StorageUnavailable(f"{response.status_code} {response.reason_phrase}")
        t1 = time.perf_counter()
        result.download_ms = (t1 - t0) * 1000
        result.faces = embedder.embed(decode_image(response.content, settings.max_image_pixels))
        result.inference_ms = (time.perf_counter() - t1) * 1000
    except PhotoError as exc:
        result.fail(exc)
    return result


def run_seed_loop(
    settings: Settings,
    catalog_writer: CatalogWriter,
    names_paths: list[tuple[str, str]],
    embedder: FaceEmbedder,
    latency_ms: float,
    session_photos: int,
) -> RunResult:
    """The seed's loop into a fresh session: list, compare, then per photo download ->
    decode -> detect -> embed -> insert + commit (VectorStore.write_result)."""
    session_id = catalog_writer.add_session(f"bench seed loop {latency_ms:g}ms {uuid.uuid4().hex[:6]}")
    catalog_writer.add_photos(session_id, names_paths)
    catalog = CloudCatalog(settings.cloud_url())
    store = VectorStore(settings.local_url(), pool_size=1)
    policy = UrlPolicy.from_settings(settings)
    download_ms = inference_ms = write_ms = 0.0
    errors: dict[str, int] = {}
    faces = 0
    try:
        with (
            httpx.Client(timeout=settings.download_timeout_s, trust_env=False) as client,
            RssSampler({"driver": os.getpid()}) as memory,
            OtherLoad() as load,
        ):
            t0 = time.perf_counter()
            catalog.require_enabled_session(session_id)
            done = store.done_photo_ids(session_id)
            todo = [p for p in catalog.list_photos(session_id) if p.id not in done]
            for photo in todo:
                result = _seed_photo(client, policy, embedder, photo, settings)
                write_ms += store.write_result(result)
                faces += len(result.faces)
                download_ms += result.download_ms
                inference_ms += result.inference_ms
                if result.error_code and result.error_code != "no_face":
                    errors[result.error_code] = errors.get(result.error_code, 0) + 1
            elapsed = time.perf_counter() - t0
        stored = store.count_embeddings(session_id)
    finally:
        catalog.close()
        store.close()
    count = len(todo)
    return RunResult(
        kind="seed_loop",
        label=f"(b) seed loop: sync download, decode, embed, commit; {embedder.threads} ORT threads",
        photos=count,
        faces=faces,
        seconds=elapsed,
        latency_ms=latency_ms,
        extrapolated=count < session_photos,
        session_photos=session_photos,
        memory=memory.summary(),
        load=load.figures(),
        extra={
            "session_id": str(session_id),
            "embeddings_stored": stored,
            "errors": errors,
            "mean_download_ms": round(download_ms / max(count, 1), 1),
            "mean_inference_ms": round(inference_ms / max(count, 1), 1),
            "mean_write_ms": round(write_ms / max(count, 1), 1),
        },
    )
