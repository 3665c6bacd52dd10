"""``--profile``: sample the pipeline's processes with py-spy while a run goes on.

py-spy (installed with Ray) attaches to a running process without changing
it. One recorder per process writes collapsed stacks ("raw" format, one
``frame;frame;... count`` line per stack) into the output folder; the summary
lists the frames that took the most samples (on-CPU only: idle threads are not
sampled).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import TracebackType


def py_spy() -> str | None:
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.is_file() else shutil.which("py-spy")


def top_frames(path: Path, limit: int = 8) -> dict[str, object]:
    """Samples, and the frames with the most samples: on top of the stack (self) and anywhere (total)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {"samples": 0}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    pct = 100.0 / max(samples, 1)
    return {
        "samples": samples,
        "self_pct": {frame: round(n * pct, 1) for frame, n in own.most_common(limit)},
        "total_pct": {
            frame: round(n * pct, 1)
            for frame, n in total.most_common(400)
            if "facepass/" in frame or "actors/" in frame
        },
    }


class SpyRecorder:
    """``with SpyRecorder({"embedder-0": pid, ...}, out_dir, "pipeline@100ms") as spy: ...``"""

    def __init__(self, pids: dict[str, int], out_dir: Path, tag: str, rate: int = 50) -> None:
        self.pids = pids
        self.out_dir = out_dir
        self.tag = tag.replace("@", "-")
        self.rate = rate
        self.files: dict[str, Path] = {}
        self._procs: list[subprocess.Popen[bytes]] = []
        self.exe = py_spy()

    def __enter__(self) -> SpyRecorder:
        if self.exe is None:
            print("note: py-spy not found; --profile records nothing")
            return self
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in self.pids.items():
            out = self.out_dir / f"profile-{self.tag}-{name}.txt"
            command = [self.exe, "record", "--pid", str(pid), "--rate", str(self.rate)]
            command += ["--format", "raw", "--output", str(out), "--nonblocking"]
            self._procs.append(
                subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
            self.files[name] = out
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for proc in self._procs:  # py-spy writes its file on SIGINT
            proc.send_signal(signal.SIGINT)
        for proc in self._procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def summary(self) -> dict[str, dict[str, object]]:
        return {name: top_frames(path) | {"file": str(path)} for name, path in self.files.items()}
