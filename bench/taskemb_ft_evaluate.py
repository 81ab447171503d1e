"""Both TaskEmb variants scored against a transfer table, on every measured source and on the sources
that have both (a source without `taskemb_ft` counts as ranked last in that method's ranking, which
is the service's behaviour but not a like-for-like comparison).

    TASKRANK_DATA_DIR=/tmp/tft TASKRANK_SHARED_DATA_DIR=../shared/data \\
        .venv/bin/python bench/taskemb_ft_evaluate.py library/default/transfer_matrix.csv \\
        [--out bench/results/taskemb_ft_evaluate_minilm.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

METHODS = ("taskemb", "taskemb_ft")


def main(argv: list[str] | None = None) -> int:
    from library.evaluation import TransferTable, load_transfer_matrix
    from library.service import LibraryService
    from library.settings import get_settings
    from library.taskemb_ft import TASKEMB_FT

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tables", nargs="+", help="transfer CSVs (source,target,score,baseline_score[,seed])")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    out: dict[str, Any] = {}
    with LibraryService.from_settings(get_settings()) as service:
        store = service.store
        both = sorted(t.name for t in store.list_tasks()
                      if {e.method for e in store.task_embeddings(t.id)} >= {"taskemb", TASKEMB_FT})
        for path in args.tables:
            table = load_transfer_matrix(path)
            runs = table.runs
            figures: dict[str, Any] = {"rows": len(runs), "targets": table.targets(), "skipped_targets": table.skipped,
                                       "sources": sorted({r.source for r in runs}), "sources_with_both": both}
            only_both = TransferTable(
                {t: {s: v for s, v in by.items() if s in both} for t, by in table.transfers.items()},
                runs=[r for r in runs if r.source in both], skipped=table.skipped, majority=table.majority)
            only_both.transfers = {t: by for t, by in only_both.transfers.items() if len(by) >= 2}
            for scope, chosen in (("all_sources", table), ("sources_with_both", only_both)):
                if not chosen.transfers:
                    figures[scope] = None
                    continue
                for headline in ("auto", "all"):
                    result = service.evaluate(chosen, list(METHODS), headline=headline)
                    figures[f"{scope}/{headline}"] = {
                        "targets": result["targets"], "headline": result.get("headline"),
                        "methods": {m: result["methods"][m] for m in (*METHODS, "random", "datasize")
                                    if m in result["methods"]},
                        "skipped_methods": result.get("skipped_methods"), "method_notes": result.get("method_notes")}
                    head = result.get("headline") or {}
                    print(f"{path} [{scope}] {len(result['targets'])} target(s), "
                          f"{sum(len(v) for v in chosen.transfers.values())} pairs; headline "
                          f"{head.get('scope', headline)} over {len(head.get('targets') or result['targets'])}")
                    for m, v in figures[f"{scope}/{headline}"]["methods"].items():
                        print(f"  {m:<11} NDCG {v['ndcg']:.3f}  rho {v['rho']:.2f}  Regret {v['regret']:.2f}")
            out[path] = figures
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
