"""Multi-source transfer on the tiny model: every method trains a few steps and changes only what it should.

Frozen parts (the encoder, the stage-1 adapters) are checked by hashing their tensors before and after;
trained-parameter counts against the methods' formulas; gates and attentions sum to one.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
import torch

from embeddings.camtl import (
    CamtlModel,
    CamtlOptions,
    ConditionalEncoder,
    mixed_batch,
    normalised_entropy,
    select_uncertain,
    train_camtl,
)
from embeddings.data import TaskType
from embeddings.features import collate, tokenize
from embeddings.finetune import FinetuneOptions
from embeddings.fusion import TARGET, build_fused_body, correlation_prior, scalearn_parameter_count
from embeddings.multisource import (
    MULTI_SOURCE_METHODS,
    MultiSourceOptions,
    combination_weights,
    multi_source_transfer,
    train_fused,
    trainable_parameters,
)
from embeddings.source_adapters import AdapterOptions, source_adapter, target_adapter
from tests.embeddings.test_embeddings import pairs, qa, tagging
from tests.embeddings.test_finetune import sentiment

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = FinetuneOptions(epochs=2, batch_size=8, max_length=32, learning_rate=1e-2)
ADAPTER = AdapterOptions(train=FinetuneOptions(epochs=1, batch_size=8, max_length=32, learning_rate=1e-3))




def digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def options(method: str, **extra) -> MultiSourceOptions:
    return MultiSourceOptions(method=method, target=FAST, adapter=ADAPTER, seeds=(1,), **extra)


def toy_sources():
    a, b = sentiment(24, offset=3), pairs()
    a.name, b.name = "src-a", "src-b"
    return [a, b]


@pytest.fixture(scope="module")
def stage1(tiny_encoder, tmp_path_factory):
    """Two source adapters and the target's own adapter (seed 1), trained once for the module."""
    cache = tmp_path_factory.mktemp("adapters")
    sources = toy_sources()
    train, dev = sentiment(32), sentiment(16, offset=1)
    stored = [source_adapter(s, tiny_encoder, ADAPTER, cache, max_rows=3000, data_seed=13) for s in sources]
    own = target_adapter(train, dev, tiny_encoder, ADAPTER, cache, seed=1)
    return {"cache": cache, "sources": sources, "train": train, "dev": dev, "stored": stored, "target": own}


