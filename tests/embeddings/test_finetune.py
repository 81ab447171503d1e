"""Fine-tuning on a tiny model: every task type trains and evaluates; a killed run resumes exactly."""

from __future__ import annotations

import pytest
import torch

from embeddings.data import Dataset, TaskType, TextExample
from embeddings.finetune import FinetuneOptions, fine_tune
from tests.embeddings.test_embeddings import pairs, qa, tagging

WORDS_POS = ["good", "great", "superb", "lovely", "fine", "excellent"]
WORDS_NEG = ["bad", "awful", "poor", "dreadful", "terrible", "dull"]


def sentiment(n: int, offset: int = 0) -> Dataset:
    rows = []
    for i in range(n):
        positive = (i + offset) % 2 == 0
        word = (WORDS_POS if positive else WORDS_NEG)[(i // 2 + offset) % 6]
        rows.append(TextExample(f"the film was {word}", None, "pos" if positive else "neg"))
    return Dataset(name="toy-sentiment", task_type=TaskType.CLASSIFICATION, examples=rows, labels=["neg", "pos"])


def test_classification_learns_an_easy_task(tiny_encoder):
    options = FinetuneOptions(epochs=15, batch_size=8, learning_rate=3e-3, seed=1)
    result, model = fine_tune(sentiment(48), sentiment(24, offset=1), tiny_encoder, options)
    assert result.main_metric == "accuracy" and result.score >= 90.0, result.history
    assert set(result.metrics) == {"accuracy", "macro_f1", "matthews"}
    assert result.steps == 90 and result.best_step > 0


@pytest.mark.parametrize("make,metric", [(pairs, "spearman"), (tagging, "f1"), (qa, "f1")])
def test_other_task_types_train_and_report_their_metrics(tiny_encoder, make, metric):
    data = make()
    result, _ = fine_tune(data, data, tiny_encoder, FinetuneOptions(epochs=2, batch_size=4))
    assert result.main_metric == metric and metric in result.metrics
    assert result.task_type == data.task_type.value and len(result.history) == 2


def test_a_killed_run_resumes_from_its_checkpoint(tiny_encoder, tmp_path):
    train, dev = sentiment(32), sentiment(16, offset=1)
    options = FinetuneOptions(epochs=3, batch_size=4, learning_rate=1e-3, checkpoint_every=5, seed=3)
    _, reference = fine_tune(train, dev, tiny_encoder, options)

    class Killed(Exception):
        pass

    def kill_at_step_12(done: int, total: int) -> None:
        if done == 12:
            raise Killed

    with pytest.raises(Killed):
        fine_tune(train, dev, tiny_encoder, options, checkpoint_dir=tmp_path, on_progress=kill_at_step_12)
    assert (tmp_path / "trainer.pt").is_file()
    result, resumed = fine_tune(train, dev, tiny_encoder, options, checkpoint_dir=tmp_path)
    assert result.resumed_from == 10 and result.steps == 24
    for (name, a), (_, b) in zip(reference.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    assert not (tmp_path / "trainer.pt").exists()


def test_encoder_weights_can_be_handed_on(tiny_encoder):
    before = {k: v.clone() for k, v in tiny_encoder.model.state_dict().items()}
    _, source_model = fine_tune(sentiment(16), sentiment(8, 1), tiny_encoder, FinetuneOptions(epochs=1, batch_size=8))
    state = source_model.encoder.state_dict()
    assert any(not torch.equal(before[k], state[k]) for k in before)  # the source changed the encoder
    assert all(torch.equal(before[k], tiny_encoder.model.state_dict()[k]) for k in before)  # shared one untouched
    result, target_model = fine_tune(sentiment(16), sentiment(8, 1), tiny_encoder, FinetuneOptions(epochs=1),
                                     initial_encoder_state=state)
    assert result.steps == 1


def test_intermediate_transfer_reports_gains_and_reuses_source_checkpoints(tiny_encoder, tmp_path):
    from embeddings.transfer import TransferOptions, intermediate_transfer

    options = TransferOptions(target=FinetuneOptions(epochs=2, batch_size=8), source=FinetuneOptions(epochs=1),
                              seeds=(1, 2))
    source = sentiment(24, offset=3)
    source.name = "source-a"
    report = intermediate_transfer(sentiment(16), sentiment(8, 1), [source], tiny_encoder, options,
                                   cache_dir=tmp_path)
    assert len(report.baseline_scores) == 2 and report.main_metric == "accuracy"
    [outcome] = report.sources
    assert outcome.source == "source-a" and len(outcome.scores) == 2
    assert outcome.gain == pytest.approx(outcome.mean - report.baseline_mean)
    checkpoints = sorted(tmp_path.glob("source-*.safetensors"))
    assert len(checkpoints) == 1
    stamp = checkpoints[0].stat().st_mtime_ns
    again = intermediate_transfer(sentiment(16), sentiment(8, 1), [source], tiny_encoder, options, cache_dir=tmp_path)
    assert checkpoints[0].stat().st_mtime_ns == stamp  # the cached source encoder was reused, not retrained
    assert again.sources[0].scores == outcome.scores  # same seeds, same numbers


def test_length_grouped_epochs_cover_every_row_once_and_cut_padding():
    import numpy as np

    from embeddings.features import length_grouped_order

    lengths = np.random.default_rng(0).integers(5, 120, size=1003)
    order = length_grouped_order(lengths, 32, np.random.default_rng(1))
    assert sorted(order) == list(range(1003))  # a permutation: every row once per epoch
    batches = [order[i:i + 32] for i in range(0, len(order), 32)]
    assert all(len(b) == 32 for b in batches[:-1])  # the one short batch comes last
    padded = sum(int(lengths[b].max()) * len(b) for b in batches)
    shuffled = np.random.default_rng(1).permutation(1003)
    plain = sum(int(lengths[shuffled[i:i + 32]].max()) * len(shuffled[i:i + 32]) for i in range(0, 1003, 32))
    assert padded < 0.7 * plain
    again = length_grouped_order(lengths, 32, np.random.default_rng(1))
    assert again == order  # seeded
    first_batches = {tuple(sorted(b)) for b in batches[:5]}
    other = length_grouped_order(lengths, 32, np.random.default_rng(2))
    assert first_batches != {tuple(sorted(other[i:i + 32])) for i in range(0, 160, 32)}  # still shuffled


def test_the_head_can_train_at_its_own_learning_rate(tiny_encoder):
    """Stage 2 of the adapter methods: a new head over a body that barely moves needs its own rate."""
    options = FinetuneOptions(epochs=1, batch_size=8, learning_rate=1e-12, seed=1)
    _, still = fine_tune(sentiment(16), None, tiny_encoder, options)
    _, moved = fine_tune(sentiment(16), None, tiny_encoder, options, head_learning_rate=1e-2)
    _, start = fine_tune(sentiment(16), None, tiny_encoder, FinetuneOptions(epochs=1e-9, learning_rate=1e-12,
                                                                            seed=1))
    head_change = (moved.head.proj.weight - start.head.proj.weight).abs().max().item()
    assert head_change > 1e-3  # the head moved at 1e-2
    assert (still.head.proj.weight - start.head.proj.weight).abs().max().item() < 1e-8
    body = {k: v for k, v in moved.encoder.state_dict().items()}
    assert all(torch.allclose(body[k], v, atol=1e-8) for k, v in start.encoder.state_dict().items())


def test_zero_evaluations_per_epoch_scores_the_final_model_once(tiny_encoder):
    options = FinetuneOptions(epochs=3, batch_size=8, learning_rate=3e-3, seed=1, evaluations_per_epoch=0)
    result, _ = fine_tune(sentiment(24), sentiment(12, offset=1), tiny_encoder, options)
    assert [h["step"] for h in result.history] == [9]
    assert result.best_step == result.steps == 9
    with pytest.raises(ValueError, match="evaluations_per_epoch"):
        FinetuneOptions(evaluations_per_epoch=-1)


def test_precision_chooses_the_autocast_dtype(tiny_encoder):
    from dataclasses import replace

    assert tiny_encoder.autocast_dtype is None  # auto on CPU: fp32
    bf16 = replace(tiny_encoder, precision="bf16")
    assert bf16.autocast_dtype == torch.bfloat16
    with bf16.autocast():
        assert torch.nn.functional.linear(torch.ones(2, 4), torch.ones(3, 4)).dtype == torch.bfloat16
    assert replace(tiny_encoder, precision="fp32").autocast_dtype is None
    with pytest.raises(ValueError, match="precision"):
        _ = replace(tiny_encoder, precision="fp8").autocast_dtype
