"""photos/s of one GPU with photos batched through the model and without, per model pack.

    make bench-gpu                       # the default pack, batches 1, 4, 8, 16
    python -m bench.gpu --packs model,buffalo_l --batches 1,8,16,32 --n 400

Run on a GPU node (the `gpu` extra installed: `uv sync --extra gpu`). The photos
are the bench's synthetic session (real faces, 0-22 per photo), decoded before
the timed part: on a GPU cluster decoder actors do that on CPU cores, so this
is what one GPU embedding actor can take. Each batch size runs the same photos;
the sizes run in turn, chunk by chunk, so drift hits all of them alike. Without
a GPU it says so and measures the CPU fallback (not a GPU figure). It has not
run on a GPU here (the development machine has none).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from bench.data import SyntheticSession
from facepass.settings import Settings
from facepass.vision.faces import FaceEmbedder
from facepass.vision.images import BgrImage, decode_image

CHUNK = 64


def measure(settings: Settings, images: list[BgrImage], batches: list[int]) -> dict[str, Any]:
    embedder = FaceEmbedder(settings.model_copy(update={"gpus_per_actor": 1.0})).load()
    embedder.embed_batch(images[: max(batches)])  # CUDA's first calls build kernels: not timed
    elapsed = dict.fromkeys(batches, 0.0)
    faces = dict.fromkeys(batches, 0)
    for start in range(0, len(images), CHUNK):
        chunk = images[start : start + CHUNK]
        for batch in batches:
            t0 = time.perf_counter()
            for at in range(0, len(chunk), batch):
                faces[batch] += sum(len(f) for f in embedder.embed_batch(chunk[at : at + batch]))
            elapsed[batch] += time.perf_counter() - t0
    rates = {b: len(images) / elapsed[b] for b in batches}
    return {
        "model_name": embedder.model_name,
        "providers_active": embedder.active_providers,
        "on_gpu": "CUDAExecutionProvider" in embedder.active_providers,
        "photos": len(images),
        "faces": faces[batches[0]],
        "photos_per_s_by_batch": {str(b): round(r, 2) for b, r in rates.items()},
        "batched_vs_one_by_one": {str(b): round(r / rates[batches[0]], 3) for b, r in rates.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__)
    parser.add_argument("--n", type=int, default=400, help="photos (default 400)")
    parser.add_argument("--batches", default="1,4,8,16", help="photos per model call; the first is the base")
    parser.add_argument(
        "--packs", default="", help="model pack names under FACEPASS_MODEL_ROOT (default: the settings')"
    )
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    base = Settings()
    packs = [p for p in args.packs.split(",") if p.strip()] or [base.model_name]
    session = SyntheticSession(args.n)
    images = [decode_image(session.jpeg(i), base.max_image_pixels) for i in range(args.n)]
    results = []
    for pack in packs:
        figures = measure(Settings(model_name=pack), images, batches)
        results.append(figures)
        where = "per GPU" if figures["on_gpu"] else "on the CPU fallback (no GPU found: NOT a GPU figure)"
        rates = ", ".join(f"batch {b}: {r} photos/s" for b, r in figures["photos_per_s_by_batch"].items())
        print(f"{figures['model_name']} {where}: {rates}", flush=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
