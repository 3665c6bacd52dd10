"""Summary figures, the JSON file and the PNG chart."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.results import RunResult


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or not b:
        return None
    return round(a / b, 3)


def _rate(run: RunResult | None) -> float | None:
    return round(run.photos_per_s, 3) if run is not None else None


def _face_rate(run: RunResult | None) -> float | None:
    return round(run.faces_per_s, 3) if run is not None else None


def peak_by_process(runs: list[RunResult]) -> dict[str, float]:
    """The highest sampled RSS of each process over the given runs, MB."""
    peaks: dict[str, float] = {}
    for run in runs:
        for name, figures in run.memory.items():
            peaks[name] = max(peaks.get(name, 0.0), figures["peak_mb"])
    return peaks


@dataclass
class Round:
    """One round of (c): the bare model just before, one run at each latency, the bare model
    just after. The machine's speed drifts within minutes, so ratios are taken inside a round."""

    before: RunResult
    pipelines: dict[float, RunResult]
    after: RunResult
    side_by_side: list[float] | None = None  # photos/s of one bare process per actor, all at once

    def ideal(self, parallel: int) -> float:
        return parallel * (self.before.photos_per_s + self.after.photos_per_s) / 2

    def vs_ideal(self, latency: float, parallel: int) -> float:
        return self.pipelines[latency].photos_per_s / self.ideal(parallel)

    def vs_side_by_side(self, latency: float) -> float | None:
        if not self.side_by_side:
            return None
        return self.pipelines[latency].photos_per_s / sum(self.side_by_side)

    def hidden(self, low: float, high: float) -> float:
        """The run at the highest latency against the run at the lowest, one after the other."""
        return self.pipelines[high].photos_per_s / self.pipelines[low].photos_per_s


