"""The gate a build must pass to write into its weights' generation (issue 30).

A generation is a set of weights (``ModelPack.name``); any build of them (runtime, precision,
device: ``variant_name``) may write into it only if its vectors stand in for the reference
build's (ONNX Runtime fp32 on the CPU) on the accuracy gate's real faces: 0 faces missed or
added, embedding cosine p1 >= 0.998, the selfie's identity kept, and a top-20 order that only
swaps near-ties (score gap < 0.01). That is stricter than the reporting gate (p1 >= 0.98).

It runs when a non-reference build loads. A verdict is kept on disk per weights, build, CPU
(model and flags) and runtime versions (``FACEPASS_GATE_CACHE_DIR``, default
``~/.cache/facepass/accuracy-gate``), under a file lock: a machine measures each build once,
its other processes read the verdict. The measurement loads the reference build beside it
(about 13 s on a 2-core AMD EPYC, AVX2, for the packaged pack).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facepass.settings import Settings
from facepass.vision import accuracy

if TYPE_CHECKING:
    from facepass.vision.faces import FaceEmbedder

log = logging.getLogger(__name__)

SHARE_MIN_COSINE_P1 = 0.998
SHARE_MAX_SWAP_GAP = 0.01
REFERENCE_VARIANT = "onnxruntime-fp32/cpu"
_GATE_VERSION = 1  # a change of the gate's photos or rules measures every build again


def shares_generation(report: accuracy.AccuracyReport) -> bool:
    return (
        report.faces_missed == 0
        and report.extra_faces == 0
        and report.embedding_cos_p1 >= SHARE_MIN_COSINE_P1
        and report.identity_kept
        and report.top20_swap_max_gap < SHARE_MAX_SWAP_GAP
    )


def reference_settings(settings: Settings) -> Settings:
    """The reference build of the same pack: ONNX Runtime fp32 on the CPU."""
    return Settings.model_validate(
        {
            **settings.model_dump(),
            "model_runtime": "onnxruntime",
            "gpus_per_actor": 0,
            "openvino_detector": False,
        }
    )


@dataclass(frozen=True, slots=True)
class GateVerdict:
    generation: str
    variant: str
    passed: bool
    report: dict[str, Any]
    cached: bool = False

    def summary(self) -> str:
        r = self.report
        return (
            f"cosine p1 {r['embedding_cos_p1']} (>= {SHARE_MIN_COSINE_P1}), faces missed "
            f"{r['faces_missed']}, extra {r['extra_faces']}, identity kept {r['identity_kept']}, "
            f"top-20 swap gap {r['top20_swap_max_gap']} (< {SHARE_MAX_SWAP_GAP})"
        )

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def machine_key() -> str:
    """The CPU's model name and flags (a build's vectors depend on the instructions it uses)."""
    model = flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not model:
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = " ".join(sorted(value.split()))
                if model and flags:
                    break
    except OSError:
        model = platform.processor() or platform.machine()
    return f"{model}|{hashlib.sha256(flags.encode()).hexdigest()[:16]}"


def _versions() -> list[str]:
    import onnxruntime
    import openvino

    return [onnxruntime.__version__, openvino.__version__]


def verdict_path(embedder: FaceEmbedder, cache_dir: Path | None = None) -> Path:
    """Where the verdict on the embedder's build is kept: one file per weights, build, CPU and
    runtime versions."""
    default = Path.home() / ".cache" / "facepass" / "accuracy-gate"
    folder = cache_dir or embedder.settings.gate_cache_dir or default
    identity = [_GATE_VERSION, embedder.model_name, embedder.variant, machine_key(), *_versions()]
    return folder / f"{hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:20]}.json"


def gate(embedder: FaceEmbedder, cache_dir: Path | None = None) -> GateVerdict:
    """The verdict for the embedder's build of its weights: from the cache, else measured
    against the reference build (and cached)."""
    from facepass.vision.faces import FaceEmbedder

    path = verdict_path(embedder, cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one process of the machine measures, the others wait
        try:
            if path.is_file():
                saved = json.loads(path.read_text())
                return GateVerdict(**{**saved, "cached": True})
            reference = FaceEmbedder(reference_settings(embedder.settings)).load()
            report = accuracy.compare(reference.embed_batch, embedder.embed_batch)
            passed = shares_generation(report)
            verdict = GateVerdict(embedder.model_name, embedder.variant, passed, asdict(report))
            partial = path.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(json.dumps(verdict.as_json()))
            partial.replace(path)
            return verdict
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
