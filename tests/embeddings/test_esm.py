"""Embedding space maps: the ridge fit, storage, ESM-LogME scoring and SEmb-identical pooling per row."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from embeddings.data import Dataset, TaggingExample, TaskType, TextExample
from embeddings.esm import (
    EmbeddingSpaceMap,
    dequantise_rows,
    esm_logme_scores,
    fit_esm,
    pooled_embeddings,
    quantise_rows,
    token_embeddings,
    token_tags,
)
from embeddings.features import tokenize
from embeddings.logme import logme, logme_many
from embeddings.options import EmbedOptions
from embeddings.textemb import sentence_embedding

SENTENCES = ["a gripping , funny film", "dull", "the plot never comes together and the acting is wooden",
             "one of the best of the year", "i walked out", "charming and sincere , if a little long",
             "not worth the ticket price at all", "wonderful", "an honest , moving story about two brothers"]


def toy_dataset(n: int = 18) -> Dataset:
    rows = [TextExample(SENTENCES[i % len(SENTENCES)] + " really" * (i // len(SENTENCES)), None, str(i % 2))
            for i in range(n)]
    return Dataset(name="toy-esm", task_type=TaskType.CLASSIFICATION, examples=rows, labels=["0", "1"])


def affine_data(n: int = 1500, d: int = 16, noise: float = 0.01, seed: int = 0):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, d))
    weight = np.eye(d) + 0.3 * rng.normal(size=(d, d))
    bias = rng.normal(size=d)
    return base, base @ weight.T + bias + noise * rng.normal(size=(n, d)), weight, bias


def test_fit_recovers_a_known_affine_map():
    base, tuned, weight, bias = affine_data()
    esm = fit_esm(base, tuned)
    assert esm.r2_heldout > 0.999
    np.testing.assert_allclose(esm.weight, weight, atol=0.01)
    np.testing.assert_allclose(esm.bias, bias, atol=0.01)
    assert esm.rows == 1500 - 300 and esm.ridge > 0
    np.testing.assert_allclose(esm.apply(base[:5]), base[:5] @ weight.T + bias, atol=0.05)
    assert fit_esm(base, tuned, seed=14).r2_heldout != esm.r2_heldout  # the split follows the seed


def test_noise_gives_low_heldout_r2_and_a_bigger_penalty():
    base, _, _, _ = affine_data(n=400, d=32)
    unrelated = np.random.default_rng(9).normal(size=(400, 32))
    noise_map = fit_esm(base, unrelated)
    assert noise_map.r2_heldout < 0.05
    clean_map = fit_esm(*affine_data(n=400, d=32)[:2])
    assert clean_map.r2_heldout > 0.99
    assert noise_map.ridge > clean_map.ridge  # validation picks shrinkage when there is nothing to fit


def test_fp16_round_trip_and_validation():
    base, tuned, _, _ = affine_data(n=200, d=8)
    esm = fit_esm(base, tuned)
    arrays = esm.to_fp16_arrays()
    assert arrays["weight"].dtype == np.float16 and arrays["bias"].dtype == np.float16
    loaded = EmbeddingSpaceMap.from_arrays(arrays)
    np.testing.assert_allclose(loaded.weight, esm.weight, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(loaded.bias, esm.bias, rtol=1e-3, atol=1e-3)
    assert (loaded.r2_heldout, loaded.rows, loaded.ridge) == (esm.r2_heldout, esm.rows, esm.ridge)
    with pytest.raises(ValueError, match="lack"):
        EmbeddingSpaceMap.from_arrays({k: v for k, v in arrays.items() if k != "bias"})
    with pytest.raises(ValueError, match="d_out"):
        EmbeddingSpaceMap(weight=np.zeros((3, 4)), bias=np.zeros(4), r2_heldout=0.0, rows=1, ridge=1.0)
    with pytest.raises(ValueError, match="rows"):
        fit_esm(base[:5], tuned[:5])
    with pytest.raises(ValueError):  # the stored parameters are read-only
        esm.weight[0, 0] = 1.0


def test_esm_logme_with_identity_map_equals_logme_on_the_raw_features():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 120)
    features = rng.normal(size=(120, 10)) + np.eye(3)[labels] @ rng.normal(size=(3, 10))
    identity = EmbeddingSpaceMap(weight=np.eye(10), bias=np.zeros(10), r2_heldout=1.0, rows=0, ridge=0.0)
    np.testing.assert_allclose(esm_logme_scores(features, labels, [identity]), [logme(features, labels)],
                               rtol=1e-9)


@pytest.mark.parametrize("n", [120, 6])  # the Gram-matrix shortcut (n > d) and the explicit mapping (n < d)
def test_esm_logme_equals_logme_many_on_mapped_features(n):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 10)).astype(np.float32)
    labels = x[:, :3].sum(axis=1) + 0.3 * rng.normal(size=n)
    maps = [EmbeddingSpaceMap(weight=rng.normal(size=(10, 10)), bias=rng.normal(size=10), r2_heldout=0.5,
                              rows=100, ridge=1.0) for _ in range(4)]
    mapped = np.stack([m.apply(x) for m in maps])
    expected = logme_many(mapped, labels, regression=True)
    np.testing.assert_allclose(esm_logme_scores(x, labels, maps, regression=True), expected, rtol=1e-5)
    if n > 10:  # with 6 rows the noise-only model (alpha -> infinity) can win for several maps
        assert len(set(np.round(expected, 8))) == 4  # the maps really differ
    with pytest.raises(ValueError, match="dimensional"):
        esm_logme_scores(x[:, :5], labels, maps, regression=True)


def test_esm_logme_speed_30_maps_1000_rows_384_dims(one_torch_thread):
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 4, 1000)
    x = (rng.normal(size=(1000, 384)) + np.eye(4)[labels] @ rng.normal(size=(4, 384))).astype(np.float32)
    maps = [EmbeddingSpaceMap(weight=np.eye(384) + 0.05 * rng.normal(size=(384, 384)), bias=np.zeros(384),
                              r2_heldout=0.9, rows=1000, ridge=1.0) for _ in range(30)]
    started = time.perf_counter()
    scores = esm_logme_scores(x, labels, maps)
    print(f"\nesm_logme_scores 30 maps x 1000 x 384 (one torch thread): {time.perf_counter() - started:.2f} s")
    assert scores.shape == (30,) and np.isfinite(scores).all()
    assert scores.min() > logme(rng.normal(size=(1000, 384)), labels)  # mapped signal beats noise features


def unbatched_rows(dataset: Dataset, encoder) -> np.ndarray:
    """Reference: each row alone, unpadded, L2-normalised mean of its final-layer token states."""
    features = tokenize(dataset, encoder.tokenizer, EmbedOptions())
    rows = []
    with torch.no_grad():
        for i in range(len(features)):
            ids = torch.tensor(features.input_ids[i], dtype=torch.long)[None]
            types = torch.tensor(features.token_type_ids[i], dtype=torch.long)[None]
            mean = encoder.model(input_ids=ids, token_type_ids=types).last_hidden_state[0].double().mean(0)
            rows.append((mean / mean.norm()).numpy())
    return np.stack(rows)


def test_pooled_embeddings_are_the_rows_semb_averages(tiny_encoder):
    dataset = toy_dataset()
    rows = pooled_embeddings(dataset, tiny_encoder, None, EmbedOptions(max_tokens_per_batch=400, max_batch_size=4))
    assert rows.shape == (len(dataset), tiny_encoder.hidden_size) and rows.dtype == np.float32
    np.testing.assert_allclose(rows, unbatched_rows(dataset, tiny_encoder), rtol=1e-4, atol=1e-5)
    semb = sentence_embedding(dataset, tiny_encoder, EmbedOptions(max_tokens_per_batch=400, max_batch_size=4))
    np.testing.assert_allclose(rows.mean(axis=0), semb.vectors["sentence"], rtol=1e-5, atol=1e-6)
    one_batch = pooled_embeddings(dataset, tiny_encoder, None, EmbedOptions(max_tokens_per_batch=1 << 16))
    np.testing.assert_allclose(one_batch, rows, rtol=1e-5, atol=1e-6)  # row order survives length sorting


def test_pooled_embeddings_under_a_fine_tuned_state_leave_the_encoder_untouched(tiny_encoder):
    dataset = toy_dataset(8)
    before = pooled_embeddings(dataset, tiny_encoder)
    state = {key: value.clone() for key, value in tiny_encoder.model.state_dict().items()}
    key = next(k for k in state if k.endswith("layer.1.output.dense.weight"))
    state[key] += 0.5 * torch.randn(state[key].shape, generator=torch.Generator().manual_seed(0))
    tuned = pooled_embeddings(dataset, tiny_encoder, state)
    assert np.abs(tuned - before).max() > 1e-2
    np.testing.assert_array_equal(pooled_embeddings(dataset, tiny_encoder), before)
    np.testing.assert_array_equal(pooled_embeddings(dataset, tiny_encoder, tiny_encoder.model.state_dict()), before)
    with pytest.raises(RuntimeError, match="Missing key"):
        pooled_embeddings(dataset, tiny_encoder, {k: v for k, v in state.items() if k != key})


def test_int8_rows_keep_each_row_within_half_a_step_and_are_idempotent():
    rng = np.random.default_rng(5)
    weight = rng.normal(size=(24, 16)) * np.logspace(-3, 1, 24)[:, None]  # rows of very different size
    weight[3] = 0.0
    arrays = quantise_rows(weight)
    assert set(arrays) == {"weight_int8", "weight_scale"}  # not square: no diagonal kept apart
    assert arrays["weight_int8"].dtype == np.int8 and arrays["weight_scale"].dtype == np.float16
    restored = dequantise_rows(arrays)
    step = np.abs(weight).max(axis=1, keepdims=True) / 127
    assert np.all(np.abs(restored - weight) <= 0.51 * step + 1e-12)  # per-row resolution, small rows too
    assert np.all(restored[3] == 0.0) and np.abs(arrays["weight_int8"]).max() == 127
    again = quantise_rows(restored)
    for key in arrays:
        np.testing.assert_array_equal(again[key], arrays[key])
    with pytest.raises(ValueError, match="int8"):
        dequantise_rows({**arrays, "weight_int8": arrays["weight_int8"].astype(np.int16)})


def test_a_square_maps_diagonal_is_kept_apart_so_the_rest_gets_a_finer_step():
    rng = np.random.default_rng(6)
    weight = np.diag(rng.uniform(0.5, 1.0, 32)) + 0.05 * rng.normal(size=(32, 32))  # diagonal-dominant, as ESMs
    arrays = quantise_rows(weight)
    assert arrays["weight_diagonal"].dtype == np.float16 and np.all(np.diag(arrays["weight_int8"]) == 0)
    restored = dequantise_rows(arrays)
    np.testing.assert_allclose(np.diag(restored), np.diag(weight), rtol=1e-3)
    off = ~np.eye(32, dtype=bool)
    step = np.abs(np.where(off, weight, 0)).max(axis=1, keepdims=True) / 127  # set by the other entries only
    assert np.all(np.abs(restored - weight)[off] <= (0.51 * step * np.ones((1, 32)))[off])
    whole_row_step = np.abs(weight).max(axis=1, keepdims=True) / 127
    assert np.median(step / whole_row_step) < 0.5
    again = quantise_rows(restored)
    for key in arrays:
        np.testing.assert_array_equal(again[key], arrays[key])
    esm = EmbeddingSpaceMap(weight=weight, bias=rng.normal(size=32), r2_heldout=0.5, rows=10, ridge=1.0)
    packed = esm.to_int8_arrays()
    assert "weight" not in packed and packed["weight_int8"].nbytes == 32 * 32
    loaded = EmbeddingSpaceMap.from_arrays(packed)
    np.testing.assert_array_equal(loaded.weight, restored)
    assert (loaded.r2_heldout, loaded.rows, loaded.ridge) == (0.5, 10, 1.0)


def test_int8_maps_barely_move_esm_logme_scores():
    """What the shipped library relies on: per-row int8 maps rank sources as their float maps do."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 600)
    x = (rng.normal(size=(600, 48)) + np.eye(3)[labels] @ rng.normal(size=(3, 48))).astype(np.float32)
    maps = [EmbeddingSpaceMap(weight=np.eye(48) * rng.uniform(0.5, 2.0) + 0.2 * rng.normal(size=(48, 48)),
                              bias=0.1 * rng.normal(size=48), r2_heldout=0.5, rows=1, ridge=1.0) for _ in range(8)]
    exact = esm_logme_scores(x, labels, maps)
    packed = esm_logme_scores(x, labels, [EmbeddingSpaceMap.from_arrays(m.to_int8_arrays()) for m in maps])
    change = np.abs(packed - exact).max()
    assert change < 2e-3 and exact.max() - exact.min() > 20 * change
    apart = np.abs(exact[:, None] - exact[None, :]) > 2 * change  # pairs the change cannot swap
    assert np.array_equal(np.sign(packed[:, None] - packed[None, :])[apart], np.sign(exact[:, None] - exact[None, :])[apart])


