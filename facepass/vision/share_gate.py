"""The gate a build must pass to write into its weights' generation (issue 30).

A generation is a set of weights (``ModelPack.name``); any build of them (runtime, precision,
device: a variant, ``facepass/vision/variants.py``) may write into it only if its vectors stand
in for the reference build's (ONNX Runtime fp32 on the CPU) on the accuracy gate's real faces:
0 faces missed or added, embedding cosine p1 >= 0.998, the selfie's identity kept, and a
top-20 order that only swaps near-ties (score gap < 0.01). That is stricter than the reporting
gate (p1 >= 0.98).

It runs when a non-reference variant is tried at load (``facepass/vision/selection.py``); the
verdicts are kept per machine, runtime versions and weights (``facepass/vision/trials.py``:
the index database's ``model_trials``, or ``FACEPASS_GATE_CACHE_DIR``), so each kind of
machine measures a variant once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from facepass.vision import accuracy

SHARE_MIN_COSINE_P1 = 0.998
SHARE_MAX_SWAP_GAP = 0.01


def shares_generation(report: accuracy.AccuracyReport) -> bool:
    return (
        report.faces_missed == 0
        and report.extra_faces == 0
        and report.embedding_cos_p1 >= SHARE_MIN_COSINE_P1
        and report.identity_kept
        and report.top20_swap_max_gap < SHARE_MAX_SWAP_GAP
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
