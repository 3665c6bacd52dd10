"""``make demo-bulk``: the bulk job end to end on embedded defaults, through the real CLI.

Builds a catalog of several sessions of real faces in the embedded PostgreSQL (one
with FacePass off, one already indexed, one with a photo without a face and one
missing from storage), serves the photos over loopback HTTP, starts a local Ray head
the README's way (project's bin first on PATH, ``RAY_AUTH_MODE=token``, the
``FACEPASS_*`` settings in its environment so the job inherits them), runs

    ray job submit --working-dir . -- python -m jobs.reindex_all

so the job's progress bar and each session's seed-style lines stream here, stops the
head (also on failure) and ends with the summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

from facepass.db import resolve_databases
from facepass.demo import photos
from facepass.demo.scenario import (
    CatalogWriter,
    add_face_photos,
    fresh_database,
    index_locally,
    new_catalog_database,
    preview_path,
)
from facepass.demo.storage import PhotoStorage
from facepass.index.store import VectorStore
from facepass.settings import Settings
from jobs.local_head import VENV_BIN, LocalRayHead, project_env

REPO = Path(__file__).resolve().parents[1]
DEMO_CATALOG = "facepass_cloud_bulk_demo"
DEMO_INDEX = "facepass_vector_bulk_demo"


def build_catalog(settings: Settings, storage: PhotoStorage, per_session: int) -> tuple[str, str, uuid.UUID]:
    """Fresh demo databases (same every run); returns (catalog DSN, index DSN, inactive session)."""
    cloud_dsn, writer = new_catalog_database(settings, name=DEMO_CATALOG)
    local_dsn = fresh_database(settings, DEMO_INDEX)
    graduation = writer.add_session("Выпускной 11А")
    add_face_photos(writer, storage, graduation, per_session, prefix="grad_")
    storage.put(preview_path(graduation, "class_photo.jpg"), photos.jpeg(photos.load("t1.jpg")))
    writer.add_photos(graduation, [("class_photo.jpg", preview_path(graduation, "class_photo.jpg"))])
    wedding = writer.add_session("Свадьба Анны и Олега")
    add_face_photos(writer, storage, wedding, per_session, prefix="wed_")
    _add_troubled_photos(writer, storage, wedding)
    party = writer.add_session("Корпоратив")
    add_face_photos(writer, storage, party, per_session, prefix="party_")
    inactive = writer.add_session("Архив 2019 (FacePass выключен)", enabled=False)
    add_face_photos(writer, storage, inactive, per_session, prefix="old_")
    done = writer.add_session("Уже проиндексированная сессия")
    done_photos = add_face_photos(writer, storage, done, max(1, per_session // 2), prefix="done_")
    writer.close()
    store = VectorStore(local_dsn)
    store.create_schema()
    index_locally(settings.with_databases(local=local_dsn), store, done_photos)
    store.close()
    return cloud_dsn, local_dsn, inactive


def _add_troubled_photos(writer: CatalogWriter, storage: PhotoStorage, session_id: uuid.UUID) -> None:
    storage.put(preview_path(session_id, "no_face.jpg"), photos.jpeg(photos.no_face_photo()))
    writer.add_photos(
        session_id,
        [
            ("no_face.jpg", preview_path(session_id, "no_face.jpg")),
            ("missing_file.jpg", preview_path(session_id, "missing_file.jpg")),  # never uploaded
        ],
    )


def run(command: list[str], env: dict[str, str]) -> int:
    print(f"\n$ {shlex.join(command)}", flush=True)
    return subprocess.run(command, env=env, cwd=REPO, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos-per-session", type=int, default=6)
    parser.add_argument("--num-cpus", type=int, default=max(4, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()

    base = Settings()
    data_dir = base.data_dir.expanduser().resolve()
    storage = PhotoStorage().start()
    try:
        settings = resolve_databases(
            base.model_copy(update={"data_dir": data_dir, "storage_url": storage.url})
        )
        cloud_dsn, local_dsn, _ = build_catalog(settings, storage, args.photos_per_session)
        print(
            f"Catalog {DEMO_CATALOG}: 5 sessions (one with FacePass off, one already indexed), "
            f"photos of real faces served at {storage.url}"
        )
        summary = data_dir / "bulk-demo-summary.json"
        summary.unlink(missing_ok=True)
        # The job inherits the head's environment: settings go there, like a node's would.
        env = project_env(
            {
                "FACEPASS_CLOUD_DSN": cloud_dsn,
                "FACEPASS_LOCAL_DSN": local_dsn,
                "FACEPASS_STORAGE_URL": storage.url,
                "FACEPASS_DATA_DIR": str(data_dir),
                "RAY_DEDUP_LOGS": "0",
            }
            | ({"FACEPASS_EMBED_ACTORS": str(settings.embed_actors)} if settings.embed_actors else {})
        )
        print(f"\n$ RAY_AUTH_MODE=token PATH={VENV_BIN}:$PATH ray start --head --block ...  # free ports")
        with (data_dir / "bulk-demo-ray-head.log").open("w") as head_log:
            head = LocalRayHead.start(head_log, num_cpus=args.num_cpus, env=env)
            try:
                env = {**env, "RAY_ADDRESS": head.dashboard_url}
                entry = ["python", "-m", "jobs.reindex_all", "--summary-json", str(summary)]
                code = run(["ray", "job", "submit", "--working-dir", ".", "--", *entry], env)
            finally:
                head.stop()
    finally:
        storage.stop()
    return report(summary, code, time.perf_counter() - started)


def report(summary: Path, code: int, elapsed_s: float) -> int:
    """The last lines of the output: what the job did, read back from its summary JSON."""
    if not summary.exists():
        print(f"\nThe job wrote no summary (ray job submit exited with {code}).")
        return code or 1
    data = json.loads(summary.read_text())
    print("\n=== ИТОГ make demo-bulk ===")
    print(
        f"Сессий: {data['sessions_seen']} (обработано {data['sessions_done']}, уже полных "
        f"{data['sessions_complete']}, FacePass не активен {data['sessions_inactive']})"
    )
    print(
        f"Фото: всего {data['photos_total']}, пропущено {data['photos_skipped']}, обработано "
        f"{data['photos_processed']}, успешно {data['photos_successful']}, с ошибками {data['photos_failed']}"
    )
    print(f"Лиц проиндексировано: {data['faces_indexed']}; время задачи {data['elapsed_s']:.1f}s")
    print(f"Сводка: {summary}; демо целиком {elapsed_s:.1f}s")
    expected = (
        data["sessions_inactive"] == 1 and data["sessions_complete"] == 1 and data["photos_successful"] > 0
    )
    return code if code else (0 if expected else 1)


if __name__ == "__main__":
    sys.exit(main())
