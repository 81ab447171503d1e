"""`taskrank library transfers` (the transfer matrix as a per-target table) and the extra sections of
`taskrank evaluate` (headline scope, every-target metrics, the source prior, informativeness, skipped
targets). Registered from `app.cli_library`; output goes through `app.cli_common.echo`."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from app.cli_common import echo, library_errors, text_table

Echo = Callable[..., None]


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


def _flag(informative: bool | None) -> str:
    return "?" if informative is None else ("yes" if informative else "no")


def _interval(ci: list[float] | None) -> str:
    return "–" if not ci else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


def informativeness_rows(info: Mapping[str, Mapping[str, Any]], names: list[str] | None = None) -> list[list[str]]:
    """One row per target: baseline (± sd over seeds), majority, seed sd, best source, its gain in points
    with the 95% interval, runs, informative (yes / no / ? when undetermined)."""
    rows = []
    for name in names or list(info):
        t = info[name]
        base = _fmt(t["baseline_mean"]) + (f" ± {t['baseline_sd']:.2f}" if t.get("baseline_sd") is not None else "")
        rows.append([name, t.get("metric") or "–", base, _fmt(t.get("majority_score")), _fmt(t.get("seed_sd")),
                     t["best_source"], _fmt(t["best_gain_points"], "+.2f"), _interval(t.get("best_gain_ci95")),
                     str(t["runs"]), _flag(t.get("informative"))])
    return rows


INFO_HEADER = ["target", "metric", "baseline", "majority", "seed sd", "best source", "gain (pts)", "95% interval",
               "runs", "informative"]
INFO_RIGHT = {2, 3, 4, 6, 7, 8}


# -- taskrank evaluate ------------------------------------------------------------------------------

def print_skipped(result: Mapping[str, Any], out: Echo = echo) -> None:
    """A warning on stderr per target left out of the evaluation (baseline <= 0)."""
    for target, why in (result.get("skipped_targets") or {}).items():
        out(f"warning: {target}: skipped, {why}", err=True)
    for method, why in (result.get("skipped_methods") or {}).items():
        out(f"warning: method {method} not scored ({why})", err=True)
    for by_target in (result.get("method_notes") or {}).values():
        for target, note in by_target.items():
            out(f"warning: {target}: {note}", err=True)


def headline_note(result: Mapping[str, Any]) -> str:
    """What the first table covers, when it is not every target (appended to the targets line)."""
    head = result.get("headline") or {}
    if head.get("scope") != "informative":
        return f"; {head['note']}" if head.get("note") else ""
    chosen = head.get("targets") or []
    return (f"; headline over the {len(chosen)} informative target(s): {', '.join(chosen)} "
            "(every target below; --all-targets for every target first)")


def print_evaluation_report(result: Mapping[str, Any], out: Echo = echo) -> None:
    """After the headline table: the every-target table (when the headline is narrower), how the source
    prior was formed, and the informativeness table with its rule."""
    k_ndcg, k_regret = result["k_ndcg"], result["k_regret"]
    header = ["method", f"NDCG@{k_ndcg}", "rho", f"Regret@{k_regret} (%)"]
    if (result.get("headline") or {}).get("scope") == "informative":
        out("")
        out(f"every target ({len(result['targets'])}):")
        rows = [[m, f"{v['ndcg']:.3f}", f"{v['rho']:.2f}", f"{v['regret']:.2f}"]
                for m, v in result["methods_all_targets"].items()]
        out(text_table(rows, header, right={1, 2, 3}))
    prior = result.get("source_prior") or {}
    counts = [n for p in prior.values() for n in p["n_targets"].values()]
    if counts:
        out("")
        out(f"source_prior: each source's mean relative gain on the other targets (leave-one-target-out), "
            f"averaged over {min(counts)}-{max(counts)} target(s); a source measured nowhere else ranks last")
    info = result.get("informativeness") or {}
    if info:
        out("")
        out("informativeness (per target):")
        out(text_table(informativeness_rows(info, [t for t in result["targets"] if t in info]), INFO_HEADER,
                       right=INFO_RIGHT))
        out(f"rule: {result.get('informative_rule', '')}")


# -- taskrank library transfers -----------------------------------------------------------------------

def cmd_library_transfers(args: argparse.Namespace, settings: Any) -> int:
    """The matrix per target (clustered order): baseline, best source, gain, informative; yours included."""
    from library.transfers import DEFAULT_MATRIX, describe_cost, gather_user_batches, load_view, user_runs

    path = Path(args.matrix) if args.matrix else DEFAULT_MATRIX
    if args.matrix and not path.is_file():
        raise ValueError(f"no transfer matrix at {path}")
    mine: list[dict[str, Any]] = []
    if not args.no_user:
        from library.jobs import JobStore

        settings.data_dir.mkdir(parents=True, exist_ok=True)  # as every command does: the job store lives there
        store = JobStore(settings.resolved_database_url)
        try:
            mine = user_runs(gather_user_batches(store))
        finally:
            store.close()
    view = load_view(path, mine)
    if args.json:
        echo(json.dumps(view, indent=2, default=str))
        return 0
    for problem in view["matrix"]["problems"]:
        echo(f"warning: {problem}", err=True)
    for target, why in view["skipped_targets"].items():
        echo(f"warning: {target}: skipped, {why}", err=True)
    matrix = view["matrix"]
    model = (matrix.get("model") or {}).get("name")
    informative = sum(1 for t in view["targets"] if t["informative"])
    echo(f"{matrix['path']}: {matrix['runs']} runs" + (f", model {model}" if model else "")
          + f"; {len(view['targets'])} target(s) ({informative} informative), {len(view['sources'])} source(s)"
          + (f"; your transfers: {view['user_runs']} run(s)" if view["user_runs"] else ""))
    if not view["targets"]:
        echo("(no transfers yet: bench/transfer_matrix.py fills the shipped matrix; POST /transfers runs yours)")
        return 0
    info = {t["name"]: t for t in view["targets"]}
    rows = informativeness_rows(info)
    for row, t in zip(rows, view["targets"], strict=True):
        if t["origin"] == "user" and not row[0].endswith("(yours)"):
            row[0] += " (yours)"
    echo(text_table(rows, INFO_HEADER, right=INFO_RIGHT))
    echo(f"rule: {view['rule']}")
    cost = describe_cost(matrix["cost"])
    if cost:
        devices = matrix["cost"]["totals"]["devices"]
        echo(f"cost: {cost}" + (f" ({', '.join(devices)})" if devices else ""))
    return 0


def add_transfers_command(lsub: argparse._SubParsersAction) -> None:
    """`taskrank library transfers`."""
    p = lsub.add_parser("transfers", help="the shipped transfer matrix (and your transfers) per target")
    p.add_argument("--matrix", help="a transfer-matrix CSV (default: the shipped library/default/transfer_matrix.csv)")
    p.add_argument("--no-user", action="store_true", help="leave out your own finished transfer jobs")
    p.add_argument("--json", action="store_true", help="print the whole view (cells and runs) as JSON")
    p.set_defaults(func=library_errors(cmd_library_transfers))
