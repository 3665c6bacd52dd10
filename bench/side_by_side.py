"""The ideal pool measured directly: one bare-model process per actor, all at once.

``pipeline_vs_ideal_pool`` multiplies one process's rate by the number of actors.
On this VM the two vCPUs are not always alike (the host's other tenants), so a
diagnostic beside it runs that many bare-model processes side by side on the same
photos (JPEG files of the spool, read into memory before the start) and adds up
their rates: what the machine's cores give the model at that moment, with no
Ray, no storage, no writer. A worker is ``python -m bench.side_by_side --worker``;
it reads file paths on stdin, prints "ready", waits for "go", prints its rate.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.baselines import default_batch, faces_of, faces_of_photos, make_embedder
from facepass.settings import Settings


def _worker(threads: int) -> int:
    settings = Settings()
    paths = [Path(p) for p in sys.stdin.readline().rstrip("\n").split("\t") if p]
    photos = [p.read_bytes() for p in paths]
    embedder = make_embedder(settings, threads)
    faces_of(embedder, photos[0], settings.max_image_pixels)  # ONNX Runtime's first call is slow
    print("ready", flush=True)
    sys.stdin.readline()  # "go"
    t0 = time.perf_counter()
    # The default configuration's model calls (the OpenVINO fast path batches photos), as an actor.
    faces_of_photos(embedder, photos, settings.max_image_pixels, default_batch(embedder))
    print(json.dumps({"photos": len(photos), "seconds": time.perf_counter() - t0}), flush=True)
    return 0


def run_side_by_side(paths: list[Path], processes: int, threads: int) -> list[float]:
    """photos/s of each of ``processes`` bare-model processes started together."""
    command = [sys.executable, "-m", "bench.side_by_side", "--worker", "--threads", str(threads)]
    workers = [
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    try:
        for w in workers:
            assert w.stdin is not None and w.stdout is not None
            w.stdin.write("\t".join(str(p) for p in paths) + "\n")
            w.stdin.flush()
        for w in workers:
            assert w.stdout is not None
            if w.stdout.readline().strip() != "ready":
                raise RuntimeError("a side-by-side bare-model worker did not start")
        for w in workers:
            assert w.stdin is not None
            w.stdin.write("go\n")
            w.stdin.flush()
        rates = []
        for w in workers:
            assert w.stdout is not None
            figures = json.loads(w.stdout.readline())
            rates.append(figures["photos"] / figures["seconds"])
        return rates
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
            w.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.side_by_side")
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if not args.worker:
        parser.error("run by bench.run; --worker only")
    return _worker(args.threads)


if __name__ == "__main__":
    sys.exit(main())
