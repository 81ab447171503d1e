"""The embedding-method registry and its one dispatcher: `embed_many(dataset, methods, encoder, ...)`.

TextEmb and SEmb share one forward pass over the rows (`text` pass); TaskEmb trains a head and reads
Fisher information (`taskemb` pass). Every caller (a single `embed`, the library build, a target's
embedding for a ranking) goes through `embed_many`, so a pass is computed once however many of its
methods are asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from embeddings.options import ProgressFn, TaskEmbOptions, no_progress
from embeddings.registry import EMBEDDING_METHODS, METHODS, EmbeddingMethod, in_pass

if TYPE_CHECKING:
    from embeddings.data import Dataset
    from embeddings.encoders import Encoder
    from embeddings.options import EmbedOptions
    from embeddings.result import EmbeddingResult

__all__ = ["EMBEDDING_METHODS", "METHODS", "EmbeddingMethod", "check_methods", "embed", "embed_many", "pass_sizes"]


def check_methods(methods: Sequence[str]) -> list[str]:
    """The methods in canonical order without duplicates; a ValueError names an unknown one."""
    variants = [m for m in methods if m in EMBEDDING_METHODS and m not in METHODS]
    if variants:
        spec = EMBEDDING_METHODS[variants[0]]
        raise ValueError(f"{spec.name} is computed for library sources from their fine-tuned checkpoints "
                         f"(`taskrank library build-taskemb-ft`), not from a dataset alone; embed with "
                         f"{spec.target_method} instead")
    unknown = [m for m in methods if m not in EMBEDDING_METHODS]
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r}; choose one of the embedding methods {', '.join(METHODS)}")
    return [m for m in METHODS if m in methods]


def pass_sizes(dataset_rows: int, methods: Sequence[str], taskemb: TaskEmbOptions | None) -> list[int]:
    """Progress units of each pass `embed_many` will run, in order (for staged progress)."""
    wanted = check_methods(methods)
    sizes = []
    if in_pass(wanted, "text"):
        sizes.append(dataset_rows)
    if "taskemb" in wanted:
        options = taskemb or TaskEmbOptions()
        sizes.append(options.train_steps * options.train_batch_size + dataset_rows)
    return sizes


class _StagedProgress:
    """Folds the progress of consecutive passes into one (done, total) stream."""

    def __init__(self, on_progress: ProgressFn, estimates: list[int]) -> None:
        self.on_progress = on_progress
        self.estimates = estimates
        self.finished = 0
        self.stage = 0
        self._last_total = estimates[0] if estimates else 0

    def callback(self) -> ProgressFn:
        def update(done: int, total: int) -> None:
            pending = sum(self.estimates[self.stage + 1 :])
            self.on_progress(self.finished + done, self.finished + total + pending)
            self._last_total = total

        self._last_total = self.estimates[self.stage]
        return update

    def next(self) -> None:
        self.finished += self._last_total
        self.stage += 1


def embed_many(dataset: Dataset, methods: Sequence[str], encoder: Encoder, options: EmbedOptions | None = None,
               taskemb_options: TaskEmbOptions | None = None,
               on_progress: ProgressFn = no_progress) -> dict[str, EmbeddingResult]:
    """Each requested method's embedding of `dataset`, one pass per group; progress over all passes."""
    from embeddings.taskemb import fisher_embedding
    from embeddings.textemb import text_and_sentence_embeddings

    wanted = check_methods(methods)
    staged = _StagedProgress(on_progress, pass_sizes(len(dataset), wanted, taskemb_options))
    results: dict[str, EmbeddingResult] = {}
    if in_pass(wanted, "text"):
        text, sentence = text_and_sentence_embeddings(dataset, encoder, options, staged.callback())
        staged.next()
        results.update({r.method: r for r in (text, sentence) if r.method in wanted})
    if "taskemb" in wanted:
        results["taskemb"] = fisher_embedding(dataset, encoder, taskemb_options, staged.callback())
        staged.next()
    return results


def embed(dataset: Dataset, method: str, encoder: Encoder, options: EmbedOptions | None = None,
          on_progress: ProgressFn = no_progress) -> EmbeddingResult:
    """One method's embedding (TaskEmb takes `TaskEmbOptions` as its options)."""
    check_methods([method])
    if method == "taskemb":
        if options is not None and not isinstance(options, TaskEmbOptions):
            raise TypeError("taskemb needs TaskEmbOptions")
        return embed_many(dataset, [method], encoder, None, options, on_progress)[method]
    return embed_many(dataset, [method], encoder, options, None, on_progress)[method]
