"""Fine-tune an encoder with a task head, for every task type, and evaluate it on a dev split.

The training loop is deliberately plain (AdamW, linear warm-up and decay, gradient clipping),
seeded, resumable from checkpoints written every N steps, and reports through `on_progress`.
Used for intermediate-task transfer: fine-tune on a source, drop the head, fine-tune on the target.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from embeddings import metrics as m
from embeddings.data import Dataset, QAExample, TaggingExample, TaskType, TextExample
from embeddings.encoders import Encoder
from embeddings.features import (
    IGNORE_INDEX,
    Features,
    TokenizeOptions,
    collate,
    length_grouped_order,
    length_sorted_batches,
    tokenize,
)
from embeddings.heads import TaskHead
from embeddings.options import ProgressFn, no_progress
from embeddings.task_types import main_metric

MAX_ANSWER_TOKENS = 30


@dataclass(frozen=True)
class FinetuneOptions(TokenizeOptions):
    epochs: float = field(default=3.0, metadata={"help": "Passes over the training rows (fractions allowed)."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak AdamW learning rate."})
    batch_size: int = field(default=32, metadata={"help": "Rows per optimiser step."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Share of steps with a linear warm-up."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not on biases/LayerNorm)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping."})
    seed: int = field(default=13, metadata={"help": "Seeds head init, dropout and batch order."})
    evaluations_per_epoch: int = field(
        default=1, metadata={"help": "Dev evaluations per epoch; 0 evaluates once, after the last step."})
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Stop after this many evaluations without improvement."})
    checkpoint_every: int = field(default=200, metadata={"help": "Steps between resumable checkpoints."})
    eval_max_tokens: int = field(default=8192, metadata={"help": "Padded tokens per evaluation batch."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.epochs <= 0 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError("epochs, batch_size and learning_rate must be positive")
        if self.evaluations_per_epoch < 0:
            raise ValueError("evaluations_per_epoch must be 0 (once, at the end) or more")


@dataclass
class FinetuneResult:
    task_type: str
    metrics: dict[str, float]
    main_metric: str
    score: float
    best_step: int
    steps: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TaskModel(nn.Module):
    """Encoder + head; the encoder part can be handed on to the next fine-tuning (transfer)."""

    def __init__(self, encoder: nn.Module, head: TaskHead) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, batch_inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        states = self.encoder(**batch_inputs).last_hidden_state
        return self.head(states, batch_inputs["attention_mask"])


def _label_stats(features: Features) -> tuple[float, float]:
    labels = np.asarray(features.labels, dtype=np.float64)
    return float(labels.mean()), float(labels.std() or 1.0)


def fine_tune(train: Dataset, dev: Dataset | None, encoder: Encoder, options: FinetuneOptions | None = None, *,
              initial_encoder_state: dict[str, torch.Tensor] | None = None,
              checkpoint_dir: str | Path | None = None, on_progress: ProgressFn = no_progress,
              body: nn.Module | Callable[[], nn.Module] | None = None,
              auxiliary_loss: Callable[[TaskModel], torch.Tensor | None] | None = None,
              head_learning_rate: float | None = None,
              ) -> tuple[FinetuneResult, TaskModel]:
    """Train on `train`, evaluate on `dev`, keep the best evaluation's weights; returns (result, model).

    Without `dev` (a transfer source) there is no evaluation and the final weights are kept.

    `body` replaces the default copy of `encoder.model` with a prepared encoder (or a function building
    one after the seed is set, so new modules initialise reproducibly), e.g. one with adapters whose
    parameters alone have `requires_grad`: only parameters that require gradients are optimised (the
    head always is; `head_learning_rate` gives the new head its own rate, e.g. over a frozen body).
    `auxiliary_loss(model)`, called after each training forward pass, adds a
    regulariser to the task loss (a gate prior, AdapterFusion's value regularisation).
    """
    options = options or FinetuneOptions()
    if dev is not None and train.task_type != dev.task_type:
        raise ValueError(f"train is {train.task_type.value} but dev is {dev.task_type.value}")
    if body is not None and initial_encoder_state is not None:
        raise ValueError("give a prepared body or an initial encoder state, not both")
    started = time.perf_counter()
    torch.manual_seed(options.seed)
    device = encoder.device
    if body is None:
        body = copy.deepcopy(encoder.model)  # the shared encoder stays as loaded
    elif not isinstance(body, nn.Module):
        body = body()
    if initial_encoder_state is not None:
        body.load_state_dict(initial_encoder_state)
    train_features = tokenize(train, encoder.tokenizer, options)
    dev_features = tokenize(dev, encoder.tokenizer, options) if dev is not None else None
    if dev_features is not None:
        _align_labels(train_features, dev_features)
    stats = None
    if train.task_type == TaskType.REGRESSION:
        stats = _label_stats(train_features)
        train_features.labels = ((np.asarray(train_features.labels) - stats[0]) / stats[1]).astype(np.float32)
    head = TaskHead(train.task_type, encoder.hidden_size, train_features.num_labels).to(device)
    model = TaskModel(body, head).to(device)
    steps_per_epoch = math.ceil(len(train_features) / options.batch_size)
    total_steps = max(1, math.ceil(steps_per_epoch * options.epochs))
    # 0 evaluations per epoch: only the final model is scored (`step == total_steps` below)
    eval_every = (max(1, steps_per_epoch // options.evaluations_per_epoch) if options.evaluations_per_epoch
                  else total_steps + 1)
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = (param_groups(model, options.weight_decay) if head_learning_rate is None else
              param_groups(model.encoder, options.weight_decay)
              + param_groups(model.head, options.weight_decay, lr=head_learning_rate))
    optimiser, schedule = make_optimiser(groups, options, total_steps)
    rng = np.random.default_rng(options.seed)
    state: dict[str, Any] = {"step": 0, "best": -math.inf, "best_step": 0, "stale": 0, "history": [], "order": []}
    best_weights: dict[str, torch.Tensor] | None = None
    checkpoint = Path(checkpoint_dir) if checkpoint_dir else None
    resumed_from = None
    if checkpoint is not None and (checkpoint / "trainer.pt").is_file():
        saved = torch.load(checkpoint / "trainer.pt", map_location=device, weights_only=False)
        model.load_state_dict(saved["model"])
        optimiser.load_state_dict(saved["optimiser"])
        schedule.load_state_dict(saved["schedule"])
        rng.bit_generator.state = saved["rng"]
        torch.set_rng_state(saved["torch_rng"])
        state = saved["state"]
        best_weights = saved.get("best_weights")
        resumed_from = state["step"]
    main = main_metric(train.task_type, train.name)
    while state["step"] < total_steps:
        order = state["order"]
        if not order:  # a new epoch; reversed because batches are popped from the end
            order = state["order"] = length_grouped_order(train_features.lengths, options.batch_size, rng)[::-1]
        index = np.array([order.pop() for _ in range(min(options.batch_size, len(order)))])
        batch = collate(train_features, index, device)
        model.train()
        with encoder.autocast():
            logits = model(batch.model_inputs())
        assert batch.labels is not None
        loss = head.per_example_loss(logits, batch.labels).mean()
        extra = auxiliary_loss(model) if auxiliary_loss is not None else None
        total_loss = loss if extra is None else loss + extra
        optimiser.zero_grad(set_to_none=True)
        total_loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, options.max_grad_norm)
        optimiser.step()
        schedule.step()
        state["step"] += 1
        step = state["step"]
        on_progress(step, total_steps)
        if dev is not None and dev_features is not None and (step % eval_every == 0 or step == total_steps):
            scores = evaluate_model(model, dev, dev_features, encoder, options, stats)
            state["history"].append({"step": step, "loss": float(loss.detach()), **scores})
            if scores[main] > state["best"]:
                state["best"], state["best_step"], state["stale"] = scores[main], step, 0
                best_weights = trainable_state(model)
            else:
                state["stale"] += 1
                if options.early_stopping_patience is not None and state["stale"] >= options.early_stopping_patience:
                    break
        if checkpoint is not None and (step % options.checkpoint_every == 0) and step < total_steps:
            _save_checkpoint(checkpoint, model, optimiser, schedule, rng, state, best_weights)
    if best_weights is not None:
        model.load_state_dict(best_weights, strict=False)  # frozen parameters never changed
    final = next(h for h in state["history"] if h["step"] == state["best_step"]) if state["history"] else {}
    result = FinetuneResult(task_type=train.task_type.value, metrics={k: v for k, v in final.items()
                                                                      if k not in ("step", "loss")},
                            main_metric=main, score=float(state["best"]), best_step=state["best_step"],
                            steps=state["step"], seconds=time.perf_counter() - started,
                            history=state["history"], resumed_from=resumed_from)
    if checkpoint is not None:
        (checkpoint / "trainer.pt").unlink(missing_ok=True)  # finished: nothing to resume
    model.eval()
    return result, model


def _save_checkpoint(directory: Path, model: TaskModel, optimiser: torch.optim.Optimizer, schedule: Any,
                     rng: np.random.Generator, state: dict[str, Any], best: dict[str, torch.Tensor] | None) -> None:
    """Atomic: a job killed while writing resumes from the previous checkpoint."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "trainer.pt.tmp"
    torch.save({"model": model.state_dict(), "optimiser": optimiser.state_dict(), "schedule": schedule.state_dict(),
                "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "state": state,
                "best_weights": best}, tmp)
    os.replace(tmp, directory / "trainer.pt")
    (directory / "progress.json").write_text(json.dumps({"step": state["step"]}))


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the parameters that train (all of them in full fine-tuning): the best-evaluation snapshot."""
    return {name: param.detach().clone() for name, param in model.named_parameters() if param.requires_grad}


def param_groups(model: nn.Module, weight_decay: float, lr: float | None = None) -> list[dict[str, Any]]:
    """AdamW groups over the parameters that require gradients: no decay on biases, norms and scalars."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(param)
    extra = {} if lr is None else {"lr": lr}
    return [g for g in ({"params": decay, "weight_decay": weight_decay, **extra},
                        {"params": no_decay, "weight_decay": 0.0, **extra}) if g["params"]]


def make_optimiser(groups: list[dict[str, Any]], options: FinetuneOptions, total_steps: int
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with linear warm-up over `warmup_ratio` of the steps, then linear decay to zero."""
    optimiser = torch.optim.AdamW(groups, lr=options.learning_rate)
    warmup = int(total_steps * options.warmup_ratio)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: min((step + 1) / max(1, warmup), max(0.0, (total_steps - step) / max(1, total_steps - warmup))))
    return optimiser, schedule


def _align_labels(train: Features, dev: Features) -> None:
    """Dev label ids must use the train label order; unseen dev labels are an error, not a silent zero."""
    if train.task_type not in (TaskType.CLASSIFICATION, TaskType.SEQUENCE_LABELING):
        return
    if dev.label_names == train.label_names:
        return
    unknown = sorted(set(dev.label_names) - set(train.label_names))
    if unknown:
        raise ValueError(f"dev labels {unknown[:10]} never occur in the training data")
    remap = np.array([train.label_names.index(name) for name in dev.label_names])
    if dev.task_type == TaskType.CLASSIFICATION:
        dev.labels = remap[np.asarray(dev.labels)]
    else:
        dev.labels = [np.where(tags == IGNORE_INDEX, IGNORE_INDEX, remap[np.maximum(tags, 0)]) for tags in cast(list[np.ndarray], dev.labels)]
    dev.label_names, dev.num_labels = list(train.label_names), train.num_labels


@torch.inference_mode()
def evaluate_model(model: TaskModel, dataset: Dataset, features: Features, encoder: Encoder,
                   options: FinetuneOptions, label_stats: tuple[float, float] | None = None) -> dict[str, float]:
    model.eval()
    outputs: dict[int, torch.Tensor] = {}
    for index in length_sorted_batches(features.lengths, options.eval_max_tokens):
        batch = collate(features, index, encoder.device, with_labels=False)
        with encoder.autocast():
            logits = model(batch.model_inputs()).float().cpu()
        for row, f in enumerate(index):
            outputs[int(f)] = logits[row, : len(features.input_ids[f])] if logits.dim() == 3 else logits[row]
    task = dataset.task_type
    if task == TaskType.CLASSIFICATION:
        predictions = [int(outputs[i].argmax()) for i in range(len(features))]
        gold = [int(y) for y in features.labels]  # type: ignore[union-attr]
        return {"accuracy": 100 * m.accuracy(predictions, gold), "macro_f1": 100 * m.macro_f1(predictions, gold),
                "matthews": 100 * m.matthews_corrcoef(predictions, gold)}
    if task == TaskType.REGRESSION:
        mean, std = label_stats or (0.0, 1.0)
        values = [float(outputs[i]) * std + mean for i in range(len(features))]
        targets = [float(cast(float, cast(TextExample, ex).label)) for ex in dataset.examples]
        return {"pearson": 100 * m.pearson(values, targets), "spearman": 100 * m.spearman(values, targets)}
    if task == TaskType.SEQUENCE_LABELING:
        return _tagging_scores(dataset, features, outputs, encoder)
    return _qa_scores(dataset, features, outputs, encoder)


def _tagging_scores(dataset: Dataset, features: Features, outputs: dict[int, torch.Tensor],
                    encoder: Encoder) -> dict[str, float]:
    predictions, gold = [], []
    for i, ex in enumerate(dataset.examples):
        assert isinstance(ex, TaggingExample)
        first_subtokens = np.flatnonzero(np.asarray(features.labels[i]) != IGNORE_INDEX)  # type: ignore[index]
        ids = outputs[i].argmax(-1).numpy()
        tags = [features.label_names[int(ids[p])] for p in first_subtokens]
        tags += ["O"] * (len(ex.tags) - len(tags))  # words cut by truncation count as predicted O
        predictions.append(tags)
        gold.append(list(ex.tags))
    scores = m.entity_f1(predictions, gold)
    return {"f1": scores["f1"], "precision": scores["precision"], "recall": scores["recall"],
            "token_accuracy": m.token_accuracy(predictions, gold)}


def _qa_scores(dataset: Dataset, features: Features, outputs: dict[int, torch.Tensor],
               encoder: Encoder) -> dict[str, float]:
    """Best span per question over its windows; SQuAD 2.0: answer '' when the null score wins."""
    examples: list[QAExample] = dataset.examples  # type: ignore[assignment]
    by_example: dict[int, list[int]] = {}
    for f, e in enumerate(features.example_index):
        by_example.setdefault(int(e), []).append(f)
    assert features.offsets is not None and features.context_mask is not None
    predictions = []
    for e, ex in enumerate(examples):
        best_text, best_score, null_score = "", -math.inf, math.inf
        for f in by_example.get(e, []):
            logits = outputs[f]
            start, end = logits[:, 0], logits[:, 1]
            null_score = min(null_score, float(start[0] + end[0]))
            offsets, context_mask = features.offsets[f], torch.from_numpy(features.context_mask[f])
            starts = torch.topk(start.masked_fill(~context_mask, -1e9), k=min(20, len(start))).indices.tolist()
            ends = torch.topk(end.masked_fill(~context_mask, -1e9), k=min(20, len(end))).indices.tolist()
            for s in starts:
                for t in ends:
                    if t < s or t - s + 1 > MAX_ANSWER_TOKENS or not context_mask[s] or not context_mask[t]:
                        continue
                    score = float(start[s] + end[t])
                    if score > best_score:
                        best_score, best_text = score, ex.context[offsets[s][0]:offsets[t][1]]
        predictions.append("" if null_score > best_score else best_text)
    scores = m.squad_scores(predictions, [ex.answer_texts for ex in examples])
    return {"exact_match": scores["exact_match"], "f1": scores["f1"]}