def tagging_dataset(n: int = 9) -> Dataset:
    words = [s.split() for s in SENTENCES]
    rows = [TaggingExample(tokens=words[i % len(words)], tags=[("B" if j == 0 else "I") if len(w) > 3 else "O"
                                                               for j, w in enumerate(words[i % len(words)])])
            for i in range(n)]
    return Dataset(name="toy-tags", task_type=TaskType.SEQUENCE_LABELING, examples=rows, labels=["B", "I", "O"])


def test_token_embeddings_are_first_sub_token_states_of_a_seeded_sample(tiny_encoder):
    dataset = tagging_dataset()
    options = EmbedOptions(max_tokens_per_batch=400, max_batch_size=3)
    words = sum(len(ex.tokens) for ex in dataset.examples)
    rows, tags = token_embeddings(dataset, tiny_encoder, None, options, budget=10**6)
    assert rows.shape == (words, tiny_encoder.hidden_size) and len(tags) == words  # every word, once
    np.testing.assert_array_equal(tags, [["B", "I", "O"].index(t) for ex in dataset.examples for t in ex.tags])
    # reference: each sentence alone, the state of each word's first sub-token, L2-normalised
    enc = tiny_encoder.tokenizer(dataset.examples[1].tokens, is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        states = tiny_encoder.model(**enc).last_hidden_state[0]
    firsts = [enc.word_ids().index(w) for w in range(len(dataset.examples[1].tokens))]
    expected = torch.nn.functional.normalize(states[firsts], dim=-1).numpy()
    start = len(dataset.examples[0].tokens)
    np.testing.assert_allclose(rows[start:start + len(firsts)], expected, rtol=1e-4, atol=1e-5)

    small, small_tags = token_embeddings(dataset, tiny_encoder, None, options, budget=15, seed=4)
    assert small.shape == (15, tiny_encoder.hidden_size)
    np.testing.assert_array_equal(small_tags, token_tags(dataset, tiny_encoder, options, budget=15, seed=4))
    # a subset of the full rows: each sampled row is one of them up to float noise (batches padded to other
    # lengths round differently on some CPUs)
    distance = np.abs(rows[None, :, :] - small[:, None, :]).max(axis=2)  # (15, words)
    chosen = [int(i) for i in distance.argmin(axis=1)]
    assert distance.min(axis=1).max() < 1e-5
    assert chosen == sorted(chosen) and len(set(chosen)) == 15
    other, _ = token_embeddings(dataset, tiny_encoder, None, options, budget=15, seed=5)
    assert not np.array_equal(other, small)  # the sample follows the seed
    state = {k: v.clone() for k, v in tiny_encoder.model.state_dict().items()}
    key = next(k for k in state if k.endswith("layer.1.output.dense.weight"))
    state[key] += 0.5 * torch.randn(state[key].shape, generator=torch.Generator().manual_seed(0))
    tuned, tuned_tags = token_embeddings(dataset, tiny_encoder, state, options, budget=15, seed=4)
    np.testing.assert_array_equal(tuned_tags, small_tags)  # same tokens under another encoder
    assert np.abs(tuned - small).max() > 1e-2
    with pytest.raises(ValueError, match="sequence-labelling"):
        token_embeddings(toy_dataset(), tiny_encoder)
