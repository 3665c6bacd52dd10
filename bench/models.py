"""The bare models side by side in one process: the fp32 pack against the CPU fast path,
one photo per call and batched, on the same photos; and the fast path's accuracy gate.

Each chunk of photos goes through the four configurations in turn (as ``run_limit``
does), so load from other processes on the machine hits all of them alike. Every
configuration runs with one actor's thread count: the same process setup.
"""

from __future__ import annotations

from typing import Any

from bench.baselines import make_embedder, pack_label, run_limit
from bench.data import LazyPhotoFiles
from bench.results import RunResult
from facepass.settings import Settings
from facepass.vision import accuracy
from facepass.vision.faces import FaceEmbedder
from facepass.vision.pipeline import model_batch_photos


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def run_model_comparison(
    files: LazyPhotoFiles, n: int, settings: Settings, threads: int
) -> tuple[list[RunResult], dict[str, Any], FaceEmbedder, FaceEmbedder]:
    """photos/s of fp32 and of the default CPU pack, each one by one and batched."""
    fp32 = make_embedder(settings, threads, model_runtime="onnxruntime")
    fast = make_embedder(settings, threads)  # the default configuration of a CPU actor
    batch = max(2, settings.actor_batch_photos)
    embedders = {"fp32": fp32, "fp32_batched": fp32, "fast": fast, "fast_batched": fast}
    batches = {"fp32": 1, "fp32_batched": batch, "fast": 1, "fast_batched": batch}
    # Small chunks (two batches), each through the four in turn: other load hits all alike.
    runs, _ = run_limit(files, n, embedders, settings, batches, chunk_photos=2 * batch)
    for key, run in runs.items():
        run.kind = f"model_{key}"
    rate = {key: run.photos_per_s for key, run in runs.items()}
    per_cpu_s = {key: run.photos / run.extra["cpu_s"] for key, run in runs.items() if run.extra["cpu_s"]}
    fast_default = rate["fast_batched"] if model_batch_photos(fast.settings) > 1 else rate["fast"]
    choice = fast.choice.as_json() if fast.choice else {}
    hardware = choice.get("hardware", {})
    figures: dict[str, Any] = {
        "model_generation": fast.model_name,
        "model_fp32_name": fp32.variant,
        "model_fast_name": fast.variant,
        # The variant the machine chose (measured now or kept from an earlier load), why, and
        # every build it timed and variant it gated; the CPU it ran on.
        "model_fast_choice": choice.get("how"),
        "model_variant_store": choice.get("store"),
        "model_variant_timings_ms": choice.get("timings_ms"),
        "model_variant_estimate_ms": choice.get("estimate_ms"),
        "model_variant_gates": {
            name: {"passed": g["passed"], **{k: g["report"][k] for k in ("embedding_cos_p1", "faces_missed")}}
            for name, g in (choice.get("gates") or {}).items()
        },
        "cpu_model": hardware.get("cpu_model"),
        "cpu_flags": hardware.get("cpu_flags"),
        "openvino_capabilities": hardware.get("openvino_capabilities"),
        "model_runtimes": hardware.get("runtimes"),
        "model_sample_photos": n,
        "model_threads": threads,
        "model_batch_photos": batch,
        "model_fast_default_batch_photos": model_batch_photos(fast.settings),
        "model_fp32_photos_per_s": round(rate["fp32"], 3),
        "model_fp32_batched_photos_per_s": round(rate["fp32_batched"], 3),
        "model_fast_photos_per_s": round(rate["fast"], 3),
        "model_fast_batched_photos_per_s": round(rate["fast_batched"], 3),
        # The pack alone (both one photo per call), then each pack as its actors run it.
        "model_fast_vs_fp32": _ratio(rate["fast"], rate["fp32"]),
        "model_default_vs_fp32": _ratio(fast_default, rate["fp32"]),
        "batched_vs_one_by_one": _ratio(rate["fast_batched"], rate["fast"]),
        "batched_vs_one_by_one_fp32": _ratio(rate["fp32_batched"], rate["fp32"]),
        # The same ratios in photos per CPU-second of this process (other load moves them less).
        "model_fast_vs_fp32_cpu_time": _ratio(per_cpu_s.get("fast", 0), per_cpu_s.get("fp32", 0)),
        "batched_vs_one_by_one_cpu_time": _ratio(per_cpu_s.get("fast_batched", 0), per_cpu_s.get("fast", 0)),
    }
    if pack_label(fast) == "fp32":  # FACEPASS_MODEL_RUNTIME=onnxruntime: no fast pack to compare
        figures["model_fast_vs_fp32"] = None
    return list(runs.values()), figures, fp32, fast


def run_accuracy(fp32: FaceEmbedder, fast: FaceEmbedder) -> dict[str, Any]:
    report = accuracy.compare(fp32.embed_batch, fast.embed_batch)
    return report.as_json()
