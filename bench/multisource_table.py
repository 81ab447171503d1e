"""Render bench/multisource.py results as the README's Markdown table.

Later files override earlier ones per (target, method), so a rerun of one method (say
`--methods camtl` after a change) replaces only that row's cells; each cell's source file and git
revision are listed below the table.

    .venv/bin/python bench/multisource_table.py bench/results/multisource_minilm_stsb_v2.json \\
        bench/results/multisource_minilm_sst2.json bench/results/multisource_minilm_sst2_camtl_floor.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

LABELS = {
    "fine_tuning": "single-task fine-tuning",
    "adapter": "single adapter (the target's own)",
    "intermediate": "intermediate from the top source",
    "scalearn": "ScaLearn",
    "scalearn_uniform": "ScaLearnUniform",
    "adapterfusion": "AdapterFusion",
    "pemt": "PEMT",
    "camtl": "CA-MTL (uncertainty sampling)",
}


def merge(paths: list[Path]) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[tuple[str, str], str]]:
    """(target -> method -> result, (target, method) -> 'file@rev'), later files winning."""
    results: dict[str, dict[str, dict[str, Any]]] = {}
    origin: dict[tuple[str, str], str] = {}
    for path in paths:
        document = json.loads(path.read_text())
        for target, block in document["targets"].items():
            for method, result in block["methods"].items():
                results.setdefault(target, {})[method] = result
                origin[(target, method)] = f"{path.name}@{document.get('git_rev', '?')}"
    return results, origin


def table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    targets = list(results)
    methods = [m for m in LABELS if any(m in results[t] for t in targets)]
    header = ["method", "trained params", *targets, *(f"s / seed ({t})" for t in targets)]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for method in methods:
        cells = [results[t].get(method) for t in targets]
        best = [max((r["mean"] for r in results[t].values()), default=None) for t in targets]
        params = next((c["trained_parameters"] for c in cells if c), None)
        scores = []
        for cell, top in zip(cells, best, strict=True):
            if cell is None:
                scores.append("-")
                continue
            text = f"{cell['mean']:.2f} ± {cell['std']:.2f}"
            scores.append(f"**{text}**" if cell["mean"] == top else text)
        seconds = [f"{c['seconds_per_seed']:.0f}" if c else "-" for c in cells]
        lines.append("| " + " | ".join([LABELS[method], f"{params:,}" if params else "-", *scores, *seconds]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args()
    results, origin = merge(args.files)
    print(table(results))
    print()
    for target in results:
        sources = {o for (t, _), o in origin.items() if t == target}
        print(f"{target}: " + "; ".join(
            f"{o} ({', '.join(m for (t, m), oo in origin.items() if t == target and oo == o)})" for o in sorted(sources)))


if __name__ == "__main__":
    main()
