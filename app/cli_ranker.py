"""`taskrank ranker fit|list|use VERSION`: the learned ranker's versions (library/ranker.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from app.cli_common import echo, library_errors, library_service, text_table
from library.settings import Settings


def _pct(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(float(value), spec)


def print_validation(validation: dict[str, Any]) -> None:
    """The leave-one-target-out table: candidates first, then the unlearned methods and baselines."""
    from library.ranker import validation_table

    head = validation.get("headline", {})
    echo(f"leave-one-target-out over {len(validation.get('targets', []))} target(s); headline on "
         f"{head.get('scope')} targets: {', '.join(head.get('targets', []))}"
         + (f" ({head['note']})" if head.get("note") else ""))
    rows = [[r["method"] + (" *" if r["method"] == validation.get("chosen") else ""), _pct(r["ndcg"]),
             _pct(r["rho"], ".2f"), _pct(r["regret"], ".2f"), _pct(r["top1_helps"], ".0%"),
             _pct(r["coverage"], ".0%"), _pct(r["mae"], ".2f")] for r in validation_table(validation)]
    k = validation.get("k_ndcg", 5)
    echo(text_table(rows, ["method", f"NDCG@{k}", "rho", "regret@3 (%)", "top-1 helps",
                           f"coverage (nominal {validation.get('nominal_coverage', 0.8):.0%})", "MAE (pts)"],
                    right={1, 2, 3, 4, 5, 6}))
    bars = validation.get("criteria") or {}
    if bars:
        over = bars["over"]

        def mark(ok: bool) -> str:
            return "ok" if ok else "NOT reached"

        judged = ("learned with the candidate chosen without each held-out target (nested; row 'nested')"
                  if bars.get("judged_on") == "nested" else bars["candidate"])
        echo(f"{judged}: NDCG@{k} {over.get('datasize', float('nan')):+.3f} over DataSize (bar +0.10: "
             f"{mark(bars['datasize_margin_ok'])}), {over.get('source_prior', float('nan')):+.3f} over the source "
             f"prior (bar +0.05: {mark(bars['source_prior_margin_ok'])}); top-1 helps on "
             f"{_pct(bars['top1_helps'], '.0%')} of the headline targets (bar 80%: {mark(bars['top1_ok'])}); "
             f"interval coverage {_pct(bars['coverage'], '.0%')} at nominal {_pct(bars['nominal_coverage'], '.0%')}; "
             + ("beats every unlearned method" if bars["beats_every_unlearned"] else
                "does not beat every unlearned method (the default method stays as it is)"))


def cmd_ranker_fit(args: argparse.Namespace, settings: Settings) -> int:
    from library.ranker import fit_ranker
    from library.ranker_store import RankerStore

    matrix = Path(args.matrix) if args.matrix else settings.resolved_transfer_matrix
    use_rows = settings.ranker_esm_features and not args.no_esm
    with library_service(settings) as service, RankerStore(settings.resolved_database_url) as rstore:
        report = fit_ranker(service, rstore, matrix, use_rows=use_rows,
                            progress=None if args.json else (lambda text: echo(text, err=True)))
    if args.json:
        echo(json.dumps(report.to_dict(), indent=2, default=str))
        return 0
    for note in report.notes:
        echo(f"note: {note}", err=True)
    version = report.version
    assert version is not None
    trained = version.trained_on
    echo(f"ranker version {version.id}: {report.candidate}, trained on {trained['rows']} pairs of "
         f"{trained['targets']} targets ({trained['matrix_rows_used']} matrix runs, {trained['user_results']} "
         f"recorded transfers), regime {version.regime}")
    if report.validation:
        print_validation(report.validation)
    echo(f"version {version.id} " + ("is now active" if report.activated else
                                     f"was NOT activated: {version.note} (`taskrank ranker use {version.id}` forces it)"))
    return 0


def cmd_ranker_validate(args: argparse.Namespace, settings: Settings) -> int:
    from library.ranker import validate_matrix
    from library.ranker_store import RankerStore

    matrix = Path(args.matrix) if args.matrix else settings.resolved_transfer_matrix
    use_rows = settings.ranker_esm_features and not args.no_esm
    with library_service(settings) as service, RankerStore(settings.resolved_database_url) as rstore:
        validation = validate_matrix(service, rstore, matrix, use_rows=use_rows, any_regime=args.any_regime,
                                     progress=None if args.json else (lambda text: echo(text, err=True)))
    if args.json:
        echo(json.dumps(validation, indent=2, default=str))
        return 0
    for note in validation.get("notes", []):
        echo(f"note: {note}", err=True)
    trained = validation["trained_on"]
    echo(f"{trained['rows']} pairs of {trained['targets']} targets ({trained['matrix_rows_used']} matrix runs); "
         "nothing stored")
    print_validation(validation)
    return 0


def cmd_ranker_list(args: argparse.Namespace, settings: Settings) -> int:
    from library.ranker_store import RankerStore

    with RankerStore(settings.resolved_database_url) as rstore:
        versions = rstore.versions()
    if args.json:
        echo(json.dumps([v.summary() for v in versions], indent=2, default=str))
        return 0
    if not versions:
        echo("no ranker fitted yet: `taskrank ranker fit`")
        return 0
    rows = []
    for v in versions:
        chosen = v.spec.get("candidate")
        ndcg = (v.validation.get("methods", {}).get(chosen) or {}).get("ndcg")
        rows.append([str(v.id), "*" if v.active else "", v.status, str(chosen), str(v.trained_on.get("rows")),
                     str(v.trained_on.get("targets")), _pct(ndcg), v.created_at.strftime("%Y-%m-%d %H:%M"), v.note])
    echo(text_table(rows, ["version", "active", "status", "model", "pairs", "targets", "NDCG@5 (LOTO)", "fitted",
                           "note"], right={0, 4, 5, 6}))
    from library.ranker import MIN_DEFAULT_TARGETS, default_method

    with RankerStore(settings.resolved_database_url) as rstore:
        default = default_method(rstore)
    from library.methods import DEFAULT_CHOICE

    echo(f"default ranking method: {default}" + ("" if default == "learned" else
         f" (chosen from the shipped matrix: {DEFAULT_CHOICE.reason}; learned becomes it when its active version "
         f"beats every unlearned method, nested, on at least {MIN_DEFAULT_TARGETS} informative targets)"))
    return 0


def cmd_ranker_use(args: argparse.Namespace, settings: Settings) -> int:
    from library.ranker_store import RankerStore

    with RankerStore(settings.resolved_database_url) as rstore:
        try:
            version = rstore.activate(args.version)
        except LookupError as exc:
            raise ValueError(str(exc)) from None
    echo(f"ranker version {version.id} is now active")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ranker", help="the learned ranker: fit, list its versions, choose one")
    rsub = p.add_subparsers(dest="ranker_command", required=True)
    p = rsub.add_parser("fit", help="fit a new version on the transfer matrix and the recorded transfers, "
                                    "validate it leave-one-target-out, activate it when not worse")
    p.add_argument("--matrix", help="transfer matrix CSV (default TASKRANK_TRANSFER_MATRIX or the shipped one)")
    p.add_argument("--no-esm", action="store_true", help="without ESM-LogME features (no target rows embedded)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=library_errors(cmd_ranker_fit))
    p = rsub.add_parser("validate", help="leave-one-target-out figures of the candidates and every unlearned "
                                         "method on a matrix, storing nothing")
    p.add_argument("--matrix", help="transfer matrix CSV (default TASKRANK_TRANSFER_MATRIX or the shipped one)")
    p.add_argument("--any-regime", action="store_true", help="also a matrix of another regime (never learned from)")
    p.add_argument("--no-esm", action="store_true", help="without ESM-LogME features (no target rows embedded)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=library_errors(cmd_ranker_validate))
    p = rsub.add_parser("list", help="the fitted versions")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=library_errors(cmd_ranker_list))
    p = rsub.add_parser("use", help="make VERSION the active one (roll back or forward)")
    p.add_argument("version", type=int)
    p.set_defaults(func=library_errors(cmd_ranker_use))
