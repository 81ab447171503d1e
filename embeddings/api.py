"""One entry point per job: `embed(dataset, method, encoder)` dispatches to TextEmb, SEmb or TaskEmb."""

from __future__ import annotations

from typing import Literal

from embeddings.data import Dataset
from embeddings.encoders import Encoder
from embeddings.options import EmbedOptions, ProgressFn, TaskEmbOptions, no_progress
from embeddings.result import EmbeddingResult
from embeddings.taskemb import fisher_embedding
from embeddings.textemb import sentence_embedding, text_embedding

Method = Literal["textemb", "semb", "taskemb"]
METHODS: tuple[str, ...] = ("textemb", "semb", "taskemb")


def embed(dataset: Dataset, method: str, encoder: Encoder, options: EmbedOptions | None = None,
          on_progress: ProgressFn = no_progress) -> EmbeddingResult:
    if method == "textemb":
        return text_embedding(dataset, encoder, options, on_progress)
    if method == "semb":
        return sentence_embedding(dataset, encoder, options, on_progress)
    if method == "taskemb":
        if options is not None and not isinstance(options, TaskEmbOptions):
            raise TypeError("taskemb needs TaskEmbOptions")
        return fisher_embedding(dataset, encoder, options, on_progress)
    raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
