"""The one ranking pipeline: `rank_target(dataset, library, encoder, method, ...)`.

It owns every step between a dataset and its ranking: the library's build options, the check that
the encoder is the library's, the target-embedding cache (a part already computed for this dataset,
model and options is read, not recomputed, whichever method computed it), and the search. The CLI
(`LibraryService.rank`), the worker's ranking job and the benchmarks all call it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from embeddings.data import Dataset
from embeddings.encoders import Encoder
from embeddings.options import ProgressFn, no_progress
from embeddings.registry import EMBEDDING_METHODS
from embeddings.result import EmbeddingResult
from library.build import BuildOptions, check_encoder, embed_target, library_options, methods_for
from library.errors import LibraryError
from library.logme_evidence import EvidenceStore
from library.methods import DEFAULT_METHOD, RANKING_METHODS, TargetRows
from library.ranking import Ranking, SourceLibrary
from library.store import LibraryStore
from library.target_cache import TargetEmbeddingCache


def ranking_options(store: LibraryStore, encoder: Encoder, token_budget: int = 0) -> BuildOptions:
    """The library's build options, with this machine's batch budget; a clear error for an unusable library."""
    options = library_options(store)
    if options is None:
        if not store.list_tasks():
            raise LibraryError(
                "the library is empty: run `taskrank library build DATA_DIR` or `library import DIR`"
            )
        raise LibraryError("the library records no build options: rebuild it with `taskrank library build`")
    check_encoder(store, encoder)
    return options.with_token_budget(encoder.token_budget(token_budget))


def rows_key(options: BuildOptions, sample: Dataset) -> str:
    """What a target's LogME rows depend on besides its data and model: the library's options, and the
    token sample's size for a sequence-labelling target. Keys the row cache and the LogME evidence."""
    if sample.task_type.value == "sequence_labeling":
        from embeddings.esm import TOKEN_BUDGET

        return f"{options.options_hash}:tokens{TOKEN_BUDGET}"
    return options.options_hash


def target_embeddings(dataset: Dataset, encoder: Encoder, method: str, options: BuildOptions, *,
                      cache: TargetEmbeddingCache | None = None, on_progress: ProgressFn = no_progress,
                      on_stage: Callable[[str], None] | None = None) -> dict[str, EmbeddingResult]:
    """The target's embeddings that `method` needs: from the cache where present, the rest computed once."""
    parts = methods_for(method)
    found: dict[str, EmbeddingResult] = {}
    for part in parts:
        hit = cache.get(dataset.content_hash, encoder.weights_hash, part, options.options_hash) if cache else None
        if hit is not None:
            found[part] = hit
    missing = [p for p in parts if p not in found]
    if missing:
        if on_stage is not None:
            on_stage(f"embedding ({', '.join(missing)})")
        # A pass computes every method in it (TextEmb and SEmb share one): cache them all, so the next
        # request for a sibling method is answered without embedding the rows again.
        passes = {EMBEDDING_METHODS[m].passes for m in missing}
        siblings = [m for m in options.methods if EMBEDDING_METHODS[m].passes in passes and m not in found]
        computed = embed_target(dataset, encoder, siblings if cache is not None else missing, options, on_progress)
        for part, result in computed.items():
            if cache is not None:
                cache.put(result, options.options_hash, dataset.content_hash)
            found[part] = result
    return {part: found[part] for part in parts}


def rank_target(dataset: Dataset, library: SourceLibrary, encoder: Encoder, method: str = DEFAULT_METHOD,
                top_k: int = 10, all_class: bool = False, on_progress: ProgressFn = no_progress,
                token_budget: int = 0, *, cache: TargetEmbeddingCache | None = None,
                on_stage: Callable[[str], None] | None = None,
                checkpoint_dirs: Sequence[Path] = (), evidence: EvidenceStore | None = None) -> Ranking:
    """Embed `dataset` the library's way (through `cache`) and rank the library's sources for it.

    The target's own task is excluded when a source's data hash equals the full dataset's hash.
    """
    spec = RANKING_METHODS.get(method)  # an unknown method fails before any work
    options = ranking_options(library.store, encoder, token_budget)
    rows = None
    sample = dataset.subsample(options.max_rows, options.seed) if spec.needs_rows or spec.wants_rows else None
    if sample is not None:
        from library.esm import target_labels

        try:
            target_labels(sample)  # an unlabelled or unsupported target fails before any embedding
        except LibraryError:
            if spec.needs_rows:
                raise
            sample = None  # a method that only wants the rows ranks without them
    if sample is not None:
        key = rows_key(options, sample)
        rows = TargetRows(dataset=sample, encoder=encoder, embed_options=options.embed_options(),
                          store=library.store, checkpoint_dirs=tuple(checkpoint_dirs),
                          target_hash=dataset.content_hash, rows_key=key, evidence=evidence)
        if cache is not None:
            rows.features = cache.get_rows(dataset.content_hash, encoder.weights_hash, key)
        if rows.features is None:
            if on_stage is not None:
                on_stage("embedding the target's rows")
            features = rows.base_features()
            if cache is not None:
                cache.put_rows(dataset.content_hash, encoder.weights_hash, key, features)
    targets = target_embeddings(dataset, encoder, method, options, cache=cache, on_progress=on_progress,
                                on_stage=on_stage)
    if on_stage is not None:
        on_stage("ranking")
    return library.rank(targets, method, top_k=top_k, all_class=all_class, exclude_hash=dataset.content_hash,
                        rows=rows, dataset=dataset)
