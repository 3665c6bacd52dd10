"""``make demo``: the seed's scenario end to end on embedded defaults.

Starts embedded PostgreSQL + pgvector, writes a cloud catalog with the seed's
session (13 real-face photos, 3 already indexed, one with no face, one missing
from storage), serves the photos over loopback HTTP, starts Ray and Serve,
and calls the route over HTTP twice, like the seed's curl.

``--s3`` (``make demo-s3``): the photos in a private bucket of a real S3-compatible server on
loopback (SeaweedFS, facepass/demo/s3server.py) instead, fetched with signed GETs; then a selfie
search whose answer carries presigned URLs, one of which is downloaded.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import httpx
import ray
from ray import serve

from facepass.db import resolve_databases
from facepass.demo import photos
from facepass.demo.s3server import LocalS3Server
from facepass.demo.scenario import build_seed_scenario
from facepass.demo.storage import PhotoStorage
from facepass.settings import Settings
from serve_app.ingress import build_app


def call_route(base_url: str, session_id: str, headers: dict[str, str]) -> dict[str, object]:
    url = f"{base_url}/api/v1/faces/force-reindex-session/{session_id}"
    key = ' -H "Authorization: Bearer $FACEPASS_API_KEY"' if headers else ""
    print(f"\n$ curl -X POST{key} {url}")
    response = httpx.post(url, headers=headers, timeout=600)
    body: dict[str, object] = response.json()
    time.sleep(1.5)  # the replica's log lines (streamed by Ray) print before the answer
    print(f"HTTP {response.status_code}")
    print(json.dumps(body, ensure_ascii=False, indent=2))
    return body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-cpus", type=int, default=None, help="logical CPUs for the local Ray")
    parser.add_argument("--s3", action="store_true", help="photos in a private bucket of a local S3 server")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()

    storage: PhotoStorage | LocalS3Server
    # Follow off: the demo shows the seed's call doing the work (13 found, 3 indexed, 10 processed);
    # with the follower on, it would have indexed the session before the call.
    if args.s3:
        storage = LocalS3Server().start()
        settings = resolve_databases(storage.settings(Settings(follow=False)))
        print(
            f"Embedded/configured databases ready; photos in the private bucket {storage.bucket!r} at "
            f"{storage.endpoint_url} (an unsigned GET gets 403)"
        )
    else:
        storage = PhotoStorage().start()
        settings = resolve_databases(Settings(storage_url=storage.url, follow=False))
        print(f"Embedded/configured databases ready; photos served at {storage.url}")
    scenario = build_seed_scenario(settings, storage)
    print(
        f"Cloud catalog: session {scenario.session_id}, {len(scenario.photos)} photos, "
        f"{len(scenario.preindexed)} already indexed locally"
    )

    # "local": always a fresh local cluster, never a stale address left by `ray start`.
    ray.init(address="local", namespace=settings.ray_namespace, num_cpus=args.num_cpus, log_to_driver=True)
    serve.start(http_options=settings.serve_http_options())
    serve.run(build_app(settings), name="facepass", route_prefix="/")
    base_url = f"http://{settings.http_host}:{settings.http_port}"
    try:
        first = call_route(base_url, str(scenario.session_id), settings.api_headers())
        print("\n--- second call: nothing new to index (only the 404 photo is retried: transient) ---")
        call_route(base_url, str(scenario.session_id), settings.api_headers())
        shown = (
            search_and_open(base_url, str(scenario.session_id), settings.api_headers()) if args.s3 else True
        )
    finally:
        _shutdown(settings)
        storage.close() if isinstance(storage, LocalS3Server) else storage.stop()
    print(f"\nDemo finished in {time.perf_counter() - started:.1f}s")
    ok = first.get("successful_photos") == 8 and first.get("failed_photos") == 2 and shown
    return 0 if ok else 1


def search_and_open(base_url: str, session_id: str, headers: dict[str, str]) -> bool:
    """A selfie search (one of the session's faces); its best match's presigned URL, opened."""
    url = f"{base_url}/api/v1/faces/search/{session_id}"
    print(f"\n$ curl -X POST -H 'Content-Type: image/jpeg' --data-binary @selfie.jpg {url}")
    selfie = photos.jpeg(photos.single_face_crops()[0].image)
    response = httpx.post(url, content=selfie, headers={"Content-Type": "image/jpeg", **headers}, timeout=120)
    body = response.json()
    matches = body.get("matches") or []
    expiry = body.get("photo_urls_expire_in_s")
    print(f"HTTP {response.status_code}: {len(matches)} photos, URLs valid {expiry} s")
    if not matches or not matches[0].get("photo_url"):
        print("no presigned URL in the answer")
        return False
    photo = httpx.get(matches[0]["photo_url"], timeout=30)
    name = matches[0]["filename"]
    print(f"GET <presigned URL of {name}> -> HTTP {photo.status_code}, {len(photo.content)} bytes")
    return photo.status_code == 200 and photo.content[:3] == b"\xff\xd8\xff"


def _shutdown(settings: Settings) -> None:
    from actors.ray_calls import kill_pool_actors

    serve.shutdown()  # type: ignore[no-untyped-call]
    kill_pool_actors(settings)
    ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
