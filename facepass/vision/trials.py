"""Where the measured builds of a machine are kept: the sharing gate's verdicts and the timings.

A record per machine (the CPU's model and flags, or the GPU's model), runtime versions and
weights (``ModelPack.weights``: the files' names and hash, not the pack folder's name, so a pack
copied under another name is not measured again): ``{"timings_ms": {"detector": {build: ms}, "recognizer":
{...}}, "gates": {variant: verdict}, "choice": variant}``. A restart, or another actor on the
same kind of machine, reads it instead of measuring again; another runtime version or other
weights make another key, measured afresh. Two stores: the index database (``model_trials``,
``facepass/index/trials.py``: what actors use) and a folder (``FileTrialStore``: processes
without an index database, e.g. the bare-model benchmark), both under a lock per key, so that
one process measures and the others wait for its record.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from facepass.settings import Settings

# A change of the gate's photos or rules, of the candidate builds or of the timing sample
# measures every machine again.
TRIALS_VERSION = 3  # 3: keyed by the pack's weights, not its generation's name
Record = dict[str, Any]
Change = Callable[[Record | None], Record | None]


@dataclass(frozen=True, slots=True)
class TrialKey:
    machine: str
    runtimes: str
    weights: str  # ModelPack.weights
    version: int = TRIALS_VERSION

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:20]


class TrialStore(Protocol):
    where: str  # said in the log line at load

    def update(self, key: TrialKey, change: Change) -> Record | None:
        """Under the key's lock: ``change(kept record or None)``; a record it returns is kept
        (and returned), None keeps the old one (returned)."""
        ...


def default_cache_dir(settings: Settings) -> Path:
    return settings.gate_cache_dir or Path.home() / ".cache" / "facepass" / "accuracy-gate"


class FileTrialStore:
    """One JSON file per key in a folder, under an ``fcntl`` lock."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.where = f"folder {folder}"

    def path(self, key: TrialKey) -> Path:
        return self.folder / f"trials-{key.digest()}.json"

    def update(self, key: TrialKey, change: Change) -> Record | None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one process of the machine measures, the others wait
            try:
                kept: Record | None = json.loads(path.read_text()) if path.is_file() else None
                new = change(kept)
                if new is None:
                    return kept
                partial = path.with_suffix(f".{os.getpid()}.tmp")
                partial.write_text(json.dumps(new))
                partial.replace(path)
                return new
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
