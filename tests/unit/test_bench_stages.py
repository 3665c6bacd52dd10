"""bench.stages: the registry runs every stage in order by default, or the ones asked for with
the stages they need (no measurement runs here)."""

from __future__ import annotations

import pytest

from bench.stages import STAGES, select


def test_all_stages_by_default_in_the_registrys_order() -> None:
    assert [s.name for s in select(None)] == [s.name for s in STAGES]
    assert [s.name for s in STAGES][:2] == ["limit", "model"] and STAGES[-1].name == "gpu_standin"


def test_a_stage_brings_the_stages_it_needs_and_nothing_else() -> None:
    assert [s.name for s in select(["writer"])] == ["limit", "writer"]
    assert [s.name for s in select(["search"])] == ["search"]
    assert [s.name for s in select(["pipeline", "seed_loop"])] == ["limit", "seed_loop", "pipeline"]


def test_an_unknown_stage_is_refused_with_the_list() -> None:
    with pytest.raises(ValueError, match="orchestration"):
        select(["nope"])


def test_the_virtual_gpus_run_last_in_a_whole_run() -> None:
    assert [s.name for s in select(None)][-1] == "gpu_standin"  # its bulk job sets up logging
    assert [s.name for s in select(["gpu_standin"])] == ["limit", "gpu_standin"]


def test_the_storage_comparison_counts_the_pipelines_processes_only() -> None:
    """CPU a photo of plain vs signed storage: the S3 server, the driver (which hosts the plain
    storage) and Ray's own processes are left out of the figure the bar is on."""
    from bench.orchestration import pipeline_cpu_ms_per_photo, service_cpu_ms_per_photo, storage_figures
    from bench.results import RunResult

    def run(embedders: float, storage: float, seconds: float) -> RunResult:
        load = {
            "cores:driver": 0.2,
            "cores:embedder-0": embedders,
            "cores:embedder-1": embedders,
            "cores:index-writer": 0.3,
            "cores:postgres": 0.1,
            "cores:rest": 0.25,
            "cores:storage": storage,
        }
        load["own_cores"] = sum(load.values())
        return RunResult(kind="orchestration", label="", photos=1000, faces=0, seconds=seconds, load=load)

    plain, signed = run(0.4, 0.0, 1.0), run(0.5, 0.5, 1.25)
    assert pipeline_cpu_ms_per_photo(plain) == pytest.approx(
        1.2
    )  # (0.4 + 0.4 + 0.3 + 0.1) cores x 1 s / 1000
    assert pipeline_cpu_ms_per_photo(signed) == pytest.approx(1.75)
    assert service_cpu_ms_per_photo(plain) == pytest.approx(1.45)  # and Ray's own (rest, 0.25 cores)
    figures = storage_figures(plain, signed)
    assert figures["s3_vs_plain_cpu_per_photo"] == pytest.approx(1.458, abs=1e-3)
    assert figures["orchestration_s3_server_cores"] == 0.5
