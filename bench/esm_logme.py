"""ESM-LogME speed: scoring a 1,000-row target against 30 sources, beside TextEmb, SEmb and TaskEmb.

Two measurements, one JSON (`bench/results/esm_logme_cpu.json`):

* core call: after the target's rows are embedded once, `esm_logme_scores` for 30 ESMs (target: under
  2 s on 2 CPU cores), against the baseline measured in the same run: exact LogME on the 30 mapped
  feature matrices formed explicitly (`logme_many`), i.e. what ESM-LogME would cost without the
  Gram shortcut;
* the pipeline (`LibraryService.rank`, what a ranking job runs) on a fresh data directory with the
  shipped default library, for textemb, semb, taskemb and esm_logme, each from a cold target cache.

Scoring cost does not depend on the maps' values, so where the library has fewer than 30 fitted
ESMs the others are random near-identity maps, stored like real ones (the ranking they give is then
meaningless and not reported). The target is sst2's first 1,000 training rows.

    .venv/bin/python bench/esm_logme.py [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--sources", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: one per core)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "esm_logme_cpu.json"))
    args = parser.parse_args()

    import torch

    from embeddings.data import load_dataset
    from embeddings.encoders import set_threads
    from embeddings.esm import EmbeddingSpaceMap, esm_logme_scores, pooled_embeddings
    from embeddings.logme import logme_many
    from library.esm import target_labels
    from library.service import LibraryService
    from library.settings import Settings

    set_threads(args.threads)
    target = load_dataset(Path(args.data) / "sst2").subsample(1000, 13)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), shared_data_dir=Path(args.data))
        service = LibraryService.from_settings(settings)
        encoder = service.encoder
        from library.pipeline import ranking_options

        options = ranking_options(service.store, encoder)
        rng = np.random.default_rng(13)
        d = encoder.hidden_size
        real = {m.task_id for m in service.store.source_maps("esm", encoder.weights_hash)}
        tasks = service.store.list_tasks()[: args.sources]
        for task in tasks:
            if task.id not in real:
                weight = np.eye(d, dtype=np.float32) + 0.05 * rng.standard_normal((d, d)).astype(np.float32)
                service.store.put_source_map(task.id, "esm", encoder.name, encoder.weights_hash, "synthetic",
                                             weight, np.zeros(d, np.float32), {"r2_heldout": float("nan")})
        maps = [EmbeddingSpaceMap(weight=m.weight, bias=m.bias, r2_heldout=0.0, rows=0, ridge=0.0)
                for m in service.store.source_maps("esm", encoder.weights_hash)][: args.sources]
        labels, regression = target_labels(target)
        started = time.perf_counter()
        features = pooled_embeddings(target, encoder, None, options.embed_options())
        embed_s = time.perf_counter() - started
        core, naive = [], []
        for _ in range(3):
            t = time.perf_counter()
            scores = esm_logme_scores(features, labels, maps, regression=regression)
            core.append(time.perf_counter() - t)
            t = time.perf_counter()
            mapped = np.stack([m.apply(features) for m in maps])
            reference = logme_many(mapped, labels, regression=regression)
            naive.append(time.perf_counter() - t)
        assert np.allclose(scores, reference, rtol=1e-4, atol=1e-6)
        pipeline = {}
        for method in ("textemb", "semb", "taskemb", "esm_logme"):
            for path in settings.paths.embeddings.glob("*"):
                path.unlink()  # a cold target cache for each method
            t = time.perf_counter()
            service.rank(target, method, top_k=5, all_class=False)
            pipeline[method] = round(time.perf_counter() - t, 2)
        service.close()
    result = {
        "benchmark": "bench/esm_logme.py", "target": "sst2 (1,000 rows)", "sources": len(maps),
        "real_esms": len(real), "model": encoder.name,
        "target_embedding_s": round(embed_s, 2),
        "esm_logme_scoring_s": {"min": round(min(core), 3), "runs": [round(x, 3) for x in core]},
        "baseline_explicit_logme_s": {"min": round(min(naive), 3), "runs": [round(x, 3) for x in naive]},
        "speedup_vs_baseline": round(min(naive) / min(core), 2),
        "pipeline_cold_cache_s": pipeline,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                    "torch": torch.__version__, "load_avg": [round(x, 2) for x in os.getloadavg()]},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
