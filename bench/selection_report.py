"""The README's "Selection quality" figures, regenerated from the shipped transfer matrix in one run.

Scores every ranking method on the matrix (`taskrank evaluate`: random, DataSize and the source prior
beside them; headline on the informative targets, by the rule fixed in `library/evaluation.py`), and
the learned ranker leave-one-target-out (`taskrank ranker validate`, its nested row first), then writes

* `bench/results/selection_quality.json`: both results as the commands' `--json` give them, with the
  matrix's size, its sidecar's device and the machine this ran on;
* `bench/results/selection_quality.md`: the per-target table and the methods table;
* with `--readme`, the same Markdown between the `<!-- selection-quality:begin -->` and
  `<!-- selection-quality:end -->` markers of README.md (the prose around them is written by hand), and
  the service's unlearned default ranking method, chosen from these figures by the fixed rule of
  `library.default_choice`, in `library/default/default_method.json` (shipped with the package).

    .venv/bin/python bench/selection_report.py --readme
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

_ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- selection-quality:begin -->", "<!-- selection-quality:end -->"
LABELS = {"nested": "learned (candidate chosen without the held-out target)", "datasize": "DataSize (largest first)",
          "source_prior": "source prior (mean relative gain elsewhere)", "random": "random (mean of 100)"}


def _f(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(float(value), spec)


def per_target_table(evaluation: dict[str, Any]) -> list[str]:
    lines = ["| target | metric | baseline (± sd over seeds) | majority class | seed sd | best source | gain (pts) "
             "| 95% interval | sources x seeds | informative |", "|---|---|---:|---:|---:|---|---:|---|---:|---|"]
    for target, v in evaluation["informativeness"].items():
        ci = v.get("best_gain_ci95")
        lines.append(
            f"| {target} | {v['metric']} | {_f(v['baseline_mean'], '.1f')} ± {_f(v['baseline_sd'], '.1f')} "
            f"| {_f(v['majority_score'], '.1f')} | {_f(v['seed_sd'], '.2f')} | {v['best_source']} "
            f"| {v['best_gain_points']:+.1f} | {'-' if ci is None else f'{ci[0]:+.1f}..{ci[1]:+.1f}'} "
            f"| {v['sources']} x {v['seeds']} | {_verdict(v)} |")
    return lines


def _verdict(v: dict[str, Any]) -> str:
    """yes / no; with a later seed added, the verdict on the first two seeds beside it."""
    verdict = "yes" if v["informative"] else "no"
    two = v.get("first_two_seeds")
    if two:
        verdict += (f" (seeds {two['seeds'][0]}, {two['seeds'][1]} alone: {'yes' if two['informative'] else 'no'}, "
                    f"{two['best_source']} {two['best_gain_points']:+.1f} against {_f(two['threshold_points'], '.1f')})")
    return verdict


def methods_table(evaluation: dict[str, Any], validation: dict[str, Any] | None) -> list[str]:
    k = evaluation["k_ndcg"]
    head = evaluation["headline"]
    rows: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []
    if validation is not None:
        for name in ("nested", validation.get("chosen")):
            if name and name in validation["methods"]:
                label = LABELS.get(name, f"learned: {name} (best candidate on the same folds)")
                rows.append((label, validation["methods"][name], None))
    all_targets = evaluation.get("methods_all_targets", {})
    for method, m in sorted(evaluation["methods"].items(), key=lambda kv: -kv[1]["ndcg"]):
        rows.append((LABELS.get(method, method), m, all_targets.get(method)))
    lines = [f"| method | NDCG@{k} | rho | Regret@{evaluation['k_regret']} (%) | NDCG@{k}, all {len(evaluation['targets'])} "
             "targets |", "|---|---:|---:|---:|---:|"]
    for label, m, everywhere in rows:
        lines.append(f"| {label} | {_f(m['ndcg'])} | {_f(m['rho'], '.2f')} | {_f(m['regret'], '.2f')} "
                     f"| {_f(everywhere['ndcg']) if everywhere else '-'} |")
    lines.append("")
    lines.append(f"Headline columns over the {len(head['targets'])} {head['scope']} target(s): "
                 f"{', '.join(head['targets'])}.")
    return lines


def ranker_bars(validation: dict[str, Any] | None) -> list[str]:
    """The learned ranker against the bars of `library.ranker.criteria`, in words (judged on its nested row)."""
    c = (validation or {}).get("criteria") or {}
    if not c:
        return []
    over = c["over"]

    def bar(value: float | None, need: float, ok: bool, spec: str = "+.3f") -> str:
        shown = "-" if value is None else format(value, spec)
        return f"{shown} (bar {format(need, spec)}): {'reached' if ok else 'not reached'}"

    worst = min(over, key=lambda m: over[m]) if over else None
    top1, coverage = c.get("top1_helps"), c.get("coverage")
    return ["", f"**The learned ranker against its bars** (its {c['judged_on']} row, {c['headline_targets']} "
            f"informative targets): over DataSize {bar(over.get('datasize'), 0.10, c['datasize_margin_ok'])}; "
            f"over the source prior {bar(over.get('source_prior'), 0.05, c['source_prior_margin_ok'])}; top-1 helps "
            f"on {'-' if top1 is None else f'{top1:.0%}'} of them (bar 80%): "
            f"{'reached' if c['top1_ok'] else 'not reached'}; its {c['nominal_coverage']:.0%} interval covers "
            f"{'-' if coverage is None else f'{coverage:.0%}'} of the held-out gains. "
            + ("It beats every unlearned method on enough targets, so an active version of it is the service's "
               "default." if c["may_be_default"] else
               f"It beats every unlearned method, but on fewer than {c['min_default_targets']} informative targets, "
               "so it is not the service's default." if c["beats_every_unlearned"] else
               f"It does not beat every unlearned method ({worst} by {-over[worst]:.3f} NDCG@5), so it is not the "
               "service's default.")]


def coverage_and_cost(runs: list[dict[str, Any]], sidecar: dict[str, Any]) -> list[str]:
    """How far the matrix got and what it cost, from its rows and sidecar (the closing notes quote these)."""
    from library.transfers import describe_cost, matrix_cost, matrix_coverage

    sources = sorted(sidecar.get("sources") or {r["source"] for r in runs})
    coverage = matrix_coverage(runs, sources, sidecar.get("targets") or {})
    seeds = max((len(c["seeds"]) for c in coverage.values()), default=0)
    measured = {t: c for t, c in coverage.items() if c["sources"]}
    all_sources = {t for t, c in measured.items() if not c["missing"] and not c["short"]}
    complete = sorted(t for t in all_sources if len(measured[t]["seeds"]) == seeds)
    # every source, but at fewer seeds than the matrix's most (a later seed not yet run on them), by seed set
    fewer: dict[tuple[Any, ...], list[str]] = {}
    for t in all_sources - set(complete):
        fewer.setdefault(tuple(measured[t]["seeds"]), []).append(t)
    partial = [t for t in measured if t not in all_sources]
    waiting = [t for t, c in coverage.items() if not c["sources"]]

    def short(c: dict[str, Any]) -> str:
        return f"{', '.join(c['short'])} at fewer than {len(c['seeds'])} seeds; " if c["short"] else ""

    lines = [f"**Coverage** ({len(sources)} sources, {seeds} seeds): complete on {len(complete)} targets "
             f"({', '.join(complete) or 'none'})"
             + "".join(f"; every source at seeds {', '.join(map(str, got))} only on {len(ts)} targets "
                       f"({', '.join(sorted(ts))})" for got, ts in sorted(fewer.items()))
             + "".join(f"; {t} has {c['sources']} of {c['sources'] + len(c['missing'])} sources "
                       f"({short(c)}missing {', '.join(c['missing']) or 'none'})"
                       for t, c in coverage.items() if t in partial)
             + (f"; not yet measured: {', '.join(waiting)}" if waiting else "") + "."]
    cost = matrix_cost(runs, sidecar)
    tot = cost["totals"]
    if cost["target_runs"].get("timed"):
        lines += ["", f"**Cost** ({', '.join(tot['devices']) or 'device not recorded'}, one thread per run): "
                  f"{describe_cost(cost)}. Over {tot['sittings']} runner sessions (a sitting may hold several): "
                  f"{tot['wall_s'] / 3600:.1f} h of wall time, {tot['source_s'] / 3600:.1f} CPU-hours of source "
                  "training (checkpoints are not shipped, so a sitting retrains the sources it runs) and "
                  f"{tot['target_s'] / 3600:.1f} of target runs (baselines included)."]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--matrix", default=str(_ROOT / "library" / "default" / "transfer_matrix.csv"))
    parser.add_argument("--out", default=str(_ROOT / "bench" / "results" / "selection_quality"))
    parser.add_argument("--no-ranker", action="store_true", help="leave the learned ranker out")
    parser.add_argument("--skip", default="", help="comma-separated methods to leave out (logme: one forward "
                                                   "pass per target and cached source checkpoint, slow on CPU)")
    parser.add_argument("--readme", action="store_true", help="rewrite README.md between the markers")
    parser.add_argument("--evidence", default=str(_ROOT / "library" / "default" / "logme_evidence.jsonl"),
                        help="where logme's new evidence is appended (default: the shipped file, so the sources "
                             "scored in one sitting stay scored in the next, when their checkpoints are gone)")
    args = parser.parse_args()
    if args.readme and args.skip:
        parser.error("--readme with --skip would choose the service's default from part of the methods")

    from app.cli_common import library_service
    from library.evaluation import load_transfer_matrix
    from library.settings import get_settings

    settings = get_settings()
    matrix = Path(args.matrix)
    started = time.perf_counter()
    table = load_transfer_matrix(matrix)
    with library_service(settings) as service:
        from library.methods import RANKING_METHODS

        service.evidence_path = Path(args.evidence)

        skip = {m for m in args.skip.split(",") if m}
        evaluation = service.evaluate(table, [m for m in RANKING_METHODS.names() if m not in skip and m != "learned"])
        for method in sorted(skip):
            evaluation.setdefault("skipped_methods", {})[method] = "left out of this report (--skip)"
        validation = None
        if not args.no_ranker:
            from library.ranker import validate_matrix
            from library.ranker_store import RankerStore

            with RankerStore(settings.resolved_database_url) as rstore:
                validation = validate_matrix(service, rstore, matrix)
    from library.transfers import read_matrix_runs, read_sidecar, sidecar_path

    runs = read_matrix_runs(matrix)[0]
    sidecar = read_sidecar(sidecar_path(matrix))
    devices = sorted({s.get("device", "?") for s in sidecar.get("sessions", [])})
    about = {"matrix": str(matrix.relative_to(_ROOT)) if matrix.is_relative_to(_ROOT) else str(matrix),
             "runs": len(runs), "targets": len({r["target"] for r in runs}), "sources": len({r["source"] for r in runs}),
             "matrix_devices": devices, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
             "generated": datetime.now(UTC).isoformat(timespec="minutes"), "seconds": round(time.perf_counter() - started)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"about": about, "evaluate": evaluation, "ranker": validation},
                                                   indent=1, default=str) + "\n")
    skipped = evaluation.get("skipped_methods", {})
    partial = {m: sorted({src for sources in by_target.values() for src in sources})
               for m, by_target in evaluation.get("unscored_sources", {}).items()}
    md = [f"Generated by `bench/selection_report.py` from `{about['matrix']}` ({about['runs']} transfer runs, "
          f"{about['targets']} targets, {about['sources']} sources; {about['generated']}).", "",
          "**Per target** (gains in points of the target's metric x 100, paired on the seed):", "",
          *per_target_table(evaluation), "", *coverage_and_cost(runs, sidecar), "", "**Methods** (leave-one-target-out for the learned ranker):", "",
          *methods_table(evaluation, validation), *ranker_bars(validation)]
    if partial:
        md += ["", "Ranked with measured sources missing (counted as ranked last, so its figures are a floor): "
               + "; ".join(f"{m} (no {'checkpoint or recorded evidence' if m == 'logme' else 'vectors or map'} here for "
                           f"{', '.join(names)})" for m, names in partial.items())]
    if skipped:
        md += ["", "Not scored here: " + "; ".join(f"{m} ({why})" for m, why in skipped.items())]
    left_out = evaluation.get("skipped_targets", {})
    if left_out:
        md += ["", "Targets left out (relative gain undefined): "
               + "; ".join(f"{t} ({why})" for t, why in left_out.items())]
    from library.default_choice import candidates, choose, write_choice
    from library.methods import RANKING_METHODS

    head = evaluation["headline"]
    choice = choose({m: v["ndcg"] for m, v in evaluation["methods"].items()},
                    head["targets"] if head["scope"] == "informative" else [], candidates(RANKING_METHODS))
    md += ["", f"**The service's default ranking method** (unlearned; rule in `library/default_choice.py`): "
               f"`{choice.method}`: {choice.reason}."]
    text = "\n".join(md) + "\n"
    out.with_suffix(".md").write_text(text)
    if args.readme:
        write_choice(replace(choice, about={"matrix": about["matrix"], "runs": about["runs"],
                                            "generated": about["generated"], "machine": about["machine"],
                                            "library_version": evaluation.get("library_version")}))
        readme = _ROOT / "README.md"
        body = readme.read_text()
        if BEGIN not in body or END not in body:
            raise SystemExit(f"README.md has no {BEGIN} ... {END} block")
        head, rest = body.split(BEGIN, 1)
        readme.write_text(head + BEGIN + "\n" + text + END + rest.split(END, 1)[1])
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
