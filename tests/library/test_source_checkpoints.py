"""The one scan of library sources and their cached checkpoints: ESMs for every task type (a tagging
source's too), `taskemb_ft` for text sources, and a clear report of what could not be built."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embeddings.encoders import Encoder
from embeddings.options import EmbedOptions
from library.build import build_library
from library.errors import LibraryError
from library.esm import ESM, build_esms
from library.source_checkpoints import SourceBuildReport, scan_source_checkpoints
from library.store import LibraryStore
from library.taskemb_ft import build_finetuned_taskembs
from tests.library.test_taskemb_ft import OPTIONS, data_dir, fake_checkpoints, tiny_encoder  # noqa: F401

WITH_CHECKPOINT = ("rte", "conll2000_chunk")


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, tiny_encoder: Encoder):  # noqa: F811
    root = tmp_path_factory.mktemp("lib")
    store = LibraryStore.from_data_dir(root)
    build_library(data_dir, store, tiny_encoder, OPTIONS)
    checkpoints = fake_checkpoints(data_dir, tiny_encoder, root / "checkpoints", WITH_CHECKPOINT)
    yield store, checkpoints
    store.close()


def test_esms_are_built_for_a_tagging_source_and_reported_for_the_rest(library, data_dir, tiny_encoder):  # noqa: F811
    store, checkpoints = library
    report = build_esms(store, data_dir, tiny_encoder, [checkpoints], EmbedOptions(), rows=20)
    assert sorted(report.built) == sorted(WITH_CHECKPOINT)
    assert sorted(report.missing_checkpoint) == ["cola", "sst2"] and report.unsupported == []
    maps = {m.task_name: m for m in store.source_maps(ESM, tiny_encoder.weights_hash)}
    assert sorted(maps) == sorted(WITH_CHECKPOINT)
    tagging = maps["conll2000_chunk"]
    assert tagging.weight.shape == (32, 32) and np.all(np.isfinite(tagging.weight))
    assert tagging.info["checkpoint_sha256"] == report.built["conll2000_chunk"]["checkpoint_sha256"]
    again = build_esms(store, data_dir, tiny_encoder, [checkpoints], EmbedOptions(), rows=20)
    assert again.built == {} and sorted(again.kept) == sorted(WITH_CHECKPOINT)


def test_taskemb_ft_is_built_for_text_sources_only(library, data_dir, tiny_encoder):  # noqa: F811
    store, checkpoints = library
    report = build_finetuned_taskembs(store, data_dir, tiny_encoder, [checkpoints], OPTIONS)
    assert list(report.built) == ["rte"] and report.unsupported == ["conll2000_chunk"]
    assert sorted(report.missing_checkpoint) == ["cola", "sst2"]


def test_an_unknown_source_name_is_an_error_not_an_empty_build(library, data_dir, tiny_encoder):  # noqa: F811
    store, checkpoints = library
    with pytest.raises(LibraryError, match="no source task.*rtee"):
        list(scan_source_checkpoints(store, data_dir, tiny_encoder, [checkpoints], SourceBuildReport(),
                                     only=["rte", "rtee"]))
    found = list(scan_source_checkpoints(store, data_dir, tiny_encoder, [checkpoints],
                                         SourceBuildReport(), only=["rte"]))
    assert [f.task.name for f in found] == ["rte"] and len(found[0].sha256) == 16