def _median(values: list[float | None]) -> float | None:
    known = sorted(v for v in values if v is not None)
    return round(known[(len(known) - 1) // 2], 3) if known else None


def median_round(rounds: list[Round], key: Callable[[Round], float]) -> Round:
    ordered = sorted(rounds, key=key)
    return ordered[(len(ordered) - 1) // 2]


def summarize(
    *,
    limit: RunResult | None,
    limit_actor: RunResult | None,
    embed_actors: int,
    limit_actor_after: RunResult | None = None,
    rounds: list[Round] | None = None,
    actor_threads: int,
    cpus: int,
    seed_loops: dict[float, RunResult],
    pipelines: dict[float, RunResult],
    rerun: RunResult | None,
    latencies_ms: list[float],
    n_photos: int,
    n_faces: int | None,
) -> dict[str, Any]:
    low, high = min(latencies_ms), max(latencies_ms)
    seed_high = seed_loops.get(high)
    # What the pool could do if every actor ran the bare model flat out on its own cores.
    parallel = max(1, min(embed_actors, cpus // max(1, actor_threads)))
    rounds = rounds or []
    # The median rounds: one by the ratio to the ideal pool, one by latency hidden.
    at_ideal = median_round(rounds, lambda r: r.vs_ideal(low, parallel)) if rounds else None
    at_hidden = median_round(rounds, lambda r: r.hidden(low, high)) if rounds else None
    if at_ideal is not None and at_hidden is not None:  # the figures of (c) are theirs
        pipelines = {**pipelines, high: at_hidden.pipelines[high], low: at_ideal.pipelines[low]}
    pipe_low, pipe_high = pipelines.get(low), pipelines.get(high)
    pipeline_peaks = peak_by_process([r for r in (*pipelines.values(), rerun) if r is not None])
    # One actor's bare-model rate: measured before Ray starts and again after it stopped
    # (mean of the two), minutes away from (c): the "unpaired" figures. The keys themselves
    # are taken inside rounds (bare model, (c) at each latency, bare model), median round.
    rates = [r.photos_per_s for r in (limit_actor, limit_actor_after) if r is not None]
    actor_rate = sum(rates) / len(rates) if rates else None
    ideal_unpaired = round(actor_rate * parallel, 3) if actor_rate is not None else None
    ideal = round(at_ideal.ideal(parallel), 3) if at_ideal is not None else ideal_unpaired
    latency_hidden = (
        round(at_hidden.hidden(low, high), 3)
        if at_hidden is not None
        else _ratio(_rate(pipe_high), _rate(pipe_low))
    )
    ratios = [round(r.vs_ideal(low, parallel), 3) for r in rounds]
    hidden = [round(r.hidden(low, high), 3) for r in rounds]
    return {
        "n_photos": n_photos,
        "n_faces": n_faces,
        "latency_ms": latencies_ms,
        "limit_photos_per_s": _rate(limit),
        "limit_faces_per_s": _face_rate(limit),
        "limit_actor_threads_photos_per_s": round(actor_rate, 3) if actor_rate is not None else None,
        "limit_actor_threads_photos_per_s_before": _rate(limit_actor),
        "limit_actor_threads_photos_per_s_after": _rate(limit_actor_after),
        "limit_actor_threads": actor_threads,
        "ideal_pool_photos_per_s": ideal,
        "seed_loop_photos_per_s": _rate(seed_high),
        "seed_loop_faces_per_s": _face_rate(seed_high),
        "seed_loop_extrapolated": bool(seed_high and seed_high.extrapolated),
        "seed_loop_sample_photos": seed_high.photos if seed_high else None,
        "seed_loop_photos_per_s_low_latency": _rate(seed_loops.get(low)),
        "pipeline_photos_per_s": _rate(pipe_low),
        "pipeline_faces_per_s": _face_rate(pipe_low),
        "pipeline_photos_per_s_high_latency": _rate(pipe_high),
        "pipeline_faces_per_s_high_latency": _face_rate(pipe_high),
        "pipeline_vs_limit": _ratio(_rate(pipe_low), _rate(limit)),
        "pipeline_vs_ideal_pool": _ratio(_rate(pipe_low), ideal),
        "pipeline_vs_ideal_pool_rounds": ratios,
        # Diagnostic: (c) against one bare process per actor run side by side just before it.
        "pipeline_vs_side_by_side": _median([r.vs_side_by_side(low) for r in rounds]),
        "pipeline_vs_side_by_side_rounds": [
            round(v, 3) if (v := r.vs_side_by_side(low)) is not None else None for r in rounds
        ],
        "side_by_side_photos_per_s": [
            [round(x, 3) for x in r.side_by_side] if r.side_by_side else None for r in rounds
        ],
        "paired_bare_photos_per_s": [_rate(r.before) for r in rounds] + [_rate(r.after) for r in rounds[-1:]],
        "paired_pipeline_photos_per_s": {
            f"{lat:g}ms": [_rate(r.pipelines.get(lat)) for r in rounds] for lat in latencies_ms
        },
        "ideal_pool_photos_per_s_unpaired": ideal_unpaired,
        "pipeline_vs_ideal_pool_unpaired": _ratio(_rate(pipe_low), ideal_unpaired),
        "pipeline_vs_seed_loop": _ratio(_rate(pipe_high), _rate(seed_high)),
        "latency_hidden": latency_hidden,
        "latency_hidden_rounds": hidden,
        "rerun_indexed_s": round(rerun.seconds, 3) if rerun else None,
        "embedding_actor_peak_rss_mb": {k: v for k, v in pipeline_peaks.items() if k.startswith("embedder")},
        "other_actor_peak_rss_mb": {
            k: v for k, v in pipeline_peaks.items() if not k.startswith("embedder") and k != "driver"
        },
        "driver_peak_rss_mb_during_pipeline": pipeline_peaks.get("driver"),
        "pipeline_cores_by_process": {
            r.key: {k.split(":", 1)[1]: v for k, v in r.load.items() if k.startswith("cores:")}
            for r in pipelines.values()
        },
        "other_load_cores": {
            r.key: r.load.get("other_cores")
            for r in (limit, limit_actor, *seed_loops.values(), *pipelines.values())
            if r is not None
        }
        | {f"paired_bare_{i}": r.before.load.get("other_cores") for i, r in enumerate(rounds)},
    }


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, ensure_ascii=False, indent=2, default=str) + "\n")
    return path


# Keys with a bar: (key, label, direction, bar). The chart plots each against its bar.
BARS: tuple[tuple[str, str, str, float], ...] = (
    ("model_fast_vs_fp32", "bare model: fast / fp32", ">=", 2.0),
    ("pipeline_fast_vs_fp32", "route: default CPU config / fp32", ">=", 1.8),
    ("pipeline_vs_side_by_side", "route / fast model side by side", ">=", 0.9),
    ("pipeline_vs_ideal_pool", "route / ideal pool", ">=", 0.85),
    ("latency_hidden", "latency hidden (high / low latency)", ">=", 0.95),
    ("pipeline_vs_seed_loop", "route / seed loop", ">=", 5.0),
    ("accuracy_embedding_cos_p1", "accuracy: cosine p1 vs fp32", ">=", 0.98),
    ("search_recall_at_20", "search recall@20", ">=", 0.99),
    ("search_p99_ms", "search p99 ms (10k faces)", "<=", 30.0),
    ("rerun_indexed_s", "rerun of 10k indexed, s", "<=", 2.0),
    ("writer_photos_per_s", "writer photos/s", ">=", 3000.0),
    ("orchestration_photos_per_s", "orchestration photos/s", ">=", 300.0),
    ("s3_vs_plain_cpu_per_photo", "signed S3 / plain HTTP, service CPU a photo", "<=", 1.5),
)
# Photos/s of the real model, bare and through the route: one scale.
RATES: tuple[tuple[str, str, str], ...] = (
    ("model_fp32_photos_per_s", "bare fp32, 1 thread", "#7f7f7f"),
    ("model_fast_photos_per_s", "bare fast, 1 thread", "#2ca02c"),
    ("model_fast_batched_photos_per_s", "bare fast, batched", "#98df8a"),
    ("side_by_side_sum", "2 bare default processes side by side", "#bcbd22"),
    ("ideal_pool_photos_per_s", "ideal pool (bare x actors)", "#dbdb8d"),
    ("pipeline_fp32_photos_per_s", "route, fp32 pack @100 ms", "#aec7e8"),
    ("pipeline_photos_per_s", "route, default @100 ms", "#1f77b4"),
    ("pipeline_photos_per_s_high_latency", "route, default @500 ms", "#17becf"),
    ("seed_loop_photos_per_s", "seed loop @500 ms", "#d62728"),
)


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def chart_rates(summary: dict[str, Any]) -> list[tuple[str, float, str]]:
    """(label, photos/s, colour) of the real-model runs that are in the summary."""
    values = dict(summary)
    sums = [sum(r) for r in summary.get("side_by_side_photos_per_s") or [] if r]
    if sums:
        values["side_by_side_sum"] = sorted(sums)[(len(sums) - 1) // 2]
    return [(label, v, color) for key, label, color in RATES if (v := _number(values.get(key))) is not None]


# Issue 31: the fast path's bars on a CPU without bf16 (no AMX / AVX-512 BF16: OpenVINO lists
# no BF16), where only f32 builds can share the generation.
NO_BF16_BARS = {"model_fast_vs_fp32": 1.3, "pipeline_fast_vs_fp32": 1.15}


def bar_of(key: str, bar: float, summary: dict[str, Any]) -> float:
    capabilities = summary.get("openvino_capabilities")
    if key in NO_BF16_BARS and capabilities is not None and "BF16" not in capabilities:
        return NO_BF16_BARS[key]
    return bar


def chart_bars(summary: dict[str, Any]) -> list[tuple[str, float, float, str]]:
    """(label, value, bar, direction) of the keys with a bar that are in the summary."""
    return [
        (label, value, bar_of(key, bar, summary), direction)
        for key, label, direction, bar in BARS
        if (value := _number(summary.get(key))) is not None
    ]


def write_chart(path: Path, summary: dict[str, Any], title: str) -> Path | None:
    """One figure, ~1,600 px wide: every key with a bar as a share of its bar (1.0 = at the
    bar; green at or past it, red short of it), and photos/s of the bare models and of the
    route on one linear scale. matplotlib is optional: without it, no chart."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed; the PNG chart is skipped")
        return None
    bars, rates = chart_bars(summary), chart_rates(summary)
    latencies = summary.get("latency_ms") or [100, 500]
    low, high = f"{min(latencies):g} ms", f"{max(latencies):g} ms"
    rates = [(label.replace("100 ms", low).replace("500 ms", high), v, c) for label, v, c in rates]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13.3, 7.0), gridspec_kw={"width_ratios": [1.1, 1]})
    shares = [(v / b if d == ">=" else b / v) if v else 0.0 for _, v, b, d in bars]
    y = list(range(len(bars)))[::-1]
    colors = ["#2ca02c" if share >= 1.0 else "#d62728" for share in shares]
    left.barh(y, shares, color=colors, height=0.6)
    left.axvline(1.0, color="black", linewidth=1)
    left.set_yticks(y, [label for label, *_ in bars], fontsize=10)
    limit = max([1.6, *[min(share, 3.0) for share in shares]]) * 1.25
    left.set_xlim(0, limit)
    for yy, share, (_, value, bar, direction) in zip(y, shares, bars, strict=True):
        text = (
            f"{value:,.0f} ({direction} {bar:,.0f})" if bar >= 100 else f"{value:.4g} ({direction} {bar:g})"
        )
        inside = share > limit * 0.7  # a long (or cut) bar carries its text inside
        left.annotate(
            text,
            (min(share, limit), yy),
            xytext=(-4 if inside else 4, 0),
            textcoords="offset points",
            ha="right" if inside else "left",
            va="center",
            fontsize=9,
            color="white" if inside else "black",
        )
    left.set_xlabel("share of the bar (1.0 = at the bar; for <= keys: bar / value)")
    left.set_title("Keys against their bars", fontsize=12)
    ry = list(range(len(rates)))[::-1]
    right.barh(ry, [v for _, v, _ in rates], color=[c for _, _, c in rates], height=0.6)
    right.set_yticks(ry, [label for label, _, _ in rates], fontsize=10)
    for yy, (_, value, _) in zip(ry, rates, strict=True):
        right.annotate(
            f"{value:.1f}", (value, yy), xytext=(4, 0), textcoords="offset points", va="center", fontsize=9
        )
    top = max([v for _, v, _ in rates], default=1.0)
    right.set_xlim(0, top * 1.18)
    right.set_xlabel("photos/s (real model)")
    right.set_title("Real model: bare and through the route", fontsize=12)
    notes = []
    if summary.get("accuracy_face_pairs") is not None:
        notes.append(
            f"accuracy vs fp32 on {summary['accuracy_face_pairs']} face pairs: cos p1 "
            f"{summary.get('accuracy_embedding_cos_p1')}, "
            f"faces missed {summary.get('accuracy_faces_missed')}, "
            f"extra {summary.get('accuracy_extra_faces')}, top-20 swaps {summary.get('accuracy_top20_swaps')}"
        )
    if summary.get("batched_vs_one_by_one") is not None:
        notes.append(
            f"batched vs one by one (bare): fast {summary['batched_vs_one_by_one']}, "
            f"fp32 {summary.get('batched_vs_one_by_one_fp32')}"
        )
    if summary.get("orchestration_photos_per_s") is not None:
        notes.append(f"orchestration (stand-in model): {summary['orchestration_photos_per_s']:.0f} photos/s")
    fig.suptitle(title, fontsize=13)
    fig.text(0.01, 0.01, "   |   ".join(notes), fontsize=9)
    fig.tight_layout(rect=(0, 0.04, 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
