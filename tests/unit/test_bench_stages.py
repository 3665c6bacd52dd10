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
