"""The numbers one measured run produces."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RunResult:
    kind: str  # limit | seed_loop | pipeline | pipeline_rerun
    label: str
    photos: int  # photos processed in the timed part
    faces: int  # faces found (limit, seed loop) or embeddings stored (pipeline)
    seconds: float
    latency_ms: float | None = None
    extrapolated: bool = False  # measured on a sample of the session, rate applied to the whole
    session_photos: int = 0
    memory: dict[str, dict[str, float]] = field(default_factory=dict)
    load: dict[str, float] = field(default_factory=dict)  # bench.cpu.OtherLoad figures
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Short name: ``limit``, ``limit_actor_threads``, ``seed_loop@500ms``, ``pipeline@100ms``."""
        name = self.kind
        if self.extra.get("config") == "actor_threads":
            name += "_actor_threads"
        if self.latency_ms is not None:
            name += f"@{self.latency_ms:g}ms"
        return name

    @property
    def photos_per_s(self) -> float:
        return self.photos / self.seconds if self.seconds > 0 else 0.0

    @property
    def faces_per_s(self) -> float:
        return self.faces / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        out = {"key": self.key, **asdict(self)}
        out["photos_per_s"] = round(self.photos_per_s, 3)
        out["faces_per_s"] = round(self.faces_per_s, 3)
        out["seconds"] = round(self.seconds, 3)
        return out

    def line(self) -> str:
        where = f" @ {self.latency_ms:g} ms" if self.latency_ms is not None else ""
        text = (
            f"{self.label}{where}: {self.photos_per_s:.2f} photos/s, {self.faces_per_s:.2f} faces/s "
            f"({self.photos} photos, {self.faces} faces in {self.seconds:.1f} s)"
        )
        if self.load:
            text += f" [other processes busy: {self.load.get('other_cores', 0.0):.2f} cores]"
            split = {k.split(":", 1)[1]: v for k, v in self.load.items() if k.startswith("cores:")}
            if split:
                text += "\n  cores used: " + ", ".join(f"{k} {v:.2f}" for k, v in split.items())
        if self.extrapolated:
            text += (
                f" -- measured on a sample of {self.photos} of {self.session_photos} photos; "
                f"the whole session would take ~{self.session_photos / max(self.photos_per_s, 1e-9):.0f} s"
            )
        return text
