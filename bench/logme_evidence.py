"""Record exact LogME evidence for library tasks as targets while the source checkpoints are cached.

Exact LogME needs every source's fine-tuned checkpoint (87 MB each, not shipped). A sitting that has
them cached records the evidence of each (source checkpoint, target rows) pair in the shipped
`library/default/logme_evidence.jsonl`, so that `taskrank evaluate` and `bench/selection_report.py`
score `logme` later without the checkpoints. This does, for targets that are not yet in the matrix
(or not complete), what the report does for those in it: the same rows (the library's cap and seed),
the same key, the same store; evidence already recorded is not computed again.

    OMP_NUM_THREADS=1 nice -n 2 .venv/bin/python bench/logme_evidence.py --targets boolq,movie_reviews
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

_ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", required=True, help="comma-separated library tasks")
    parser.add_argument("--evidence", default=str(_ROOT / "library" / "default" / "logme_evidence.jsonl"),
                        help="where new evidence is appended (default: the shipped file)")
    args = parser.parse_args()

    from app.cli_common import library_service
    from library.errors import LibraryError
    from library.settings import get_settings

    with library_service(get_settings()) as service:
        service.evidence_path = Path(args.evidence)
        tasks = {t.name: t for t in service.store.list_tasks()}
        for name in [t for t in args.targets.split(",") if t]:
            if name not in tasks:
                raise SystemExit(f"{name!r} is not a library task")
            started = time.perf_counter()
            rows = service.target_rows(name)
            if rows is None:
                raise SystemExit(f"{name!r}: its task folder is not under {service.source_data_dir}")
            try:
                ranking = service.library.rank({}, "logme", top_k=len(tasks), all_class=True, rows=rows)
            except LibraryError as exc:
                print(json.dumps({"target": name, "error": str(exc)}), flush=True)
                continue
            print(json.dumps({"target": name, "scored": len(ranking.sources), "notes": ranking.notes,
                              "seconds": round(time.perf_counter() - started, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
