"""CA-MTL (Pilault et al. 2021): joint multi-task training with task-conditioned modules.

The target and its chosen sources train together on one encoder (a copy of the shared one), a
head per task. A learned task embedding z_t drives, through a hypernetwork per adapted layer (a
linear map from z_t, zero-initialised so training starts from the plain encoder), every
task-conditioned module of that layer:

* conditional attention: the query projection is modulated, q' = q * (1 + a(z_t)), so each task
  attends differently with shared weights;
* conditional layer norm (both LayerNorms of the layer): LN(x) = gamma * x_hat + beta becomes
  gamma * (1 + g(z_t)) * x_hat + beta + b(z_t);
* a conditional bottleneck adapter after the feed-forward output projection, its bottleneck
  FiLM-modulated by the task: up(relu(down(h)) * (1 + s(z_t)) + t(z_t)), up zero-initialised.

Embeddings and the lower `freeze_encoder_layers` layers stay frozen (as CA-MTL freezes the lower
half); the upper layers, the conditional modules, the task embeddings and the heads train. The
modules attach to a Hugging Face BERT-style encoder (BertModel, the default MiniLM) by forward hooks.

Task sampling, one task per optimiser step:

* "uncertainty" (MT-Uncertainty): each task holds its next batch as a candidate, scored by the
  mean normalised entropy of the model's predictions on it (entropy / its maximum: 1 for uniform
  predictions; for QA the start and end distributions over the window; for tagging over first
  sub-tokens); the most uncertain task trains. A regression head predicts a point, not a
  distribution, so its uncertainty is the share of variance it leaves unexplained: a running mean
  of its training MSE on standardised labels, capped at 1 (1 = no better than the mean). A trained task gets a new scored candidate; all candidates are rescored every
  `rescore_every` steps (default: the number of tasks) so stale scores cannot starve a task.
  CA-MTL ranks single examples across tasks; choosing whole per-task batches is the per-task
  simplification that keeps one head per batch.
* "uniform": a task drawn uniformly per step;
* "sequential": every task for one pass over its rows in turn, sources first, the target last.

Runs for all four task types (heads are embeddings/heads.py's), for the target and the sources.
No resumable checkpoints: a killed CA-MTL run starts again.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from embeddings.data import Dataset, TaskType
from embeddings.encoders import Encoder
from embeddings.features import IGNORE_INDEX, Batch, Features, collate, tokenize
from embeddings.finetune import (
    FinetuneOptions,
    FinetuneResult,
    _align_labels,
    _label_stats,
    evaluate_model,
    main_metric,
    make_optimiser,
    param_groups,
    trainable_state,
)
from embeddings.heads import TaskHead
from embeddings.options import ProgressFn, no_progress

Sampling = Literal["uncertainty", "uniform", "sequential"]


@dataclass(frozen=True)
class CamtlOptions:
    freeze_encoder_layers: int | None = field(
        default=None, metadata={"help": "Frozen lower layers 0..N-1 (default: half the layers, rounded down)."})
    sampling: Sampling = field(default="uncertainty", metadata={"help": "uncertainty, uniform or sequential."})
    task_embedding_dim: int = field(default=64, metadata={"help": "Size of the learned task embedding."})
    reduction_factor: int = field(default=16, metadata={"help": "Hidden size / conditional adapter bottleneck."})
    conditional_learning_rate: float = field(
        default=1e-3, metadata={"help": "Learning rate of the new modules (task embeddings, hypernetworks, "
                                        "adapters, heads); the encoder's upper layers use the target's."})
    rescore_every: int | None = field(
        default=None, metadata={"help": "Uncertainty sampling: rescore every candidate after this many steps."})

    def __post_init__(self) -> None:
        if self.sampling not in ("uncertainty", "uniform", "sequential"):
            raise ValueError(f"unknown task sampling {self.sampling!r}")
        if self.freeze_encoder_layers is not None and self.freeze_encoder_layers < 0:
            raise ValueError("freeze_encoder_layers must be >= 0")
        if self.task_embedding_dim < 1 or self.reduction_factor < 1 or self.conditional_learning_rate <= 0:
            raise ValueError("task_embedding_dim, reduction_factor and conditional_learning_rate must be positive")
        if self.rescore_every is not None and self.rescore_every < 1:
            raise ValueError("rescore_every must be >= 1")

    def frozen_layers(self, num_layers: int) -> int:
        frozen = num_layers // 2 if self.freeze_encoder_layers is None else self.freeze_encoder_layers
        if frozen >= num_layers:
            raise ValueError(f"freeze_encoder_layers must be below the encoder's {num_layers} layers, got {frozen}")
        return frozen


class TaskConditioning(nn.Module):
    """One layer's hypernetwork (task embedding -> modulations) and its conditional adapter."""

    def __init__(self, hidden_size: int, embedding_dim: int, bottleneck: int) -> None:
        super().__init__()
        self.hidden_size, self.bottleneck = hidden_size, bottleneck
        self.hyper = nn.Linear(embedding_dim, 5 * hidden_size + 2 * bottleneck)
        nn.init.zeros_(self.hyper.weight)
        nn.init.zeros_(self.hyper.bias)
        self.down = nn.Linear(hidden_size, bottleneck)
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        self.up = nn.Linear(bottleneck, hidden_size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def modulation(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        h, r = self.hidden_size, self.bottleneck
        out = self.hyper(z)
        names = ("query", "attention_gamma", "attention_beta", "output_gamma", "output_beta", "film_scale",
                 "film_shift")
        sizes = (h, h, h, h, h, r, r)
        return dict(zip(names, torch.split(out, sizes, dim=-1), strict=True))

    def adapter(self, states: torch.Tensor, mod: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = torch.relu(self.down(states))
        hidden = hidden * (1 + mod["film_scale"]) + mod["film_shift"]
        return self.up(hidden)


class ConditionalEncoder(nn.Module):
    """A BERT-style encoder whose upper layers are modulated by a task embedding (hooks, no forked code)."""

    def __init__(self, bert: nn.Module, num_tasks: int, options: CamtlOptions) -> None:
        super().__init__()
        layers = _bert_layers(bert)
        self.bert = bert
        self.frozen = options.frozen_layers(len(layers))
        hidden = int(bert.config.hidden_size)
        self.task_embedding = nn.Embedding(num_tasks, options.task_embedding_dim)
        nn.init.normal_(self.task_embedding.weight, std=1.0)
        bottleneck = max(1, hidden // options.reduction_factor)
        self.conditioning = nn.ModuleDict({
            str(i): TaskConditioning(hidden, options.task_embedding_dim, bottleneck)
            for i in range(self.frozen, len(layers))})
        for param in bert.parameters():
            param.requires_grad = False
        for i in range(self.frozen, len(layers)):
            for param in layers[i].parameters():
                param.requires_grad = True
        self._mods: dict[str, dict[str, torch.Tensor]] = {}
        for i in range(self.frozen, len(layers)):
            self._attach(str(i), layers[i])

    def _attach(self, key: str, layer: nn.Module) -> None:
        def query_hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
            return output * (1 + self._mods[key]["query"].to(output.dtype))

        def norm_hook(part: str) -> Any:
            def hook(module: nn.LayerNorm, args: Any, output: torch.Tensor) -> torch.Tensor:
                mod = self._mods[key]
                bias = module.bias.to(output.dtype)
                return (output - bias) * (1 + mod[f"{part}_gamma"].to(output.dtype)) + bias + \
                    mod[f"{part}_beta"].to(output.dtype)
            return hook

        def adapter_hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
            return output + self.conditioning[key].adapter(output, self._mods[key]).to(output.dtype)

        layer.attention.self.query.register_forward_hook(query_hook)
        layer.attention.output.LayerNorm.register_forward_hook(norm_hook("attention"))
        layer.output.dense.register_forward_hook(adapter_hook)
        layer.output.LayerNorm.register_forward_hook(norm_hook("output"))

    def forward(self, task: int, **inputs: torch.Tensor) -> torch.Tensor:
        z = self.task_embedding.weight[task].unsqueeze(0)  # (1, d): one task per batch
        self._mods = {key: cond.modulation(z) for key, cond in self.conditioning.items()}
        try:
            return self.bert(**inputs).last_hidden_state
        finally:
            self._mods = {}


def _bert_layers(bert: nn.Module) -> Sequence[nn.Module]:
    layers = getattr(getattr(bert, "encoder", None), "layer", None)
    if layers is None or not all(hasattr(layer, "attention") and hasattr(layer, "output") for layer in layers):
        raise ValueError("CA-MTL needs a BERT-style encoder (encoder.layer[i].attention / .output)")
    return layers


class CamtlModel(nn.Module):
    """The conditional encoder and one head per task (task 0 is the target)."""

    def __init__(self, encoder: ConditionalEncoder, heads: list[TaskHead]) -> None:
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleList(heads)

    def forward(self, batch_inputs: dict[str, torch.Tensor], task: int = 0) -> torch.Tensor:
        states = self.encoder(task, **batch_inputs)
        return self.heads[task](states, batch_inputs["attention_mask"])

    def new_modules(self) -> nn.ModuleDict:
        return nn.ModuleDict({"tasks": self.encoder.task_embedding, "conditioning": self.encoder.conditioning,
                              "heads": self.heads})


class TaskView(nn.Module):
    """One task of a CamtlModel behind TaskModel's call signature (for evaluate_model)."""

    def __init__(self, model: CamtlModel, task: int) -> None:
        super().__init__()
        self.model, self.task = model, task

    def forward(self, batch_inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(batch_inputs, self.task)


@dataclass
class CamtlReport:
    result: FinetuneResult
    task_steps: dict[str, int]  # optimiser steps spent on each task
    frozen_layers: int
    options: dict[str, Any]


def normalised_entropy(task_type: TaskType, logits: torch.Tensor, batch: Batch) -> float:
    """Mean predictive entropy over the batch divided by its maximum (1 = uniform predictions)."""
    logits = logits.detach().float()
    if task_type == TaskType.REGRESSION:
        raise ValueError("a regression head has no predictive distribution: use its unexplained variance")
    if task_type == TaskType.QUESTION_ANSWERING:  # start and end distributions over the window's tokens
        lengths = batch.attention_mask.sum(dim=1).clamp(min=2).float()
        values = []
        for k in range(2):
            logp = torch.log_softmax(logits[..., k], dim=-1)
            entropy = -(logp.exp() * logp).sum(dim=-1)
            values.append(entropy / lengths.log())
        return float(torch.stack(values).mean())
    logp = torch.log_softmax(logits, dim=-1)
    entropy = -(logp.exp() * logp).sum(dim=-1) / math.log(logits.shape[-1])
    if task_type == TaskType.SEQUENCE_LABELING:
        assert batch.labels is not None
        mask = batch.labels != IGNORE_INDEX
        return float(entropy[mask].mean()) if bool(mask.any()) else 0.0
    return float(entropy.mean())


class _TaskBatches:
    """Shuffled passes over one task's features, batch by batch."""

    def __init__(self, features: Features, batch_size: int, rng: np.random.Generator) -> None:
        self.features, self.batch_size, self.rng = features, batch_size, rng
        self.order: list[int] = []

    def next(self) -> np.ndarray:
        if not self.order:
            self.order = self.rng.permutation(len(self.features)).tolist()
        return np.array([self.order.pop() for _ in range(min(self.batch_size, len(self.order)))])


def train_camtl(train: Dataset, dev: Dataset, sources: list[Dataset], encoder: Encoder,
                options: FinetuneOptions, camtl: CamtlOptions | None = None, *,
                on_progress: ProgressFn = no_progress) -> tuple[CamtlReport, CamtlModel]:
    """Train the target (task 0) jointly with `sources`; the best target dev evaluation's weights are kept.

    Steps: `options.epochs` passes over all tasks' rows together, one task's batch per step.
    """
    camtl = camtl or CamtlOptions()
    if not sources:
        raise ValueError("CA-MTL needs at least one source task")
    if train.task_type != dev.task_type:
        raise ValueError(f"train is {train.task_type.value} but dev is {dev.task_type.value}")
    started = time.perf_counter()
    torch.manual_seed(options.seed)
    device = encoder.device
    tasks = [train, *sources]
    features = [tokenize(task, encoder.tokenizer, options) for task in tasks]
    dev_features = tokenize(dev, encoder.tokenizer, options)
    _align_labels(features[0], dev_features)
    stats: list[tuple[float, float] | None] = []
    for task, feats in zip(tasks, features, strict=True):
        if task.task_type == TaskType.REGRESSION:
            mean, std = _label_stats(feats)
            feats.labels = ((np.asarray(feats.labels) - mean) / std).astype(np.float32)
            stats.append((mean, std))
        else:
            stats.append(None)
    heads = [TaskHead(task.task_type, encoder.hidden_size, feats.num_labels)
             for task, feats in zip(tasks, features, strict=True)]
    conditional = ConditionalEncoder(copy.deepcopy(encoder.model), len(tasks), camtl)
    model = CamtlModel(conditional, heads).to(device)
    per_epoch = [math.ceil(len(f) / options.batch_size) for f in features]
    total_steps = max(1, math.ceil(sum(per_epoch) * options.epochs))
    eval_every = max(1, sum(per_epoch) // max(1, options.evaluations_per_epoch))
    groups = param_groups(conditional.bert, options.weight_decay) + \
        param_groups(model.new_modules(), options.weight_decay, lr=camtl.conditional_learning_rate)
    optimiser, schedule = make_optimiser(groups, options, total_steps)
    trainable = [p for p in model.parameters() if p.requires_grad]
    rng = np.random.default_rng(options.seed)
    streams = [_TaskBatches(f, options.batch_size, rng) for f in features]
    sequence = [t for t in (*range(1, len(tasks)), 0) for _ in range(per_epoch[t])]
    rescore_every = camtl.rescore_every or len(tasks)
    candidates: list[np.ndarray] = [s.next() for s in streams] if camtl.sampling == "uncertainty" else []
    scores: list[float] = [0.0] * len(tasks)

    unexplained = [1.0] * len(tasks)  # regression: running training MSE on standardised labels

    def score(task: int) -> None:
        if tasks[task].task_type == TaskType.REGRESSION:
            scores[task] = min(1.0, unexplained[task])
            return
        batch = collate(features[task], candidates[task], device)
        model.eval()
        with torch.no_grad(), encoder.autocast():
            logits = model(batch.model_inputs(), task)
        scores[task] = normalised_entropy(tasks[task].task_type, logits, batch)

    main = main_metric(train.task_type, train.name)
    best, best_step, history = -math.inf, 0, []
    best_weights: dict[str, torch.Tensor] | None = None
    task_steps = [0] * len(tasks)
    view = TaskView(model, 0)
    for step in range(1, total_steps + 1):
        if camtl.sampling == "uniform":
            task = int(rng.integers(len(tasks)))
            index = streams[task].next()
        elif camtl.sampling == "sequential":
            task = sequence[(step - 1) % len(sequence)]
            index = streams[task].next()
        else:
            if (step - 1) % rescore_every == 0:
                for t in range(len(tasks)):
                    score(t)
            task = int(np.argmax(scores))
            index = candidates[task]
        batch = collate(features[task], index, device)
        model.train()
        with encoder.autocast():
            logits = model(batch.model_inputs(), task)
        assert batch.labels is not None
        loss = heads[task].per_example_loss(logits, batch.labels).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, options.max_grad_norm)
        optimiser.step()
        schedule.step()
        task_steps[task] += 1
        if tasks[task].task_type == TaskType.REGRESSION:
            unexplained[task] = 0.9 * unexplained[task] + 0.1 * float(loss.detach())
        if camtl.sampling == "uncertainty":
            candidates[task] = streams[task].next()
            score(task)
        on_progress(step, total_steps)
        if step % eval_every == 0 or step == total_steps:
            evaluated = evaluate_model(view, dev, dev_features, encoder, options, stats[0])  # type: ignore[arg-type]
            history.append({"step": step, "loss": float(loss.detach()), "task": tasks[task].name, **evaluated})
            if evaluated[main] > best:
                best, best_step = evaluated[main], step
                best_weights = trainable_state(model)
    if best_weights is not None:
        model.load_state_dict(best_weights, strict=False)
    model.eval()
    final = next(h for h in history if h["step"] == best_step)
    result = FinetuneResult(task_type=train.task_type.value,
                            metrics={k: v for k, v in final.items() if k not in ("step", "loss", "task")},
                            main_metric=main, score=float(best), best_step=best_step, steps=total_steps,
                            seconds=time.perf_counter() - started, history=history)
    counts: dict[str, int] = {}
    for i, task_data in enumerate(tasks):  # names may repeat (two uploads of one task): keep them apart
        name = "target" if i == 0 else task_data.name
        counts[name if name not in counts else f"{name}#{i}"] = task_steps[i]
    return CamtlReport(result=result, task_steps=counts, frozen_layers=conditional.frozen,
                       options=asdict(camtl)), model
