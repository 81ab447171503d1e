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

Task sampling:

* "uncertainty" (MT-Uncertainty, Algorithm 1 of the paper and its reference trainer): every task
  holds a candidate batch of `batch_size` examples; each candidate gets its normalised entropy
  e_i (entropy of the model's prediction / its maximum: 1 for uniform predictions; for QA the
  start and end distributions over the window; for tagging the mean over first sub-tokens), each
  task the mean m_t of its candidates' entropies, and the step trains on the `batch_size`
  candidates with the highest U_i = e_i * m_t / max_t m_t, from whichever tasks they come: one
  mixed batch, the task embedding chosen per example, the loss the mean of the tasks' mean losses
  (as the reference trainer). A regression head predicts a point, not a distribution, so its
  candidates' uncertainty is the share of variance it leaves unexplained: a running mean of its
  training MSE on standardised labels, capped at 1. Chosen candidates are replaced by the task's
  next rows and scored; all candidates are rescored every `rescore_every` steps (default: the
  number of tasks). Unlike the reference, unchosen candidates stay in the pool instead of being
  dropped, so each scoring forward pass is used (a step still costs a no-grad pass over the
  replaced candidates, and over the whole pool every `rescore_every` steps).
  The paper trains every task as a target; taskrank scores only the target, and unconstrained
  MT-Uncertainty can starve it: on SST-2 with four sentiment/genre sources the model was soon sure
  of the target and gave it 0.5% of all examples (dev accuracy 51.4, the constant prediction).
  So by default (`target_floor`) each batch keeps at least the target's proportional share
  (round(batch_size * target rows / all rows), at least 1) for its most uncertain candidates.
