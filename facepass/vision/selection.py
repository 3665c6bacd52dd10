"""Which variant an embedder runs: the fastest this machine can run that passes the sharing gate.

At load (``FACEPASS_MODEL_VARIANT=auto``): every build the hardware lists
(``variants.candidates``) is loaded once; each network's builds are timed on the shipped faces
(the gate's four photos as shipped, interleaved rounds, the best of each), detector per photo
and recognizer per face; the variants (every detector build with every recognizer build) are
ordered by their estimated time per photo (detector + ``FACES_PER_PHOTO`` x recognizer), and
the first that is the reference or passes the sharing gate is chosen. A variant that fails the
gate is never chosen. The timings, the verdicts and the choice are kept per machine, runtime
versions and weights (``TrialStore``; the files' bytes, not the pack folder's name): the next
load of that kind of machine reads the choice and loads only its two builds.

A pinned variant (``variants.pinned``) is not measured; it is gated like any other (verdict
kept in the same record) and refused for the reference build if it fails.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from facepass.builds import REFERENCE, Build, Variant
from facepass.models import DetectedFace
from facepass.settings import Settings
from facepass.vision import accuracy
from facepass.vision.images import BgrImage
from facepass.vision.networks import Loaded, Networks, embed_with
from facepass.vision.pack import ModelPack
from facepass.vision.share_gate import GateVerdict, shares_generation
from facepass.vision.trials import Record, TrialKey, TrialStore
from facepass.vision.variants import Hardware, candidates, check_runnable, pinned

log = logging.getLogger(__name__)

FACES_PER_PHOTO = 3  # the weight of the recognizer's time per face in a photo's estimate
TIMING_ROUNDS = 3  # after one untimed round (first calls compile, allocate, tune)


@dataclass(frozen=True, slots=True)
class Choice:
    """What runs and why: ``how`` is measured (now), kept (read from the store), pinned (a
    setting), or refused (the pinned or every measured variant failed the gate: the reference
    runs)."""

    variant: str
    how: str
    requested: str
    store: str
    hardware: dict[str, Any]
    timings_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    estimate_ms: dict[str, float] = field(default_factory=dict)
    gates: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        det = self.timings_ms.get("detector", {})
        rec = self.timings_ms.get("recognizer", {})
        timings = "; ".join(
            [f"detector {k} {v} ms/photo" for k, v in det.items()]
            + [f"recognizer {k} {v} ms/face" for k, v in rec.items()]
        )
        refused = [name for name, g in self.gates.items() if not g.get("passed")]
        return (
            f"variant {self.variant} ({self.how}, asked {self.requested}, kept in {self.store})"
            + (f"; timings: {timings}" if timings else "")
            + (f"; refused by the sharing gate: {', '.join(refused)}" if refused else "")
        )


def _embed(loaded: Loaded, batch: int) -> Callable[[list[BgrImage]], list[list[DetectedFace]]]:
    return lambda images: embed_with(loaded.detector, loaded.recognizer, images, batch)


def _best_ms(rounds: list[dict[str, float]], key: str) -> float:
    return min(r[key] for r in rounds)


def _clock(build: Build) -> Callable[[], float]:
    """CPU builds: this process's CPU time (another process busy on the node moves it far less
    than wall time; one intra-op thread runs in the calling thread, several add up: the cost
    in cores). CUDA builds: wall time (the GPU's work is no CPU time)."""
    return time.perf_counter if build.device == "cuda" else time.process_time


def time_builds(
    nets: Networks, detectors: list[Build], recognizers: list[Build]
) -> dict[str, dict[str, float]]:
    """ms per photo of each detector build and ms per face of each recognizer build on the
    gate's photos as shipped; the builds take turns within a round (other load on the machine
    hits all alike) and the best round counts."""
    from insightface.utils import face_align

    photos = [image for name, image in accuracy.gate_images() if name.endswith(":original")]
    reference = nets.detector(REFERENCE.detector)
    crops = []
    for photo in photos:
        [found] = reference.detect_batch([photo])
        crops.append([face_align.norm_crop(photo, landmark=k, image_size=112) for k in found.landmarks])
    faces = sum(len(c) for c in crops) or 1
    dets = {b.name: nets.detector(b) for b in detectors}
    recs = {b.name: nets.recognizer(b) for b in recognizers}
    det_rounds: list[dict[str, float]] = []
    rec_rounds: list[dict[str, float]] = []
    for round_no in range(TIMING_ROUNDS + 1):
        det_round, rec_round = {}, {}
        for build in detectors:
            clock, detector = _clock(build), dets[build.name]
            start = clock()
            for photo in photos:
                detector.detect_batch([photo])
            det_round[build.name] = (clock() - start) * 1000 / len(photos)
        for build in recognizers:
            clock, recognizer = _clock(build), recs[build.name]
            start = clock()
            for face_crops in crops:
                recognizer.embed(face_crops)
            rec_round[build.name] = (clock() - start) * 1000 / faces
        if round_no:  # the first round is the warm-up
            det_rounds.append(det_round)
            rec_rounds.append(rec_round)
    return {
        "detector": {name: round(_best_ms(det_rounds, name), 2) for name in dets},
        "recognizer": {name: round(_best_ms(rec_rounds, name), 2) for name in recs},
    }


class _Gate:
    """Verdicts against the reference build, whose faces on the gate are computed once."""

    def __init__(self, nets: Networks, generation: str, batch: int) -> None:
        self.nets = nets
        self.generation = generation
        self.batch = batch
        self._reference: list[list[DetectedFace]] | None = None

    def verdict(self, variant: Variant) -> GateVerdict:
        if self._reference is None:
            self._reference = accuracy.faces_on_gate(_embed(self.nets.assemble(REFERENCE), self.batch))
        report = accuracy.compare_to(self._reference, _embed(self.nets.assemble(variant), self.batch))
        return GateVerdict(self.generation, variant.name, shares_generation(report), asdict(report))


def _kept(verdict: GateVerdict) -> dict[str, Any]:
    """A verdict as the record keeps it (whether it was read from a record is not kept)."""
    return {k: v for k, v in verdict.as_json().items() if k != "cached"}


def _verdict_of(record: Record | None, variant: Variant, generation: str) -> GateVerdict | None:
    """The kept verdict on ``variant``, said of ``generation``: a record is kept per weights, so
    it may have been measured under another pack folder holding the same files."""
    saved = (record or {}).get("gates", {}).get(variant.name)
    return GateVerdict(**{**saved, "generation": generation, "cached": True}) if saved else None


def _runnable(nets: Networks, builds: list[Build], network: str) -> list[Build]:
    """The builds that load (a CUDA build whose provider fails to load is left out, said)."""
    kept = []
    for build in builds:
        try:
            nets.session(network, build)
            kept.append(build)
        except Exception as exc:  # noqa: BLE001 - a candidate that cannot load is not a candidate
            log.warning("%s build %s does not load here, left out: %s", network, build.name, exc)
    return kept


def measure(nets: Networks, hardware: Hardware, generation: str, batch: int, kept: Record | None) -> Record:
    """Time every build, then gate the variants fastest first until one passes."""
    detectors, recognizers = candidates(hardware)
    detectors = _runnable(nets, detectors, "detector")
    recognizers = _runnable(nets, recognizers, "recognizer")
    timings = time_builds(nets, detectors, recognizers)
    estimate = {
        Variant(d, r): timings["detector"][d.name] + FACES_PER_PHOTO * timings["recognizer"][r.name]
        for d in detectors
        for r in recognizers
    }
    gate = _Gate(nets, generation, batch)
    gates: dict[str, dict[str, Any]] = dict((kept or {}).get("gates", {}))
    choice = REFERENCE
    for variant in sorted(estimate, key=lambda v: estimate[v]):
        if variant.is_reference:
            break
        verdict = _verdict_of(kept, variant, generation) or gate.verdict(
            variant
        )  # a pin's verdict is kept too
        gates[variant.name] = _kept(verdict)
        log.info(
            "variant %s (%.1f ms a photo): sharing gate %s",
            variant.name,
            estimate[variant],
            "passed" if verdict.passed else f"FAILED ({verdict.summary()})",
        )
        if verdict.passed:
            choice = variant
            break
    return {
        "hardware": hardware.as_json(),
        "timings_ms": timings,
        "estimate_ms": {v.name: round(ms, 2) for v, ms in sorted(estimate.items(), key=lambda kv: kv[1])},
        "gates": gates,
        "choice": choice.name,
    }


def choose(
    pack: ModelPack, settings: Settings, threads: int, store: TrialStore, hardware: Hardware
) -> tuple[Loaded, Choice, GateVerdict | None]:
    """The variant this embedder runs, loaded; why; and the gate's verdict on it (None for
    the reference, which needs none)."""
    nets = Networks(pack, settings, threads)
    batch = settings.detector_batch_photos or (0 if settings.uses_gpu else 1)
    key = TrialKey(hardware.machine, hardware.runtimes, pack.weights)
    pin = pinned(settings, hardware)
    asked = pin.name if pin else "auto"

    def made(variant: Variant, how: str, record: Record | None) -> Choice:
        record = record or {}
        return Choice(
            variant=variant.name,
            how=how,
            requested=asked,
            store=store.where,
            hardware=hardware.as_json(),
            timings_ms=record.get("timings_ms", {}),
            estimate_ms=record.get("estimate_ms", {}),
            gates=record.get("gates", {}),
        )

    if pin is not None:
        check_runnable(pin, hardware)
        if pin.is_reference:
            return nets.assemble(pin), made(pin, "pinned", None), None

        def gate_pin(kept: Record | None) -> Record | None:
            if _verdict_of(kept, pin, pack.name) is not None:
                return None
            verdict = _Gate(nets, pack.name, batch).verdict(pin)
            record = dict(kept or {"hardware": hardware.as_json()})
            record["gates"] = {
                **record.get("gates", {}),
                pin.name: _kept(verdict),
            }
            return record

        record = store.update(key, gate_pin)
        verdict = _verdict_of(record, pin, pack.name)
        assert verdict is not None
        if verdict.passed:
            return nets.assemble(pin), made(pin, "pinned", record), verdict
        log.error(
            "build %s of generation %s refused: it fails the sharing gate (%s); this process embeds "
            "with the reference build %s instead",
            pin.name,
            pack.name,
            verdict.summary(),
            REFERENCE.name,
        )
        return nets.assemble(REFERENCE), made(REFERENCE, "refused", record), verdict

    fresh = False

    def measure_once(kept: Record | None) -> Record | None:
        nonlocal fresh
        if kept and kept.get("choice"):
            return None
        fresh = True
        return measure(nets, hardware, pack.name, batch, kept)

    record = store.update(key, measure_once) or {}
    variant = Variant.parse(record["choice"])
    verdict = None if variant.is_reference else _verdict_of(record, variant, pack.name)
    if verdict is not None and fresh:
        verdict = GateVerdict(**{**verdict.as_json(), "cached": False})
    return nets.assemble(variant), made(variant, "measured" if fresh else "kept", record), verdict
