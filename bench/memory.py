"""Peak resident memory of processes, sampled by a background thread during a run."""

from __future__ import annotations

import resource
import sys
import threading
from types import TracebackType

import psutil

MB = 1024 * 1024


def driver_maxrss_mb() -> float:
    """Peak RSS of this process over its whole life (getrusage; KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MB if sys.platform == "darwin" else peak / 1024


class RssSampler:
    """``with RssSampler({"driver": os.getpid(), ...}) as s: ...`` then ``s.peak_mb``.

    Samples every ``interval_s``; a process that goes away is simply no longer sampled.
    """

    def __init__(self, pids: dict[str, int], interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self._procs: dict[str, psutil.Process] = {}
        for name, pid in pids.items():
            try:
                self._procs[name] = psutil.Process(pid)
            except psutil.Error:
                continue
        self.start_mb: dict[str, float] = {}
        self.peak_mb: dict[str, float] = {}
        self.end_mb: dict[str, float] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-rss", daemon=True)

    def _read(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, proc in self._procs.items():
            try:
                out[name] = proc.memory_info().rss / MB
            except psutil.Error:
                continue
        return out

    def _sample(self) -> dict[str, float]:
        now = self._read()
        for name, mb in now.items():
            self.peak_mb[name] = max(self.peak_mb.get(name, 0.0), mb)
        self.samples += 1
        return now

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> RssSampler:
        self.start_mb = self._sample()
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.end_mb = self._sample()

    def summary(self) -> dict[str, dict[str, float]]:
        return {
            name: {
                "start_mb": round(self.start_mb.get(name, 0.0), 1),
                "peak_mb": round(peak, 1),
                "end_mb": round(self.end_mb.get(name, 0.0), 1),
            }
            for name, peak in sorted(self.peak_mb.items())
        }
