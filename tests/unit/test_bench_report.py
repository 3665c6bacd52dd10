"""bench.report: the paired ratio of the pipeline to the ideal pool."""

from __future__ import annotations

from bench.report import median_round, summarize
from bench.results import RunResult


def _run(kind: str, photos_per_s: float, latency_ms: float | None = None) -> RunResult:
    return RunResult(
        kind=kind, label=kind, photos=int(photos_per_s * 10), faces=0, seconds=10.0, latency_ms=latency_ms
    )


def test_each_pipeline_run_is_held_against_the_bare_runs_beside_it() -> None:
    bare = [_run("limit_paired", r) for r in (10.0, 12.0, 8.0, 10.0)]
    pipes = [_run("pipeline", r, 100.0) for r in (18.0, 17.0, 17.1)]
    paired = [(bare[i], pipes[i], bare[i + 1]) for i in range(3)]
    high = _run("pipeline", 16.0, 500.0)
    paired_high = [(bare[3], high, _run("limit_paired", 8.0))]
    # Ratios: 18/(2*11) = 0.818, 17/(2*10) = 0.85, 17.1/(2*9) = 0.95 -> the median is round 2.
    assert median_round(paired, 2)[1] is pipes[1]
    summary = summarize(
        limit=_run("limit", 12.0),
        limit_actor=_run("limit", 12.0),
        limit_actor_after=_run("limit_after", 10.0),
        paired=paired,
        paired_high=paired_high,
        embed_actors=2,
        actor_threads=1,
        cpus=2,
        seed_loops={},
        pipelines={100.0: pipes[1], 500.0: high},
        rerun=None,
        latencies_ms=[100.0, 500.0],
        n_photos=300,
        n_faces=None,
    )
    assert summary["pipeline_vs_ideal_pool_rounds"] == [0.818, 0.85, 0.95]
    assert summary["pipeline_vs_ideal_pool"] == 0.85
    assert summary["ideal_pool_photos_per_s"] == 20.0
    assert summary["pipeline_vs_ideal_pool_unpaired"] == round(17.0 / 22.0, 3)  # bare 12 and 10, unpaired
    assert summary["paired_bare_photos_per_s"] == [10.0, 12.0, 8.0, 10.0]
    # At 500 ms: 16 / (2 * 9) = 0.889 of its own ideal pool; the machine had slowed down, the
    # pipeline had not lost anything to latency: 0.889 / 0.85 = 1.046 (unpaired 16 / 17 = 0.941).
    assert summary["pipeline_vs_ideal_pool_high_latency"] == 0.889
    assert summary["latency_hidden"] == 1.046
    assert summary["latency_hidden_unpaired"] == 0.941


def test_without_pairs_the_ratio_is_the_unpaired_one() -> None:
    summary = summarize(
        limit=_run("limit", 12.0),
        limit_actor=_run("limit", 12.0),
        limit_actor_after=_run("limit_after", 10.0),
        embed_actors=2,
        actor_threads=1,
        cpus=2,
        seed_loops={},
        pipelines={100.0: _run("pipeline", 19.8, 100.0)},
        rerun=None,
        latencies_ms=[100.0],
        n_photos=300,
        n_faces=None,
    )
    assert summary["pipeline_vs_ideal_pool"] == summary["pipeline_vs_ideal_pool_unpaired"] == 0.9
    assert summary["pipeline_vs_ideal_pool_rounds"] == []
