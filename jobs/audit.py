"""Audit (and repair) the local index against the catalog and the current model.

    python -m jobs.audit [--session ID ...] [--fix] [--json PATH|-]
    ray job submit --working-dir . -- python -m jobs.audit [...]

Per session: photos in the catalog, ledger rows by status, face rows, and the
defects: photos deleted from the catalog but still indexed, rows of another model,
face rows without a ledger row, ledger face counts that disagree with the rows,
vectors whose norm is not 1. ``--fix`` prunes deleted photos and re-plans the others
(the next ``missing`` run embeds them again), then audits again. Exit code: 0 when
the index is clean (after ``--fix``: when the repaired index is), 1 otherwise.
Needs no Ray: as a Ray job it simply runs in the job's process.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from facepass.catalog.cloud import CloudCatalog
from facepass.db import resolve_databases
from facepass.index.audit import NORM_TOLERANCE, AuditReport, Defect, FixResult, IndexAuditor, SessionAudit
from facepass.index.store import VectorStore
from facepass.settings import Settings
from facepass.vision.pack import ModelPack

TABLE_ROWS = 50  # more sessions than this: the table shows only those with a defect (unless --all)
IDS_IN_TEXT = 5

HEADERS = {  # short column names of the defects
    Defect.DELETED: "deleted",
    Defect.STALE_MODEL: "stale",
    Defect.ORPHAN_ROWS: "orphan",
    Defect.COUNT_MISMATCH: "mismatch",
    Defect.BAD_NORM: "norm!=1",
}
Column = tuple[str, int, Callable[[SessionAudit], int]]  # header, width, value of a session


def _defect_column(kind: Defect) -> Column:
    return HEADERS[kind], 9, lambda s: s.count(kind)


_COLUMNS: list[Column] = [
    ("catalog", 8, lambda s: s.catalog_photos),
    ("indexed", 8, lambda s: s.ledger_indexed),
    ("no_face", 8, lambda s: s.ledger_no_face),
    ("failed", 7, lambda s: s.ledger_failed),
    ("faces", 8, lambda s: s.face_rows),
    ("unindexed", 10, lambda s: s.unindexed_photos),
    ("gated", 7, lambda s: s.below_gates_rows),
    *[_defect_column(kind) for kind in Defect],
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--session", action="append", type=uuid.UUID, default=[], help="only this session")
    parser.add_argument("--fix", action="store_true", help="prune deleted photos, re-plan defective ones")
    parser.add_argument("--json", metavar="PATH", help="write the report as JSON ('-': stdout)")
    parser.add_argument("--all", action="store_true", help="list healthy sessions too, however many")
    parser.add_argument("--model", help="the current model's name (default: the configured model pack's)")
    parser.add_argument("--norm-tolerance", type=float, default=NORM_TOLERANCE, help="|norm - 1| allowed")
    parser.add_argument("--max-ids", type=int, default=20, help="photo ids per defect kind in the JSON")
    return parser.parse_args(argv)


def table(report: AuditReport, show_all: bool = False) -> list[str]:
    """One row per session (healthy ones only when few, or with ``show_all``), a total line,
    then the first photo ids of every defect."""
    header = f"{'session':<36}  {'name':<22}" + "".join(f"{h:>{w}}" for h, w, _ in _COLUMNS) + "  state"
    shown = [s for s in report.sessions if show_all or len(report.sessions) <= TABLE_ROWS or not s.ok]
    lines = [header, "-" * len(header)]
    for s in shown:
        name = "(not in catalog)" if s.session_name is None else _clip(s.session_name, 22)
        cells = "".join(f"{value(s):>{w}}" for _, w, value in _COLUMNS)
        lines.append(f"{s.session_id!s:<36}  {name:<22}{cells}  {'ok' if s.ok else 'DEFECT'}")
    if hidden := len(report.sessions) - len(shown):
        lines.append(f"({hidden} healthy sessions not listed; --all lists them)")
    bad = sum(not s.ok for s in report.sessions)
    label = _clip(f"TOTAL {len(report.sessions)} sessions, {bad} with defects", 60)
    totals = "".join(f"{sum(value(s) for s in report.sessions):>{w}}" for _, w, value in _COLUMNS)
    lines += ["-" * len(header), f"{label:<60}{totals}"]
    lines += [line for s in report.sessions if not s.ok for line in _defect_lines(s)]
    return lines


def _defect_lines(s: SessionAudit) -> list[str]:
    lines = [f"{s.session_id}:"]
    for kind, ids in s.defects.items():
        if ids:
            more = f" and {len(ids) - IDS_IN_TEXT} more" if len(ids) > IDS_IN_TEXT else ""
            photos = f"{len(ids)} photo" + ("s" if len(ids) > 1 else "")
            lines.append(f"  {kind.value}: {photos}: {', '.join(map(str, ids[:IDS_IN_TEXT]))}{more}")
    return lines


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def fix_line(fix: FixResult) -> str:
    return (
        f"Repaired: removed {fix.removed.photos} deleted photos ({fix.removed.faces} face rows); "
        f"re-planned {fix.replanned.photos} photos ({fix.replanned.faces} face rows), "
        "the next `missing` run embeds them again"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = resolve_databases(Settings())
    model_name = args.model or ModelPack.from_settings(settings).name
    catalog, store = CloudCatalog(settings.cloud_url()), VectorStore(settings.local_url())
    # With the JSON on stdout, the table for people goes to stderr.
    out: TextIO = sys.stderr if args.json == "-" else sys.stdout
    try:
        auditor = IndexAuditor(catalog, store, model_name, args.norm_tolerance, settings.quality_gates())
        found = auditor.audit(args.session)
        print(f"Audit of the index (model {model_name}):", file=out)
        print("\n".join(table(found, args.all)), file=out)
        fix: FixResult | None = None
        after: AuditReport | None = None
        if args.fix and not found.ok:
            fix = auditor.fix(found)
            print(fix_line(fix), file=out)
            after = auditor.audit([s.session_id for s in found.sessions])
            print("After the repair:", file=out)
            print("\n".join(table(after, args.all)), file=out)
    finally:
        catalog.close()
        store.close()
    final = after or found
    verdict = "clean" if final.ok else "NOT clean"
    print(f"The index is {verdict}.", file=out)
    if args.json:
        data = _as_json(found, fix, after, args.max_ids)
        text = json.dumps(data, ensure_ascii=False, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
            print(f"JSON written to {Path(args.json).resolve()}", file=out)
    return 0 if final.ok else 1


def _as_json(found: AuditReport, fix: FixResult | None, after: AuditReport | None, max_ids: int) -> Any:
    return {
        "ok": (after or found).ok,
        "model_name": found.model_name,
        "norm_tolerance": found.norm_tolerance,
        "found": found.as_dict(max_ids),
        "fix": fix.as_dict() if fix else None,
        "after_fix": after.as_dict(max_ids) if after else None,
    }


if __name__ == "__main__":
    sys.exit(main())
