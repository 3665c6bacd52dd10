"""bench.report: the pipeline against the ideal pool and latency hiding, taken inside rounds."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.report import Round, summarize
from bench.results import RunResult


def _run(kind: str, photos_per_s: float, latency_ms: float | None = None) -> RunResult:
    return RunResult(
        kind=kind, label=kind, photos=int(photos_per_s * 10), faces=0, seconds=10.0, latency_ms=latency_ms
    )


def _summary(rounds: list[Round] | None, pipelines: dict[float, RunResult]) -> dict[str, object]:
    return summarize(
        limit=_run("limit", 12.0),
        limit_actor=_run("limit", 12.0),
        limit_actor_after=_run("limit_after", 10.0),
        rounds=rounds,
        embed_actors=2,
        actor_threads=1,
        cpus=2,
        seed_loops={},
        pipelines=pipelines,
        rerun=None,
        latencies_ms=sorted(pipelines),
        n_photos=300,
        n_faces=None,
    )


def test_each_round_holds_its_runs_against_the_bare_runs_beside_them() -> None:
    bare = [_run("limit_paired", r) for r in (10.0, 12.0, 8.0, 10.0)]
    low = [_run("pipeline", r, 100.0) for r in (18.0, 17.0, 17.1)]
    high = [_run("pipeline", r, 500.0) for r in (17.5, 17.0, 15.0)]
    side = [[9.0, 9.0], [10.0, 7.0], None]  # two bare processes at once; none in the last round
    rounds = [Round(bare[i], {100.0: low[i], 500.0: high[i]}, bare[i + 1], side[i]) for i in range(3)]
    summary = _summary(rounds, {100.0: low[2], 500.0: high[2]})
    # vs ideal: 18/(2*11) = 0.818, 17/(2*10) = 0.85, 17.1/(2*9) = 0.95 -> the median is round 2.
    assert summary["pipeline_vs_ideal_pool_rounds"] == [0.818, 0.85, 0.95]
    assert summary["pipeline_vs_ideal_pool"] == 0.85
    assert summary["ideal_pool_photos_per_s"] == 20.0
    assert summary["pipeline_photos_per_s"] == 17.0  # the median round's run, not the last one
    # Hidden: 17.5/18 = 0.972, 17/17 = 1.0, 15/17.1 = 0.877 -> the median is round 1's.
    assert summary["latency_hidden_rounds"] == [0.972, 1.0, 0.877]
    assert summary["latency_hidden"] == 0.972
    assert summary["pipeline_photos_per_s_high_latency"] == 17.5
    assert summary["pipeline_vs_ideal_pool_unpaired"] == round(17.0 / 22.0, 3)  # bare 12 and 10
    assert summary["paired_bare_photos_per_s"] == [10.0, 12.0, 8.0, 10.0]
    assert summary["pipeline_vs_side_by_side_rounds"] == [1.0, 1.0, None]  # 18/18, 17/17
    assert summary["pipeline_vs_side_by_side"] == 1.0


def test_without_rounds_the_ratios_are_the_unpaired_ones() -> None:
    summary = _summary(None, {100.0: _run("pipeline", 19.8, 100.0), 500.0: _run("pipeline", 19.8, 500.0)})
    assert summary["pipeline_vs_ideal_pool"] == summary["pipeline_vs_ideal_pool_unpaired"] == 0.9
    assert summary["pipeline_vs_ideal_pool_rounds"] == []
    assert summary["latency_hidden"] == 1.0


def _figures() -> dict[str, object]:
    return {
        "model_fast_vs_fp32": 1.3,
        "pipeline_fast_vs_fp32": 1.25,
        "pipeline_vs_side_by_side": 0.92,
        "pipeline_vs_ideal_pool": 0.86,
        "latency_hidden": 0.99,
        "pipeline_vs_seed_loop": 13.0,
        "accuracy_embedding_cos_p1": 0.99999,
        "accuracy_face_pairs": 264,
        "accuracy_faces_missed": 0,
        "search_p99_ms": 20.0,
        "writer_photos_per_s": 6600.0,
        "orchestration_photos_per_s": 732.0,
        "model_fp32_photos_per_s": 10.0,
        "model_fast_photos_per_s": 13.0,
        "side_by_side_photos_per_s": [[12.0, 11.0], [10.0, 11.0], [13.0, 12.0]],
        "pipeline_photos_per_s": 21.0,
        "seed_loop_photos_per_s": 1.6,
        "batched_vs_one_by_one": 1.1,
    }


def test_chart_holds_each_key_against_its_bar_and_the_rates_on_one_scale() -> None:
    from bench.report import chart_bars, chart_rates

    bars = {label: (value, bar, direction) for label, value, bar, direction in chart_bars(_figures())}
    assert bars["bare model: fast / fp32"] == (1.3, 2.0, ">=")  # no CPU named: the bf16 bar
    # A CPU whose OpenVINO lists no BF16 (AVX2 only) is held to issue 31's other-x86 bars.
    avx2 = chart_bars(
        {**_figures(), "openvino_capabilities": ["FP32", "INT8", "BIN"], "pipeline_fast_vs_fp32": 1.2}
    )
    named = {label: (value, bar) for label, value, bar, _ in avx2}
    assert named["bare model: fast / fp32"] == (1.3, 1.3)
    assert named["route: default CPU config / fp32"] == (1.2, 1.15)
    amx = chart_bars({**_figures(), "openvino_capabilities": ["FP32", "BF16", "INT8"]})
    assert {label: bar for label, _, bar, _ in amx}["bare model: fast / fp32"] == 2.0
    assert bars["search p99 ms (10k faces)"] == (20.0, 30.0, "<=")
    assert "rerun of 10k indexed, s" not in bars  # not in this summary: not drawn
    rates = {label: value for label, value, _ in chart_rates(_figures())}
    assert rates["2 bare default processes side by side"] == 23.0  # the median round's sum
    assert rates["bare fp32, 1 thread"] == 10.0 and rates["route, default @100 ms"] == 21.0
    assert all(value < 100 for value in rates.values())  # the orchestration run is not on this scale


def test_chart_is_one_readable_figure(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from PIL import Image

    from bench.report import write_chart

    path = write_chart(tmp_path / "bench.png", _figures(), "test")
    assert path is not None
    width, height = Image.open(path).size
    assert 1500 <= width <= 1700 and 600 <= height <= 1000


def test_follow_figures_are_printed_against_their_bars() -> None:
    from bench.follow import bar_lines

    figures = {
        "follow_lag_photos": 50,
        "follow_lag_p50_s": 1.0,
        "follow_lag_p95_s": 1.1,
        "interactive_idle_s": 1.5,
        "backlog_photos": 2000,
        "interactive_under_backlog_s": 6.0,
        "interactive_under_backlog_ratio": 4.0,
        "interactive_under_backlog_bar_s": 5.0,
        "search_idle_p95_ms": 100.0,
        "search_under_backlog_p95_ms": 200.0,
        "search_under_backlog_bar_ms": 700.0,
        "idle_s": 60,
        "idle_downloads": 0,
        "idle_photos_processed": 0,
    }
    lines = bar_lines(figures)
    assert "meets the bar" in lines[0] and "MISSES the bar" in lines[1] and "meets the bar" in lines[2]
    assert "0 downloads" in lines[3] and "meets the bar" in lines[3]