def split_state(model) -> dict[str, dict[str, torch.Tensor]]:
    """The fused model's tensors by part: base encoder, each adapter (stored names), combination, head."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    state = model if isinstance(model, dict) else model.state_dict()
    for name, tensor in state.items():
        if name.startswith("head."):
            part = "head"
        elif ".adapters." in name:
            adapter = name.split(".adapters.")[1].split(".")[0]
            part = f"adapter:{adapter}"
            name = name.replace(f".adapters.{adapter}.", ".adapters.adapter.").removeprefix("encoder.")
        elif "adapter_fusion_layer" in name:
            part = "combination"
        elif ".prompt_tuning.base_model_embeddings." in f".{name}":
            part = "tied"  # adapters' alias of the word embeddings (the same tensor)
        else:
            part = "base"
            name = name.removeprefix("encoder.")
        parts.setdefault(part, {})[name] = tensor.detach().clone()
    return parts


def initial_parts(encoder, method, states, target_state, prior=None) -> dict[str, dict[str, torch.Tensor]]:
    """The fused body as stage 2 starts it: fine_tune seeds, then builds (seed 1 here)."""
    torch.manual_seed(1)
    fused = build_fused_body(method, encoder, states, target_state, ADAPTER, prior=prior)
    return split_state({f"encoder.{k}": v for k, v in fused.body.state_dict().items()})


@pytest.mark.parametrize("method", ["scalearn", "scalearn_uniform", "scalearn_plus", "scalearn_uniform_plus",
                                    "adapterfusion"])
def test_fusion_methods_train_only_their_combination(tiny_encoder, stage1, method):
    encoder = tiny_encoder
    shared_before = digest(encoder.model.state_dict())
    states = [a.state for a in stage1["stored"]]
    result, model, fused = train_fused(stage1["train"], stage1["dev"], encoder, options(method), states,
                                       stage1["target"].state, seed=1)
    assert result.steps == 8 and result.main_metric == "accuracy"
    parts = split_state(model)
    # frozen encoder: equal to the shared one, which is untouched
    assert digest(encoder.model.state_dict()) == shared_before
    assert digest(parts["base"]) == digest(dict(encoder.model.state_dict()))
    # frozen adapters: the stored stage-1 weights, bit for bit
    assert digest(parts["adapter:s0"]) == digest(states[0])
    assert digest(parts["adapter:s1"]) == digest(states[1])
    assert digest(parts[f"adapter:{TARGET}"]) == digest(stage1["target"].state)
    # what trains: the combination and the head, nothing else
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("head.") or "adapter_fusion_layer" in n for n in trainable)
    layers, hidden, n_sources = encoder.num_layers, encoder.hidden_size, 2
    head = hidden * 2 + 2
    if method == "adapterfusion":  # query and key H x H + H, value H x H, per layer
        expected = layers * (3 * hidden * hidden + 2 * hidden)
    else:
        expected = scalearn_parameter_count(method, n_sources, layers, hidden)
        assert expected == {"scalearn": 2 * 3 * 32, "scalearn_uniform": 2 * 3, "scalearn_plus": 3 * 32,
                            "scalearn_uniform_plus": 3}[method]
    assert trainable_parameters(model) == expected + head
    initial = initial_parts(encoder, method, states, stage1["target"].state)
    assert parts["combination"].keys() == initial["combination"].keys()
    assert all(not torch.equal(v, initial["combination"][k]) for k, v in parts["combination"].items()
               if k.endswith("weight") or "omega" in k), "the combination did not train"
    means, per_layer = combination_weights(fused, stage1["dev"], encoder, FAST)
    assert len(means) == 3 and len(per_layer) == layers
    if method.endswith("_plus"):  # one shared scaling: every layer reports the same
        assert all(layer == per_layer[0] for layer in per_layer)
    if method == "adapterfusion":
        assert sum(means) == pytest.approx(1.0, abs=1e-5)
        assert all(sum(layer) == pytest.approx(1.0, abs=1e-4) for layer in per_layer)


def test_scalearn_plus_shares_one_scale_vector_across_layers(tiny_encoder, stage1):
    states = [a.state for a in stage1["stored"]]
    _, model, fused = train_fused(stage1["train"], stage1["dev"], tiny_encoder, options("scalearn_plus"), states,
                                  stage1["target"].state, seed=1)
    assert len(fused.modules) == tiny_encoder.num_layers
    assert all(m.omega is fused.modules[0].omega for m in fused.modules)
    assert fused.modules[0].omega.shape == (3, tiny_encoder.hidden_size)


def test_pemt_gates_sum_to_one_follow_the_prior_and_train_the_target_adapter(tiny_encoder, stage1):
    encoder = tiny_encoder
    states = [a.state for a in stage1["stored"]]
    prior = correlation_prior([0.9, 0.1], 2, temperature=1.0)
    assert prior.sum() == pytest.approx(1.0) and prior[0] > prior[1]
    opts = options("pemt", prior_weight=0.5, sparsity_weight=0.05)
    result, model, fused = train_fused(stage1["train"], stage1["dev"], encoder, opts, states, None, seed=1,
                                       prior=prior)
    parts = split_state(model)
    assert digest(parts["base"]) == digest(dict(encoder.model.state_dict()))
    assert digest(parts["adapter:s0"]) == digest(states[0]) and digest(parts["adapter:s1"]) == digest(states[1])
    initial = initial_parts(encoder, "pemt", states, None, prior=prior)
    for key, value in parts[f"adapter:{TARGET}"].items():  # the target adapter trains (from a fresh init)
        assert not torch.equal(value, initial[f"adapter:{TARGET}"][key]), key
    for key, value in parts["combination"].items():
        assert not torch.equal(value, initial["combination"][key]), key
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.startswith("head.") or "adapter_fusion_layer" in n or f".adapters.{TARGET}." in n
               for n in trainable)
    layers, hidden, bottleneck = encoder.num_layers, encoder.hidden_size, encoder.hidden_size // 16
    gate = layers * (hidden * 2 + 2)
    target_adapter_params = layers * (hidden * bottleneck + bottleneck + bottleneck * hidden + hidden)
    assert trainable_parameters(model) == gate + target_adapter_params + hidden * 2 + 2
    means, per_layer = combination_weights(fused, stage1["dev"], encoder, FAST)
    assert len(means) == 2 and sum(means) == pytest.approx(1.0, abs=1e-5)
    assert all(sum(layer) == pytest.approx(1.0, abs=1e-4) for layer in per_layer)
    assert means[0] > means[1]  # the gate starts at the prior and is held near it


def test_correlation_prior_is_uniform_without_scores():
    assert correlation_prior(None, 4, 1.0).tolist() == [0.25] * 4
    assert correlation_prior([0.3, 0.3], 2, 1.0).tolist() == [0.5, 0.5]
    sharp, flat = correlation_prior([3, 2, 1], 3, 0.1), correlation_prior([3, 2, 1], 3, 10.0)
    assert sharp[0] > flat[0] and flat.max() - flat.min() < 0.1


@pytest.mark.parametrize("sampling", ["uncertainty", "uniform", "sequential"])
def test_camtl_freezes_lower_layers_and_trains_conditioned_modules(tiny_encoder, sampling):
    encoder = tiny_encoder
    shared_before = digest(encoder.model.state_dict())
    train, dev = sentiment(32), sentiment(16, offset=1)
    sources = [*toy_sources(), tagging()]
    camtl = CamtlOptions(freeze_encoder_layers=1, sampling=sampling)
    report, model = train_camtl(train, dev, sources, encoder, replace(FAST, seed=2), camtl)
    assert digest(encoder.model.state_dict()) == shared_before
    after = {k: v for k, v in model.encoder.bert.state_dict().items()}
    before = encoder.model.state_dict()
    frozen = [k for k in before if k.startswith("embeddings.") or k.startswith("encoder.layer.0.")]
    upper = [k for k in before if k.startswith("encoder.layer.1.") and k.endswith("weight")]
    assert digest({k: after[k] for k in frozen}) == digest({k: before[k] for k in frozen})
    assert any(not torch.equal(after[k], before[k]) for k in upper)
    assert all(not p.requires_grad for n, p in model.encoder.bert.named_parameters()
               if n.startswith(("embeddings.", "encoder.layer.0.")))
    assert list(model.encoder.conditioning) == ["1"] and report.frozen_layers == 1
    hyper = model.encoder.conditioning["1"].hyper.weight
    assert hyper.abs().sum() > 0  # the hypernetwork left its zero initialisation
    examples = report.task_examples
    assert list(examples) == ["target", "src-a", "src-b", "toy-tag"]
    if sampling == "uncertainty":  # every step trains on a full batch drawn from the pool of all tasks
        assert sum(examples.values()) == report.result.steps * FAST.batch_size
        # the target floor: at least the target's proportional share of every batch
        rows = [len(train), *(len(s) for s in sources)]
        floor = max(1, round(FAST.batch_size * rows[0] / sum(rows)))
        assert examples["target"] >= report.result.steps * floor
    else:  # one task's batch per step, shorter at the end of a pass
        assert report.result.steps <= sum(examples.values()) <= report.result.steps * FAST.batch_size
    if sampling == "sequential":
        assert all(v > 0 for v in examples.values())
    assert report.result.main_metric == "accuracy" and 0 <= report.result.score <= 100
    hidden, r, d = encoder.hidden_size, encoder.hidden_size // 16, camtl.task_embedding_dim
    upper_layer = sum(p.numel() for p in model.encoder.bert.encoder.layer[1].parameters())
    conditioning = d * (5 * hidden + 2 * r) + (5 * hidden + 2 * r) + hidden * r + r + r * hidden + hidden
    heads = sum(p.numel() for p in model.heads.parameters())
    assert trainable_parameters(model) == upper_layer + conditioning + 4 * d + heads


def test_mt_uncertainty_weights_each_example_by_its_task_mean():
    import numpy as np

    # equal task means: the plain top entropies win, whichever task holds them
    chosen = select_uncertain([np.array([0.9, 0.1]), np.array([0.5, 0.5, 0.5])], 2)
    assert [c.tolist() for c in chosen] == [[0], [0]]
    # task 1's single sure-of-nothing example (1.0) loses to task 0's 0.8s: task 1's mean is 0.5,
    # so its examples count 0.5/0.8 of their entropy (U = e * m_t / max m)
    chosen = select_uncertain([np.array([0.8, 0.8]), np.array([1.0, 0.0])], 2)
    assert [c.tolist() for c in chosen] == [[0, 1], []]
    chosen = select_uncertain([np.array([0.8, 0.8]), np.array([1.0, 0.0])], 3)
    assert [c.tolist() for c in chosen] == [[0, 1], [0]]
    # all certain: still a full batch
    assert sum(len(c) for c in select_uncertain([np.zeros(3), np.zeros(3)], 4)) == 4


def test_target_floor_keeps_the_targets_most_uncertain_rows_in_every_batch():
    import numpy as np

    sure_target, hard_source = np.array([0.05, 0.2, 0.1, 0.0]), np.array([0.9, 0.95, 0.8, 0.85])
    # unconstrained, the sure target gets nothing
    assert [c.tolist() for c in select_uncertain([sure_target, hard_source], 4)] == [[], [0, 1, 2, 3]]
    # with 2 reserved slots: the target's two most uncertain rows (0.2, 0.1), then the sources' best
    chosen = select_uncertain([sure_target, hard_source], 4, reserved=2)
    assert [c.tolist() for c in chosen] == [[1, 2], [0, 1]]
    # a target that wins anyway is not counted twice; the floor never exceeds the batch
    assert [c.tolist() for c in select_uncertain([hard_source, sure_target], 3, reserved=2)] == [[0, 1, 3], []]
    assert [c.tolist() for c in select_uncertain([sure_target, hard_source], 2, reserved=5)] == [[1, 2], []]


def test_mixed_batch_gives_each_row_its_own_task_conditioning(tiny_encoder):
    """One pass over rows of two tasks equals two single-task passes (task embedding per row)."""
    import copy

    import numpy as np

    from embeddings.heads import TaskHead

    torch.manual_seed(0)
    tasks = [sentiment(6), tagging()]
    features = [tokenize(t, tiny_encoder.tokenizer, FAST) for t in tasks]
    heads = [TaskHead(t.task_type, tiny_encoder.hidden_size, f.num_labels) for t, f in zip(tasks, features, strict=True)]
    encoder = ConditionalEncoder(copy.deepcopy(tiny_encoder.model), 2, CamtlOptions(freeze_encoder_layers=1))
    for cond in encoder.conditioning.values():  # leave the zero init so the two tasks really differ
        torch.nn.init.normal_(cond.hyper.weight, std=0.1)
        torch.nn.init.normal_(cond.up.weight, std=0.1)
    model = CamtlModel(encoder, heads).eval()
    chosen = {0: np.array([0, 2, 3]), 1: np.array([1, 0])}
    batch = mixed_batch(features, chosen, tiny_encoder.device)
    assert batch.task_ids.tolist() == [0, 0, 0, 1, 1]
    with torch.no_grad():
        mixed = model.forward_mixed(batch)
        for (task, _), out in zip(batch.groups, mixed, strict=True):
            alone = collate(features[task], chosen[task], tiny_encoder.device)
            single = model(alone.model_inputs(), task)
            if task == 1:  # tagging: compare the real tokens only (the mixed batch is padded wider)
                width = alone.attention_mask.shape[1]
                out = out[:, :width]
            assert torch.allclose(out, single, atol=1e-5), task
        inputs = collate(features[0], chosen[0], tiny_encoder.device).model_inputs()
        as_task = [encoder(task, **inputs) for task in (0, 1)]
        assert not torch.allclose(*as_task, atol=1e-3)  # the conditioning does depend on the task


def test_camtl_rejects_freezing_every_layer(tiny_encoder):
    with pytest.raises(ValueError, match="below the encoder's 2 layers"):
        train_camtl(sentiment(8), sentiment(8, 1), toy_sources(), tiny_encoder, FAST,
                    CamtlOptions(freeze_encoder_layers=2))


def test_normalised_entropy_is_one_for_uniform_predictions(tiny_encoder):
    data = sentiment(4)
    features = tokenize(data, tiny_encoder.tokenizer, FAST)
    import numpy as np

    batch = collate(features, np.arange(4), tiny_encoder.device)
    assert normalised_entropy(TaskType.CLASSIFICATION, torch.zeros(4, 2), batch) == pytest.approx(1.0)
    assert normalised_entropy(TaskType.CLASSIFICATION, torch.tensor([[20.0, -20.0]] * 4), batch) < 1e-6


def test_source_adapters_are_cached_and_reused(tiny_encoder, stage1):
    source = stage1["sources"][0]
    again = source_adapter(source, tiny_encoder, ADAPTER, stage1["cache"], max_rows=3000, data_seed=13)
    assert again.reused and again.path == stage1["stored"][0].path and again.seconds == 0.0
    assert digest(again.state) == digest(stage1["stored"][0].state)
    assert again.path.with_suffix(".json").is_file()
    other = replace(ADAPTER, reduction_factor=8)
    assert source_adapter(source, tiny_encoder, other, stage1["cache"], max_rows=3000, data_seed=13).path != again.path
    own = target_adapter(stage1["train"], stage1["dev"], tiny_encoder, ADAPTER, stage1["cache"], seed=1)
    assert own.reused and own.result is not None and own.result["main_metric"] == "accuracy"


@pytest.mark.parametrize("method", MULTI_SOURCE_METHODS)
def test_every_method_runs_for_a_regression_target(tiny_encoder, stage1, method):
    train = pairs()
    report = multi_source_transfer(train, train, stage1["sources"], tiny_encoder, options(method),
                                   cache_dir=stage1["cache"], source_scores=[2.0, 1.0])
    assert report.main_metric == "spearman" and len(report.scores) == 1
    assert report.trained_parameters > report.method_parameters > 0
    assert set(report.source_weights) >= {"src-a", "src-b"}
    if method != "camtl":
        assert [a["reused"] for a in report.adapters] == [True, True]  # stage 1 came from the module's cache
    if method in ("pemt", "adapterfusion"):
        assert sum(report.source_weights.values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("method,make", [("scalearn", tagging), ("pemt", qa), ("camtl", qa),
                                         ("adapterfusion", tagging)])
def test_methods_run_for_tagging_and_qa_targets(tiny_encoder, stage1, method, make):
    data = make()
    report = multi_source_transfer(data, data, stage1["sources"], tiny_encoder, options(method),
                                   cache_dir=stage1["cache"])
    assert report.main_metric == "f1" and len(report.runs) == 1
