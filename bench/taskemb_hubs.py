"""TaskEmb hubs before and after the sources' checkpoint-based TaskEmb (`taskemb_ft`).

The shipped library's TaskEmb (a briefly trained head on the frozen base encoder) has hub tasks:
brown_genre is among the 3 nearest TaskEmb neighbours of 19 of the 20 text tasks. For every text
task (classification and regression) of a library where `taskrank library build-taskemb-ft` ran, this
lists its 3 nearest neighbours among the sources that have both variants (the task itself excluded),
as the service ranks them (library-centred cosine per Fisher component, fused by RRF), under:

* `taskemb`: target TaskEmb vs the sources' old TaskEmb (the `taskemb` ranking method);
* `taskemb_ft`: target TaskEmb (briefly trained: a target has no checkpoint) vs the sources'
  checkpoint-based TaskEmb (the `taskemb_ft` ranking method, as served);
* `ft_vs_ft`: both sides checkpoint-based (Vu et al.'s setting; only targets that have a checkpoint);
* `taskemb_all`: the old TaskEmb among all text sources (the shipped symptom, for reference).

and counts how often each source appears in those top-3 lists, under the service's similarity
(library-centred cosine, the default) and plain cosine.

    TASKRANK_DATA_DIR=/tmp/tft .venv/bin/python bench/taskemb_hubs.py [--out bench/results/taskemb_hubs.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXT_TYPES = ("classification", "regression")
TOP = 3


def main(argv: list[str] | None = None) -> int:
    from library.service import stored_targets
    from library.settings import get_settings
    from library.store import LibraryStore
    from library.taskemb_ft import TASKEMB_FT

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    settings = get_settings()
    store = LibraryStore(settings.resolved_database_url)
    tasks = [t for t in store.list_tasks() if t.task_type in TEXT_TYPES]
    stored = {t.name: stored_targets(store, t) for t in tasks}
    both = sorted(n for n, s in stored.items() if "taskemb" in s and TASKEMB_FT in s)
    if not both:
        raise SystemExit(f"no source has both taskemb and {TASKEMB_FT}: run `taskrank library build-taskemb-ft`")
    text = sorted(stored)
    result: dict[str, Any] = {"text_tasks": text, "sources_with_both": both, "top": TOP}
    for similarity in ("centred", "cosine"):
        lists = _nearest_lists(store, stored, text, both, len(tasks), similarity)
        counts = {variant: dict(Counter(n for top in by_target.values() for n in top).most_common())
                  for variant, by_target in lists.items()}
        result[similarity] = {"nearest": lists, "appearances": counts,
                              "targets": {variant: len(by_target) for variant, by_target in lists.items()}}
        for variant, by_target in lists.items():
            print(f"\n[{similarity}] {variant}: {len(by_target)} targets; appearances in the top {TOP}: "
                  + ", ".join(f"{n} {c}" for n, c in counts[variant].items()))
            for target, top in by_target.items():
                print(f"  {target:<18} {', '.join(top)}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    store.close()
    return 0


def _nearest_lists(store: Any, stored: dict[str, Any], text: list[str], both: list[str], size: int,
                   similarity: str) -> dict[str, dict[str, list[str]]]:
    from library.ranking import SourceLibrary
    from library.taskemb_ft import TASKEMB_FT

    with tempfile.TemporaryDirectory() as index_dir:
        library = SourceLibrary(store, index_dir, similarity=similarity)  # type: ignore[arg-type]

        def nearest(target: str, method: str, vectors: Any, among: list[str]) -> list[str]:
            ranking = library.rank({"taskemb": vectors}, method, top_k=size + 1, all_class=True)
            return [n for n in ranking.names() if n in among and n != target][:TOP]

        lists: dict[str, dict[str, list[str]]] = {"taskemb": {}, "taskemb_ft": {}, "ft_vs_ft": {}, "taskemb_all": {}}
        for target in text:
            own = stored[target]["taskemb"]
            lists["taskemb"][target] = nearest(target, "taskemb", own, both)
            lists["taskemb_ft"][target] = nearest(target, TASKEMB_FT, own, both)
            lists["taskemb_all"][target] = nearest(target, "taskemb", own, text)
            if TASKEMB_FT in stored[target]:
                tuned = replace(stored[target][TASKEMB_FT], method="taskemb")  # searched as a target TaskEmb
                lists["ft_vs_ft"][target] = nearest(target, TASKEMB_FT, tuned, both)
    return lists


if __name__ == "__main__":
    raise SystemExit(main())