* "uniform": a task drawn uniformly per step, a batch of its rows;
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
from typing import Any, Literal, cast

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
    target_floor: bool = field(
        default=True, metadata={"help": "Uncertainty sampling: every batch holds at least the target's "
                                        "proportional share of rows (round(batch * target rows / all rows), "
                                        ">= 1); off is the paper's unconstrained choice."})

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
        sizes = [h, h, h, h, h, r, r]
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
        hidden = int(cast(Any, bert).config.hidden_size)
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
            conditioning = cast(TaskConditioning, self.conditioning[key])
            return output + conditioning.adapter(output, self._mods[key]).to(output.dtype)

        bert_layer: Any = layer  # a BertLayer (see _bert_layers): submodules looked up by name
        bert_layer.attention.self.query.register_forward_hook(query_hook)
        bert_layer.attention.output.LayerNorm.register_forward_hook(norm_hook("attention"))
        bert_layer.output.dense.register_forward_hook(adapter_hook)
        bert_layer.output.LayerNorm.register_forward_hook(norm_hook("output"))

    def forward(self, task: int | torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        """`task`: one task for the batch, or one task id per row (a mixed MT-Uncertainty batch)."""
        ids = torch.as_tensor(task, device=self.task_embedding.weight.device).reshape(-1)
        z = self.task_embedding(ids)  # (1 or batch, d); modulations broadcast over the sequence
        self._mods = {key: {name: m.unsqueeze(1) for name, m in cast(TaskConditioning, cond).modulation(z).items()}
                      for key, cond in self.conditioning.items()}
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

    def forward_mixed(self, batch: MixedBatch) -> list[torch.Tensor]:
        """One encoder pass over rows of several tasks; each task's rows go to its own head."""
        states = self.encoder(batch.task_ids, **batch.inputs)
        mask = batch.inputs["attention_mask"]
        return [self.heads[task](states[rows], mask[rows]) for task, rows in batch.groups]

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
    task_examples: dict[str, int]  # training examples each task contributed
    frozen_layers: int
    options: dict[str, Any]


def example_uncertainty(task_type: TaskType, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Per-example predictive entropy divided by its maximum (1 = uniform predictions)."""
    logits = logits.detach().float()
    if task_type == TaskType.REGRESSION:
        raise ValueError("a regression head has no predictive distribution: use its unexplained variance")
    if task_type == TaskType.QUESTION_ANSWERING:  # start and end distributions over the window's tokens
        lengths = batch.attention_mask.sum(dim=1).clamp(min=2).float()
        values = []
        for k in range(2):
            logp = torch.log_softmax(logits[..., k], dim=-1)
            values.append(-(logp.exp() * logp).sum(dim=-1) / lengths.log())
        return torch.stack(values).mean(dim=0)
    logp = torch.log_softmax(logits, dim=-1)
    entropy = -(logp.exp() * logp).sum(dim=-1) / math.log(logits.shape[-1])
    if task_type == TaskType.SEQUENCE_LABELING:
        assert batch.labels is not None
        mask = (batch.labels != IGNORE_INDEX).float()
        return (entropy * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    return entropy


def normalised_entropy(task_type: TaskType, logits: torch.Tensor, batch: Batch) -> float:
    """Mean of `example_uncertainty` over the batch."""
    return float(example_uncertainty(task_type, logits, batch).mean())


def select_uncertain(scores: Sequence[np.ndarray], size: int, reserved: int = 0) -> list[np.ndarray]:
    """MT-Uncertainty's choice: the `size` candidates with the highest e_i * m_t / max_t m_t.

    `scores[t]` holds the normalised entropies e_i of task t's candidates; returns, per task, the
    positions of its chosen candidates (ties go to the earlier task and position). The first
    `reserved` slots go to task 0's most uncertain candidates whatever the other tasks score: the
    target's floor, so a target the model is already sure of is not starved by harder sources.
    """
    means = np.array([float(np.mean(s)) if len(s) else 0.0 for s in scores])
    top = float(means.max()) if len(means) else 0.0
    weights = means / top if top > 0 else np.ones_like(means)
    owner = np.concatenate([np.full(len(s), t) for t, s in enumerate(scores)]).astype(int)
    position = np.concatenate([np.arange(len(s)) for s in scores]).astype(int)
    value = np.concatenate([np.asarray(s, dtype=np.float64) * weights[t] for t, s in enumerate(scores)])
    order = np.argsort(-value, kind="stable")
    floor = order[owner[order] == 0][:max(0, min(reserved, size))]
    rest = order[~np.isin(order, floor)][:size - len(floor)]
    chosen = np.concatenate([floor, rest]).astype(int)
    return [np.sort(position[chosen[owner[chosen] == t]]) for t in range(len(scores))]


@dataclass
class MixedBatch:
    """Rows of several tasks padded to one width: one encoder pass, a head per task."""

    inputs: dict[str, torch.Tensor]
    task_ids: torch.Tensor
    groups: list[tuple[int, slice]]  # (task, its rows)
    parts: list[Batch]  # per task, for its labels


def mixed_batch(features: Sequence[Features], chosen: dict[int, np.ndarray], device: torch.device,
                with_labels: bool = True) -> MixedBatch:
    chosen = {t: index for t, index in chosen.items() if len(index)}
    width = max(len(features[t].input_ids[i]) for t, index in chosen.items() for i in index)
    parts = [collate(features[t], index, device, pad_to=width, with_labels=with_labels)
             for t, index in chosen.items()]
    keys = parts[0].model_inputs().keys()
    inputs = {key: torch.cat([part.model_inputs()[key] for part in parts]) for key in keys}
    groups, start = [], 0
    for t, part in zip(chosen, parts, strict=True):
        groups.append((t, slice(start, start + len(part.index))))
        start += len(part.index)
    task_ids = torch.cat([torch.full((len(part.index),), t, dtype=torch.long) for t, part in zip(chosen, parts,
                                                                                              strict=True)])
    return MixedBatch(inputs, task_ids.to(device), groups, parts)


class _TaskRows:
    """Shuffled passes over one task's features."""

    def __init__(self, features: Features, rng: np.random.Generator) -> None:
        self.features, self.rng = features, rng
        self.order: list[int] = []

    def take(self, n: int) -> np.ndarray:
        """The next `n` rows, across pass boundaries (`n` is capped at the task's size)."""
        out: list[int] = []
        for _ in range(min(n, len(self.features))):
            if not self.order:
                self.order = self.rng.permutation(len(self.features)).tolist()
            out.append(self.order.pop())
        return np.array(out, dtype=int)

    def next_batch(self, batch_size: int) -> np.ndarray:
        """The next batch of the current pass (shorter at its end)."""
        if not self.order:
            self.order = self.rng.permutation(len(self.features)).tolist()
        return np.array([self.order.pop() for _ in range(min(batch_size, len(self.order)))], dtype=int)


def train_camtl(train: Dataset, dev: Dataset, sources: list[Dataset], encoder: Encoder,
                options: FinetuneOptions, camtl: CamtlOptions | None = None, *,
                on_progress: ProgressFn = no_progress) -> tuple[CamtlReport, CamtlModel]:
    """Train the target (task 0) jointly with `sources`; the best target dev evaluation's weights are kept.

    Steps: `options.epochs` passes' worth of batches over all tasks' rows together.
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
    eval_every = (max(1, sum(per_epoch) // options.evaluations_per_epoch) if options.evaluations_per_epoch
                  else total_steps + 1)
    groups = param_groups(conditional.bert, options.weight_decay) + \
        param_groups(model.new_modules(), options.weight_decay, lr=camtl.conditional_learning_rate)
    optimiser, schedule = make_optimiser(groups, options, total_steps)
    trainable = [p for p in model.parameters() if p.requires_grad]
    rng = np.random.default_rng(options.seed)
    rows = [_TaskRows(f, rng) for f in features]
    sequence = [t for t in (*range(1, len(tasks)), 0) for _ in range(per_epoch[t])]
    rescore_every = camtl.rescore_every or len(tasks)
    uncertain = camtl.sampling == "uncertainty"
    pool: list[np.ndarray] = [r.take(options.batch_size) for r in rows] if uncertain else []
    pool_scores: list[np.ndarray] = [np.zeros(len(p)) for p in pool]
    reserved = max(1, round(options.batch_size * len(features[0]) / sum(len(f) for f in features))) \
        if uncertain and camtl.target_floor else 0
    unexplained = [1.0] * len(tasks)  # regression: running training MSE on standardised labels

    def score(chosen: dict[int, np.ndarray]) -> None:
        """Rescore pool positions `chosen[t]` of each task, one no-grad pass over all of them."""
        chosen = {t: pos for t, pos in chosen.items() if len(pos)}
        for t, pos in chosen.items():
            if tasks[t].task_type == TaskType.REGRESSION:
                pool_scores[t][pos] = min(1.0, unexplained[t])
        scored = {t: pos for t, pos in chosen.items() if tasks[t].task_type != TaskType.REGRESSION}
        if not scored:
            return
        batch = mixed_batch(features, {t: pool[t][pos] for t, pos in scored.items()}, device)
        model.eval()
        with torch.no_grad(), encoder.autocast():
            logits = model.forward_mixed(batch)
        for (t, _), part, out in zip(batch.groups, batch.parts, logits, strict=True):
            pool_scores[t][scored[t]] = example_uncertainty(tasks[t].task_type, out, part).cpu().numpy()

    main = main_metric(train.task_type, train.name)
    history: list[dict[str, Any]]
    best, best_step, history = -math.inf, 0, []
    best_weights: dict[str, torch.Tensor] | None = None
    task_examples = [0] * len(tasks)
    view = TaskView(model, 0)
    for step in range(1, total_steps + 1):
        if camtl.sampling == "uniform":
            picked = int(rng.integers(len(tasks)))
            chosen = {picked: rows[picked].next_batch(options.batch_size)}
        elif camtl.sampling == "sequential":
            picked = sequence[(step - 1) % len(sequence)]
            chosen = {picked: rows[picked].next_batch(options.batch_size)}
        else:
            if (step - 1) % rescore_every == 0:
                score({t: np.arange(len(p)) for t, p in enumerate(pool)})
            positions = select_uncertain(pool_scores, options.batch_size, reserved)
            chosen = {t: pool[t][pos] for t, pos in enumerate(positions) if len(pos)}
        batch = mixed_batch(features, chosen, device)
        model.train()
        with encoder.autocast():
            logits = model.forward_mixed(batch)
        losses = []
        for (t, _), part, out in zip(batch.groups, batch.parts, logits, strict=True):
            assert part.labels is not None
            losses.append(heads[t].per_example_loss(out, part.labels).mean())
            task_examples[t] += len(part.index)
        loss = torch.stack(losses).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, options.max_grad_norm)
        optimiser.step()
        schedule.step()
        for (t, _), task_loss in zip(batch.groups, losses, strict=True):
            if tasks[t].task_type == TaskType.REGRESSION:
                unexplained[t] = 0.9 * unexplained[t] + 0.1 * float(task_loss.detach())
        if uncertain:
            for t, pos in enumerate(positions):
                if len(pos):
                    pool[t][pos] = rows[t].take(len(pos))
            score({t: pos for t, pos in enumerate(positions)})
        on_progress(step, total_steps)
        if step % eval_every == 0 or step == total_steps:
            evaluated = evaluate_model(view, dev, dev_features, encoder, options, stats[0])  # type: ignore[arg-type]
            tasks_in_step = ",".join(tasks[t].name for t, _ in batch.groups)
            history.append({"step": step, "loss": float(loss.detach()), "task": tasks_in_step, **evaluated})
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
        counts[name if name not in counts else f"{name}#{i}"] = task_examples[i]
    return CamtlReport(result=result, task_examples=counts, frozen_layers=conditional.frozen,
                       options=asdict(camtl)), model
