"""How busy the rest of the machine was during a run (the benchmark's noise floor).

``other_cores`` = CPU time the whole machine spent busy, minus what this
benchmark's own processes used (the driver and all its descendants, i.e. the
Ray cluster it started, plus the embedded PostgreSQL), divided by wall time.
On a quiet machine it is ~0; 1.0 means another job held a whole core.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import TracebackType

import psutil

_PGDATA: list[Path] = []  # the embedded PostgreSQL of this benchmark, if any


def watch_postgres(pgdata: Path) -> None:
    """Count this PostgreSQL data folder's server as ours (not as other load)."""
    _PGDATA[:] = [pgdata]


def _postmaster_pid(pgdata: Path | None) -> int | None:
    if pgdata is None:
        return None
    try:
        return int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _own_cpu_s(pgdata: Path | None) -> tuple[dict[int, float], dict[int, str]]:
    """CPU seconds (own + reaped children) of every process of ours by pid, and the role of
    the ones that are not named by the caller: ``postgres``, ``profiler`` (py-spy)."""
    roots = [psutil.Process(os.getpid())]
    pg = _postmaster_pid(pgdata)
    if pg is not None:
        try:
            roots.append(psutil.Process(pg))
        except psutil.Error:
            pass
    seen: dict[int, float] = {}
    roles: dict[int, str] = {}
    for root in roots:
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for proc in procs:
            try:
                t = proc.cpu_times()
            except psutil.Error:
                continue
            seen[proc.pid] = t.user + t.system + t.children_user + t.children_system
            if root.pid == pg:
                roles[proc.pid] = "postgres"
            else:
                try:
                    if proc.name() == "py-spy":
                        roles[proc.pid] = "profiler"
                except psutil.Error:
                    pass
    return seen, roles


def _busy_s() -> float:
    t = psutil.cpu_times()
    idle = float(t.idle) + float(getattr(t, "iowait", 0.0))
    return float(sum(t)) - idle


class OtherLoad:
    """``with OtherLoad(names) as load: ...`` then ``load.other_cores``, ``load.own_cores`` and
    ``load.by_process`` (cores used by each named pid; ``postgres``; ``profiler`` for py-spy;
    ``rest`` for Ray's own processes, Serve's proxy and anything else of ours)."""

    def __init__(self, names: dict[str, int] | None = None, pgdata: Path | None = None) -> None:
        self.pgdata = pgdata or (_PGDATA[0] if _PGDATA else None)
        self.names = {pid: name for name, pid in (names or {}).items()}
        self.other_cores = 0.0
        self.own_cores = 0.0
        self.by_process: dict[str, float] = {}
        self._t0 = 0.0
        self._busy0 = 0.0
        self._own0: dict[int, float] = {}

    def __enter__(self) -> OtherLoad:
        self._own0, _ = _own_cpu_s(self.pgdata)
        self._busy0 = _busy_s()
        self._t0 = time.perf_counter()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        wall = max(time.perf_counter() - self._t0, 1e-9)
        busy = _busy_s() - self._busy0
        own_now, roles = _own_cpu_s(self.pgdata)
        own = 0.0
        by_process: dict[str, float] = {}
        for pid, cpu in own_now.items():
            used = max(0.0, cpu - self._own0.get(pid, 0.0))
            own += used
            name = self.names.get(pid) or roles.get(pid, "rest")
            by_process[name] = by_process.get(name, 0.0) + used / wall
        self.own_cores = own / wall
        self.other_cores = max(0.0, busy - own) / wall
        self.by_process = dict(sorted(by_process.items()))

    def figures(self) -> dict[str, float]:
        out = {"own_cores": round(self.own_cores, 2), "other_cores": round(self.other_cores, 2)}
        if self.names:
            out |= {f"cores:{name}": round(cores, 2) for name, cores in self.by_process.items()}
        return out
