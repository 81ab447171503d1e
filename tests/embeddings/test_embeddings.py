"""TextEmb, SEmb and TaskEmb on a tiny random BERT, checked against brute-force reference computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embeddings.api import embed
from embeddings.data import Dataset, QAExample, TaggingExample, TaskType, TextExample
from embeddings.features import length_sorted_batches, tokenize
from embeddings.heads import TaskHead
from embeddings.options import EmbedOptions, TaskEmbOptions
from embeddings.result import EmbeddingResult
from embeddings.taskemb import fisher_embedding
from embeddings.textemb import text_and_sentence_embeddings

SENTENCES = ["a gripping , funny film", "dull", "the plot never comes together and the acting is wooden",
             "one of the best of the year", "i walked out", "charming and sincere , if a little long",
             "not worth the ticket price at all", "wonderful"]


def classification(n: int = 8) -> Dataset:
    rows = [TextExample(SENTENCES[i % len(SENTENCES)] + " !" * (i // len(SENTENCES)), None, str(i % 2))
            for i in range(n)]
    return Dataset(name="toy-cls", task_type=TaskType.CLASSIFICATION, examples=rows, labels=["0", "1"])


def pairs() -> Dataset:
    rows = [TextExample(a, b, float(i) / 3) for i, (a, b) in enumerate(zip(SENTENCES, reversed(SENTENCES), strict=True))]
    return Dataset(name="toy-reg", task_type=TaskType.REGRESSION, examples=rows, labels=[])


def tagging() -> Dataset:
    rows = [TaggingExample(s.split(), ["N" if len(w) > 3 else "O" for w in s.split()]) for s in SENTENCES]
    return Dataset(name="toy-tag", task_type=TaskType.SEQUENCE_LABELING, examples=rows, labels=["N", "O"])


def qa() -> Dataset:
    context = "The Rhine begins in the Swiss Alps and empties into the North Sea near Rotterdam. " * 3
    rows = [QAExample("q1", "Where does the Rhine begin?", context, ["the Swiss Alps"], [context.index("the Swiss")]),
            QAExample("q2", "Where does it end?", context, ["North Sea"], [context.index("North")]),
            QAExample("q3", "Who painted it?", context, [], [])]
    return Dataset(name="toy-qa", task_type=TaskType.QUESTION_ANSWERING, examples=rows, labels=[])


def manual_text_and_sentence(dataset: Dataset, encoder) -> tuple[np.ndarray, np.ndarray]:
    """Reference: one unpadded example at a time."""
    features = tokenize(dataset, encoder.tokenizer, EmbedOptions())
    token_sum, count, sentences = 0.0, 0, []
    with torch.no_grad():
        for i in range(len(features)):
            ids = torch.tensor(features.input_ids[i], dtype=torch.long)[None]
            types = torch.tensor(features.token_type_ids[i], dtype=torch.long)[None]
            states = encoder.model(input_ids=ids, token_type_ids=types).last_hidden_state[0].double()
            token_sum = token_sum + states.sum(0)
            count += states.shape[0]
            mean = states.mean(0)
            sentences.append(mean / mean.norm())
    return (token_sum / count).numpy(), torch.stack(sentences).mean(0).numpy()


@pytest.mark.parametrize("make", [classification, pairs, tagging, qa])
def test_textemb_and_semb_match_unbatched_reference(tiny_encoder, make):
    dataset = make()
    text, sentence = text_and_sentence_embeddings(dataset, tiny_encoder, EmbedOptions(max_tokens_per_batch=512))
    ref_text, ref_sentence = manual_text_and_sentence(dataset, tiny_encoder)
    np.testing.assert_allclose(text.vectors["text"], ref_text, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sentence.vectors["sentence"], ref_sentence, rtol=1e-4, atol=1e-5)
    assert text.dataset_hash == dataset.content_hash and text.model_name == "tiny-bert"
    assert text.num_examples == len(dataset)


def test_batching_and_padding_do_not_change_textemb(tiny_encoder):
    dataset = classification(40)
    small = embed(dataset, "textemb", tiny_encoder, EmbedOptions(max_tokens_per_batch=400, max_batch_size=3))
    large = embed(dataset, "textemb", tiny_encoder, EmbedOptions(max_tokens_per_batch=1 << 16))
    padded = embed(dataset, "textemb", tiny_encoder, EmbedOptions(pad_to=128, fixed_batch_size=32))
    np.testing.assert_allclose(small.vectors["text"], large.vectors["text"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(padded.vectors["text"], large.vectors["text"], rtol=1e-5, atol=1e-6)


def test_length_sorted_batches_respect_token_budget():
    lengths = np.array([5, 50, 7, 120, 33, 8, 9, 64])
    batches = length_sorted_batches(lengths, max_tokens=128, max_batch_size=4)
    assert sorted(np.concatenate(batches).tolist()) == list(range(8))
    for batch in batches:
        assert lengths[batch].max() * len(batch) <= 128 and len(batch) <= 4
    assert lengths[batches[0][0]] == 120  # longest first


def reference_fisher(dataset: Dataset, encoder, options: TaskEmbOptions) -> dict[str, np.ndarray]:
    """Brute force: one example at a time, autograd.grad on every layer output, normalised per example."""
    features = tokenize(dataset, encoder.tokenizer, options)
    if dataset.task_type == TaskType.REGRESSION:
        labels = features.labels
        features.labels = ((labels - labels.mean()) / labels.std()).astype(np.float32)
    torch.manual_seed(options.seed)
    head = TaskHead(dataset.task_type, encoder.hidden_size, features.num_labels).eval()
    sums: dict[str, torch.Tensor] = {}
    layers = encoder.model.encoder.layer
    for i in range(len(features)):
        ids = torch.tensor(features.input_ids[i], dtype=torch.long)[None]
        captured: dict[str, torch.Tensor] = {}
        handles = [layer.attention.output.register_forward_hook(
                       lambda m, a, out, k=f"layer_{j}.attention_output", c=captured: c.__setitem__(k, out))
                   for j, layer in enumerate(layers)]
        handles += [layer.output.register_forward_hook(
                        lambda m, a, out, k=f"layer_{j}.output", c=captured: c.__setitem__(k, out))
                    for j, layer in enumerate(layers)]
        states = encoder.model(input_ids=ids, token_type_ids=torch.zeros_like(ids)
                               if features.token_type_ids is None else
                               torch.tensor(features.token_type_ids[i], dtype=torch.long)[None]).last_hidden_state
        for h in handles:
            h.remove()
        captured["cls_output"] = states
        mask = torch.ones_like(ids)
        logits = head(states, mask)
        label = features.labels[i]
        if dataset.task_type == TaskType.SEQUENCE_LABELING:
            label_t = torch.tensor(label)[None]
        elif dataset.task_type == TaskType.REGRESSION:
            label_t = torch.tensor([label])
        elif dataset.task_type == TaskType.QUESTION_ANSWERING:
            label_t = torch.tensor(label)[None]
        else:
            label_t = torch.tensor([label])
        loss = head.per_example_loss(logits, label_t).sum()
        names = list(captured)
        grads = torch.autograd.grad(loss, [captured[n] for n in names])
        for name, g in zip(names, grads, strict=True):
            g = g[0].double()
            value = g[0].pow(2) if name == "cls_output" else g.sum(0).pow(2) / g.shape[0]
            sums[name] = sums.get(name, 0) + value
    return {name: (value / len(features)).numpy() for name, value in sums.items()}


@pytest.mark.parametrize("make", [classification, pairs, tagging, qa])
def test_per_example_fisher_matches_brute_force(tiny_encoder, make):
    dataset = make()
    options = TaskEmbOptions(train_steps=0, max_tokens_per_batch=512)
    result = fisher_embedding(dataset, tiny_encoder, options)
    expected = reference_fisher(dataset, tiny_encoder, options)
    if dataset.task_type == TaskType.SEQUENCE_LABELING:  # the untagged first token has zero gradient
        assert not expected.pop("cls_output").any()
    assert set(result.vectors) == set(expected)
    assert [n for n in result.vectors if n != "cls_output"][:2] == ["layer_0.attention_output", "layer_0.output"]
    for name, vector in result.vectors.items():
        np.testing.assert_allclose(vector, expected[name], rtol=2e-3, atol=1e-10, err_msg=name)
        assert vector.shape == (32,) and np.all(vector >= 0) and vector.sum() > 0


def test_batch_fisher_with_single_example_batches_equals_per_example(tiny_encoder):
    dataset = classification(6)
    per_example = fisher_embedding(dataset, tiny_encoder, TaskEmbOptions(train_steps=0))
    batch_of_one = fisher_embedding(dataset, tiny_encoder,
                                    TaskEmbOptions(train_steps=0, fisher="batch", fixed_batch_size=1))
    batch_of_six = fisher_embedding(dataset, tiny_encoder,
                                    TaskEmbOptions(train_steps=0, fisher="batch", fixed_batch_size=6))
    for name in per_example.vectors:
        np.testing.assert_allclose(batch_of_one.vectors[name], per_example.vectors[name], rtol=1e-4, atol=1e-12)
    # squaring the batch sum is a different (coarser) estimate: it must differ
    assert not np.allclose(batch_of_six.vectors["layer_1.output"], per_example.vectors["layer_1.output"])


def test_taskemb_is_deterministic_and_seeded(tiny_encoder):
    dataset = classification(16)
    options = TaskEmbOptions(train_steps=5, train_batch_size=4, seed=3)
    first = fisher_embedding(dataset, tiny_encoder, options)
    second = fisher_embedding(dataset, tiny_encoder, options)
    other = fisher_embedding(dataset, tiny_encoder, TaskEmbOptions(train_steps=5, train_batch_size=4, seed=4))
    for name in first.vectors:
        np.testing.assert_array_equal(first.vectors[name], second.vectors[name])
    assert not np.allclose(first.vectors["cls_output"], other.vectors["cls_output"])


def test_sampled_labels_and_head_training_change_the_fisher(tiny_encoder):
    dataset = classification(16)
    gold = fisher_embedding(dataset, tiny_encoder, TaskEmbOptions(train_steps=0))
    sampled = fisher_embedding(dataset, tiny_encoder, TaskEmbOptions(train_steps=0, label_source="sample"))
    trained = fisher_embedding(dataset, tiny_encoder, TaskEmbOptions(train_steps=20, train_batch_size=8))
    assert not np.allclose(gold.vectors["cls_output"], sampled.vectors["cls_output"])
    assert not np.allclose(gold.vectors["cls_output"], trained.vectors["cls_output"])
    assert sampled.options["label_source"] == "sample"


def test_full_training_leaves_the_shared_encoder_untouched(tiny_encoder):
    before = {k: v.clone() for k, v in tiny_encoder.model.state_dict().items()}
    flags = [p.requires_grad for p in tiny_encoder.model.parameters()]
    fisher_embedding(classification(8), tiny_encoder,
                     TaskEmbOptions(train_scope="full", train_steps=3, train_batch_size=4, learning_rate=1e-2))
    after = tiny_encoder.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert flags == [p.requires_grad for p in tiny_encoder.model.parameters()]


def test_parameter_fisher_has_one_component_per_layer(tiny_encoder):
    result = fisher_embedding(classification(4), tiny_encoder,
                              TaskEmbOptions(train_steps=0, include_parameters=True, components=()))
    layer = tiny_encoder.model.encoder.layer[0]
    assert list(result.vectors) == ["layer_0.parameters", "layer_1.parameters"]
    assert result.vectors["layer_0.parameters"].shape == (sum(p.numel() for p in layer.parameters()),)
    assert (result.vectors["layer_1.parameters"] > 0).any()


def test_progress_reaches_total(tiny_encoder):
    calls: list[tuple[int, int]] = []
    fisher_embedding(classification(10), tiny_encoder, TaskEmbOptions(train_steps=2, train_batch_size=4),
                     on_progress=lambda done, total: calls.append((done, total)))
    assert calls[0] == (0, 18) and calls[-1] == (18, 18)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_result_round_trip(tmp_path, tiny_encoder):
    result = fisher_embedding(classification(4), tiny_encoder, TaskEmbOptions(train_steps=0))
    path = result.save(tmp_path / "emb")
    loaded = EmbeddingResult.load(path)
    assert loaded.metadata() == result.metadata()
    for name in result.vectors:
        np.testing.assert_array_equal(loaded.vectors[name], result.vectors[name])
    assert loaded.metadata()["dimensions"]["layer_1.output"] == 32


def test_unknown_method_and_bad_options():
    with pytest.raises(ValueError, match="unknown method"):
        embed(classification(), "nope", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="components"):
        TaskEmbOptions(components=("bogus",))
