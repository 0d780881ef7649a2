"""``factory evidence FAMILY --date D``: a night's evidence page from its run folder, for reading outside MLflow."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import FAMILIES, add_config_arguments, iso_date
from .common import load as _load


def _cmd_evidence(args: argparse.Namespace) -> int:
    from factory_core import layout
    from factory_core.fsutil import get_json

    from ..drift import latest_check
    from ..evidence_page import EvidencePageError, policy_of, render

    cfg = _load(args)
    run = cfg.run_layout(args.date)
    where = f"{run.gates()}/{layout.GATE_REPORT}"
    report = get_json(where)
    if report is None:
        raise EvidencePageError(f"no gate report at {where}: did the night of {args.date} reach gate_report?")
    published = next((p for p in (get_json(run.summary()) or {}).get("published") or []
                      if p["family"] == args.family), None)
    targets = [args.target] if args.target else sorted({g["target"] for g in report["targets"]
                                                        if g["family"] == args.family and g["status"] != "skipped"})
    monitoring = {} if args.no_drift else {t: latest_check(cfg, args.family, t) for t in targets}
    page = render(report, args.family, target=args.target, policy=policy_of(cfg, args.family), monitoring=monitoring,
                  registered=(published or {}).get("versions"),
                  run={"run_id": (published or {}).get("run_id", "")})
    out = Path(args.out or f"evidence-{args.family}-{args.date}" + (f"-{args.target}" if args.target else "") + ".html")
    out.write_text(page)
    print(f"wrote {out} ({len(page) // 1024} KiB)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evidence", help="a night's evidence page (HTML, self-contained) from its gate report",
                       description="The evidence page publish logs to the family's MLflow run, rendered again from "
                                   "runs/<date>/gates/report.json and the night's summary; the drift section shows "
                                   "the newest drift check recorded now (--no-drift leaves it out).")
    p.add_argument("family", choices=FAMILIES)
    p.add_argument("--date", type=iso_date, required=True)
    p.add_argument("--target", default=None, help="one target's page (default: every target of the family)")
    p.add_argument("--out", default=None, help="file to write (default: evidence-FAMILY-DATE[-TARGET].html)")
    p.add_argument("--no-drift", action="store_true", help="leave out the drift check (no registry needed)")
    add_config_arguments(p)
    p.set_defaults(func=_cmd_evidence)
